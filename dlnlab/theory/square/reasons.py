"""The words of Theorem 7's verdicts (docs/theory.md §5): each member's `reason` (which branch of the
algorithm decided) and `warnings` (failed assumptions and failed consistency checks), formatted once
per distinct decision rather than once per member. Used by `theorem7`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlnlab.theory.square.data import format_S
from dlnlab.theory.square.verdicts import PreparedData

__all__ = ["PRODUCT", "ProductRank", "undecided_text", "decided_text"]

_NC, _GM, _SS, _NS, _AM = range(5)
PRODUCT = "product W_H..W_1 Sxx^1/2"   # the matrix whose rank is the product's rank


@dataclass
class ProductRank:
    """The numerical rank of the product per member (step 2), with the ambiguity band (numpy)."""
    s: np.ndarray               # (E, n) singular values of P Sxx^{1/2}, descending
    thr: np.ndarray             # (E,) threshold
    r: np.ndarray               # (E,) nominal rank: s > thr
    amb: np.ndarray             # (E,) some singular value inside the band
    lo: np.ndarray              # (E,) rank at thr * band
    hi: np.ndarray              # (E,) rank at thr / band
    inside: np.ndarray          # (E, n) thr / band < s <= thr * band

    def gap_values(self, mask: np.ndarray) -> dict:
        """{member: ((PRODUCT, singular value, threshold), ...)} for the members in mask."""
        return {e: tuple((PRODUCT, v, float(self.thr[e])) for v in self.s[e][self.inside[e]].tolist())
                for e in _rows(mask)}


def _rows(mask: np.ndarray) -> list:
    """The members (row indices) in a bool mask."""
    return np.nonzero(mask)[0].tolist()


def undecided_text(prep: PreparedData, fo, gam, pr: ProductRank, masks: dict, gtol: float) -> tuple[list, list]:
    """(reasons, warnings) of every member, filled in for those Theorem 7 does not decide: not
    finite, overflowing, not critical, outside Assumption 1, a rank in the gap, an unreadable S."""
    d, tol, E = prep.data, prep.tol, fo.L.shape[0]
    data_w = prep.data_warnings
    reasons, warns = [""] * E, [data_w] * E
    for mask, why in ((fo.nonfinite, "non-finite weights"), (fo.overflow, "loss or gradient overflows")):
        for e in _rows(mask):
            reasons[e], warns[e] = why, data_w + (why,)
    g_l = fo.gnorm.tolist()
    for e in _rows(masks["notcrit"]):
        reasons[e] = f"||grad L|| = {g_l[e]:.3g} > tolerance {gtol:.3g}"
    why = "; ".join(d.assumptions.failures)
    for e in _rows(masks["assump_bad"]):
        reasons[e] = (f"first-order critical (||grad L|| = {g_l[e]:.3g} <= {gtol:.3g}), but Theorem 7 "
                      "does not apply: Assumption 1 fails: " + why)
    for e in _rows(masks["amb_rank"]):
        reasons[e] = (f"the rank of the product is ambiguous ({int(pr.lo[e])}..{int(pr.hi[e])}): singular value(s) "
                      "inside the tolerance gap")
    om, dv = masks["off_max"], masks["dev"]
    for e in _rows(masks["gam_bad"]):
        reasons[e] = ("S cannot be read from the product: Gamma = U^T P Sxy U diag(1/lam) is not a 0/1 "
                      f"diagonal (max |off-diagonal| {float(om[e]):.3g}, max distance of a diagonal entry to 0/1 "
                      f"{float(dv[e]):.3g}, gamma_tol {tol.gamma_tol:g})")
    for e in _rows(masks["size_bad"]):
        S = gam.nearest[e]
        reasons[e] = f"|S| = {len(S)} (S = {format_S(S)}) differs from the rank r = {int(pr.r[e])} of the product"
    return reasons, warns


def decided_text(prep: PreparedData, masks: dict, r: np.ndarray, gam, L: np.ndarray, lemma: list, pt,
                 reasons: list, warns: list) -> None:
    """reason and warnings of the members whose S is decided: one string per distinct decision; the
    warnings of a member only where one of its checks fails."""
    d, tol = prep.data, prep.tol
    decided, piv, code, nmask = masks["decided"], masks["piv"], masks["code"], gam.nmask
    idx = np.nonzero(decided)[0]
    how = masks["approx"].astype(np.int64) + masks["proj_bad"]   # 0 own pivots, 1 the plateau's, 2 none
    if idx.size == 1:
        reasons[int(idx[0])] = _reason(int(idx[0]), code, r, piv, nmask, pt, how)
    else:
        key = np.concatenate([code[:, None], r[:, None], piv[:, None], how[:, None], nmask, pt.loose, pt.amb],
                             1)[idx]
        _, first, inv = np.unique(key.astype(np.int64), axis=0, return_index=True, return_inverse=True)
        strs = [_reason(int(idx[n]), code, r, piv, nmask, pt, how) for n in first.tolist()]
        for e, u in zip(idx.tolist(), inv.reshape(-1).tolist()):
            reasons[e] = strs[u]
    lw = np.abs(L - gam.nearest_value) > tol.value_rtol * d.tr_syy
    bad = lw | pt.prop4.any(1)
    for _, rk in lemma:
        bad |= rk != r
    for e in _rows(decided & bad):
        warns[e] = _warnings(prep, e, int(r[e]), bool(lw[e]), float(L[e]), float(gam.nearest_value[e]),
                             nmask, lemma, pt)


def _warnings(prep: PreparedData, e: int, re: int, loss_off: bool, loss: float, value: float, nmask, lemma,
              pt) -> tuple:
    """Member e's warnings: the data's, then each failed check (loss == critical value, Lemma 24, Prop. 4)."""
    w = list(prep.data_warnings)
    S = tuple(int(i) + 1 for i in np.nonzero(nmask[e])[0])
    if loss_off:
        w.append(f"loss {loss:.10g} differs from the critical value {value:.10g} of S = {format_S(S)}")
    w += [f"Lemma 24 check failed: rk({name}) = {int(rk[e])} != r = {re}" for name, rk in lemma if int(rk[e]) != re]
    for (i, j), p4, (b1, b2) in zip(pt.pivots, pt.prop4[e].tolist(), pt.block_ranks[e].tolist()):
        if p4:
            w.append(f"Prop. 4 check failed at pivot ({i},{j}): block ranks {b1}, {b2} < r = {re}")
    return tuple(w)


_APPROX = "approximately critical: pivots of the plateau's critical point (docs/theory.md §6): "


def _reason(e, code, r, piv, nmask, pt, how) -> str:
    """The reason of a decided member e (how[e]: 0 its own pivots, 1 its plateau's critical point's,
    2 that point could not be built)."""
    H, r_max, re, c = pt.H, pt.r_max, int(r[e]), int(code[e])
    S = tuple((np.nonzero(nmask[e])[0] + 1).tolist())
    if bool(piv[e]) and how[e] == 2:
        return (f"approximately critical, S = {{1..r}}, r = {re} < r_max = {r_max}, but no critical point of "
                "the plateau keeps the checkpoint's learned modes (a layer lost one): pivots undecided")
    if bool(piv[e]) and how[e] == 1:
        return _APPROX + _pivot_reason(e, c, re, r_max, H, pt)
    if bool(piv[e]):
        return _pivot_reason(e, c, re, r_max, H, pt)
    if re == r_max:
        return (f"r = r_max = {r_max} and S = {{1..r_max}}: global minimizer (Theorem 7.1)" if c == _GM else
                f"r = r_max = {r_max} and S = {format_S(S)} != {{1..r_max}}: strict saddle (Theorem 7.1)")
    return f"r = {re} < r_max = {r_max} and S = {format_S(S)} != {{1..r}}: strict saddle (Theorem 7.2)"


def _pivot_reason(e, c, re, r_max, H, pt) -> str:
    """The pivot test's reason for member e (code c, rank re)."""
    if c == _SS:
        pv = " ".join(f"({i},{j})" for (i, j), x in zip(pt.pivots, pt.loose[e].tolist()) if x)
        return (f"S = {{1..r}}, r = {re} < r_max = {r_max}, pivot(s) {pv} not tightened "
                "(both blocks of rank > r): strict saddle (Theorem 7.2, Prop. 14)")
    if c == _AM:
        return ("S = {1..r}, r < r_max, and whether pivot(s) "
                + " ".join(f"({i},{j})" for (i, j), x in zip(pt.pivots, pt.amb[e].tolist()) if x)
                + " are tightened depends on singular values inside the tolerance gap")
    return (f"S = {{1..r}}, r = {re} < r_max = {r_max}, all {H * (H - 1) // 2} pivots "
            "tightened: non-strict saddle (Theorem 7.2, Prop. 15/17)")
