"""Theorem 7 for a whole ensemble at once (docs/theory.md §5): the verdicts `Classifier.classify` gives
member by member, from batched tensor operations over the E members.

    b = classify_ensemble(clf, weights)            # weights [W_1..W_H], each (E, d_h, d_{h-1})
    b.label, b.S, b.r, b.critical_value, ...       # one entry per member
    b.member(e)                                    # member e's Classification

Every number is computed for all members together (losses, gradients, Gamma, the product's spectrum
and ranks, the Lemma 24 ranks), and the decisions of Theorem 7 are masks over members. Products and
singular values already at hand (the metrics hook's, `rec.spectra`) can be passed in: the same
float64 matrices, so the same singular values. Members in the rare branches are handed to the
per-point classifier one by one: non-finite weights or products, and a product rank inside the
tolerance gap (its `ambiguous_values`). The pivot test of S = {1..r}, r < r_max (§5 step 5) ranks
each block of `dlnlab.theory.pivots.rank_spec` once for all members that need it. Batched
matrix products and SVDs of float64 stacks equal the per-matrix ones bit for bit on the CPU, so the
verdicts are those of `Classifier._classify_one` (tests/test_classify_batch.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dlnlab.linalg import finite_members, partial_products
from dlnlab.linalg import singular_values as spectra_of
from dlnlab.theory.data import format_S
from dlnlab.theory.pivots import factor_scale, rank_spec, sandwiches
from dlnlab.theory.verdicts import Classification, _block_name

__all__ = ["LABELS", "EnsembleClassification", "classify_ensemble"]

LABELS = ("not_critical", "global_min", "strict_saddle", "nonstrict_saddle", "ambiguous")
_NC, _GM, _SS, _NS, _AM = range(5)


@dataclass
class EnsembleClassification:
    """Columns over the E members (the fields of `Classification`, batched)."""
    label: list                 # E strings
    S: list                     # E tuples or None
    r: torch.Tensor             # (E,) int64
    critical_value: torch.Tensor  # (E,) float64, NaN where S is unknown
    loss: torch.Tensor          # (E,) float64 (paper units)
    grad_norm: torch.Tensor     # (E,) float64
    nearest_S: list             # E tuples
    nearest_value: torch.Tensor  # (E,) float64
    gamma_diag: torch.Tensor    # (E, k)
    reason: list                # E strings
    warnings: list              # E tuples
    r_max: int
    H: int
    grad_tol: float
    assumptions_ok: bool
    code: torch.Tensor = None   # (E,) int64: index of the label in LABELS
    pivots: list = field(default_factory=list)  # the pivots (i, j) of the pivot test, in order
    pivot_ran: torch.Tensor = None  # (E,) bool: the member went through the pivot test
    block_ranks: torch.Tensor = None  # (E, n_pivots, 2) int64: (rk B1, rk B2) where the test ran
    loose: torch.Tensor = None  # (E, n_pivots) bool: both blocks of rank > r
    ambiguous_values: dict = field(default_factory=dict)  # member -> its deciding singular values
    single: dict = field(default_factory=dict)  # member -> Classification (classified one by one)

    def member(self, e: int) -> Classification:
        if e in self.single:
            return self.single[e]
        cv = float(self.critical_value[e])
        loose, ranks = None, None
        if self.pivot_ran is not None and bool(self.pivot_ran[e]):
            loose = tuple(p for p, x in zip(self.pivots, self.loose[e].tolist()) if x)
            ranks = {p: (a, b) for p, (a, b) in zip(self.pivots, self.block_ranks[e].tolist())}
        return Classification(
            label=self.label[e], S=self.S[e], r=int(self.r[e]), r_max=self.r_max, H=self.H,
            critical_value=None if math.isnan(cv) else cv, loss=float(self.loss[e]),
            grad_norm=float(self.grad_norm[e]), grad_tol=self.grad_tol, loose_pivots=loose, reason=self.reason[e],
            nearest_S=self.nearest_S[e], nearest_value=float(self.nearest_value[e]),
            gamma_diag=tuple(self.gamma_diag[e].tolist()), assumptions_ok=self.assumptions_ok,
            warnings=self.warnings[e], block_ranks=ranks, ambiguous_values=self.ambiguous_values.get(e, ()))

    def members(self) -> list:
        return [self.member(e) for e in range(len(self.label))]


def _sets(mask: torch.Tensor) -> list:
    """Rows of a (E, k) bool mask as sorted 1-based tuples (one conversion per distinct row)."""
    if mask.shape[0] == 0 or mask.shape[1] == 0:
        return [()] * mask.shape[0]
    uniq, inv = torch.unique(mask, dim=0, return_inverse=True)
    sets = [tuple(int(i) + 1 for i in torch.nonzero(row).flatten().tolist()) for row in uniq]
    return [sets[i] for i in inv.tolist()]


def _rank(s: torch.Tensor, thr: torch.Tensor, band: float):
    """Nominal rank, and whether some singular value lies inside the ambiguity band (per member)."""
    t = thr.unsqueeze(-1)
    amb = ((s > t / band) & (s <= t * band)).any(-1)
    return (s > t).sum(-1), amb


def _prod(xs) -> torch.Tensor | float:
    """math.prod of per-member factors, multiplied left to right as math.prod does."""
    out = 1
    for x in xs:
        out = out * x
    return out


def classify_ensemble(clf, weights, eps: float = 0.0, products: dict | None = None,
                      singular_values: dict | None = None,
                      finite: torch.Tensor | None = None) -> EnsembleClassification:
    """Classify every member of an ensemble. `clf`: a Classifier (its data, tolerances and per-point
    path); weights: float64 [W_1..W_H], each (E, d_h, d_{h-1}); eps: the input dtype's machine epsilon
    (`input_eps`); products / singular_values: {(j, i): W_j..W_i} and their singular values, float64,
    as in `Spectra` (optional: computed here when absent); finite: (E,) bool, False for members whose
    given products are not theirs (the metrics hook zeroes the products that overflow)."""
    d, tol = clf.data, clf.tol
    H, E = len(weights), weights[0].shape[0]
    dims = [int(weights[0].shape[-1])] + [int(w.shape[-2]) for w in weights]
    if dims[0] != d.d_x or dims[-1] != d.d_y:
        raise ValueError(f"weights map d_x = {dims[0]} -> d_y = {dims[-1]}, data have d_x = {d.d_x}, d_y = {d.d_y}")
    gtol = tol.grad_atol + max(tol.grad_rtol, tol.grad_eps * eps) * d.tr_syy
    floor_rtol = max(tol.rank_floor_rtol, tol.rank_floor_eps * eps)
    r_max, band = min(dims), tol.rank_band
    ch = products if products is not None else partial_products(weights)
    P = ch[(H, 1)]
    orig = weights
    if finite is None:
        finite = finite_members([*ch.values(), *weights])
    if not bool(finite.all()):  # non-finite members go one by one; zeros keep the batch finite
        keep = finite.view(-1, 1, 1)
        ch = {k: torch.where(keep, p, 0.0) for k, p in ch.items()}
        weights, P = [torch.where(keep, w, 0.0) for w in weights], ch[(H, 1)]
    # loss and gradient norm (closed form, as Classifier._classify_one)
    Err = P - d.A
    Ew = Err @ d.Sxx_half
    L = (Ew * Ew).sum((-1, -2)) + d.ls_loss
    G = 2.0 * (Err @ d.Sxx)
    g2 = torch.zeros(E, dtype=torch.float64)
    for h in range(1, H + 1):
        left = G if h == H else ch[(H, h + 1)].transpose(-1, -2) @ G
        gh = left if h == 1 else left @ ch[(h - 1, 1)].transpose(-1, -2)
        g2 = g2 + (gh * gh).sum((-1, -2))
    gnorm = torch.sqrt(g2)
    # Gamma, the nearest plateau
    k = d.k
    Gam = (clf._UT @ P) @ d.gamma_right                                   # (E, d_y, k)
    gdiag = torch.diagonal(Gam, dim1=-2, dim2=-1).clone() if k else torch.zeros(E, 0, dtype=torch.float64)
    nmask = gdiag > 0.5
    nearest = _sets(nmask)
    values = {S: d.critical_value(S) for S in set(nearest)}
    nearest_value = torch.tensor([values[S] for S in nearest], dtype=torch.float64)
    # the product's rank, on P Sxx^{1/2}
    fro = [torch.linalg.matrix_norm(w) for w in weights]
    sP = torch.linalg.svdvals(P @ d.Sxx_half)
    s1 = sP[:, 0] if sP.shape[-1] else torch.zeros(E, dtype=torch.float64)
    thrP = torch.maximum(tol.rank_rtol * torch.clamp(s1, min=clf._sqrt_lam1),
                         floor_rtol * _prod(fro) * clf._sxxh_fro)
    r, ambP = _rank(sP, thrP, band)
    # decisions, in the order of Theorem 7's algorithm (docs/theory.md §5)
    code = torch.full((E,), _AM, dtype=torch.long)
    overflow = finite & ~(torch.isfinite(gnorm) & torch.isfinite(L))
    single = ~finite | overflow
    notcrit = finite & ~overflow & ~(gnorm <= gtol)
    code[notcrit] = _NC
    rest = finite & ~overflow & ~notcrit
    ok = d.assumptions.ok
    if k:
        off = Gam[:, :k].clone()
        off.diagonal(dim1=-2, dim2=-1).zero_()
        off_max = off.abs().amax((-1, -2))
        if d.d_y > k:
            off_max = torch.maximum(off_max, Gam[:, k:].abs().amax((-1, -2)))
        dev = torch.minimum(gdiag.abs(), (1.0 - gdiag).abs()).amax(-1)
    else:
        off_max = dev = torch.zeros(E, dtype=torch.float64)
    nS = nmask.sum(-1)
    none = torch.zeros(E, dtype=torch.bool)
    if ok:
        single |= rest & ambP
        rest &= ~ambP
        assump_bad = none
        gam_bad = rest & ((off_max > tol.gamma_tol) | (dev > tol.gamma_tol))
        size_bad = rest & ~gam_bad & (nS != r)
        decided = rest & ~gam_bad & ~size_bad
    else:  # Theorem 7 needs Assumption 1: every first-order critical member is ambiguous
        assump_bad, gam_bad, size_bad, decided = rest, none, none, none
    lead = nmask.long().cumprod(-1).sum(-1) if k else torch.zeros(E, dtype=torch.long)
    top = lead >= r  # with |S| = r: S = {1..r}
    piv = decided & (r < r_max) & top                      # the pivot test (§5 step 5)
    code[decided & (r == r_max) & top] = _GM
    code[decided & ~((r == r_max) & top)] = _SS
    # Lemma 24 ranks of the members whose S is decided (shared singular values when given)
    lemma = []
    if bool(decided.any()):
        floors = {(H, 2): _prod(fro[1:]), (H - 1, 1): _prod(fro[:-1])}
        for key, on in (((H, 2), clf._sxy_inj), ((H - 1, 1), clf._sxy_surj)):
            if not on:
                continue
            s = singular_values[key] if singular_values is not None else torch.linalg.svdvals(ch[key])
            s_top = s[:, 0] if s.shape[-1] else torch.zeros(E, dtype=torch.float64)
            rk = (s > torch.maximum(tol.rank_rtol * s_top, floor_rtol * floors[key]).unsqueeze(-1)).sum(-1)
            lemma.append((_block_name(("C",) + key), rk))
    pt = _pivot_test(clf, ch, fro, dims, floor_rtol, piv, r, singular_values)
    code[piv] = pt.code
    # columns: the strings are formatted once per distinct decision, not once per member
    labels = [LABELS[c] for c in code.tolist()]
    cv = torch.where(decided, nearest_value, torch.full_like(nearest_value, math.nan))
    r_l, g_l = r.tolist(), gnorm.tolist()
    data_w = clf._data_warnings
    reasons, warns = [""] * E, [data_w] * E
    dec_l = decided.tolist()
    sets = [S if on else None for S, on in zip(nearest, dec_l)]
    for e in torch.nonzero(notcrit).flatten().tolist():
        reasons[e] = f"||grad L|| = {g_l[e]:.3g} > tolerance {gtol:.3g}"
    if not ok:
        why = "; ".join(d.assumptions.failures)
        for e in torch.nonzero(assump_bad).flatten().tolist():
            reasons[e] = (f"first-order critical (||grad L|| = {g_l[e]:.3g} <= {gtol:.3g}), but Theorem 7 "
                          "does not apply: Assumption 1 fails: " + why)
    else:
        om, dv = off_max.tolist(), dev.tolist()
        for e in torch.nonzero(gam_bad).flatten().tolist():
            reasons[e] = ("S cannot be read from the product: Gamma = U^T P Sxy U diag(1/lam) is not a 0/1 "
                          f"diagonal (max |off-diagonal| {om[e]:.3g}, max distance of a diagonal entry to 0/1 "
                          f"{dv[e]:.3g}, gamma_tol {tol.gamma_tol:g})")
        for e in torch.nonzero(size_bad).flatten().tolist():
            S = nearest[e]
            reasons[e] = f"|S| = {len(S)} (S = {format_S(S)}) differs from the rank r = {r_l[e]} of the product"
    if bool(decided.any()):
        _decided_columns(clf, decided, piv, code, r, nmask, nearest_value, L, lemma, pt, reasons, warns)
    out = EnsembleClassification(
        label=labels, S=sets, r=r, critical_value=cv, loss=L, grad_norm=gnorm, nearest_S=nearest,
        nearest_value=nearest_value, gamma_diag=gdiag, reason=reasons, warnings=warns, r_max=r_max, H=H,
        grad_tol=gtol, assumptions_ok=ok, code=code, pivots=pt.pivots, pivot_ran=piv,
        block_ranks=pt.block_ranks, loose=pt.loose, ambiguous_values=pt.amb_values)
    for e in torch.nonzero(single).flatten().tolist():  # the rare branches, member by member
        _set_member(out, e, clf._classify_one([w[e] for w in orig], False, "auto", eps))
    return out


@dataclass
class _PivotTest:
    """The pivot test's columns over all E members (zeros where it did not run)."""
    pivots: list
    code: torch.Tensor          # (n,) labels of the tested members, in member order
    block_ranks: torch.Tensor   # (E, n_pivots, 2)
    loose: torch.Tensor         # (E, n_pivots) both blocks of rank > r
    amb: torch.Tensor           # (E, n_pivots) neither certainly loose nor certainly tight
    prop4: torch.Tensor         # (E, n_pivots) a block of rank < r (Prop. 4 fails)
    amb_values: dict            # member -> ambiguous_values
    H: int
    r_max: int


def _pivot_test(clf, ch, fro, dims, floor_rtol, piv, r, singular_values) -> _PivotTest:
    """Rank every block of `rank_spec` for the members in `piv` (each matrix once, batched) and decide
    Theorem 7.2 for them as Classifier._classify_one does pivot by pivot."""
    d, tol, H, E = clf.data, clf.tol, len(fro), piv.shape[0]
    spec, sources = rank_spec(H, dims, d.assumptions.sxy_rank, clf._sxy_inj, clf._sxy_surj)
    n_p = len(spec)
    ranks = torch.zeros(E, n_p, 2, dtype=torch.long)
    flags = torch.zeros(3, E, n_p, dtype=torch.bool)
    idx = torch.nonzero(piv).flatten()
    if not idx.numel():
        return _PivotTest(list(spec), torch.zeros(0, dtype=torch.long), ranks, *flags, {}, H, min(dims))
    rr, band = r[idx], tol.rank_band
    sub = {k: ch[k][idx] for k in {s[1:] for s in sources.values() if s[0] == "P"}}
    b1_keys = [s[1:] for s in sources.values() if s[0] == "B1"]
    if b1_keys:
        sub.update({k: ch[k][idx] for k in [(j - 1, 1) for _, j in b1_keys if j > 1]
                    + [(H, i + 1) for i, _ in b1_keys if i < H]})
    b1 = sandwiches(sub, d.Sxy, b1_keys, H)
    mats = {key: b1[src[1:]] if src[0] == "B1" else sub[src[1:]] for key, src in sources.items()
            if not (src[0] == "P" and singular_values is not None)}
    sv = spectra_of(mats) if mats else {}
    if singular_values is not None:
        sv.update({key: singular_values[src[1:]][idx] for key, src in sources.items() if src[0] == "P"})
    fro_sub = [f[idx] for f in fro]
    info = {}   # key -> (rank, lo, hi, in-band mask, thr)
    for key, src in sources.items():
        s = sv[key]
        s_top = s[:, 0] if s.shape[-1] else torch.zeros(len(idx), dtype=torch.float64)
        thr = torch.maximum(tol.rank_rtol * s_top, floor_rtol * factor_scale(src, fro_sub, clf._sxy_fro, H))
        t = thr.unsqueeze(-1)
        info[key] = ((s > t).sum(-1), (s > t * band).sum(-1), (s > t / band).sum(-1),
                     (s > t / band) & (s <= t * band), thr)
    cols = []
    for (k1, k2) in spec.values():
        b = [info[k] if isinstance(k, tuple) else (torch.full_like(rr, k),) * 3 for k in (k1, k2)]
        cols.append((b[0][0], b[1][0], (b[0][0] > rr) & (b[1][0] > rr), (b[0][1] > rr) & (b[1][1] > rr),
                     ~((b[0][2] <= rr) | (b[1][2] <= rr)), (b[0][0] < rr) | (b[1][0] < rr)))
    rk = torch.stack([torch.stack([c[0], c[1]], -1) for c in cols], 1)
    loose, certain, unsure, prop4 = (torch.stack([c[n] for c in cols], 1) for n in range(2, 6))
    unsure &= ~certain
    strict, amb = certain.any(1), unsure.any(1)
    code = torch.where(strict, _SS, torch.where(amb, _AM, _NS))
    ranks[idx], flags[0, idx], flags[1, idx], flags[2, idx] = rk, loose, unsure, prop4
    amb_values = {}
    keys = list(spec.values())
    for n in torch.nonzero(amb & ~strict).flatten().tolist():   # inside the tolerance gap: rare
        vals = []
        for p in torch.nonzero(unsure[n]).flatten().tolist():
            for key in keys[p]:
                if isinstance(key, tuple):
                    s, band_mask, thr = sv[key][n], info[key][3][n], float(info[key][4][n])
                    vals += [(_block_name(key), v, thr) for v in s[band_mask].tolist()]
        amb_values[int(idx[n])] = tuple(vals)
    return _PivotTest(list(spec), code, ranks, *flags, amb_values, H, min(dims))


def _decided_columns(clf, decided, piv, code, r, nmask, nearest_value, L, lemma, pt, reasons, warns) -> None:
    """reason and warnings of the members whose S is decided: one string per distinct decision; the
    warnings of a member only where one of its checks fails."""
    d, tol, E = clf.data, clf.tol, r.shape[0]
    idx = torch.nonzero(decided).flatten()
    key = torch.cat([code[:, None], r[:, None], piv[:, None].long(), nmask.long(), pt.loose.long(),
                     pt.amb.long()], 1)[idx]
    uniq, inv = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((uniq.shape[0],), E, dtype=torch.long).scatter_reduce(
        0, inv, torch.arange(idx.numel()), "amin", include_self=True)
    strs = [_reason(clf, int(idx[n]), code, r, piv, nmask, pt) for n in first.tolist()]
    for e, u in zip(idx.tolist(), inv.tolist()):
        reasons[e] = strs[u]
    lw = (L - nearest_value).abs() > tol.value_rtol * d.tr_syy
    bad = lw | pt.prop4.any(1)
    for _, rk in lemma:
        bad |= rk != r
    r_l = r.tolist()
    for e in torch.nonzero(decided & bad).flatten().tolist():
        w, re = list(clf._data_warnings), r_l[e]
        S = tuple(int(i) + 1 for i in torch.nonzero(nmask[e]).flatten().tolist())
        if bool(lw[e]):
            w.append(f"loss {float(L[e]):.10g} differs from the critical value {float(nearest_value[e]):.10g} "
                     f"of S = {format_S(S)}")
        w += [f"Lemma 24 check failed: rk({name}) = {int(rk[e])} != r = {re}" for name, rk in lemma if int(rk[e]) != re]
        for (i, j), p4, (b1, b2) in zip(pt.pivots, pt.prop4[e].tolist(), pt.block_ranks[e].tolist()):
            if p4:
                w.append(f"Prop. 4 check failed at pivot ({i},{j}): block ranks {b1}, {b2} < r = {re}")
        warns[e] = tuple(w)


def _reason(clf, e, code, r, piv, nmask, pt) -> str:
    """The reason of Classifier._classify_one for a decided member e."""
    H, r_max, re, c = pt.H, pt.r_max, int(r[e]), int(code[e])
    S = tuple(int(i) + 1 for i in torch.nonzero(nmask[e]).flatten().tolist())
    if bool(piv[e]):
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
    if re == r_max:
        return (f"r = r_max = {r_max} and S = {{1..r_max}}: global minimizer (Theorem 7.1)" if c == _GM else
                f"r = r_max = {r_max} and S = {format_S(S)} != {{1..r_max}}: strict saddle (Theorem 7.1)")
    return f"r = {re} < r_max = {r_max} and S = {format_S(S)} != {{1..r}}: strict saddle (Theorem 7.2)"


def _set_member(out: EnsembleClassification, e: int, c: Classification) -> None:
    """Member e classified on its own: its Classification and its entries in the columns."""
    out.single[e] = c
    out.code[e] = LABELS.index(c.label)
    out.label[e], out.S[e], out.reason[e], out.warnings[e] = c.label, c.S, c.reason, c.warnings
    out.nearest_S[e] = c.nearest_S
    out.r[e] = c.r
    nan = math.nan
    out.critical_value[e] = nan if c.critical_value is None else c.critical_value
    out.loss[e], out.grad_norm[e], out.nearest_value[e] = c.loss, c.grad_norm, c.nearest_value
    if len(c.gamma_diag) == out.gamma_diag.shape[-1]:
        out.gamma_diag[e] = torch.tensor(c.gamma_diag, dtype=torch.float64)
    else:
        out.gamma_diag[e] = nan
