"""Ridge minima and the rank states B_r (Wang & Jacot, ICLR 2024; docs/theory.md §7).

`modes` (closed forms per mode: threshold, roots, energy, curvature, ties; the balanced identity; rank
states), `labels` (first- and second-order labels off the square-loss theorem, modulo the symmetry
orbit). Imports `dlnlab.theory.square` (Hessians); never the other way.
"""
from dlnlab.theory.ridge.labels import (
    RidgePoint,
    classify,
    classify_members,
    orbit_basis,
    ridge_loss_fn,
)
from dlnlab.theory.ridge.modes import (
    LabelTolerances,
    RankState,
    RankTolerances,
    balanced_identity,
    balanced_mode_point,
    mode_curvature,
    mode_energy,
    mode_roots,
    mode_table,
    mode_threshold,
    rank_state,
    tie_value,
)

__all__ = [
    # closed forms and rank states
    "RankTolerances", "RankState", "rank_state", "balanced_identity", "mode_threshold", "mode_roots",
    "mode_energy", "mode_curvature", "tie_value", "mode_table", "balanced_mode_point",
    # labels
    "LabelTolerances", "RidgePoint", "classify", "classify_members", "ridge_loss_fn", "orbit_basis",
]
