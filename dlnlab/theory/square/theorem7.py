"""Theorem 7 (docs/theory.md §5), the one implementation: every member of an ensemble at once, one
point being an ensemble of one (`Classifier.classify`).

    prep = PreparedData.of(data, Tolerances())
    b = classify_ensemble(prep, weights)           # weights [W_1..W_H], each (E, d_h, d_{h-1}), float64
    b.label, b.S, b.r, b.critical_value, ...       # one entry per member
    b.member(e)                                    # member e's Classification

Every number is computed for all members together (losses, gradients, Gamma, the product's spectrum
and ranks, the Lemma 24 ranks), and the decisions of Theorem 7 are masks over members, in the order
of the algorithm: (1) non-finite weights, a loss or gradient that overflows, ||grad L|| > tol ->
not_critical; Assumption 1 fails -> ambiguous; (2) the product's rank inside the tolerance gap ->
ambiguous; (3) Gamma not a 0/1 diagonal, or |S| != r -> ambiguous; (4)-(5) global_min / strict_saddle
by S and r, and the pivot test of S = {1..r}, r < r_max (`pivots.pivot_test`), which ranks each block
once for all members that need it. Products and singular values already at hand (the metrics hook's,
`rec.spectra`) can be passed in: the same float64 matrices, so the same singular values. Batched
matrix products and SVDs of float64 stacks equal the per-matrix ones bit for bit on the CPU at the
benchmark's shapes (tests/theory/test_classify_ensemble.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlnlab.linalg import finite_members, partial_products
from dlnlab.theory.square.hessian import hessian_min_eig
from dlnlab.theory.square.pivots import PivotTest, ordered_prod, pivot_test
from dlnlab.theory.square.plateau_point import PROJECTION_GRAD_RTOL, snap_plateaus
from dlnlab.theory.square.reasons import ProductRank, decided_text, undecided_text
from dlnlab.theory.square.verdicts import (
    LABELS,
    EnsembleClassification,
    PreparedData,
    Tolerances,
)

__all__ = ["LABELS", "classify_ensemble"]

_NC, _GM, _SS, _NS, _AM = range(5)


@dataclass
class _FirstOrder:
    """Loss and gradient norm per member, and which members cannot be classified from the batch.
    The masks are numpy arrays: the decisions run on numpy (a fraction of torch's overhead per
    operation on these short vectors, which is what one point costs)."""
    L: torch.Tensor             # (E,) the paper's loss
    gnorm: torch.Tensor         # (E,) ||grad L||_F
    ch: dict                    # the partial products, zero for the members that are not finite
    weights: list               # the weights, zero for the members that are not finite
    nonfinite: np.ndarray       # (E,) non-finite weights
    overflow: np.ndarray        # (E,) finite weights, but a non-finite product, loss or gradient
    redo: np.ndarray            # (E,) given products that are not the member's own: classified again
    fine: np.ndarray            # (E,) none of the above


def _loss_grad(d, ch: dict, H: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's loss and ||grad L||_F in closed form: dL/dW_h = S_h^T G Q_h^T, G = 2 (P - A) Sxx."""
    P = ch[(H, 1)]
    Err = P - d.A
    Ew = Err @ d.Sxx_half
    L = (Ew * Ew).sum((-1, -2)) + d.ls_loss
    G = 2.0 * (Err @ d.Sxx)
    g2 = None   # 0 + x is x: the first term starts the sum
    for h in range(1, H + 1):  # bmm: the kernel `@` calls for two stacks, without its reshapes
        left = G if h == H else torch.bmm(ch[(H, h + 1)].transpose(-1, -2), G)
        gh = left if h == 1 else torch.bmm(left, ch[(h - 1, 1)].transpose(-1, -2))
        sq = (gh * gh).sum((-1, -2))
        g2 = sq if g2 is None else g2 + sq
    return L, torch.sqrt(g2)


def _finite(mats: list) -> torch.Tensor:
    """(E,) bool: every entry of member e of every (E, ...) tensor is finite (`finite_members`, with
    one sum over all matrices as the cheap first test)."""
    if bool(torch.isfinite(torch.stack([m.sum((-1, -2)) for m in mats])).all()):
        return torch.ones(mats[0].shape[0], dtype=torch.bool)
    return finite_members(mats)


def _first_order(d, weights: list, ch: dict, finite: torch.Tensor | None, given: bool) -> _FirstOrder:
    """Step 1's numbers. Members with a non-finite product are zeroed in `ch` and `weights` (the
    batch's SVDs stay finite); their loss and gradient are read before. given: the products were
    handed in, so a member marked not finite may hold zeros instead of its own products.

    finite None (products of `partial_products`): a finite loss and gradient norm mean finite
    products, so they are the test. A non-finite entry of W_b..W_a makes every product of the
    chain W_H..W_a that contains it non-finite (inf * 0 is NaN), and W_H..W_a enters the gradient
    of W_{a-1} (a > 1) or the loss (a = 1)."""
    H, E = len(weights), weights[0].shape[0]
    L, gnorm = _loss_grad(d, ch, H)
    ok = None
    if finite is None:  # numpy: a fraction of torch's overhead on one point's scalars
        ok = np.isfinite(L.numpy()) & np.isfinite(gnorm.numpy())
        finite = torch.from_numpy(ok)
    none = np.zeros(E, dtype=bool)
    if ok is not None and ok.all():  # the common case: every member finite, nothing to zero
        return _FirstOrder(L, gnorm, ch, weights, none, none, none, ok)
    nonfinite, redo = none, none
    if not (ok.all() if ok is not None else bool(finite.all())):
        nonfinite = ~finite_members(weights).numpy()
        redo = ~finite.numpy() & ~nonfinite if given else none
        nan = torch.full_like(L, float("nan"))
        bad = torch.from_numpy(nonfinite)
        L, gnorm = torch.where(bad, nan, L), torch.where(bad, nan, gnorm)
        keep = finite.view(-1, 1, 1)
        ch = {k: torch.where(keep, p, 0.0) for k, p in ch.items()}
        weights = [torch.where(keep, w, 0.0) for w in weights]
    if ok is None:
        ok = (finite & torch.isfinite(gnorm) & torch.isfinite(L)).numpy()
    overflow = ~nonfinite & ~redo & ~ok
    return _FirstOrder(L, gnorm, ch, weights, nonfinite, overflow, redo, ~(nonfinite | overflow | redo))


@dataclass
class _Gamma:
    """Gamma = U^T P Sxy U diag(1/lam) and what step 3 reads from it, per member."""
    Gam: torch.Tensor           # (E, d_y, k)
    diag: torch.Tensor          # (E, k)
    nmask: np.ndarray           # (E, k) diag > 1/2: the nearest S
    nearest: list               # E tuples
    nearest_value: np.ndarray   # (E,)


def _sets(mask: np.ndarray) -> list:
    """Rows of a (E, k) bool mask as sorted 1-based tuples (one conversion per distinct row)."""
    if mask.shape[0] == 0 or mask.shape[1] == 0:
        return [()] * mask.shape[0]
    if mask.shape[0] == 1:
        return [tuple((np.nonzero(mask[0])[0] + 1).tolist())]
    uniq, inv = np.unique(mask, axis=0, return_inverse=True)
    sets = [tuple((np.nonzero(row)[0] + 1).tolist()) for row in uniq]
    return [sets[i] for i in inv.reshape(-1).tolist()]


def _gamma(prep: PreparedData, P: torch.Tensor) -> _Gamma:
    """Step 3's numbers: Gamma, the nearest plateau S = {i : Gamma_ii > 1/2} and its value."""
    d, E, k = prep.data, P.shape[0], prep.data.k
    Gam = (prep.UT @ P) @ d.gamma_right                                   # (E, d_y, k)
    diag = np.diagonal(Gam.numpy(), axis1=-2, axis2=-1).copy() if k else np.zeros((E, 0))
    nmask = diag > 0.5
    nearest = _sets(nmask)
    values = {S: prep.critical_value(S) for S in set(nearest)}
    return _Gamma(Gam, torch.from_numpy(diag), nmask, nearest,
                  np.array([values[S] for S in nearest], dtype=np.float64))


def _gamma_misfit(prep: PreparedData, gam: _Gamma) -> tuple[np.ndarray, np.ndarray]:
    """(max |off-diagonal entry of Gamma|, max distance of a diagonal entry to 0/1) per member."""
    E, k = gam.Gam.shape[0], prep.data.k
    if not k:
        return np.zeros(E), np.zeros(E)
    Gam = gam.Gam.numpy()   # numpy: exact operations, a fraction of torch's overhead on one point
    off = np.abs(Gam)
    off.reshape(E, -1)[:, :k * k:k + 1] = 0.0   # the diagonal of the top k x k block
    off_max = off.max((-1, -2))
    diag = gam.diag.numpy()
    dev = np.minimum(np.abs(diag), np.abs(1.0 - diag)).max(-1)
    return off_max, dev


def _product_rank(prep: PreparedData, P: torch.Tensor, fro: list, floor_rtol: float) -> ProductRank:
    """Step 2: the numerical rank of the product, on P Sxx^{1/2} (module docstring of `classify`).
    fro: [|W_1|_F..|W_H|_F] per member (numpy)."""
    tol, E = prep.tol, P.shape[0]
    s = torch.linalg.svdvals(P @ prep.data.Sxx_half).numpy()
    # at a critical point the non-zero singular values are sqrt(lam_i), i in S, the smallest of them at
    # least sqrt(lam_k): measured against that, a teacher of wide dynamic range is not "ambiguous"
    # at its global minimum (docs/theory.md §5 step 2)
    thr = np.maximum(np.full(E, tol.rank_rtol * prep.sqrt_lam_min), floor_rtol * ordered_prod(fro) * prep.sxxh_fro)
    t, band = thr[:, None], tol.rank_band
    T = np.stack([t, t * band, t / band])   # one comparison and one count for rank, lo and hi
    gt = s > T
    r, lo, hi = gt.sum(-1)
    inside = gt[2] & (s <= T[1])
    return ProductRank(s, thr, r, inside.any(-1), lo, hi, inside)


def classify_ensemble(prep: PreparedData, weights: list, eps: float = 0.0, products: dict | None = None,
                      singular_values: dict | None = None, finite: torch.Tensor | None = None,
                      hessian: bool = False, hessian_method: str = "auto") -> EnsembleClassification:
    """Classify every member of an ensemble.

    Args:
        prep: the data and tolerances (`PreparedData.of`).
        weights: float64 [W_1..W_H], each (E, d_h, d_{h-1}).
        eps: the input dtype's machine epsilon (`input_eps`): the gradient and rank noise floors.
        products, singular_values: {(j, i): W_j..W_i} and their singular values, float64, as in
            `Spectra` (optional: computed here when absent).
        finite: (E,) bool, False for members whose given products are not theirs (the metrics hook
            zeroes the products that overflow): those are classified again from their own weights.
        hessian, hessian_method: also compute the Hessian's smallest eigenvalue per member.
    """
    d, tol = prep.data, prep.tol
    H = len(weights)
    dims = [int(weights[0].shape[-1])] + [int(w.shape[-2]) for w in weights]
    if dims[0] != d.d_x or dims[-1] != d.d_y:
        raise ValueError(f"weights map d_x = {dims[0]} -> d_y = {dims[-1]}, data have d_x = {d.d_x}, d_y = {d.d_y}")
    gtol = tol.grad_atol + max(tol.grad_rtol, tol.grad_eps * eps) * d.tr_syy
    floor_rtol = max(tol.rank_floor_rtol, tol.rank_floor_eps * eps)
    ch = products if products is not None else partial_products(weights)
    if finite is None and products is not None:
        finite = _finite([*ch.values(), *weights])
    fo = _first_order(d, weights, ch, finite, products is not None)
    gam = _gamma(prep, fo.ch[(H, 1)])
    fro = [torch.linalg.matrix_norm(w).numpy() for w in fo.weights]  # the noise floors: numpy arithmetic
    pr = _product_rank(prep, fo.ch[(H, 1)], fro, floor_rtol)
    masks = _decide(prep, fo, gam, pr, gtol, min(dims))
    pt = _pivots(prep, fo, pr, masks, fro, dims, floor_rtol, eps, singular_values)
    masks["code"][masks["piv"]] = pt.code
    reasons, warns = undecided_text(prep, fo, gam, pr, masks, gtol)
    if masks["decided"].any():
        decided_text(prep, masks, pr.r, gam, fo.L.numpy(), pt.lemma, pt, reasons, warns)
    out = _columns(prep, fo, gam, pr, masks, pt, reasons, warns, dims, gtol)
    if hessian:
        out.hessian_min_eig = [hessian_min_eig([w[e] for w in weights], d, method=hessian_method) if ok else None
                               for e, ok in enumerate(fo.fine.tolist())]
    if fo.redo.any():
        _redo(out, prep, weights, eps, fo.redo, hessian, hessian_method)
    return out


def _pivots(prep: PreparedData, fo: _FirstOrder, pr: ProductRank, masks: dict, fro: list, dims: list,
            floor_rtol: float, eps: float, singular_values: dict | None) -> PivotTest:
    """Step 5 for the members in masks["piv"]: an exactly critical member (`_exactly_critical`,
    tolerance `exact_grad_rtol`) on its own pivots; an approximately critical one on the
    pivots of the critical point of its plateau S = {1..r} (docs/theory.md §6: numerical ranks of a
    point that is not critical say nothing about its pivots), `plateau_point.snap_plateaus`, the
    point `near_label` is read at. Sets masks["approx"] and masks["proj_bad"] (no such point)."""
    d, E = prep.data, fo.fine.shape[0]
    approx = np.zeros(E, dtype=bool)
    if masks["piv"].any():
        approx[masks["piv"]] = ~_exactly_critical(prep, fo, fro, np.nonzero(masks["piv"])[0], eps)
    masks["approx"], masks["proj_bad"] = approx, np.zeros(E, dtype=bool)
    # Lemma 24's ranks ride with the pivot blocks: one batched SVD for a point
    pt = pivot_test(prep, fo.ch, fro, dims, floor_rtol, masks["piv"] & ~approx, pr.r, singular_values,
                    lemma=bool(masks["decided"].any()))
    if not approx.any():
        return pt
    code = np.full(E, _AM, dtype=np.int64)
    code[masks["piv"] & ~approx] = pt.code
    idx = np.nonzero(approx)[0]
    proj, g = snap_plateaus([w[torch.from_numpy(idx)] for w in fo.weights], d, torch.from_numpy(pr.r[idx]))
    ok = (g <= PROJECTION_GRAD_RTOL).numpy()   # a layer that lost a learned mode has no such point
    masks["proj_bad"][idx[~ok]] = True
    if ok.any():
        keep = torch.from_numpy(ok)
        proj, on = [w[keep] for w in proj], idx[ok]
        # the projected point is exact in float64: it is ranked with the exact-point rank_rtol
        ep = _exact_prep(prep)
        sub = pivot_test(ep, partial_products(proj), [torch.linalg.matrix_norm(w).numpy() for w in proj], dims,
                         ep.tol.rank_floor_rtol, np.ones(on.size, dtype=bool), pr.r[on], None)
        code[on] = sub.code
        for name in ("block_ranks", "loose", "amb", "prop4"):
            getattr(pt, name)[on] = getattr(sub, name)
        pt.amb_values.update({int(on[n]): v for n, v in sub.amb_values.items()})
    pt.code = code[masks["piv"]]
    return pt


def _exactly_critical(prep: PreparedData, fo: _FirstOrder, fro: list, idx: np.ndarray, eps: float) -> np.ndarray:
    """(len(idx),) bool: ||grad L||_F <= max(exact_grad_rtol, grad_eps * eps) * |G|_F * (sum_h prod_{k != h}
    |W_k|_F^2)^{1/2}, G = 2 (P - A) Sxx (docs/theory.md §5 step 5). dL/dW_h is G between the other layers,
    so at an exact critical point only rounding of that size remains, whatever the weights' scale; a
    small-init checkpoint has a tiny gradient (eps^{H-1}) but no cancellation in it."""
    tol, d = prep.tol, prep.data
    G = 2.0 * ((fo.ch[(len(fro), 1)][torch.from_numpy(idx)] - d.A) @ d.Sxx)
    norms = [f[idx] for f in fro]
    others = sum(ordered_prod(norms[:h] + norms[h + 1:]) ** 2 for h in range(len(norms)))
    scale = torch.linalg.matrix_norm(G).numpy() * np.sqrt(others)
    return fo.gnorm.numpy()[idx] <= max(tol.exact_grad_rtol, tol.grad_eps * eps) * scale


def _exact_prep(prep: PreparedData) -> PreparedData:
    """`prep` with the exact-point rank_rtol (Tolerances' default, or the run's if smaller), kept on it."""
    ep = prep.cache.get("exact_prep")
    if ep is None:
        rt = min(prep.tol.rank_rtol, Tolerances().rank_rtol)
        ep = prep if rt == prep.tol.rank_rtol else PreparedData.of(prep.data, prep.tol.with_(rank_rtol=rt))
        prep.cache["exact_prep"] = ep
    return ep


def _columns(prep: PreparedData, fo: _FirstOrder, gam: _Gamma, pr: ProductRank, masks: dict, pt, reasons: list,
             warns: list, dims: list, gtol: float) -> EnsembleClassification:
    """The verdicts as columns (members that are not finite: r = 0, no nearest plateau, no Gamma)."""
    nan, fine, decided = float("nan"), fo.fine, masks["decided"]
    code = torch.from_numpy(masks["code"])
    every = fine.all()  # the common case: no column to mask
    gdiag = gam.diag if every else torch.where(torch.from_numpy(fine).unsqueeze(-1), gam.diag, nan)
    return EnsembleClassification(
        label=[LABELS[c] for c in masks["code"].tolist()],
        S=[S if on else None for S, on in zip(gam.nearest, decided.tolist())],
        r=torch.from_numpy(pr.r.copy() if every else np.where(fine, pr.r, 0)),
        critical_value=torch.from_numpy(np.where(decided, gam.nearest_value, nan)), loss=fo.L, grad_norm=fo.gnorm,
        nearest_S=list(gam.nearest) if every else [S if ok else () for S, ok in zip(gam.nearest, fine.tolist())],
        nearest_value=torch.from_numpy(gam.nearest_value if every else np.where(fine, gam.nearest_value, nan)),
        gamma_diag=gdiag, reason=reasons, warnings=warns,
        r_max=min(dims), H=len(dims) - 1, grad_tol=gtol, assumptions_ok=prep.data.assumptions.ok, code=code,
        pivots=pt.pivots, pivot_ran=torch.from_numpy(masks["piv"]), block_ranks=torch.from_numpy(pt.block_ranks),
        loose=torch.from_numpy(pt.loose), ambiguous_values={**pr.gap_values(masks["amb_rank"]), **pt.amb_values},
        broken=torch.from_numpy(~(fine | fo.redo)))


def _decide(prep: PreparedData, fo: _FirstOrder, gam: _Gamma, pr: ProductRank, gtol: float, r_max: int) -> dict:
    """The decisions of Theorem 7's algorithm (docs/theory.md §5) as masks over members, and the label
    codes of all but the pivot-tested members."""
    tol, E = prep.tol, fo.fine.shape[0]
    code = np.full(E, _AM, dtype=np.int64)
    notcrit = fo.fine & ~(fo.gnorm.numpy() <= gtol)
    code[notcrit | fo.nonfinite | fo.overflow] = _NC
    rest = fo.fine & ~notcrit
    none = np.zeros(E, dtype=bool)
    off_max = dev = np.zeros(E)
    if not rest.any():  # no first-order critical member (a not_critical point): nothing more to decide
        return dict(code=code, notcrit=notcrit, amb_rank=none, assump_bad=none, gam_bad=none, size_bad=none,
                    decided=none, piv=none, off_max=off_max, dev=dev)
    if not prep.data.assumptions.ok:  # Theorem 7 needs Assumption 1: every first-order critical member is ambiguous
        amb_rank, assump_bad, gam_bad, size_bad, decided = none, rest, none, none, none
    else:
        amb_rank = rest & pr.amb
        rest = rest & ~pr.amb
        assump_bad = none
        if rest.any():
            off_max, dev = _gamma_misfit(prep, gam)
        gam_bad = rest & ((off_max > tol.gamma_tol) | (dev > tol.gamma_tol))
        size_bad = rest & ~gam_bad & (gam.nmask.sum(-1) != pr.r)
        decided = rest & ~gam_bad & ~size_bad
    k = gam.nmask.shape[-1]
    lead = np.cumprod(gam.nmask, -1).sum(-1) if k else np.zeros(E, dtype=np.int64)
    top = lead >= pr.r  # with |S| = r: S = {1..r}
    piv = decided & (pr.r < r_max) & top                      # the pivot test (§5 step 5)
    code[decided & (pr.r == r_max) & top] = _GM
    code[decided & ~((pr.r == r_max) & top)] = _SS
    return dict(code=code, notcrit=notcrit, amb_rank=amb_rank, assump_bad=assump_bad, gam_bad=gam_bad,
                size_bad=size_bad, decided=decided, piv=piv, off_max=off_max, dev=dev)


def _redo(out: EnsembleClassification, prep: PreparedData, weights: list, eps: float, redo: np.ndarray,
          hessian: bool, hessian_method: str) -> None:
    """Classify the members in `redo` again from their own weights (their given products were zeros)
    and write their verdicts into `out`'s columns."""
    idx = torch.from_numpy(np.nonzero(redo)[0])
    sub = classify_ensemble(prep, [w[idx] for w in weights], eps, hessian=hessian, hessian_method=hessian_method)
    for n, e in enumerate(idx.tolist()):
        for name in ("label", "S", "nearest_S", "reason", "warnings"):
            getattr(out, name)[e] = getattr(sub, name)[n]
        for name in ("r", "critical_value", "loss", "grad_norm", "nearest_value", "gamma_diag", "code",
                     "pivot_ran", "block_ranks", "loose", "broken"):
            getattr(out, name)[e] = getattr(sub, name)[n]
        if n in sub.ambiguous_values:
            out.ambiguous_values[e] = sub.ambiguous_values[n]
        if hessian:
            out.hessian_min_eig[e] = sub.hessian_min_eig[n]
