"""Smoothness is needed (docs/theory.md §8): the non-smooth counterexample to Laurent & von Brecht.

d_in = 1, one hidden unit, d_out = 2 (the width condition holds: 1 >= min(1, 2)). With a = W_2 w_1,

    ell(a) = phi(a_1) + max(-a_2, -1),   phi = |.| (the lab's `l1`)  or  pseudo_huber(delta) (smooth),

convex, and inf ell = -1 (a_1 = 0, a_2 >= 1). At theta_0 = (w_1 = 0, W_2 = (1, 0)^T), ell = 0:
  - l1: a sub-optimal local minimum. Moving to w_1 = s, W_2 = (1 + e_1, e_2) gives
    |s|(1 + e_1) - s e_2 >= |s|(1 - |e_1| - |e_2|) >= 0; `nonsmooth_counterexample` checks it by random
    perturbations of every size in `sizes` (none lowers f).
  - pseudo_huber: a strict saddle (the lab's phi ~ r^2 near 0 makes the Hessian [[2, -1], [-1, 0]] in
    (w_1, W_2[1])), with a descent certificate (dlnlab.theory.convex.certificate) and perturbations that
    lower f, as the theorem requires.
The max(-a_2, -1) term is linear (-a_2) near theta_0 in both cases; the smooth case replaces it by a
Huberised hinge -1 + h(1 - a_2) (h(z) = 0, z^2/(2 delta), z - delta/2), equal to it for a_2 <= 1 - delta.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from dlnlab.losses import make_loss
from dlnlab.theory.convex.certificate import Certificate, descent_certificate
from dlnlab.theory.convex.reference import ConvexTolerances
from dlnlab.theory.square.hessian import full_hessian

F64 = torch.float64
__all__ = ["CounterexampleResult", "counterexample_objective", "nonsmooth_counterexample"]


class _Ell:
    """ell(a) on outputs (..., 1, 2) of the single sample x = 1: the `Loss` interface that
    dlnlab.theory.convex.certificate reads (value, grad_out)."""

    def __init__(self, phi: str, delta: float):
        self.name, self.delta = f"counterexample_{phi}", float(delta)
        self.phi = make_loss("l1") if phi == "l1" else make_loss("pseudo_huber", delta=delta)
        self.smooth = phi != "l1"

    def _hinge(self, z):
        if not self.smooth:
            return z.clamp(min=0.0)
        d = self.delta
        return torch.where(z <= 0, torch.zeros_like(z), torch.where(z < d, z * z / (2 * d), z - d / 2))

    def value(self, out, targets):
        a1, a2 = out[..., 0:1], out[..., 1]
        return self.phi.value(a1, targets[..., 0:1]) + (-1.0 + self._hinge(1.0 - a2)).mean(-1)

    def grad_out(self, out, targets):
        o = out.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.value(o, targets).sum(), o)
        return g


def counterexample_objective(phi: str = "l1", delta: float = 1e-2):
    """(f, ell): f(weights) = ell(W_2 w_1) for weights [w_1 (1, 1), W_2 (2, 1)] (or with a leading
    ensemble dim), and ell as a loss object."""
    ell = _Ell(phi, delta)
    x, t = torch.ones(1, 1, dtype=F64), torch.zeros(1, 2, dtype=F64)

    def f(ws):
        return ell.value(x @ (ws[1] @ ws[0]).transpose(-1, -2), t)

    return f, ell


@dataclass
class CounterexampleResult:
    """phi: l1 | pseudo_huber; f0 = f(theta_0) (= 0 for l1); ell_star = inf ell = -1;
    min_change[size]: the smallest f(theta_0 + size u) - f0 over the random unit directions u;
    local_min: no perturbation lowered f (min change >= -tol); certificate: a descent certificate
    (pseudo_huber; None when none was found or for l1); hessian_min_eig: lambda_min of the Hessian in
    theta (smooth case only)."""
    phi: str
    delta: float
    f0: float
    ell_star: float
    min_change: dict
    local_min: bool
    certificate: Certificate | None
    hessian_min_eig: float | None


def nonsmooth_counterexample(phi: str = "l1", delta: float = 1e-2, n_perturb: int = 20000,
                             sizes=(1e-1, 1e-2, 1e-3), seed: int = 0, tol: float = 1e-12) -> CounterexampleResult:
    """The random-perturbation test at theta_0, and for the smooth variant the descent certificate.

    Args:
        phi: "l1" (non-smooth: a sub-optimal local minimum) or "pseudo_huber" (smooth: a saddle).
        delta: pseudo_huber's delta and the hinge's smoothing width. n_perturb: random unit directions
            in theta (Gaussian, normalised), each tried at every size in `sizes`. tol: a change counts
            as lower iff < -tol.
    """
    f, ell = counterexample_objective(phi, delta)
    ws = [torch.zeros(1, 1, dtype=F64), torch.tensor([[1.0], [0.0]], dtype=F64)]
    with torch.no_grad():
        f0 = float(f(ws))
        g = torch.Generator().manual_seed(seed)
        U = torch.randn(n_perturb, 3, generator=g, dtype=F64)
        U = U / U.norm(dim=1, keepdim=True)
        changes = {}
        for s in sizes:
            w1 = (ws[0] + s * U[:, 0].view(-1, 1, 1))
            w2 = (ws[1] + s * U[:, 1:].view(-1, 2, 1))
            changes[float(s)] = float((f([w1, w2]) - f0).min())
    local_min = min(changes.values()) >= -tol
    cert, lam = None, None
    if ell.smooth:
        Hm = full_hessian(f, ws)
        evals, evecs = torch.linalg.eigh(Hm)
        lam = float(evals[0])
        x, t = torch.ones(1, 1, dtype=F64), torch.zeros(1, 2, dtype=F64)
        ref = SimpleNamespace(loss=ell, X=x, targets=t, product_ridge=0.0, grad_scale=1.0)
        cert = descent_certificate(f, ws, ref, ConvexTolerances(), hessian_vector=evecs[:, 0].numpy(),
                                   hessian_scale=float(evals.abs().max()))
    return CounterexampleResult(phi, float(delta), f0, -1.0, changes, bool(local_min), cert, lam)
