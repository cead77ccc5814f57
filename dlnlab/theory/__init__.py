"""The theory layer: everything dlnlab knows about the landscape, in float64 (docs/theory.md), one
subpackage per theory:

`square` (the square loss, Achour, Malgouyres & Gerchinovitz, JMLR 2024): data and Assumption 1,
critical values, labelled points, Hessians, Theorem 7 labels, and the tools near critical points
(curvature, tight margin, projection, Lanczos; §6). `ridge` (Wang & Jacot, ICLR 2024): closed forms,
rank states, B_r, labels modulo the symmetry orbit (§7). `convex` (Laurent & von Brecht, ICML 2018):
the width condition, the convex reference ell*, certificates and labels (§8). `ridge` and `convex`
import `square` (Hessians), never the other way. The public names of all three are re-exported here.
"""
from dlnlab.theory.convex import LABELS as CONVEX_LABELS
from dlnlab.theory.convex import (
    Certificate,
    ConvexLabel,
    ConvexLabeller,
    ConvexReference,
    ConvexTolerances,
    WidthReport,
    convex_reference,
    descent_certificate,
    label_convex,
    perturb_and_retrain,
    width_condition,
)
from dlnlab.theory.ridge import (
    LabelTolerances,
    RankState,
    RankTolerances,
    RidgePoint,
    balanced_identity,
    balanced_mode_point,
    mode_curvature,
    mode_energy,
    mode_roots,
    mode_table,
    mode_threshold,
    orbit_basis,
    rank_state,
    ridge_loss_fn,
    tie_value,
)
from dlnlab.theory.ridge import classify as ridge_classify
from dlnlab.theory.ridge import classify_members as ridge_classify_members
from dlnlab.theory.square import (
    TRAINING_TOLERANCES,
    AssumptionReport,
    Classification,
    Classifier,
    CriticalValue,
    CurvatureState,
    EnsembleClassification,
    EscapePath,
    LabelledPoint,
    LanczosResult,
    LandscapeData,
    MinEig,
    PlateauValue,
    PreparedData,
    Projection,
    SquareLossHVP,
    Tolerances,
    TrajectoryTolerances,
    apply_gauge,
    as_data,
    as_f64,
    as_weights,
    classify,
    critical_values,
    curvature,
    dims_of,
    enumeration_points,
    escape_path,
    format_S,
    full_hessian,
    grad_norm,
    hessian_min_eig,
    hvp,
    hvp_operator,
    labels_for,
    lanczos_extremes,
    loss,
    loss_and_grad,
    loss_of_product,
    min_eigenvalue,
    normal_form,
    normal_form_critical,
    plateau_r,
    plateau_values,
    project_to_critical,
    random_global_min,
    random_invertible,
    random_normal_form_point,
    saddle_family,
    square_loss_fn,
    tight_margin,
)

__all__ = [
    # square-loss data and critical values
    "LandscapeData", "AssumptionReport", "as_data", "as_f64", "as_weights", "dims_of", "format_S",
    "CriticalValue", "PlateauValue", "critical_values", "plateau_values", "labels_for",
    "loss", "loss_and_grad", "loss_of_product", "grad_norm",
    # Theorem 7 labels
    "Tolerances", "TRAINING_TOLERANCES", "PreparedData", "Classification", "EnsembleClassification",
    "Classifier", "classify",
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
