"""Descent certificates at critical points with grad ell(A) != 0, and the perturb-and-retrain test
(docs/theory.md §8). Used by dlnlab.theory.convex.labels; `objective` is always a closure
weights -> f(theta) = ell(W_H...W_1) (+ mu ||A||^2), differentiable by autograd.

Two kinds of certificate, following Laurent & von Brecht's proof:
  negative_curvature   a unit direction U in theta with U^T Hess U < 0 (then f(W + tU) < f(W) for small t).
      Candidates: the Hessian's bottom eigenvector (when computed) and, for each pair of layers i > j,
      the rank-one move U_j = b v^T, U_i = -u c^T / ||c|| with (u, v) the top singular pair of
      K = L_i^T grad ell(A) R_j^T (L_i = W_H..W_{i+1}, R_j = W_{j-1}..W_1) and c = M b, M = W_{i-1}..W_{j+1}.
      At a point with W_i = W_j = 0 the product moves only at second order, A(t) = t^2 L_i U_i M U_j R_j,
      so the curvature is 2 <grad ell(A), L_i U_i M U_j R_j> = -2 sigma_1(K) ||c|| < 0.
  fibre_then_descent   a product-preserving move W -> W' (layer by layer, each W_h + E_h with
      L_h E_h R_h = 0, so W_H..W_1 and f do not change), after which grad_theta f(W') != 0 and a gradient
      step lowers f below f(W): the proof's step 1 (reach a point of the fibre where the first-order
      condition would force grad ell(A) = 0) turned into a computation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from dlnlab.linalg import chain, product
from dlnlab.losses import product_value_grad

F64 = torch.float64
Objective = Callable[[Sequence[torch.Tensor]], torch.Tensor]
__all__ = ["Certificate", "curvature", "descent_certificate", "fibre_move", "perturb_and_retrain"]


@dataclass
class Certificate:
    """Evidence that a critical point is not a local minimum.

    kind: "negative_curvature" | "fibre_then_descent". direction: unit direction in theta (list per layer;
    for fibre_then_descent: the normalised -grad at W'). curvature: U^T Hess U at W (negative_curvature).
    move: the product-preserving move W' - W (fibre_then_descent). step: the step length along `direction`
    that gave `decrease` = f(after) - f(W) < 0. source: which candidate ("hessian", "pair (i,j)", "fibre").
    """
    kind: str
    direction: list[torch.Tensor]
    decrease: float
    step: float
    source: str
    curvature: float | None = None
    move: list[torch.Tensor] | None = None


def _unit(us: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    n = torch.sqrt(sum(u.pow(2).sum() for u in us))
    return [u / n for u in us]


def curvature(objective: Objective, ws: Sequence[torch.Tensor], us: Sequence[torch.Tensor]) -> float:
    """U^T Hess f(W) U (exact, one Hessian-vector product by double backward; autograd is enabled
    here, so a caller's `torch.no_grad()` (every record runs under one) cannot break it)."""
    wr = [w.detach().clone().requires_grad_(True) for w in ws]
    with torch.enable_grad():
        g = torch.autograd.grad(objective(wr), wr, create_graph=True)
        hv = torch.autograd.grad(sum((gi * u).sum() for gi, u in zip(g, us)), wr, allow_unused=True)
    return float(sum((h * u).sum() for h, u in zip(hv, us) if h is not None))


def _best_drop(objective: Objective, ws, us, f0: float, scale: float) -> tuple[float, float]:
    """min over t in scale * {1, 1e-1, .., 1e-4} and both signs of f(W + tU) - f0, and its t."""
    best = (float("inf"), 0.0)
    with torch.no_grad():
        for t in scale * 10.0 ** -np.arange(5):
            for s in (t, -t):
                best = min(best, (float(objective([w + s * u for w, u in zip(ws, us)])) - f0, float(s)))
    return best


def _pair_direction(ws, G, i: int, j: int) -> list[torch.Tensor] | None:
    """The rank-one two-layer direction of the module docstring for layers i > j (1-based)."""
    H = len(ws)
    L, R, M = chain(ws, H, i + 1), chain(ws, j - 1, 1), chain(ws, i - 1, j + 1)
    K = G if L is None else L.T @ G
    K = K if R is None else K @ R.T                                    # (d_i, d_{j-1})
    if float(torch.linalg.matrix_norm(K)) == 0.0:
        return None
    U, S, Vh = torch.linalg.svd(K)
    u, v = U[:, 0], Vh[0]
    if M is None:                                                       # i = j + 1: M = I
        b = torch.zeros(ws[j - 1].shape[0], dtype=F64)
        b[0] = 1.0
        c = b
    else:
        b = torch.linalg.svd(M)[2][0]
        c = M @ b
    if float(c.norm()) == 0.0:
        return None
    us = [torch.zeros_like(w) for w in ws]
    us[j - 1] = torch.outer(b, v)
    us[i - 1] = -torch.outer(u, c) / c.norm()
    return _unit(us)


def fibre_move(ws: Sequence[torch.Tensor], size: float, generator: torch.Generator | None) -> list[torch.Tensor]:
    """A random move inside the fibre {W' : W'_H..W'_1 = W_H..W_1}, layer after layer.

    Each W_h gets E_h - L^+ L E_h R R^+ (L = W_H..W_{h+1}, R = W_{h-1}..W_1 at the current, already moved
    layers), so L E R = 0 and the product is unchanged; |E_h| = size * max(1, ||W_h||_F)."""
    ws = [w.clone() for w in ws]
    H = len(ws)
    for h in range(1, H + 1):
        E = torch.randn(ws[h - 1].shape, generator=generator, dtype=F64)
        L, R = chain(ws, H, h + 1), chain(ws, h - 1, 1)
        LpL = torch.eye(E.shape[0], dtype=F64) if L is None else torch.linalg.pinv(L) @ L
        RRp = torch.eye(E.shape[1], dtype=F64) if R is None else R @ torch.linalg.pinv(R)
        E = E - LpL @ E @ RRp
        n = float(torch.linalg.matrix_norm(E))
        if n > 0:
            ws[h - 1] = ws[h - 1] + size * max(1.0, float(torch.linalg.matrix_norm(ws[h - 1]))) * E / n
    return ws


def descent_certificate(objective: Objective, ws: Sequence[torch.Tensor], ref, tol,
                        hessian_vector: np.ndarray | None = None,
                        hessian_scale: float | None = None) -> Certificate | None:
    """A certificate that the critical point `ws` is not a local minimum, or None.

    Args:
        objective: weights -> f. ws: [W_1..W_H] (float64). ref: the ConvexReference (loss, X, targets).
        tol: ConvexTolerances (curvature_rtol, fibre_step, descent_rtol, seed).
        hessian_vector: the Hessian's bottom eigenvector (flat), a candidate; hessian_scale: its
            spectral radius (the curvature scale; else g0 max(1, ||A||)^((H-2)/H)).

    Returns:
        The most negative-curvature certificate, else a fibre_then_descent one, else None.
    """
    ws = [w.detach().to(F64) for w in ws]
    H, A = len(ws), product(ws)
    G = product_value_grad(ref.loss, A, ref.X, ref.targets, ref.product_ridge)[1]
    f0 = float(objective(ws))
    a = max(1.0, float(torch.linalg.matrix_norm(A)))
    rho = hessian_scale if hessian_scale else ref.grad_scale * a ** ((H - 2) / H)
    wscale = max(1.0, max(float(torch.linalg.matrix_norm(w)) for w in ws))
    cands = []
    if hessian_vector is not None:
        v, k = torch.as_tensor(hessian_vector, dtype=F64), 0
        cands.append(("hessian", _unit([v[k:(k := k + w.numel())].view_as(w) for w in ws])))
    cands += [(f"pair ({i},{j})", d) for i in range(2, H + 1) for j in range(1, i)
              if (d := _pair_direction(ws, G, i, j)) is not None]
    best = None
    for src, us in cands:
        c = curvature(objective, ws, us)
        if best is None or c < best[0]:
            best = (c, src, us)
    if best is not None and best[0] < -tol.curvature_rtol * rho:
        drop, step = _best_drop(objective, ws, best[2], f0, wscale)
        return Certificate("negative_curvature", best[2], drop, step, best[1], curvature=best[0])
    gen = torch.Generator().manual_seed(tol.seed)
    thr = tol.descent_rtol * (abs(f0) + ref.grad_scale)
    for _ in range(3):  # a few random moves: one suffices when the width condition holds (the proof)
        w2 = fibre_move(ws, tol.fibre_step, gen)
        wr = [w.clone().requires_grad_(True) for w in w2]
        with torch.enable_grad():  # whatever the caller's grad mode
            g = torch.autograd.grad(objective(wr), wr)
        gn = float(torch.sqrt(sum(x.pow(2).sum() for x in g)))
        if gn == 0.0:
            continue
        us = [-x / gn for x in g]
        drop, step = _best_drop(objective, w2, us, f0, tol.fibre_step * wscale)
        if drop < -thr:
            return Certificate("fibre_then_descent", us, drop, step, "fibre",
                               move=[b - a_ for b, a_ in zip(w2, ws)])
    return None


def perturb_and_retrain(objective: Objective, ws: Sequence[torch.Tensor], tol,
                        generator: torch.Generator | None) -> float:
    """The spec's local-minimum test: min over `tol.n_perturb` random perturbations (relative size
    `tol.perturb_size` per layer) of f after `tol.retrain_steps` L-BFGS iterations, minus f(W).

    Returns:
        The best change (negative: some perturbation reached a lower value)."""
    ws = [w.detach().to(F64) for w in ws]
    with torch.no_grad():
        f0 = float(objective(ws))
    best = float("inf")
    for _ in range(tol.n_perturb):
        ps = [(w + tol.perturb_size * max(1.0, float(torch.linalg.matrix_norm(w)))
               * (n := torch.randn(w.shape, generator=generator, dtype=F64)) / n.norm()).requires_grad_(True)
              for w in ws]
        opt = torch.optim.LBFGS(ps, max_iter=tol.retrain_steps, line_search_fn="strong_wolfe",
                                tolerance_grad=0.0, tolerance_change=0.0)

        def closure():
            opt.zero_grad()
            with torch.enable_grad():  # L-BFGS calls this under its own no_grad, and so may our caller
                v = objective(ps)
                v.backward()
            return v

        opt.step(closure)
        with torch.no_grad():
            best = min(best, float(objective(ps)) - f0)
    return best
