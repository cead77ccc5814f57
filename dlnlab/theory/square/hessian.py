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
             its largest is c - lam_min, and the stopping rule becomes an ABSOLUTE accuracy ~ tol * c.
             That is not enough near the strict/non-strict boundary: there lam_min is a small negative
             eigenvalue at the edge of a CLUSTER of small negative ones (e.g. -2.993e-3, -2.859e-3,
             -2.556e-3 with rho = 529), and an absolute accuracy of 1e-6 c cannot tell them apart (first
             pass: 4.6% relative error). Refinement: when the first value is negative (below
             -refine_floor * rho) and its residual ||Hess v - lam v|| exceeds tol * |lam|, eigsh runs
             again from the first eigenvector with tol * |lam| / c (floored at min_tol) and refine_ncv
             (>= 100) Lanczos vectors, i.e. to a RELATIVE accuracy tol on lam (1e-10 relative in the
             boundary test). Both values are Rayleigh quotients, hence upper bounds on lam_min: the
             smaller is kept. Values above -refine_floor * rho are "~ 0": accuracy ~ tol * rho.
             ncv = 40 Lanczos vectors in the first pass, maxiter = 5000 restarts; v0 is seeded
             (reproducible). HVP counts at P = 1e5 (H = 4, width 158): ~120 at a strict saddle (+ ~100
             when refined), ~100-190 at PSD points.
  "auto"     "full" if P <= full_max_params (2000) else "lanczos".
Agreement between the two (tested): |lam_full - lam_lanczos| <= 1e-6 |lam_full| at strict points, including
near-boundary ones with |lam_min| ~ 1e-5 rho; <= 1e-6 rho when lam_min ~ 0 (PSD points).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dlnlab.theory.square.critical import loss_of_product
from dlnlab.theory.square.data import LandscapeData, as_data, as_weights

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
    (always True for "full"); vector: eigenvector (flat, if asked); seconds: wall time; residual:
    ||Hess v - value v|| for the returned unit vector v (Lanczos; None for "full"); refined: the
    relative-accuracy second pass ran (Lanczos).
    """
    value: float
    method: str
    n_params: int
    scale: float
    converged: bool
    n_hvp: int
    seconds: float
    vector: np.ndarray | None = None
    residual: float | None = None
    refined: bool = False


def min_eigenvalue(loss_fn: LossFn, weights: Sequence[Any], *, method: str = "auto",
                   full_max_params: int = 2000, tol: float = 1e-6, ncv: int = 40, maxiter: int = 5000,
                   seed: int = 0, return_vector: bool = False, torch_threads: int | None = 1,
                   refine: bool = True, refine_ncv: int = 100, refine_maxiter: int = 100,
                   refine_floor: float = 1e-12, min_tol: float = 1e-14) -> MinEig:
    """lam_min of the Hessian of `loss_fn` at `weights` (see the module docstring for the methods).

    tol: Lanczos accuracy: relative to |lam_min| at negative values below -refine_floor * rho (with
      `refine`), else ~ tol * rho absolute. refine_ncv: Lanczos vectors of the refinement pass (a large
      basis separates a clustered lam_min without restarts; it converged within one basis, ncv + 1
      HVPs, in every test); refine_maxiter: its restarts at most (then a warning, converged=False,
      and the better of the two values). refine_floor: values above -refine_floor * rho are ~0 and
      not refined. min_tol: floor of the refinement's eigsh tol (ARPACK cannot go below float64
      rounding of c ~ 2 rho).
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
    opts = _LanczosOpts(tol=tol, ncv=ncv, maxiter=maxiter, seed=seed, refine=refine, refine_ncv=refine_ncv,
                        refine_maxiter=refine_maxiter, refine_floor=refine_floor, min_tol=min_tol)
    saved = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        return _lanczos(loss_fn, ws, n, t0, opts, return_vector)
    finally:
        torch.set_num_threads(saved)


@dataclass(frozen=True)
class _LanczosOpts:
    tol: float
    ncv: int
    maxiter: int
    seed: int
    refine: bool
    refine_ncv: int
    refine_maxiter: int
    refine_floor: float
    min_tol: float


def _spectral_radius(op, v0: np.ndarray, hv0: float, maxiter: int) -> float:
    """rho, to ~1e-2 relative (a cheap eigsh "LM"); never below the Rayleigh bound ||Hess v0|| / ||v0||."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh
    n = op.shape[0]
    lower = hv0 / float(np.linalg.norm(v0))
    try:
        rho = float(abs(eigsh(op, k=1, which="LM", tol=1e-2, ncv=min(n - 1, 20), v0=v0,
                              return_eigenvectors=False, maxiter=maxiter)[0]))
    except ArpackNoConvergence as e:  # pragma: no cover - LM converges fast
        rho = float(np.max(np.abs(e.eigenvalues))) if len(e.eigenvalues) else lower
    return max(rho, lower)


def _top_of_shifted(shifted, v0: np.ndarray, tol: float, ncv: int, maxiter: int):
    """(theta, unit vector, converged, failure message) for the largest eigenvalue of c I - Hess."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh
    n = shifted.shape[0]
    try:
        vals, vecs = eigsh(shifted, k=1, which="LA", tol=tol, ncv=min(n - 1, max(ncv, 3)), v0=v0,
                           maxiter=maxiter)
        return float(vals[0]), vecs[:, 0], True, None
    except ArpackNoConvergence as e:
        if len(e.eigenvalues):
            return float(e.eigenvalues[-1]), e.eigenvectors[:, -1], False, "did not converge"
        return float("nan"), None, False, "did not converge"
    except ArpackError as e:
        return float("nan"), None, False, f"failed: {e}"


def _residual(op, lam: float, vec: np.ndarray | None) -> float:
    """||Hess v - lam v|| / ||v||: lam is within this of SOME eigenvalue of the Hessian."""
    if vec is None or not np.isfinite(lam):
        return float("nan")
    nv = float(np.linalg.norm(vec))
    return float(np.linalg.norm(op.matvec(vec) - lam * vec)) / nv


def _needs_refinement(lam: float, res: float, rho: float, o: _LanczosOpts) -> bool:
    """A clearly negative first value whose residual does not yet certify tol relative accuracy."""
    return o.refine and np.isfinite(lam) and lam < -o.refine_floor * rho and not res <= o.tol * abs(lam)


def _lanczos(loss_fn, ws, n, t0, o: _LanczosOpts, return_vector) -> MinEig:
    from scipy.sparse.linalg import LinearOperator
    op = hvp_operator(loss_fn, ws)
    rng = np.random.default_rng(o.seed)
    v0 = rng.standard_normal(n)
    hv0 = float(np.linalg.norm(op.matvec(v0)))
    if hv0 == 0.0:  # Hess v0 = 0 for a random v0: the Hessian is 0 (almost surely), e.g. W = 0 for H >= 4
        return MinEig(value=0.0, method="lanczos", n_params=n, scale=0.0, converged=True, n_hvp=op.counter["n"],
                      seconds=time.perf_counter() - t0, vector=v0 / np.linalg.norm(v0) if return_vector else None,
                      residual=0.0)
    rho = _spectral_radius(op, v0, hv0, o.maxiter)
    # rho may be underestimated by up to ~1e-2 relative; c = 2 rho keeps c I - Hess positive definite
    c = 2.0 * rho + 1e-300 + (1.0 if rho == 0 else 0.0)
    shifted = LinearOperator((n, n), matvec=lambda v: c * v - op.matvec(v), dtype=np.float64)
    theta, vec, converged, why = _top_of_shifted(shifted, v0, o.tol, o.ncv, o.maxiter)
    lam = c - theta
    res = _residual(op, lam, vec)
    refined = _needs_refinement(lam, res, rho, o)
    if refined:
        # eigsh's rule ||r|| <= tol2 * theta with theta ~ c: tol2 = tol |lam| / c asks ||r|| <= tol |lam|
        tol2 = max(o.tol * abs(lam) / c, o.min_tol)
        theta2, vec2, conv2, why2 = _top_of_shifted(shifted, vec, tol2, max(o.ncv, o.refine_ncv), o.refine_maxiter)
        lam2 = c - theta2
        if np.isfinite(lam2) and lam2 < lam:   # both are Rayleigh quotients: upper bounds on lam_min
            lam, vec, res = lam2, vec2, _residual(op, lam2, vec2)
        converged, why = converged and conv2, why or why2
    if why is not None:
        warnings.warn(f"Lanczos {why} ({op.counter['n']} HVPs); returning the best Ritz value",
                      RuntimeWarning, stacklevel=3)
    return MinEig(value=lam, method="lanczos", n_params=n, scale=rho, converged=converged,
                  n_hvp=op.counter["n"], seconds=time.perf_counter() - t0,
                  vector=vec if return_vector else None, residual=res, refined=refined)


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
