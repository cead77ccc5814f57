"""The theory layer: everything dlnlab knows about the landscape, in float64 (docs/theory.md).

Square loss (Achour, Malgouyres & Gerchinovitz, JMLR 2024): `data` (statistics, Assumption 1),
`critical` (critical and plateau values, closed-form loss and gradient), `points` (generators of
labelled points), `hessian` (Hessian-vector products and extreme eigenvalues), `classify`
(Theorem 7 labels). Ridge (Wang & Jacot, ICLR 2024): `ridge_modes` (closed forms, rank states),
`ridge_labels` (second-order labels modulo the symmetry orbit). Convex losses (Laurent & von
Brecht, ICML 2018): `convex_reference` (width condition, the convex reference ell*, no-minimiser
detection), `convex_newton` (Newton polish, exact Stiemke certificate), `convex_certificate` (descent certificates, perturb-and-retrain), `convex` (labels).
Near critical points (training checkpoints on a plateau, docs/theory.md §6): `trajectory` (curvature, tight margin, projection
onto the plateau's critical point), `lanczos` (batched Hessian-vector products, warm-started Lanczos).
"""
from dlnlab.theory.classify import (
                                    TRAINING_TOLERANCES,
                                    Classification,
                                    Classifier,
                                    Tolerances,
                                    classify,
)
from dlnlab.theory.convex import LABELS as CONVEX_LABELS
from dlnlab.theory.convex import ConvexLabel, ConvexLabeller, label_convex
from dlnlab.theory.convex_certificate import (
                                    Certificate,
                                    descent_certificate,
                                    perturb_and_retrain,
)
from dlnlab.theory.convex_reference import (
                                    ConvexReference,
                                    ConvexTolerances,
                                    WidthReport,
                                    convex_reference,
                                    width_condition,
)
from dlnlab.theory.critical import (
                                    CriticalValue,
                                    PlateauValue,
                                    critical_values,
                                    grad_norm,
                                    labels_for,
                                    loss,
                                    loss_and_grad,
                                    loss_of_product,
                                    plateau_values,
)
from dlnlab.theory.data import (
                                    AssumptionReport,
                                    LandscapeData,
                                    as_data,
                                    as_f64,
                                    as_weights,
                                    dims_of,
                                    format_S,
)
from dlnlab.theory.hessian import (
                                    MinEig,
                                    full_hessian,
                                    hessian_min_eig,
                                    hvp,
                                    hvp_operator,
                                    min_eigenvalue,
                                    square_loss_fn,
)
from dlnlab.theory.lanczos import LanczosResult, SquareLossHVP, lanczos_extremes
from dlnlab.theory.points import (
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
from dlnlab.theory.ridge_labels import RidgePoint, orbit_basis, ridge_loss_fn
from dlnlab.theory.ridge_labels import classify as ridge_classify
from dlnlab.theory.ridge_labels import classify_members as ridge_classify_members
from dlnlab.theory.ridge_modes import (
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
from dlnlab.theory.trajectory import (
                                    CurvatureState,
                                    Projection,
                                    TrajectoryTolerances,
                                    curvature,
                                    plateau_r,
                                    project_to_critical,
                                    tight_margin,
)

__all__ = [
    # square-loss data and critical values
    "LandscapeData", "AssumptionReport", "as_data", "as_f64", "as_weights", "dims_of", "format_S",
    "CriticalValue", "PlateauValue", "critical_values", "plateau_values", "labels_for",
    "loss", "loss_and_grad", "loss_of_product", "grad_norm",
    # Theorem 7 labels
    "Tolerances", "TRAINING_TOLERANCES", "Classification", "Classifier", "classify",
    # Hessian
    "MinEig", "hvp", "hvp_operator", "full_hessian", "min_eigenvalue", "hessian_min_eig", "square_loss_fn",
    # generators of labelled points
    "LabelledPoint", "EscapePath", "random_invertible", "apply_gauge", "normal_form", "normal_form_critical",
    "random_global_min", "saddle_family", "random_normal_form_point", "enumeration_points", "escape_path",
    # near critical points
    "TrajectoryTolerances", "CurvatureState", "Projection", "curvature", "tight_margin", "plateau_r",
    "project_to_critical", "SquareLossHVP", "LanczosResult", "lanczos_extremes",
    # ridge: closed forms, rank states, labels
    "RankTolerances", "LabelTolerances", "RankState", "rank_state", "balanced_identity", "mode_threshold",
    "mode_roots", "mode_energy", "mode_curvature", "tie_value", "mode_table", "balanced_mode_point",
    "RidgePoint", "ridge_classify", "ridge_classify_members", "ridge_loss_fn", "orbit_basis",
    # convex losses
    "WidthReport", "width_condition", "ConvexTolerances", "ConvexReference", "convex_reference",
    "Certificate", "descent_certificate", "perturb_and_retrain", "ConvexLabel", "ConvexLabeller",
    "label_convex", "CONVEX_LABELS",
]
