"""Hessians of a loss over a list of weight matrices: Hessian-vector products, the full Hessian, and its
smallest eigenvalue (float64).

Everything takes a GENERIC closure `loss_fn(list_of_weight_tensors) -> scalar tensor`, built from
differentiable torch ops (square loss, ridge-regularised loss, matrix completion, ...). The square-loss
convenience `hessian_min_eig(weights, X, Y)` uses the paper's loss L = ||W_H...W_1 X^T - Y^T||_F^2.

Names: H = number of weight matrices, W_h of shape (d_h, d_{h-1}), weights = [W_1, ..., W_H];
P (here) = number of parameters sum_h d_h d_{h-1}.

Smallest eigenvalue, two methods:
  "full"     the P x P Hessian (torch.func.hessian on the flattened parameters), then eigvalsh.
  "lanczos"  ARPACK (scipy.sparse.linalg.eigsh) on a LinearOperator of HVPs (torch.func forward-over-
             reverse). eigsh stops when ||residual|| <= tol * |theta|, which never happens for an
             eigenvalue theta ~ 0 (every PSD point of a DLN: non-strict saddles and global minima have a
             huge null space). So we first estimate the spectral radius rho (a cheap eigsh "LM", tol 1e-2)
             and run eigsh which="LA" on c I - Hess with c = 2 rho + tiny: all its eigenvalues are >= rho > 0,
             its largest is c - lam_min, and the stopping rule becomes an ABSOLUTE accuracy ~ tol * rho.
             Default tol = 1e-6: the residual is <= ~2e-6 rho, so the eigenvalue is certified to ~2e-6 rho
             (and in practice, being ~||r||^2/gap, far better: 1e-15 relative at strict points, <= 1e-10 rho
             at PSD points in the tests). The Lanczos value is an upper bound on lam_min. To certify a
             negative lam_min smaller than ~1e-6 rho (near the strict/non-strict boundary) pass tol=1e-10.
             ncv = 40 Lanczos vectors, maxiter = 5000 restarts; v0 is seeded (reproducible). HVP counts
             at P = 1e5 (H = 4, width 158): ~120 at a strict saddle, ~100-190 at PSD points (whose zero
             eigenvalue sits on a cluster of tiny positive ones; ~400 with tol = 1e-8).
  "auto"     "full" if P <= full_max_params (2000) else "lanczos".
Agreement between the two: |lam_full - lam_lanczos| <= 1e-6 * max(|lam_full|, 1e-3 rho) (tested); "relative"
means relative to |lam_min| at strict points and to the spectral radius rho when lam_min ~ 0.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dlnlab.landscape import LandscapeData, as_data, as_weights, loss_of_product

F64 = torch.float64
LossFn = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def _quiet():
    """Silence torch's one-off internal "torch.jit.script is deprecated" warning (forward-mode AD loads
    its jit decompositions on first use)."""
    cm = warnings.catch_warnings()
    cm.__enter__()
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=DeprecationWarning)
    return cm


def _prep(weights: Sequence[Any]) -> list[torch.Tensor]:
    ws = as_weights(weights)
    if ws[0].ndim != 2:
        raise ValueError("Hessians are for one network: weights must be 2-D (split an ensemble first)")
    return ws


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate the tensors' entries (row-major) into one vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(theta: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Inverse of `flatten` for the given shapes."""
    out, i = [], 0
    for sh in shapes:
        n = int(np.prod(sh))
        out.append(theta[i:i + n].reshape(tuple(sh)))
        i += n
    return out


def hvp(loss_fn: LossFn, weights: Sequence[Any], vectors: Sequence[Any]) -> list[torch.Tensor]:
    """Hessian-vector product (d^2 loss / dW^2) . V, with V shaped like the weights (forward-over-reverse)."""
    ws = tuple(_prep(weights))
    vs = tuple(torch.as_tensor(v, dtype=F64).reshape(w.shape) for v, w in zip(vectors, ws))
    f = lambda *w: loss_fn(list(w))
    cm = _quiet()
    try:
        _, out = torch.func.jvp(lambda *w: torch.func.grad(f, argnums=tuple(range(len(ws))))(*w), ws, vs)
    finally:
        cm.__exit__(None, None, None)
    return list(out)


def full_hessian(loss_fn: LossFn, weights: Sequence[Any]) -> torch.Tensor:
    """The P x P Hessian w.r.t. the flattened parameters [vec(W_1), ..., vec(W_H)] (row-major)."""
    ws = _prep(weights)
    shapes = [tuple(w.shape) for w in ws]
    theta = flatten(ws)
    cm = _quiet()
    try:
        Hm = torch.func.hessian(lambda th: loss_fn(unflatten(th, shapes)))(theta)
    finally:
        cm.__exit__(None, None, None)
    return (Hm + Hm.T) / 2


def hvp_operator(loss_fn: LossFn, weights: Sequence[Any], linearize: bool = True):
    """A scipy LinearOperator v -> Hess v on flat float64 numpy vectors.

    With `linearize` (default), torch.func.linearize traces the gradient once at `weights` and each
    HVP replays only the tangent computation (about 3x faster than a fresh forward-over-reverse jvp);
    it falls back to torch.func.jvp when the closure cannot be traced. `op.counter["n"]` counts HVPs.
    """
    from scipy.sparse.linalg import LinearOperator
    ws = tuple(_prep(weights))
    shapes = [tuple(w.shape) for w in ws]
    n = sum(int(np.prod(s)) for s in shapes)
    f = lambda *w: loss_fn(list(w))
    g = torch.func.grad(f, argnums=tuple(range(len(ws))))
    lin = None
    if linearize:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, lin = torch.func.linearize(g, *ws)
        except Exception:  # noqa: BLE001 - untraceable closure: use plain jvp
            lin = None
    counter = {"n": 0}

    def mv(v):
        counter["n"] += 1
        vt = tuple(unflatten(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1)), shapes))
        if lin is not None:
            out = lin(*vt)
        else:
            cm = _quiet()
            try:
                out = torch.func.jvp(g, ws, vt)[1]
            finally:
                cm.__exit__(None, None, None)
        return flatten(out).numpy()

    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    op.counter = counter
    return op


@dataclass
class MinEig:
    """Smallest Hessian eigenvalue and how it was found.

    value: lam_min(Hess); scale: spectral radius estimate rho (full: exact max |eig|), the scale for
    "is value negative" decisions; n_params: P; n_hvp: HVPs used (Lanczos); converged: ARPACK converged
    (always True for "full"); vector: eigenvector (flat, if asked); seconds: wall time.
    """
    value: float
    method: str
    n_params: int
    scale: float
    converged: bool
    n_hvp: int
    seconds: float
    vector: np.ndarray | None = None


def min_eigenvalue(loss_fn: LossFn, weights: Sequence[Any], *, method: str = "auto",
                   full_max_params: int = 2000, tol: float = 1e-6, ncv: int = 40, maxiter: int = 5000,
                   seed: int = 0, return_vector: bool = False, torch_threads: int | None = 1) -> MinEig:
    """lam_min of the Hessian of `loss_fn` at `weights` (see the module docstring for the methods).

    torch_threads: torch's intra-op thread count while Lanczos runs (restored afterwards); None leaves
    it alone. ARPACK's BLAS threads and torch's OpenMP threads contend: on 2 cores at P = 1e5 the
    Lanczos run took 3.8 s with 1 torch thread and 7.1 s with 2.
    """
    t0 = time.perf_counter()
    ws = _prep(weights)
    n = sum(w.numel() for w in ws)
    if method == "auto":
        method = "full" if n <= full_max_params else "lanczos"
    if method == "lanczos" and n <= 3:  # ARPACK needs k < ncv <= n
        method = "full"
    if method == "full":
        Hm = full_hessian(loss_fn, ws)
        if return_vector:
            ev, V = torch.linalg.eigh(Hm)
            vec = V[:, 0].numpy()
        else:
            ev, vec = torch.linalg.eigvalsh(Hm), None
        scale = float(ev.abs().max()) if n else 0.0
        return MinEig(value=float(ev[0]), method="full", n_params=n, scale=scale, converged=True, n_hvp=0,
                      seconds=time.perf_counter() - t0, vector=vec)
    if method != "lanczos":
        raise ValueError(f"method must be 'auto', 'full' or 'lanczos', got {method!r}")
    saved = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        return _lanczos(loss_fn, ws, n, t0, tol, ncv, maxiter, seed, return_vector)
    finally:
        torch.set_num_threads(saved)


def _lanczos(loss_fn, ws, n, t0, tol, ncv, maxiter, seed, return_vector) -> MinEig:
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh
    op = hvp_operator(loss_fn, ws)
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(n)
    ncv_ = min(n - 1, max(ncv, 3))
    hv0 = float(np.linalg.norm(op.matvec(v0)))
    if hv0 == 0.0:  # Hess v0 = 0 for a random v0: the Hessian is 0 (almost surely), e.g. W = 0 for H >= 4
        return MinEig(value=0.0, method="lanczos", n_params=n, scale=0.0, converged=True, n_hvp=op.counter["n"],
                      seconds=time.perf_counter() - t0, vector=v0 / np.linalg.norm(v0) if return_vector else None)
    try:
        rho = float(abs(eigsh(op, k=1, which="LM", tol=1e-2, ncv=min(n - 1, 20), v0=v0,
                              return_eigenvectors=False, maxiter=maxiter)[0]))
    except ArpackNoConvergence as e:  # pragma: no cover - LM converges fast
        rho = float(np.max(np.abs(e.eigenvalues))) if len(e.eigenvalues) else hv0 / float(np.linalg.norm(v0))
    rho = max(rho, hv0 / float(np.linalg.norm(v0)))
    # rho may be underestimated by up to ~1e-2 relative; c = 2 rho keeps c I - Hess positive definite
    c = 2.0 * rho + 1e-300 + (1.0 if rho == 0 else 0.0)
    shifted = LinearOperator((n, n), matvec=lambda v: c * v - op.matvec(v), dtype=np.float64)
    converged = True
    try:
        vals, vecs = eigsh(shifted, k=1, which="LA", tol=tol, ncv=ncv_, v0=v0, maxiter=maxiter)
        theta, vec = float(vals[0]), vecs[:, 0]
    except ArpackNoConvergence as e:
        converged = False
        warnings.warn(f"Lanczos did not converge ({op.counter['n']} HVPs); returning the best Ritz value",
                      RuntimeWarning, stacklevel=3)
        if len(e.eigenvalues):
            theta, vec = float(e.eigenvalues[-1]), e.eigenvectors[:, -1]
        else:
            theta, vec = float("nan"), None
    except ArpackError as e:
        converged = False
        warnings.warn(f"Lanczos failed: {e}", RuntimeWarning, stacklevel=3)
        theta, vec = float("nan"), None
    return MinEig(value=c - theta, method="lanczos", n_params=n, scale=rho, converged=converged,
                  n_hvp=op.counter["n"], seconds=time.perf_counter() - t0,
                  vector=vec if return_vector else None)


def square_loss_fn(X_or_data: Any, Y: Any = None) -> LossFn:
    """The paper's loss as a closure: weights -> ||(W_H...W_1 - A) Sxx^{1/2}||_F^2 + ls_loss
    (= ||W_H...W_1 X^T - Y^T||_F^2, computed from the d x d statistics, cost independent of m)."""
    data = as_data(X_or_data, Y)

    def fn(weights: Sequence[torch.Tensor]) -> torch.Tensor:
        P = weights[0]
        for w in weights[1:]:
            P = w @ P
        return loss_of_product(P, data)

    return fn


def hessian_min_eig(weights: Sequence[Any], X_or_data: Any, Y: Any = None, *, method: str = "auto",
                    return_result: bool = False, **kw):
    """lam_min of the Hessian of the paper's square loss at `weights` (float, or MinEig if return_result).

    method: "auto" | "full" | "lanczos"; kw go to `min_eigenvalue` (full_max_params, tol, ncv, maxiter, seed).
    """
    data = X_or_data if isinstance(X_or_data, LandscapeData) else as_data(X_or_data, Y)
    res = min_eigenvalue(square_loss_fn(data), weights, method=method, **kw)
    return res if return_result else res.value
