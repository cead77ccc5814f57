"""Exact second-order classification of the critical points of the square loss (Theorem 7; docs/theory.md §5).

    from dlnlab.theory import classify, Classifier
    c = classify([W1, W2, W3], X, Y)            # samples as rows; c.label, c.S, c.critical_value, ...
    clf = Classifier(X, Y)                      # precomputes LandscapeData once
    clf.classify(weights)                       # per checkpoint (an ensemble (E, d_h, d_{h-1}) -> a list)

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

import math
from typing import Any, Sequence

import numpy as np
import torch

from dlnlab.linalg import partial_products
from dlnlab.theory.classify_batch import classify_ensemble
from dlnlab.theory.data import LandscapeData, as_weights, dims_of, format_S
from dlnlab.theory.hessian import hessian_min_eig
from dlnlab.theory.pivots import factor_scale, rank_spec, sandwiches
from dlnlab.theory.verdicts import (
    TRAINING_TOLERANCES,
    Classification,
    Tolerances,
    _block_name,
    _check_ndims,
    _Rank,
    input_eps,
)

__all__ = ["Tolerances", "TRAINING_TOLERANCES", "Classification", "Classifier", "classify", "input_eps"]


def _svals(mats: dict) -> dict:
    """Singular values (numpy, descending) of each matrix, one batched svdvals per shape."""
    groups: dict = {}
    for key, m in mats.items():
        groups.setdefault(tuple(m.shape), []).append(key)
    out = {}
    for shape, keys in groups.items():
        if 0 in shape:
            for k in keys:
                out[k] = np.zeros(0)
            continue
        sv = torch.linalg.svdvals(torch.stack([mats[k] for k in keys])).numpy()
        for n, k in enumerate(keys):
            out[k] = sv[n]
    return out


class Classifier:
    """Theorem 7 classifier bound to one data set (LandscapeData computed once).

    Classifier(X, Y, tolerances=None, **overrides) or Classifier(data, tolerances=None, **overrides);
    `.classify(weights, hessian=False)` -> Classification (a list for an ensemble). This is the object a
    training hook keeps and calls at every checkpoint.
    """

    def __init__(self, data_or_X: Any, Y: Any = None, tolerances: Tolerances | None = None, **overrides):
        self.tol = (tolerances or Tolerances()).with_(**overrides)
        if isinstance(data_or_X, LandscapeData):
            if Y is not None:
                raise ValueError("pass either a LandscapeData or (X, Y), not both")
            self.data = data_or_X
        else:
            if Y is None:
                raise ValueError("Y is required when X is given")
            self.data = LandscapeData.from_xy(data_or_X, Y, eig_gap_rtol=self.tol.eig_gap_rtol,
                                              rank_rtol=self.tol.data_rank_rtol)
        d = self.data
        self._lam = d.lam.numpy()
        self._sqrt_lam1 = math.sqrt(max(float(d.lam[0]), 0.0)) if d.d_y else 0.0
        self._sxy_fro = float(torch.linalg.matrix_norm(d.Sxy)) if d.Sxy.numel() else 0.0
        self._sxxh_fro = float(torch.linalg.matrix_norm(d.Sxx_half)) if d.Sxx_half.numel() else 0.0
        self._UT = d.U.T.contiguous()
        self._sxy_inj = d.assumptions.sxy_rank == d.d_y     # Sxy full column rank: rk B1(i,1) = rk W_H..W_{i+1}
        self._sxy_surj = d.assumptions.sxy_rank == d.d_x    # full row rank: rk B1(H,j) = rk W_{j-1}..W_1
        self._data_warnings = tuple(f"Assumption 1: {f}" for f in d.assumptions.failures)

    # -----------------------------------------------------------------------------------------
    def classify(self, weights: Sequence[Any], hessian: bool = False, hessian_method: str = "auto"):
        """Classify one point [W_1..W_H] (2-D tensors) or an ensemble (each (E, d_h, d_{h-1})) -> list."""
        eps = input_eps(weights)
        ws = as_weights(weights)
        _check_ndims(ws)
        if ws[0].ndim == 3:
            E = ws[0].shape[0]
            if not hessian:  # all members at once (docs/theory.md §5; dlnlab.theory.classify_batch)
                return classify_ensemble(self, ws, eps).members()
            return [self._classify_one([w[e] for w in ws], hessian, hessian_method, eps) for e in range(E)]
        return self._classify_one(ws, hessian, hessian_method, eps)

    __call__ = classify

    def classify_ensemble(self, weights: Sequence[Any], products: dict | None = None,
                          singular_values: dict | None = None, finite: torch.Tensor | None = None):
        """All members of an ensemble (each W_h (E, d_h, d_{h-1})) at once, as columns: an
        `EnsembleClassification` (`.member(e)` is what `classify` gives for member e). products /
        singular_values: the float64 partial products and their spectra when already at hand."""
        eps = input_eps(weights)
        ws = as_weights(weights)
        _check_ndims(ws)
        if ws[0].ndim != 3:
            raise ValueError("classify_ensemble needs ensemble weights (E, d_h, d_{h-1})")
        return classify_ensemble(self, ws, eps, products, singular_values, finite)

    # -----------------------------------------------------------------------------------------
    def _classify_one(self, ws: list[torch.Tensor], hessian: bool, hessian_method: str,
                      eps: float = 0.0) -> Classification:
        d, tol = self.data, self.tol
        gtol = tol.grad_atol + max(tol.grad_rtol, tol.grad_eps * eps) * d.tr_syy
        floor_rtol = max(tol.rank_floor_rtol, tol.rank_floor_eps * eps)
        dims = dims_of(ws)
        if dims[0] != d.d_x or dims[-1] != d.d_y:
            raise ValueError(f"weights map d_x = {dims[0]} -> d_y = {dims[-1]}, data have d_x = {d.d_x}, d_y = {d.d_y}")
        H = len(ws)
        r_max = min(dims)
        band = tol.rank_band
        if not all(bool(torch.isfinite(w).all()) for w in ws):
            return Classification(label="not_critical", S=None, r=0, r_max=r_max, H=H, critical_value=None,
                                  loss=math.nan, grad_norm=math.nan, grad_tol=gtol,
                                  loose_pivots=None, reason="non-finite weights", nearest_S=(), nearest_value=math.nan,
                                  gamma_diag=(), assumptions_ok=d.assumptions.ok,
                                  warnings=self._data_warnings + ("non-finite weights",))
        ch = partial_products(ws)  # {(b, a): W_b ... W_a}
        P = ch[(H, 1)]
        # loss and gradient norm (closed form): dL/dW_h = S_h^T G Q_h^T, G = 2 (P - A) Sxx
        E = P - d.A
        Ew = E @ d.Sxx_half
        L = float((Ew * Ew).sum()) + d.ls_loss
        G = 2.0 * (E @ d.Sxx)
        g2 = 0.0
        for h in range(1, H + 1):
            left = G if h == H else ch[(H, h + 1)].T @ G
            gh = left if h == 1 else left @ ch[(h - 1, 1)].T
            g2 += float((gh * gh).sum())
        gnorm = math.sqrt(g2)
        if not (math.isfinite(gnorm) and math.isfinite(L)):
            return Classification(label="not_critical", S=None, r=0, r_max=r_max, H=H, critical_value=None,
                                  loss=L, grad_norm=gnorm, grad_tol=gtol, loose_pivots=None,
                                  reason="loss or gradient overflows", nearest_S=(), nearest_value=math.nan,
                                  gamma_diag=(), assumptions_ok=d.assumptions.ok,
                                  warnings=self._data_warnings + ("loss or gradient overflows",))
        # step 3 (always): Gamma and the nearest plateau
        k = d.k
        Gam = (self._UT @ P) @ d.gamma_right                               # (d_y, k)
        gdiag = torch.diagonal(Gam).numpy().copy() if k else np.zeros(0)
        nearest_S = tuple(int(i) + 1 for i in np.nonzero(gdiag > 0.5)[0])
        nearest_value = d.critical_value(nearest_S)
        # step 2 (always): numerical rank of the product, on P Sxx^{1/2}
        fro = [float(torch.linalg.matrix_norm(w)) for w in ws]
        sP = _svals({"P": P @ d.Sxx_half})["P"]
        thrP = max(tol.rank_rtol * max(float(sP[0]) if sP.size else 0.0, self._sqrt_lam1),
                   floor_rtol * math.prod(fro) * self._sxxh_fro)
        rP = _Rank(sP, thrP, band, "product W_H..W_1 Sxx^1/2")
        r = rP.rank
        base = dict(r=r, r_max=r_max, H=H, loss=L, grad_norm=gnorm, grad_tol=gtol, nearest_S=nearest_S,
                    nearest_value=nearest_value, gamma_diag=tuple(float(x) for x in gdiag),
                    assumptions_ok=d.assumptions.ok)
        warns = list(self._data_warnings)
        hmin = float(hessian_min_eig(ws, d, method=hessian_method)) if hessian else None

        def out(label, reason, S=None, cv=None, **kw):
            return Classification(label=label, reason=reason, S=S, critical_value=cv, hessian_min_eig=hmin,
                                  warnings=tuple(warns), **base, **kw)

        # step 1
        if not gnorm <= gtol:
            return out("not_critical", f"||grad L|| = {gnorm:.3g} > tolerance {gtol:.3g}", loose_pivots=None)
        if not d.assumptions.ok:
            # Theorem 7 (and the uniqueness of S) needs Assumption 1; first order did not
            return out("ambiguous", f"first-order critical (||grad L|| = {gnorm:.3g} <= {gtol:.3g}), but Theorem 7 "
                       "does not apply: Assumption 1 fails: " + "; ".join(d.assumptions.failures),
                       loose_pivots=None)
        if rP.amb:
            return out("ambiguous", f"the rank of the product is ambiguous ({rP.lo}..{rP.hi}): singular value(s) "
                       "inside the tolerance gap", ambiguous_values=rP.amb, loose_pivots=None)
        # step 3 checks: Gamma must be a 0/1 diagonal, |S| = r
        if k:
            off = Gam[:k].clone()
            off.fill_diagonal_(0.0)
            off_max = max(float(off.abs().max()), float(Gam[k:].abs().max()) if d.d_y > k else 0.0)
            dev = float(np.minimum(np.abs(gdiag), np.abs(1.0 - gdiag)).max())
        else:
            off_max = dev = 0.0
        if off_max > tol.gamma_tol or dev > tol.gamma_tol:
            return out("ambiguous", f"S cannot be read from the product: Gamma = U^T P Sxy U diag(1/lam) is not a 0/1 diagonal "
                       f"(max |off-diagonal| {off_max:.3g}, max distance of a diagonal entry to 0/1 {dev:.3g}, "
                       f"gamma_tol {tol.gamma_tol:g})", loose_pivots=None)
        S = nearest_S
        if len(S) != r:
            return out("ambiguous", f"|S| = {len(S)} (S = {format_S(S)}) differs from the rank r = {r} of the product",
                       loose_pivots=None)
        cv = nearest_value
        if abs(L - cv) > tol.value_rtol * d.tr_syy:
            warns.append(f"loss {L:.10g} differs from the critical value {cv:.10g} of S = {format_S(S)}")
        top = S == tuple(range(1, r + 1))
        # consistency (Lemma 24): rk(W_H...W_2) == r when Sxy has full column rank (d_y <= d_x); by
        # transposition rk(W_{H-1}...W_1) == r when it has full row rank (d_x <= d_y). Ranked together
        # with the pivot blocks below.
        need_pivots = r < r_max and top
        mats, floors = {}, {}
        if self._sxy_inj:
            mats[("C", H, 2)], floors[("C", H, 2)] = ch[(H, 2)], math.prod(fro[1:])
        if self._sxy_surj:
            mats[("C", H - 1, 1)], floors[("C", H - 1, 1)] = ch[(H - 1, 1)], math.prod(fro[:-1])
        if need_pivots:
            spec = self._pivot_blocks(ws, ch, fro, H, mats, floors)
        sv = _svals(mats)
        ranks = {key: _Rank(sv[key], max(tol.rank_rtol * (float(sv[key][0]) if sv[key].size else 0.0),
                                         floor_rtol * floors[key]), band, _block_name(key))
                 for key in mats}
        for key in (("C", H, 2), ("C", H - 1, 1)):
            if key in ranks and ranks[key].rank != r:
                warns.append(f"Lemma 24 check failed: rk({_block_name(key)}) = {ranks[key].rank} != r = {r}")
        if r == r_max:
            if top:
                return out("global_min", f"r = r_max = {r_max} and S = {{1..r_max}}: global minimizer (Theorem 7.1)",
                           S=S, cv=cv, loose_pivots=None)
            return out("strict_saddle", f"r = r_max = {r_max} and S = {format_S(S)} != {{1..r_max}}: strict saddle "
                       "(Theorem 7.1)", S=S, cv=cv, loose_pivots=None)
        if not top:
            return out("strict_saddle", f"r = {r} < r_max = {r_max} and S = {format_S(S)} != {{1..r}}: strict saddle "
                       "(Theorem 7.2)", S=S, cv=cv, loose_pivots=None)
        # step 5: the pivot loop (every pivot, to report all loose ones)
        loose, certain, amb_piv, amb_vals, block_ranks = [], [], [], [], {}
        for (i, j), (k1, k2) in spec.items():
            b1 = ranks[k1] if isinstance(k1, tuple) else _Rank.exact(k1)
            b2 = ranks[k2] if isinstance(k2, tuple) else _Rank.exact(k2)
            block_ranks[(i, j)] = (b1.rank, b2.rank)
            if b1.rank < r or b2.rank < r:
                warns.append(f"Prop. 4 check failed at pivot ({i},{j}): block ranks {b1.rank}, {b2.rank} < r = {r}")
            if b1.rank > r and b2.rank > r:
                loose.append((i, j))
            if b1.lo > r and b2.lo > r:
                certain.append((i, j))
            elif not (b1.hi <= r or b2.hi <= r):
                amb_piv.append((i, j))
                amb_vals.extend(b1.amb + b2.amb)
        pv = " ".join(f"({i},{j})" for i, j in loose)
        if certain:
            return out("strict_saddle", f"S = {{1..r}}, r = {r} < r_max = {r_max}, pivot(s) {pv} not tightened "
                       "(both blocks of rank > r): strict saddle (Theorem 7.2, Prop. 14)", S=S, cv=cv,
                       loose_pivots=tuple(loose), block_ranks=block_ranks)
        if amb_piv:
            return out("ambiguous", "S = {1..r}, r < r_max, and whether pivot(s) "
                       + " ".join(f"({i},{j})" for i, j in amb_piv) + " are tightened depends on singular values "
                       "inside the tolerance gap", S=S, cv=cv, loose_pivots=tuple(loose), block_ranks=block_ranks,
                       ambiguous_values=tuple(amb_vals))
        return out("nonstrict_saddle", f"S = {{1..r}}, r = {r} < r_max = {r_max}, all {H * (H - 1) // 2} pivots "
                   "tightened: non-strict saddle (Theorem 7.2, Prop. 15/17)", S=S, cv=cv, loose_pivots=(),
                   block_ranks=block_ranks)

    def _pivot_blocks(self, ws, ch, fro, H, mats, floors) -> dict:
        """Register the blocks B1(i,j), B2(i,j) to rank in `mats`; return {(i,j): (key1, key2)}, where a
        key is a tuple (a matrix in mats) or an int (a known exact rank: identity blocks, Sxy)."""
        d = self.data
        spec, sources = rank_spec(H, dims_of(ws), d.assumptions.sxy_rank, self._sxy_inj, self._sxy_surj)
        b1 = sandwiches(ch, d.Sxy, [s[1:] for s in sources.values() if s[0] == "B1"], H)
        for key, src in sources.items():
            mats[key] = b1[src[1:]] if src[0] == "B1" else ch[src[1:]]
            floors[key] = factor_scale(src, fro, self._sxy_fro, H)
        return spec


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
