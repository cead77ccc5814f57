"""Second-order labels of ridge-regularised checkpoints (docs/theory.md §7): not critical, strict
saddle, local minimum or degenerate, modulo the symmetry orbit of the weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dlnlab.linalg import product
from dlnlab.theory.ridge.modes import (
    LabelTolerances,
    balanced_identity,
    mode_table,
    rank_state,
)
from dlnlab.theory.square.data import F64
from dlnlab.theory.square.hessian import full_hessian, min_eigenvalue

# ---------------------------------------------------------------------------------------------
# Symmetry orbit

def orbit_tangents(weights: Sequence[torch.Tensor], group: str = "orthogonal") -> torch.Tensor:
    """(P, n_generators): the tangent vectors (flattened like [W_1..W_H]) of the symmetry orbit:
    for hidden layer h and generator K (antisymmetric for "orthogonal", any matrix for "general"),
    dW_h = K W_h, dW_{h+1} = -W_{h+1} K."""
    ws = [torch.as_tensor(w).detach().to(F64) for w in weights]
    sizes = [w.numel() for w in ws]
    offsets = np.cumsum([0] + sizes)
    cols = []
    for h in range(len(ws) - 1):
        d = ws[h].shape[0]
        if group == "orthogonal":
            i, j = torch.triu_indices(d, d, offset=1)
            K = torch.zeros(len(i), d, d, dtype=F64)
            K[torch.arange(len(i)), i, j] = 1.0
            K[torch.arange(len(i)), j, i] = -1.0
        elif group == "general":
            K = torch.eye(d * d, dtype=F64).reshape(d * d, d, d)
        else:
            raise ValueError(f"group={group!r}: allowed 'orthogonal' | 'general'")
        T = torch.zeros(K.shape[0], int(offsets[-1]), dtype=F64)
        T[:, offsets[h]:offsets[h + 1]] = (K @ ws[h]).reshape(K.shape[0], -1)
        T[:, offsets[h + 1]:offsets[h + 2]] = (-(ws[h + 1] @ K)).reshape(K.shape[0], -1)
        cols.append(T)
    if not cols:
        return torch.zeros(int(offsets[-1]), 0, dtype=F64)
    return torch.cat(cols).T


def orbit_basis(weights: Sequence[torch.Tensor], group: str = "orthogonal",
                rtol: float = 1e-7) -> torch.Tensor:
    """An orthonormal basis (P, t) of the tangent space of the symmetry orbit; t is its dimension."""
    T = orbit_tangents(weights, group)
    if T.shape[1] == 0:
        return T
    U, s, _ = torch.linalg.svd(T, full_matrices=False)
    t = int((s > rtol * s[0]).sum()) if s[0] > 0 else 0
    return U[:, :t]


# ---------------------------------------------------------------------------------------------
# Labels

LossFn = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def ridge_loss_fn(task, ridge: float) -> LossFn:
    """weights -> task.loss(weights) + ridge * sum_h ||W_h||_F^2 for ONE network (2-D weights)."""
    def fn(ws):
        return task.loss(list(ws)) + ridge * sum(w.pow(2).sum() for w in ws)
    return fn


@dataclass
class RidgePoint:
    """The label of one point and everything it was decided with (see the module docstring)."""
    label: str
    reason: str
    near_boundary: list
    loss: float
    grad_norm: float
    min_eig: float | None = None          # lambda_min of the full Hessian
    min_eig_normal: float | None = None   # lambda_min on the orthogonal complement of the orbit tangent
    eig_scale: float | None = None        # rho, spectral radius
    eig_tol: float | None = None
    nullity: int | None = None            # full Hessian: #{|e| <= eig_tol} (None with Lanczos)
    orbit_dim: int | None = None
    hessian_method: str | None = None
    e2e_rank: int = 0
    layer_rank: int = 0
    layer_ranks: list = field(default_factory=list)
    balance: float = 0.0                  # relative balancedness residual (RankState.balance)
    in_B: int | None = None               # r such that the point lies in B_r (its layer rank), or None
    theta_sq: float = 0.0
    identity_bound: float = 0.0           # H sum_i s_i(A)^(2/H)
    identity_residual: float = 0.0        # (theta_sq - bound) / theta_sq
    identity_holds: bool = False          # |identity_residual| <= LabelTolerances.identity_rtol
    singular_values: list = field(default_factory=list)
    modes: list | None = None             # mode_table rows (fully observed completion only)
    tolerances: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The fields as a flat dict (one table row)."""
        return asdict(self)

    def __str__(self) -> str:
        s = f"{self.label} ({self.reason})"
        if self.near_boundary:
            s += "; near boundary: " + "; ".join(self.near_boundary)
        return s


def _near(value: float, tol: float, margin: float) -> bool:
    return tol / margin <= abs(value) <= tol * margin


def _task_modes(task, ridge: float, H: int, A: torch.Tensor, tol: LabelTolerances):
    if task is None or not getattr(task, "fully_observed", False) or not hasattr(task, "observed_matrix"):
        return None
    a = 1.0 / task.n_samples  # the lab's completion loss: mean over the N observed entries
    return mode_table(task.observed_matrix(), ridge, a, H, A, tol.ranks.a_tol, tol.state_rtol, tol.shallow_rtol)


def classify(weights: Sequence[Any], task=None, ridge: float = 0.0, *, loss_fn: LossFn | None = None,
             symmetry: str | None = None, tol: LabelTolerances | None = None,
             method: str = "auto", modes: bool = True) -> RidgePoint:
    """Label one network [W_1..W_H] (2-D tensors) on task.loss + ridge * ||theta||^2, or on any
    `loss_fn(weights) -> scalar`.

    symmetry: the group whose orbit is quotiented out ("orthogonal", "general" or "none"); default
    "orthogonal" when ridge > 0, "general" when ridge == 0 (a loss of the product alone). With a custom
    loss_fn that is not a function of the product plus a ridge term, pass the right one.
    method: "auto" | "full" | "lanczos" (auto: full Hessian up to tol.full_max_params parameters).
    """
    tol = tol or LabelTolerances()
    ws = [torch.as_tensor(w).detach().to(F64).clone() for w in weights]
    if ws[0].ndim != 2:
        raise ValueError("classify labels one network: weights must be 2-D (use classify_members)")
    if loss_fn is None:
        if task is None:
            raise ValueError("classify needs a task or a loss_fn")
        loss_fn = ridge_loss_fn(task.to(F64) if hasattr(task, "to") else task, ridge)
    symmetry = symmetry or ("orthogonal" if ridge > 0 else "general")
    H = len(ws)
    wg = [w.clone().requires_grad_(True) for w in ws]
    with torch.enable_grad():
        value = loss_fn(wg)
        grads = torch.autograd.grad(value, wg)
    gn = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    rs = rank_state(ws, tol.ranks)
    th, bound, resid = balanced_identity(ws, tol.identity_roundoff)
    A = product(ws)
    pt = RidgePoint(label="", reason="", near_boundary=[], loss=float(value.detach()), grad_norm=gn,
                    e2e_rank=int(rs.e2e_rank), layer_rank=int(rs.layer_rank),
                    layer_ranks=[int(r) for r in rs.layer_ranks], balance=float(rs.balance),
                    in_B=int(rs.layer_rank) if bool(rs.in_B) else None, theta_sq=th, identity_bound=bound,
                    identity_residual=resid, identity_holds=bool(abs(resid) <= tol.identity_rtol),
                    singular_values=rs.sv_e2e.tolist(),
                    modes=_task_modes(task, ridge, H, A, tol) if modes else None,
                    tolerances={**asdict(tol), "ridge": ridge, "symmetry": symmetry})
    # Ranks near their thresholds
    rt, rm = tol.ranks, tol.rank_margin
    for name, svals, t in [("A-rank", [rs.sv_e2e], rt.a_tol), ("layer rank", rs.sv_layers, rt.layer_tol)]:
        for s in svals:
            thr = t * float(s[0]) if rt.mode == "relative" else t
            close = [float(v) for v in s if thr / rm <= float(v) <= rm * thr]
            if close:
                pt.near_boundary.append(f"{name}: singular value(s) {', '.join(f'{v:.3g}' for v in close)} "
                                        f"within a factor {rm:g} of the threshold {thr:.3g}")
                break
    if _near(gn, tol.grad_tol, tol.margin):
        pt.near_boundary.append(f"||grad|| = {gn:.3g} within a factor {tol.margin:g} of grad_tol = {tol.grad_tol:g}")
    if gn > tol.grad_tol:
        pt.label, pt.reason = "not_critical", f"||grad|| = {gn:.3g} > grad_tol = {tol.grad_tol:g}"
        return pt
    _second_order(pt, loss_fn, ws, symmetry, tol, method)
    return pt


def _second_order(pt: RidgePoint, loss_fn: LossFn, ws: list, symmetry: str, tol: LabelTolerances,
                  method: str) -> None:

    n = sum(w.numel() for w in ws)
    B = orbit_basis(ws, symmetry, tol.orbit_rtol) if symmetry != "none" else torch.zeros(n, 0, dtype=F64)
    t = B.shape[1]
    pt.orbit_dim = t
    if method == "auto":
        method = "full" if n <= tol.full_max_params else "lanczos"
    pt.hessian_method = method
    if method == "full":
        Hm = full_hessian(loss_fn, ws)
        ev = torch.linalg.eigvalsh(Hm)
        rho = float(ev.abs().max())
        eig_tol = max(tol.eig_rtol * rho, tol.eig_atol)
        Q, _ = torch.linalg.qr(torch.cat([B, torch.eye(n, dtype=F64)], 1))  # first t columns span B
        N = Q[:, t:n]
        ev_n = torch.linalg.eigvalsh(N.T @ Hm @ N) if n > t else torch.zeros(1, dtype=F64)
        pt.min_eig, pt.min_eig_normal = float(ev[0]), float(ev_n[0])
        pt.nullity = int((ev.abs() <= eig_tol).sum())
        flat_normal = int((ev_n.abs() <= eig_tol).sum())
    elif method == "lanczos":
        res = min_eigenvalue(loss_fn, ws, method="lanczos")
        rho = res.scale
        eig_tol = max(tol.eig_rtol * rho, tol.eig_atol)
        theta0 = torch.cat([w.reshape(-1) for w in ws])
        mu = max(rho, 1.0)

        def penalised(wl):  # + mu ||B^T (theta - theta0)||^2: lifts the orbit directions to 2 mu
            d = B.T @ (torch.cat([w.reshape(-1) for w in wl]) - theta0)
            return loss_fn(wl) + mu * d.pow(2).sum()

        res_n = min_eigenvalue(penalised, ws, method="lanczos") if t else res
        pt.min_eig, pt.min_eig_normal = res.value, res_n.value
        flat_normal = int(abs(res_n.value) <= eig_tol)
    else:
        raise ValueError(f"method={method!r}: allowed 'auto' | 'full' | 'lanczos'")
    pt.eig_scale, pt.eig_tol = rho, eig_tol
    m = tol.margin
    if pt.min_eig < -eig_tol:
        pt.label = "strict_saddle"
        pt.reason = f"lambda_min(Hessian) = {pt.min_eig:.4g} < -eig_tol = {-eig_tol:.3g}"
        if _near(pt.min_eig, eig_tol, m):
            pt.near_boundary.append(f"lambda_min = {pt.min_eig:.3g} within a factor {m:g} of -eig_tol")
        return
    if pt.min_eig_normal > eig_tol:
        pt.label = "local_min"
        pt.reason = (f"PSD; positive definite (lambda_min = {pt.min_eig_normal:.4g} > eig_tol = {eig_tol:.3g}) "
                     f"on the complement of the {symmetry} symmetry orbit (dimension {t}): a strict "
                     "minimum modulo the symmetry")
        if _near(pt.min_eig_normal, eig_tol, m):
            pt.near_boundary.append(f"lambda_min off the orbit = {pt.min_eig_normal:.3g} within a factor "
                                    f"{m:g} of eig_tol = {eig_tol:.3g}")
        return
    pt.label = "degenerate"
    why = [f"PSD (lambda_min = {pt.min_eig:.3g} >= -eig_tol = {-eig_tol:.3g}) but singular beyond the "
           f"{symmetry} symmetry orbit (dimension {t}): "
           f"{flat_normal if method == 'full' else '>= 1'} flat direction(s) on its complement "
           f"(lambda_min there = {pt.min_eig_normal:.3g})"]
    if pt.tolerances.get("ridge", None) == 0:
        why.append("ridge = 0: nothing holds the zero modes to second order (the data term is flat to order H-1)")
    if pt.modes:
        at_thr = [r["mode"] for r in pt.modes if r.get("state") in ("on", "barrier")
                  and r["threshold"] > 0 and abs(r["y"] - r["threshold"]) <= tol.threshold_rtol * r["threshold"]]
        if at_thr:
            why.append(f"mode(s) {at_thr} sit at the threshold y* (on-state and barrier merge)")
    pt.reason = "; ".join(why)
    if _near(pt.min_eig_normal, eig_tol, m) or (pt.min_eig < 0 and _near(pt.min_eig, eig_tol, m)):
        pt.near_boundary.append(f"lambda_min off the orbit = {pt.min_eig_normal:.3g}, lambda_min = "
                                f"{pt.min_eig:.3g}: within a factor {m:g} of eig_tol = {eig_tol:.3g}")


def classify_members(weights: Sequence[torch.Tensor], task=None, ridge: float = 0.0,
                     members: Sequence[int] | None = None, **kw) -> list[RidgePoint]:
    """`classify` for members of an ensemble (weights (E, d_h, d_{h-1})); all members by default."""
    E = weights[0].shape[0]
    return [classify([w[k] for w in weights], task, ridge, **kw) for k in (members or range(E))]
