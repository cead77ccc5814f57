"""Laurent & von Brecht (2018), product side: the width condition and the convex reference ell*.

For f(W_1..W_H) = ell(W_H...W_1) with ell convex and differentiable, every local minimum of f is
global when every hidden width d_h >= min(d_0, d_H) (docs/theory.md §8). The value of those minima is
ell* = inf_A ell(A) (+ mu ||A||_F^2), an infimum over ALL d_H x d_0 matrices, computed here once per
run in float64. With a bottleneck (some d_h < min(d_0, d_H)) the network only reaches rank <= r_max
products and the rank-constrained optimum is unknown in general: ell* is then only a lower bound.

`from dlnlab.theory.convex.labels import ...` re-exports everything public here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import linprog, minimize
from scipy.sparse import csr_matrix

from dlnlab.losses import Loss, product_value_grad
from dlnlab.theory.convex.newton import (
    MARGIN_LOSSES,
    newton_polish,
    stiemke_certificate,
)

F64 = torch.float64
__all__ = ["ConvexTolerances", "WidthReport", "width_condition", "ConvexReference", "convex_reference"]


@dataclass(frozen=True)
class ConvexTolerances:
    """Every tolerance of the convex reference and the labels (all dimensionless).

    Scales: g0 = ||grad ell(0)||_F (the gradient at the zero product; 1 if that is 0), so
    `grad_l_norm` = ||grad ell(A)||_F / g0 is unit-free; the theta-gradient is compared with
    g0 * max(1, ||A||_F)^((H-1)/H) (each dF/dW_h is grad ell(A) times H-1 factors of size ~||A||^(1/H)).

    grad_rtol: theta-critical iff ||grad_theta f|| <= grad_rtol * that scale (exact float64 points give
        ~1e-14; training checkpoints need ~1e-3).
    grad_l_rtol: grad ell(A) = 0 iff grad_l_norm <= grad_l_rtol.
    gap_rtol: global_min also needs the gap to ell* within this: convex_gap <= gap_rtol * gap_scale,
        gap_scale = max(|ell*|, ell(0) - ell*) (`ConvexReference.gap_scale`, loss units). A small
        gradient alone does not bound the gap on an ill-conditioned loss (logistic regression with label
        noise: grad_l_norm <= 1e-3 at a relative gap 1.6e-3); such points are `near_global`.
    eig_rtol: strict saddle iff lambda_min(Hessian) < -eig_rtol * rho (rho = spectral radius).
    curvature_rtol: a certificate direction u (unit) has negative curvature iff u^T Hess u <
        -curvature_rtol * rho (rho from the Hessian, else g0 * max(1, ||A||_F)^((H-2)/H)).
    fibre_step: size of the product-preserving move, relative to max(1, ||W_h||_F) per layer.
    descent_rtol: a value counts as lower iff it is below f - descent_rtol * (|f| + g0).
    n_perturb, perturb_size, retrain_steps: the perturb-and-retrain test (bottleneck only): that many
        random perturbations of relative size perturb_size, each retrained by L-BFGS for retrain_steps.
    ref_gtol: ell* converged iff ||grad ell(A*)|| / g0 <= ref_gtol (L-BFGS-B stops near sqrt(eps) of
        the value's precision, ~1e-9; the value is then exact to ~1e-16 relative); ref_maxiter: its iterations.
    lp_tol: no minimiser iff the recession LP finds total margin > lp_tol * (its largest possible value).
    stiemke_rtol: logistic / cross-entropy: a minimiser exists without the (slow) LP when the solver's
        point certifies that no separating direction has margins above stiemke_rtol * (mean row norm)
        (Stiemke's alternative, see `_stiemke`). L-BFGS-B leaves ||grad|| ~1e-9 g0, which gives bounds
        ~0.07 on noisy 10-class data (m = 2000); separable data drive min p -> 0 and fall to the LP.
    hessian_full_max_params: full Hessian up to this many parameters, Lanczos above.
    seed: seed of every random move, perturbation and Lanczos start.
    """
    grad_rtol: float = 1e-6
    grad_l_rtol: float = 1e-6
    gap_rtol: float = 1e-9
    eig_rtol: float = 1e-9
    curvature_rtol: float = 1e-9
    fibre_step: float = 1e-3
    descent_rtol: float = 1e-12
    n_perturb: int = 8
    perturb_size: float = 1e-2
    retrain_steps: int = 50
    ref_gtol: float = 1e-7
    ref_maxiter: int = 20000
    lp_tol: float = 1e-9
    stiemke_rtol: float = 0.1
    hessian_full_max_params: int = 2000
    seed: int = 0

    def __post_init__(self):
        for k, v in self.__dict__.items():
            if k == "seed":
                continue
            if not v > 0:
                raise ValueError(f"ConvexTolerances.{k} must be > 0, got {v}")


@dataclass(frozen=True)
class WidthReport:
    """The width condition of the theorem for dims [d_0, ..., d_H].

    holds: every hidden width d_h >= bound = min(d_0, d_H); r_max = min(dims) (the largest product rank);
    bottlenecks: ((h, d_h), ...) the hidden layers with d_h < bound; ridge: the largest parameter ridge
    lambda of the run; applies: the theorem applies (the width condition holds and lambda = 0), so all
    local minima are global; message: one line for logs, saying whether the theorem applies and if not why.
    """
    holds: bool
    dims: tuple[int, ...]
    bound: int
    r_max: int
    bottlenecks: tuple[tuple[int, int], ...]
    message: str
    ridge: float = 0.0
    applies: bool = True


def width_condition(dims: Sequence[int], ridge: float = 0.0) -> WidthReport:
    """Check Laurent & von Brecht's width condition, and whether their theorem applies.

    Args:
        dims: [d_0, d_1, ..., d_H] (input, hidden widths, output), H >= 1.
        ridge: the largest parameter ridge lambda of the run (of lambda ||theta||^2; any value of a
            schedule). lambda > 0 puts the objective outside the theorem: it is not a function of the
            product (docs/theory.md §8, "Two ridges"). A product ridge mu ||A||^2 stays inside: not here.

    Returns:
        WidthReport (holds, applies, bound, r_max, bottlenecks, message).
    """
    dims = tuple(int(d) for d in dims)
    if len(dims) < 2 or min(dims) < 1:
        raise ValueError(f"dims must be [d_0, ..., d_H] with H >= 1 and every d_h >= 1, got {list(dims)}")
    ridge = float(ridge)
    if not ridge >= 0:
        raise ValueError(f"ridge must be a number >= 0, got {ridge}")
    bound = min(dims[0], dims[-1])
    bn = tuple((h, d) for h, d in enumerate(dims[1:-1], start=1) if d < bound)
    outside = (f"the parameter ridge lambda ||theta||^2 (lambda up to {ridge:g}) is not a function of the "
               f"product (minima of different ranks can exist, docs/theory.md §8)")
    if not bn and not ridge:
        msg = (f"width condition holds (every hidden width >= min(d_0, d_H) = {bound}): "
               f"all local minima are global, with value ell* (Laurent & von Brecht)")
    elif not bn:
        msg = (f"width condition holds (every hidden width >= min(d_0, d_H) = {bound}), but Laurent & von "
               f"Brecht's theorem does not apply: {outside}")
    else:
        where = ", ".join(f"layer h={h} (d_{h}={d})" for h, d in bn)
        msg = (f"width condition fails: bottleneck at {where} < min(d_0, d_H) = {bound}, so Laurent & von "
               f"Brecht's theorem does not apply: products have rank <= r_max = {min(dims)}, the "
               f"rank-constrained optimum is unknown (ell* is a lower bound)" + (f"; and {outside}" if ridge else ""))
    return WidthReport(holds=not bn, dims=dims, bound=bound, r_max=min(dims), bottlenecks=bn, message=msg,
                       ridge=ridge, applies=not bn and not ridge)


@dataclass
class ConvexReference:
    """ell* = inf_A ell(A) + mu ||A||_F^2 over all d_out x d_in matrices A, with its evidence.

    value: ell* (with no minimiser: the best value found, an upper bound on the infimum);
    A_star: a minimiser (None when `no_minimiser`: there is none to report);
    grad_norm: ||grad ell(A_star)||_F / grad_scale (unit-free); grad_scale: g0 = ||grad ell(0)||_F (1 if 0);
    converged: grad_norm <= ref_gtol (always False for the non-smooth l1: no gradient test exists);
    no_minimiser: ell has no minimiser (the infimum is approached only as ||A|| -> inf);
    evidence: one line saying why (the recession LP's margins, strong convexity, ...);
    direction: the recession direction D (ell(A + tD) decreases for every A) when no_minimiser;
    X, targets: float64 inputs and canonical targets, reused by the labels.
    gap_scale: max(|ell*|, ell(0) - ell*) (1 when both are 0), the loss scale `gap_rtol` is relative to:
        the gap at the zero product, or ell* itself when that is larger.
    """
    loss: Loss
    product_ridge: float
    value: float
    A_star: torch.Tensor | None
    grad_norm: float
    grad_scale: float
    converged: bool
    no_minimiser: bool
    evidence: str
    n_iter: int
    seconds: float
    X: torch.Tensor
    targets: torch.Tensor
    direction: torch.Tensor | None = None
    gap_scale: float = 1.0


def _at_zero(loss: Loss, X: torch.Tensor, T: torch.Tensor, d_out: int, mu: float) -> tuple[float, float]:
    """(ell(0), g0 = ||grad ell(0)||_F, or 1 when that is 0)."""
    v, g = product_value_grad(loss, torch.zeros(d_out, X.shape[1], dtype=F64), X, T, mu)
    g0 = float(torch.linalg.matrix_norm(g))
    return float(v), (g0 if g0 > 0 else 1.0)  # A = 0 is already optimal: any scale keeps the tests meaningful


def _recession_lp(R: np.ndarray | csr_matrix, R_eq: np.ndarray | None, row_l1: float):
    """max sum(R d) s.t. R d >= 0, R_eq d = 0, |d| <= 1: a direction along which every per-sample term
    is non-increasing and some term strictly decreasing (ell has no minimiser iff the optimum > 0).

    Returns (optimum / row_l1 (the largest possible), d) with row_l1 = sum of the rows' l1 norms."""
    c = -np.asarray(R.sum(0)).ravel()
    res = linprog(c, A_ub=-R, b_ub=np.zeros(R.shape[0]), A_eq=R_eq,
                  b_eq=None if R_eq is None else np.zeros(R_eq.shape[0]), bounds=(-1, 1), method="highs")
    if res.status != 0:
        return 0.0, None
    return float(-res.fun) / max(row_l1, 1e-300), res.x


def _margins(loss: Loss, O: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Per-pair margins of outputs O = X D^T: y_i o_i (logistic) or o_(c_i) - o_k, k != c_i (cross-entropy)."""
    if loss.name == "logistic":
        return (T * O).ravel()
    oc = (O * T).sum(1, keepdims=True)
    return (oc - O)[T == 0]


def _stiemke(loss: Loss, X: np.ndarray, T: np.ndarray, A: np.ndarray, G: np.ndarray) -> float:
    """Upper bound on the largest margin of any separating direction D (|D| <= 1), relative to the mean
    l1 norm of the margin rows; small = certified minimiser.

    Stiemke's alternative: either some y > 0 has M^T y = 0 (M: the margin rows), or some D has M D >= 0,
    M D != 0 (no minimiser) - never both. At the solver's A, y = the wrong-class probabilities p_ik > 0
    (sigmoid(-y_i o_i) for logistic) give M^T y = -m grad ell(A), so any such D has
    max(M D) <= y^T M D / min y <= m ||grad ell(A)||_1 / min y."""
    m = X.shape[0]
    O = X @ A.T
    if loss.name == "logistic":
        y = 1.0 / (1.0 + np.exp(T * O))
        row = np.abs(X).sum(1).mean()
    else:
        P = np.exp(O - O.max(1, keepdims=True))
        y = (P / P.sum(1, keepdims=True))[T == 0]
        row = 2.0 * np.abs(X).sum(1).mean()
    ymin = float(y.min()) if y.size else 0.0
    return float("inf") if ymin <= 0 else m * float(np.abs(G).sum()) / ymin / max(row, 1e-300)


def _separates(loss: Loss, X: np.ndarray, T: np.ndarray, A: np.ndarray) -> bool:
    """The solver's direction A/||A|| has every margin >= 0 and some > 0 (separable data)."""
    nA = np.linalg.norm(A)
    if nA == 0:
        return False
    mg = _margins(loss, X @ (A / nA).T, T)
    return bool(mg.min() >= 0 and mg.max() > 0)


def _recession(loss: Loss, X: np.ndarray, T: np.ndarray, tol: ConvexTolerances, A: np.ndarray,
               G: np.ndarray, cert: tuple | None = None):
    """(no_minimiser, evidence, direction (d_out, d_in) or None).

    Logistic / cross-entropy, fast paths first: (1) the solver's own direction A/||A|| separates the data
    (every margin >= 0, some > 0): no minimiser, exactly; (2) the exact Stiemke certificate (`cert`, else
    computed at A; dlnlab.theory.convex.newton): a minimiser, exactly; (3) the Stiemke bound at A.
    Otherwise (and always for Poisson) the recession LP decides."""
    m, d_in = X.shape
    if loss.name in ("logistic", "cross_entropy"):
        nA = np.linalg.norm(A)
        if nA > 0:
            mg = _margins(loss, X @ (A / nA).T, T)
            if mg.min() >= 0 and mg.max() > 0:
                D = A / np.abs(A).max()
                return True, (f"separable: the solver's direction D = A/||A|| has all {mg.size} margins >= 0 "
                              f"({int((mg > 0).sum())} > 0): ell(A + tD) decreases for every A"), D
        ok, ymin, resid = cert or stiemke_certificate(loss.name, X, T, A)
        if ok:
            return False, (f"{loss.name}: exact Stiemke certificate: y > 0 with M^T y = 0 (min y / max y = "
                           f"{ymin:.2g}, residual {resid:.1g}): no recession direction, a minimiser exists"), None
        b = _stiemke(loss, X, T, A, G)
        if b <= tol.stiemke_rtol:
            return False, (f"{loss.name}: Stiemke certificate at the solver's point: no separating direction "
                           f"with margins > {b:.2g} (relative)"), None
    if loss.name == "logistic":
        R = T[:, :1] * X                                      # rows y_i x_i: margins y_i d.x_i >= 0
        ratio, d = _recession_lp(R, None, float(np.abs(R).sum()))
        D = None if d is None else d.reshape(1, d_in)
        n_strict = 0 if d is None else int((R @ d > tol.lp_tol * np.abs(R).sum(1)).sum())
        what = f"separable data: a direction D with y_i (D x_i) >= 0 for all {m} samples, > 0 for {n_strict}"
    elif loss.name == "cross_entropy":
        C = T.shape[1]
        c = T.argmax(1)
        ii, kk = np.nonzero(np.arange(C)[None, :] != c[:, None])       # the m (C-1) pairs (i, k != c_i)
        rows = np.repeat(np.arange(len(ii)), 2 * d_in)
        cols = (np.stack([c[ii] * d_in, kk * d_in], 1)[:, :, None] + np.arange(d_in)).ravel()
        vals = np.concatenate([X[ii], -X[ii]], 1).ravel()                # (e_c - e_k) x_i^T, flattened
        R = csr_matrix((vals, (rows, cols)), shape=(len(ii), C * d_in))
        ratio, d = _recession_lp(R, None, 2.0 * float(np.abs(X[ii]).sum()))
        D = None if d is None else d.reshape(C, d_in)
        n_strict = 0 if d is None else int(((R @ d) > tol.lp_tol).sum())
        what = f"separable classes: a direction D with (D x_i)_(c_i) >= (D x_i)_k for all samples, > for {n_strict} pairs"
    elif loss.name == "poisson":
        for j in range(T.shape[1]):
            zero = T[:, j] == 0
            if not zero.any():
                continue
            R, R_eq = -X, (X[~zero] if (~zero).any() else None)       # d.x_i <= 0, = 0 where t_ij > 0
            ratio, d = _recession_lp(R, R_eq, float(np.abs(X[zero]).sum()))
            if ratio > tol.lp_tol:
                D = np.zeros((T.shape[1], d_in))
                D[j] = d
                return True, (f"poisson: output {j} has {int(zero.sum())} zero targets and a direction d with "
                              f"d.x_i <= 0 (< 0 on zero targets, = 0 elsewhere): exp(A x) -> 0 without bound; "
                              f"LP margin ratio {ratio:.3g}"), D
        return False, "poisson: no recession direction (LP) for any output", None
    else:
        return False, f"{loss.name}: coercive modulo directions of constancy, a minimiser exists", None
    if ratio > tol.lp_tol:
        return True, f"{what}; LP margin ratio {ratio:.3g} > lp_tol {tol.lp_tol:g}: ell(A + tD) decreases for every A", D
    return False, f"{loss.name}: the recession LP finds no strictly decreasing direction (ratio {ratio:.2g})", None


def convex_reference(loss: Loss, X, Y, product_ridge: float = 0.0, *, d_out: int | None = None,
                     tolerances: ConvexTolerances | None = None) -> ConvexReference:
    """ell* = inf_A loss(X A^T, Y) + product_ridge ||A||_F^2 (float64, scipy L-BFGS-B on A).

    Args:
        loss: a Loss (dlnlab.losses.make_loss). X: (m, d_in), samples as rows. Y: targets in any format
            the loss accepts. product_ridge: mu >= 0. d_out: output dim (needed for class indices).
        tolerances: ConvexTolerances (ref_gtol, ref_maxiter, lp_tol).

    Returns:
        ConvexReference. With mu = 0 the logistic, cross-entropy and Poisson losses also get the recession
        LP: when it finds a strictly decreasing direction, `no_minimiser` is True and A_star is None.
    """
    tol = tolerances or ConvexTolerances()
    t0 = time.perf_counter()
    if not (isinstance(product_ridge, (int, float)) and product_ridge >= 0 and np.isfinite(product_ridge)):
        raise ValueError(f"loss.product_ridge must be a finite number >= 0, got {product_ridge!r}")
    X = torch.as_tensor(X).to(F64)
    T = loss.check_targets(torch.as_tensor(Y), d_out).to(F64)
    if X.ndim != 2 or X.shape[0] != T.shape[0]:
        raise ValueError(f"X must be (m, d_in) with the m rows of Y, got {tuple(X.shape)} and {tuple(T.shape)}")
    d_out, d_in = T.shape[1], X.shape[1]
    mu = float(product_ridge)
    ell0, g0 = _at_zero(loss, X, T, d_out, mu)

    def fun(a: np.ndarray):
        v, g = product_value_grad(loss, torch.from_numpy(a).view(d_out, d_in), X, T, mu)
        return float(v), g.numpy().ravel()

    res = minimize(fun, np.zeros(d_out * d_in), jac=True, method="L-BFGS-B",
                   options=dict(maxiter=tol.ref_maxiter, maxcor=30, ftol=0.0, gtol=1e-14 * g0))
    x, n_newton, cert = res.x, 0, None
    if mu == 0 and loss.name in MARGIN_LOSSES and not _separates(loss, X.numpy(), T.numpy(), x.reshape(d_out, d_in)):
        # the exact Stiemke certificate (convex_newton) decides existence without the recession LP; when
        # L-BFGS-B's point (||grad|| ~ 1e-9 g0) is not good enough for it, a Newton polish brings the
        # gradient to rounding level and the certificate is tried again
        cert = stiemke_certificate(loss.name, X.numpy(), T.numpy(), x.reshape(d_out, d_in))
        if not cert[0]:
            xn, n_newton = newton_polish(loss.name, X.numpy(), T.numpy(), x.reshape(d_out, d_in))
            (vn, gn), (vx, gx) = fun(xn.ravel()), fun(x)
            if vn <= vx + 4 * np.finfo(float).eps * abs(vx) and np.linalg.norm(gn) <= np.linalg.norm(gx):
                x = xn.ravel()
            cert = None
    A = torch.from_numpy(x).view(d_out, d_in).clone()
    value, grad = product_value_grad(loss, A, X, T, mu)
    gn = float(torch.linalg.matrix_norm(grad)) / g0
    if mu > 0:
        nomin, ev, D = False, f"product_ridge mu = {mu:g} > 0: strongly convex, a unique minimiser", None
    else:
        nomin, ev, D = _recession(loss, X.numpy(), T.numpy(), tol, A.numpy(), grad.numpy(), cert)
    if not loss.smooth:
        ev += "; l1 is not differentiable: ell* is L-BFGS's best value (outside the theorem)"
    return ConvexReference(loss=loss, product_ridge=mu, value=float(value), A_star=None if nomin else A,
                           grad_norm=gn, grad_scale=g0, converged=loss.smooth and gn <= tol.ref_gtol,
                           no_minimiser=nomin, evidence=ev, n_iter=int(res.nit) + n_newton,
                           seconds=time.perf_counter() - t0, X=X, targets=T,
                           direction=None if D is None else torch.as_tensor(D, dtype=F64),
                           gap_scale=max(abs(float(value)), ell0 - float(value)) or 1.0)
