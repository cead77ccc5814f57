"""Convex losses (Laurent & von Brecht, ICML 2018; docs/theory.md §8).

`reference` (the width condition, the convex reference ell*, no-minimiser detection), `newton` (Newton
polish, the exact Stiemke certificate), `certificate` (descent certificates, perturb-and-retrain),
`labels` (labels under any convex loss), `counterexample` (the non-smooth counterexample). Imports
`dlnlab.theory.square` (Hessians); never the other way.
"""
from dlnlab.theory.convex.certificate import (
    Certificate,
    descent_certificate,
    perturb_and_retrain,
)
from dlnlab.theory.convex.counterexample import (
    CounterexampleResult,
    counterexample_objective,
    nonsmooth_counterexample,
)
from dlnlab.theory.convex.labels import (
    LABELS,
    ConvexLabel,
    ConvexLabeller,
    label_convex,
)
from dlnlab.theory.convex.reference import (
    ConvexReference,
    ConvexTolerances,
    WidthReport,
    convex_reference,
    width_condition,
)

__all__ = [
    # the width condition and the convex reference
    "WidthReport", "width_condition", "ConvexTolerances", "ConvexReference", "convex_reference",
    # certificates
    "Certificate", "descent_certificate", "perturb_and_retrain",
    # labels
    "LABELS", "ConvexLabel", "ConvexLabeller", "label_convex",
    # the non-smooth counterexample
    "CounterexampleResult", "counterexample_objective", "nonsmooth_counterexample",
]
