"""Exact second-order classification of the critical points of the square loss (Theorem 7; docs/theory.md §5).

    from dlnlab.theory import classify, Classifier
    c = classify([W1, W2, W3], X, Y)            # samples as rows; c.label, c.S, c.critical_value, ...
    clf = Classifier(X, Y)                      # prepares the data once (PreparedData)
    clf.classify(weights)                       # per checkpoint (an ensemble (E, d_h, d_{h-1}) -> a list)

One implementation (`dlnlab.theory.square.theorem7.classify_ensemble`): a point is an ensemble of one.

Names (the paper's): H = number of weight matrices; d_h = width of layer h (d_0 = d_x, d_H = d_y);
W_h = weight of layer h, shape (d_h, d_{h-1}); S = the 1-based eigen-indices of Sigma = Syx Sxx^{-1} Sxy
that the product W_H...W_1 = U_S U_S^T A projects on; r = rank of the product; r_max = min(d_0..d_H);
pivot (i, j), 1 <= j < i <= H = a pair of layers; its complementary blocks are the two arcs of the cycle
W_H...W_1 Sxy avoiding W_i and W_j:  B1(i,j) = W_{j-1}..W_1 Sxy W_H..W_{i+1},  B2(i,j) = W_{i-1}..W_{j+1}.
A pivot is tightened iff rk B1 = r or rk B2 = r; a point is tightened iff every pivot is.

Algorithm (docs/theory.md §5): (1) ||grad L|| > tol -> not_critical; (2) r = numerical rank of the product;
(3) S = {i : Gamma_ii > 1/2}, Gamma = U^T P Sxy U diag(1/lam) (= U^T P A^+ U; a 0/1 diagonal at critical
points), checked |S| = r and Gamma ~ diagonal 0/1; (4) critical value tr Syy - sum_S lam_i;
(5) r = r_max: global_min iff S = {1..r_max}, else strict; r < r_max and S != {1..r}: strict;
S = {1..r}: strict iff some pivot is loose (both blocks of rank > r), else non-strict.

Numerical ranks: a singular value s of a matrix B counts as non-zero iff s > thr with
    thr = max(rank_rtol * s_1(B), floor_rtol * prod of the Frobenius norms of B's factors),
    floor_rtol = max(rank_floor_rtol, rank_floor_eps * eps(input dtype))
(the second term is the noise floor of a computed product: float64 arithmetic, or the rounding of
weights handed in as float32/float16, e.g. an exact critical point saved in float32). For the product we rank
P Sxx^{1/2} (its singular values are sqrt(lam_i), i in S, at a critical point) with
s_1 replaced by max(s_1, sqrt(lam_1)). A singular value in (thr/rank_band, thr*rank_band] is "inside the
gap": a decision that depends on it gives the label "ambiguous" (`ambiguous_values` says which).

Data outside Assumption 1 (repeated eigenvalues of Sigma, singular Sxx, rank-deficient Sxy, d_x > m;
docs/theory.md §9): Theorem 7 does not apply (with repeated eigenvalues S is not even unique: which eigenvector
the SVD returns decides it). "not_critical" is still decided (first order needs no assumption); every
other point gets "ambiguous" with the failed part of Assumption 1 in `reason`.
"""
from __future__ import annotations

from typing import Any, Sequence

from dlnlab.theory.square.data import LandscapeData, as_weights
from dlnlab.theory.square.theorem7 import classify_ensemble
from dlnlab.theory.square.verdicts import (
    TRAINING_TOLERANCES,
    Classification,
    EnsembleClassification,
    PreparedData,
    Tolerances,
    check_ndims,
    input_eps,
)

__all__ = ["Tolerances", "TRAINING_TOLERANCES", "Classification", "Classifier", "classify", "input_eps"]


class Classifier:
    """Theorem 7 classifier bound to one data set (PreparedData computed once).

    Classifier(X, Y, tolerances=None, **overrides) or Classifier(data, tolerances=None, **overrides);
    `.classify(weights, hessian=False)` -> Classification (a list for an ensemble). This is the object a
    training hook keeps and calls at every checkpoint.
    """

    def __init__(self, data_or_X: Any, Y: Any = None, tolerances: Tolerances | None = None, **overrides):
        tol = (tolerances or Tolerances()).with_(**overrides)
        if isinstance(data_or_X, LandscapeData):
            if Y is not None:
                raise ValueError("pass either a LandscapeData or (X, Y), not both")
            data = data_or_X
        else:
            if Y is None:
                raise ValueError("Y is required when X is given")
            data = LandscapeData.from_xy(data_or_X, Y, eig_gap_rtol=tol.eig_gap_rtol, rank_rtol=tol.data_rank_rtol)
        self.prepared = PreparedData.of(data, tol)

    @property
    def data(self) -> LandscapeData:
        """The data set's statistics."""
        return self.prepared.data

    @property
    def tol(self) -> Tolerances:
        """The tolerances in use."""
        return self.prepared.tol

    def classify(self, weights: Sequence[Any], hessian: bool = False, hessian_method: str = "auto"):
        """Classify one point [W_1..W_H] (2-D tensors) or an ensemble (each (E, d_h, d_{h-1})) -> list.
        hessian=True also computes hessian_min_eig (method as `hessian_min_eig`'s)."""
        eps = input_eps(weights)
        ws = as_weights(weights)
        check_ndims(ws)
        if ws[0].ndim == 3:
            return classify_ensemble(self.prepared, ws, eps, hessian=hessian, hessian_method=hessian_method).members()
        one = classify_ensemble(self.prepared, [w.unsqueeze(0) for w in ws], eps, hessian=hessian,
                                hessian_method=hessian_method)
        return one.member(0)

    __call__ = classify

    def classify_ensemble(self, weights: Sequence[Any], products: dict | None = None,
                          singular_values: dict | None = None, finite=None) -> EnsembleClassification:
        """All members of an ensemble (each W_h (E, d_h, d_{h-1})) at once, as columns: an
        `EnsembleClassification` (`.member(e)` is what `classify` gives for member e). products /
        singular_values: the float64 partial products and their spectra when already at hand;
        finite: (E,) bool, False where the given products are not the member's own."""
        eps = input_eps(weights)
        ws = as_weights(weights)
        check_ndims(ws)
        if ws[0].ndim != 3:
            raise ValueError("classify_ensemble needs ensemble weights (E, d_h, d_{h-1})")
        return classify_ensemble(self.prepared, ws, eps, products, singular_values, finite)


def classify(weights: Sequence[Any], X: Any, Y: Any = None, *, tolerances: Tolerances | None = None,
             hessian: bool = False, hessian_method: str = "auto", **tolerance_overrides):
    """Classify [W_1, ..., W_H] for data X (m, d_x), Y (m, d_y) (or X = a LandscapeData, Y = None).

    Returns a Classification, or a list of them for an ensemble (weights of shape (E, d_h, d_{h-1})).
    hessian=True also computes hessian_min_eig (method "auto": full Hessian up to 2000 parameters, else
    Lanczos). tolerance_overrides: any Tolerances field, e.g. rank_rtol=1e-2, grad_rtol=1e-2.
    For many checkpoints on the same data, build a Classifier once.
    """
    return Classifier(X, Y, tolerances, **tolerance_overrides).classify(weights, hessian=hessian,
                                                                        hessian_method=hessian_method)
