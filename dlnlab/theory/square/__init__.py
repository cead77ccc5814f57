"""The square-loss landscape (Achour, Malgouyres & Gerchinovitz, JMLR 2024; docs/theory.md §2-§6).

`data` (statistics, Assumption 1), `critical` (critical and plateau values, closed-form loss and
gradient), `points` (generators of labelled points), `hessian` (Hessian-vector products and extreme
eigenvalues), `verdicts` (tolerances, prepared data, verdicts), `pivots` (the complementary blocks
and the pivot test), `theorem7` (Theorem 7 labels, the one implementation: batched, a point being a
batch of one), `reasons` (the verdicts' words), `classify` (the public classifier). Near critical
points (training checkpoints on a plateau, §6): `trajectory` (curvature, tight margin, projection
onto the plateau's critical point), `lanczos` (batched Hessian-vector products, warm-started Lanczos).
The other theories (`dlnlab.theory.ridge`, `dlnlab.theory.convex`) may import this package; it
imports neither.
"""
from dlnlab.theory.square.classify import Classifier, classify
from dlnlab.theory.square.critical import (
    CriticalValue,
    PlateauValue,
    critical_values,
    grad_norm,
    labels_for,
    loss,
    loss_and_grad,
    loss_of_product,
    plateau_values,
    weight_grads,
)
from dlnlab.theory.square.data import (
    AssumptionReport,
    LandscapeData,
    as_data,
    as_f64,
    as_weights,
    dims_of,
    format_S,
)
from dlnlab.theory.square.hessian import (
    MinEig,
    full_hessian,
    hessian_min_eig,
    hvp,
    hvp_operator,
    min_eigenvalue,
    square_loss_fn,
)
from dlnlab.theory.square.lanczos import LanczosResult, SquareLossHVP, lanczos_extremes
from dlnlab.theory.square.points import (
    EscapePath,
    LabelledPoint,
    apply_gauge,
    enumeration_points,
    escape_path,
    normal_form,
    normal_form_critical,
    random_global_min,
    random_invertible,
    random_normal_form_point,
    saddle_family,
)
from dlnlab.theory.square.theorem7 import classify_ensemble
from dlnlab.theory.square.trajectory import (
    CurvatureState,
    Projection,
    TrajectoryTolerances,
    curvature,
    plateau_r,
    project_to_critical,
    tight_margin,
)
from dlnlab.theory.square.verdicts import (
    LABELS,
    TRAINING_TOLERANCES,
    Classification,
    EnsembleClassification,
    PreparedData,
    Tolerances,
    input_eps,
)

__all__ = [
    # data and critical values
    "LandscapeData", "AssumptionReport", "as_data", "as_f64", "as_weights", "dims_of", "format_S",
    "CriticalValue", "PlateauValue", "critical_values", "plateau_values", "labels_for",
    "loss", "loss_and_grad", "loss_of_product", "grad_norm", "weight_grads",
    # Theorem 7 labels
    "Tolerances", "TRAINING_TOLERANCES", "PreparedData", "LABELS", "Classification", "EnsembleClassification",
    "Classifier", "classify", "classify_ensemble", "input_eps",
    # Hessian
    "MinEig", "hvp", "hvp_operator", "full_hessian", "min_eigenvalue", "hessian_min_eig", "square_loss_fn",
    # generators of labelled points
    "LabelledPoint", "EscapePath", "random_invertible", "apply_gauge", "normal_form", "normal_form_critical",
    "random_global_min", "saddle_family", "random_normal_form_point", "enumeration_points", "escape_path",
    # near critical points
    "TrajectoryTolerances", "CurvatureState", "Projection", "curvature", "tight_margin", "plateau_r",
    "project_to_critical", "SquareLossHVP", "LanczosResult", "lanczos_extremes",
]
