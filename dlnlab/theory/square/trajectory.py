"""What a training checkpoint can say about the critical point it is passing (docs/theory.md §9).

A checkpoint on a plateau is never exactly critical, so Theorem 7 cannot label it directly. Three
numbers per member, all float64 and batched over the ensemble dim E (weights [W_1..W_H], each
(E, d_h, d_{h-1})), with no Python loop over members on the hot path:

    curvature(weights, X, Y)          lam_min, lam_max of the square-loss Hessian (paper units)
    tight_margin(weights, S_or_r, d)  max over pivots of the unit-free sigma_{r+1}(B1) sigma_{r+1}(B2)
    project_to_critical(weights, d)   the nearby exactly critical point, its Theorem 7 label, distance

Units: the paper's loss L = ||W_H..W_1 X^T - Y^T||_F^2 (sum over samples), as dlnlab.theory.square.critical.loss;
lab (mean) units are paper / task.paper_scale, for the loss and the Hessian alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from dlnlab.linalg import partial_products, product
from dlnlab.linalg import singular_values as spectra_of
from dlnlab.theory.square.classify import Classifier
from dlnlab.theory.square.critical import loss_of_product
from dlnlab.theory.square.data import LandscapeData, as_data, as_weights, format_S
from dlnlab.theory.square.lanczos import (
    LanczosResult,
    SquareLossHVP,
    lanczos_extremes,
    unit_rows,
)
from dlnlab.theory.square.pivots import b1_cores, block_sources, factor_scale
from dlnlab.theory.square.plateau_point import (
    POLISH_ITERS,
    PROJECTION_GRAD_RTOL,
    snap_plateaus,
)

F64 = torch.float64
NAN = float("nan")

__all__ = ["TrajectoryTolerances", "CurvatureState", "Projection", "curvature", "tight_margin",
           "project_to_critical", "projection_labels", "plateau_r"]


@dataclass(frozen=True)
class TrajectoryTolerances:
    """Every tolerance and size knob of this module.

    full_max_params: exact batched eigendecomposition up to this many parameters P, Lanczos above.
    hessian_chunk_elems: members per torch.func.vmap chunk are chosen so that chunk * P^2 stays below
        this (the E full Hessians never have to fit in memory at once).
    lanczos_steps, lanczos_restarts: Lanczos vectors per cycle and cycles at most.
    lanczos_keep_low, lanczos_keep_high: Ritz vectors kept at the low and high end on a thick restart.
    lanczos_rtol: a member stops when the Ritz residuals of lam_min and lam_max are both
        <= lanczos_rtol * max|lam|; each value is then within that of an eigenvalue of its Hessian.
    lanczos_seed: seed of the random start (cold start) and of the vectors replacing a dead Krylov space.
    lanczos_check_every: Lanczos steps between two convergence checks (each costs more than an HVP
        for a single network; a member may take lanczos_check_every - 1 HVPs more than it needs).
    max_abs: a member whose Hessian entries (or first HVP) exceed this gets NaN curvature (a member
        about to diverge: its Lanczos matrix would overflow); the others are unaffected.
    grad_rtol: a projected point is critical iff ||grad L||_F <= grad_rtol * tr(Syy) (paper units: the
        classifier's convention, tr(Syy) = L(0)).
    polish_iters: re-projections of the projected point at most, until grad_rtol holds.
    """
    full_max_params: int = 2000
    hessian_chunk_elems: float = 5e7
    lanczos_steps: int = 20
    lanczos_restarts: int = 60
    lanczos_keep_low: int = 4
    lanczos_keep_high: int = 2
    lanczos_rtol: float = 1e-6
    lanczos_seed: int = 0
    lanczos_check_every: int = 3
    max_abs: float = 1e150
    grad_rtol: float = PROJECTION_GRAD_RTOL
    polish_iters: int = POLISH_ITERS

    def __post_init__(self):
        if self.lanczos_steps < 2 or self.lanczos_restarts < 1 or self.polish_iters < 0:
            raise ValueError("lanczos_steps >= 2, lanczos_restarts >= 1 and polish_iters >= 0 are required")
        if not (self.lanczos_keep_low >= 1 and self.lanczos_keep_high >= 1
                and self.lanczos_keep_low + self.lanczos_keep_high <= self.lanczos_steps - 2):
            raise ValueError("lanczos_keep_low, lanczos_keep_high >= 1 with their sum <= lanczos_steps - 2")
        if not (self.lanczos_rtol > 0 and self.grad_rtol > 0 and self.full_max_params >= 0):
            raise ValueError("lanczos_rtol, grad_rtol must be > 0 and full_max_params >= 0")


DEFAULT = TrajectoryTolerances()


@dataclass
class CurvatureState:
    """Carried from one record to the next: the Ritz vectors of lam_min and lam_max (E, P) (None after
    an exact decomposition), the method used, HVPs of the slowest member, the Lanczos convergence flags
    and HVPs per member (E,)."""
    method: str
    v_min: torch.Tensor | None = None
    v_max: torch.Tensor | None = None
    n_hvp: int = 0
    converged: torch.Tensor | None = None
    hvps: torch.Tensor | None = None


def _batched(weights: Sequence[Any]) -> list[torch.Tensor]:
    """float64 [W_h] with an ensemble dim (a single network becomes E = 1)."""
    ws = as_weights(weights)
    return [w.unsqueeze(0) for w in ws] if ws[0].ndim == 2 else ws


def curvature(weights: Sequence[Any], X: Any, Y: Any = None, full_max_params: int | None = None,
              warm: CurvatureState | None = None, tol: TrajectoryTolerances = DEFAULT):
    """Extreme eigenvalues of the paper's square-loss Hessian for every member.

    Args:
        weights: [W_1..W_H], each (E, d_h, d_{h-1}) (or 2-D: E = 1).
        X, Y: data (m, d_x), (m, d_y), or X = a LandscapeData and Y = None.
        full_max_params: overrides tol.full_max_params (exact eigvalsh iff P <= it).
        warm: the previous record's state (Lanczos restarts from its Ritz vectors).
        tol: TrajectoryTolerances.

    Returns:
        (lam_min (E,), lam_max (E,), CurvatureState).
    """
    data = as_data(X, Y)
    ws = _batched(weights)
    shapes = [tuple(w.shape[-2:]) for w in ws]
    E, P = ws[0].shape[0], sum(a * b for a, b in shapes)
    limit = tol.full_max_params if full_max_params is None else full_max_params
    if P <= limit:
        # the full Hessians as closed-form HVPs on the P unit vectors, members chunked so that
        # chunk * P^2 stays below hessian_chunk_elems (no autograd: ~100x faster than torch.func)
        chunk = max(1, int(tol.hessian_chunk_elems // max(P * P, 1)))
        eye = torch.eye(P, dtype=F64)
        parts = []
        for a in range(0, E, chunk):
            sub = [w[a:a + chunk].repeat_interleave(P, 0) for w in ws]
            n = sub[0].shape[0] // P
            parts.append(SquareLossHVP(sub, data.A, data.Sxx).hvp(eye.repeat(n, 1)).view(n, P, P))
        Hs = torch.cat(parts)
        lo, hi = torch.full((E,), NAN, dtype=F64), torch.full((E,), NAN, dtype=F64)
        fine = Hs.flatten(1).abs().amax(1) <= tol.max_abs   # a member about to diverge: NaN
        if bool(fine.any()):
            ev = torch.linalg.eigvalsh((Hs[fine] + Hs[fine].transpose(-1, -2)) / 2)
            lo[fine], hi[fine] = ev[:, 0], ev[:, -1]
        return lo, hi, CurvatureState("full")
    op = SquareLossHVP(ws, data.A, data.Sxx)
    g = torch.Generator().manual_seed(tol.lanczos_seed)
    v0 = torch.randn(E, P, dtype=F64, generator=g)
    if warm is not None and warm.v_min is not None and tuple(warm.v_min.shape) == (E, P):
        # no noise: at an unchanged point the two Ritz vectors span an invariant space and two HVPs
        # suffice (any noise would have to be resolved down to lanczos_rtol); a Krylov space that
        # closes continues with a random direction inside lanczos_extremes
        w0 = warm.v_min + warm.v_max   # zero for a member that had NaN: it starts afresh
        v0 = torch.where((torch.linalg.vector_norm(w0, dim=1) > 0)[:, None], w0, v0)
    # a member about to diverge would overflow T (and fail the eigendecomposition of every member):
    # the first HVP tells, and it gets NaN while the others go on
    first = op.hvp(unit_rows(v0))
    fine = torch.linalg.vector_norm(first, dim=1) <= tol.max_abs
    if bool(fine.all()):
        res = _lanczos(op, v0, first, g, tol)
    else:   # NaN and zero vectors for those members, their values for the others
        nan = lambda *shape: torch.full(shape, NAN, dtype=F64)   # noqa: E731
        res = LanczosResult(nan(E), nan(E), torch.zeros(E, P, dtype=F64), torch.zeros(E, P, dtype=F64), nan(E, 2),
                            1, torch.zeros(E, dtype=torch.bool), torch.ones(E, dtype=torch.long))
        idx = fine.nonzero().squeeze(1)
        if idx.numel():
            part = _lanczos(op.subset(idx), v0[idx], first[idx], g, tol)
            for name in ("lam_min", "lam_max", "v_min", "v_max", "residual", "converged", "hvps"):
                getattr(res, name)[idx] = getattr(part, name)
            res.n_hvp = part.n_hvp
    return res.lam_min, res.lam_max, CurvatureState("lanczos", res.v_min, res.v_max, res.n_hvp, res.converged,
                                                    res.hvps)


def _lanczos(op: SquareLossHVP, v0: torch.Tensor, first: torch.Tensor, g: torch.Generator,
             tol: TrajectoryTolerances):
    """`lanczos_extremes` on the operator `op` of some members, with the tolerances' knobs."""
    return lanczos_extremes(op.hvp, v0, tol.lanczos_steps, tol.lanczos_restarts, tol.lanczos_rtol, g,
                            keep=(tol.lanczos_keep_low, tol.lanczos_keep_high),
                            subset=lambda i: op.subset(i).hvp, check_every=tol.lanczos_check_every, first=first)


# ------------------------------------------------------------------------------------------------
# Pivot margin

def _sigma_at(s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """s[e, r_e] for descending singular values s (E, n); 0 where r_e >= n (the block has rank <= r)."""
    pad = torch.cat([s, torch.zeros(s.shape[0], 1, dtype=s.dtype)], 1)
    return pad.gather(1, r.clamp(max=s.shape[1]).view(-1, 1)).squeeze(1)


def _as_r(S_or_r: Any, E: int) -> torch.Tensor:
    """(E,) long ranks from an int, a set S (r = |S|) or an (E,) array of ints."""
    if isinstance(S_or_r, int):
        return torch.full((E,), S_or_r, dtype=torch.long)
    t = torch.as_tensor(S_or_r)
    if t.ndim == 1 and t.numel() == E and not isinstance(S_or_r, tuple):
        return t.to(torch.long)
    return torch.full((E,), len(tuple(S_or_r)), dtype=torch.long)


def tight_margin(weights: Sequence[Any], S_or_r: Any, data: Any, Y: Any = None, *,
                 products: dict | None = None, singular_values: dict | None = None) -> torch.Tensor:
    """max over pivots (i, j) of [sigma_{r+1}(B1) / n1] * [sigma_{r+1}(B2) / n2] (docs/theory.md §9).

    Unit-free by dividing each block's (r+1)-th singular value by the product of the spectral norms of
    its factors (n1 includes ||Sxy||_2; an identity block B2 = I_{d_j} has sigma_{r+1} = 1 = n2 when
    d_j > r). So each factor lies in [0, 1], the margin is invariant under rescaling any layer or the
    data, and it is 0 exactly when every pivot has a block of rank <= r: a tightened point. On the
    plateau of S = {1..r} the learned layers have O(1) norms and the unlearned directions O(eps), so
    a pivot whose blocks hold k and H-2-k layers gives eps^k * eps^(H-2-k) = eps^(H-2).

    The blocks are the true ones of `dlnlab.theory.square.pivots` (no rank shortcut). Every B2 block and every
    spectral norm is a partial product's spectrum: pass the checkpoint's (the metrics hook's `Spectra`)
    and only the B1 blocks, which hold Sxy, are decomposed here.

    Args:
        weights: [W_1..W_H], (E, d_h, d_{h-1}) or 2-D.
        S_or_r: r (int), S (a tuple, r = |S|) or (E,) ranks per member.
        data: LandscapeData, or X with Y given.
        products, singular_values: {(b, a): W_b..W_a} float64 and their descending singular values,
            of these weights and members (optional).

    Returns:
        (E,) float64 margins (0 for H = 2 never happens: B2 = I and B1 = Sxy both exceed rank r < r_max).
    """
    d = as_data(data, Y)
    ws = _batched(weights)
    E, H = ws[0].shape[0], len(ws)
    r = _as_r(S_or_r, E)
    src = block_sources(H)
    pp = products if products is not None else partial_products(ws)
    need = {s for pair in src.values() for s in pair if s[0] == "P"} | {("P", h, h) for h in range(1, H + 1)}
    sv = dict(singular_values) if singular_values is not None else {}
    mats = {s[1:]: pp[s[1:]] for s in need if s[1:] not in sv}
    mats.update(b1_cores(pp, d.Sxy, [s[1:] for s, _ in src.values() if s[0] == "B1"], H))
    sv.update(spectra_of(mats))
    norms = [sv[(h, h)][:, 0] for h in range(1, H + 1)]
    sxy_s = torch.linalg.svdvals(d.Sxy)
    sxy_norm = float(sxy_s[0]) if sxy_s.numel() else 0.0
    best = torch.zeros(E, dtype=F64)
    for (i, j), pair in src.items():
        f = []
        for s in pair:
            if s[0] == "I":
                f.append((r < ws[j - 1].shape[-2]).to(F64))
                continue
            sig = sxy_s.expand(E, -1) if s[0] == "S" else sv[s[1:] if s[0] == "P" else s]
            n = factor_scale(s, norms, sxy_norm, H)
            f.append(_sigma_at(sig, r) / (n.clamp(min=1e-300) if torch.is_tensor(n) else max(n, 1e-300)))
        best = torch.maximum(best, f[0] * f[1])
    return best


# ------------------------------------------------------------------------------------------------
# Projection onto a critical point

@dataclass
class Projection:
    """The checkpoint projected onto a critical point of the nearest plateau S = {1..r}.

    weights_proj: [W_h'] (E, d_h, d_{h-1}); r: (E,) ranks; S: per member the tuple {1..r}; S_str: "{1,2}";
    near_label: Theorem 7 label of the projected point (dlnlab.theory.square.classify.classify; None if not asked);
    near_dist: ||theta - theta_proj|| / ||theta|| (E,); grad_rel: ||grad L(theta_proj)|| / tr(Syy) (E,);
    value: the critical value of S (paper units) (E,).
    """
    weights_proj: list[torch.Tensor]
    r: torch.Tensor
    S: list[tuple[int, ...]]
    near_label: list[str] | None
    near_dist: torch.Tensor
    grad_rel: torch.Tensor
    value: torch.Tensor
    S_str: list[str] = field(default_factory=list)


def plateau_r(weights: Sequence[Any], data: LandscapeData, r_max: int | None = None) -> torch.Tensor:
    """(E,) the r of the plateau value tr(Syy) - sum_{i<=r} lam_i nearest to each member's loss
    (r <= min(r_max, k); r_max defaults to the architecture's thinnest layer)."""
    ws = _batched(weights)
    dims = [ws[0].shape[-1]] + [w.shape[-2] for w in ws]
    top = min(min(dims) if r_max is None else r_max, data.k)
    vals = data.top_values[:top + 1]
    L = loss_of_product(product(ws), data)
    return (L[:, None] - vals[None, :]).abs().argmin(1)


def project_to_critical(weights: Sequence[Any], data: Any, r: Any = None, *, Y: Any = None,
                        label: bool | str = True, tol: TrajectoryTolerances = DEFAULT,
                        classifier: Classifier | None = None) -> Projection:
    """Project each member onto an exactly critical point of the nearest plateau S = {1..r}.

    Args:
        weights: [W_1..W_H], (E, d_h, d_{h-1}) or 2-D.
        data: LandscapeData, or X with Y given.
        r: None (the plateau nearest to the loss: `plateau_r`), an int, or (E,) ints.
        label: Theorem 7's label of the projected points: True (`projection_labels`, from the ranks
            the construction gives), "classifier" (the numerical classifier, batched: the same labels
            at a few SVDs per member), or False (none).
        tol: TrajectoryTolerances (grad_rtol, polish_iters).
        classifier: a prebuilt dlnlab.theory.square.classify.Classifier for `data` (saves its setup per call).

    Returns:
        Projection. Raises RuntimeError if a projected point misses grad_rtol after polishing.
    """
    d = as_data(data, Y)
    ws = _batched(weights)
    E = ws[0].shape[0]
    rr = plateau_r(ws, d) if r is None else _as_r(r, E)
    proj, grad_rel = snap_plateaus(ws, d, rr, tol.grad_rtol, tol.polish_iters)
    if not bool((grad_rel <= tol.grad_rtol).all()):
        raise RuntimeError(f"projection not critical: max ||grad||/tr(Syy) = {float(grad_rel.max()):.3g} "
                           f"> {tol.grad_rtol:g}")
    diff = sum(((w - p) ** 2).sum((-2, -1)) for w, p in zip(ws, proj))
    dist = diff.sqrt() / sum((w * w).sum((-2, -1)) for w in ws).sqrt().clamp(min=1e-300)
    labels = None
    if label == "classifier":   # the numerical classifier on the projected points (the test oracle)
        labels = (classifier or Classifier(d)).classify_ensemble(proj).label
    elif label:
        labels = projection_labels(rr, [ws[0].shape[-1]] + [w.shape[-2] for w in ws], d)
    tops = {v: tuple(range(1, v + 1)) for v in set(rr.tolist())}
    names = {v: format_S(S) for v, S in tops.items()}
    rl = rr.tolist()
    return Projection(proj, rr, [tops[v] for v in rl], labels, dist, grad_rel, d.top_values[rr.clamp(max=d.k)],
                      [names[v] for v in rl])


def projection_labels(r: torch.Tensor, dims: Sequence[int], data: LandscapeData) -> list[str]:
    """Theorem 7's labels of projected points of S = {1..r} (docs/theory.md §6), from their ranks.

    A projected point has every layer of rank exactly r by construction (V_h C_h V_{h-1}^T with
    invertible r x r cores), so no rank has to be measured: r = r_max is a global minimiser (S is
    the top set); for r < r_max and H = 2 the one pivot has blocks Sxy and I_{d_1}, both of rank
    > r, hence a strict saddle; for H >= 3 every pivot has a block holding a layer (rank r), so the
    point is tightened: a non-strict saddle. Outside Assumption 1 Theorem 7 does not apply
    ("ambiguous", as the classifier says).

    Args:
        r: (E,) plateau ranks. dims: [d_0..d_H]. data: LandscapeData.

    Returns:
        E labels.
    """
    if not data.assumptions.ok:
        return ["ambiguous"] * r.shape[0]
    r_max, H = min(dims), len(dims) - 1
    saddle = "strict_saddle" if H == 2 else "nonstrict_saddle"
    return ["global_min" if v == r_max else saddle for v in r.tolist()]
