"""Logistic and cross-entropy: a Newton polish of ell* and an exact Stiemke certificate that a minimiser
exists (docs/theory.md §8). Used by dlnlab.theory.convex.reference; float64 numpy throughout.

Both losses are functions of margins M vec(A): y_i (A x_i) for logistic, (A x_i)_(c_i) - (A x_i)_k
(k != c_i) for cross-entropy. ell has a minimiser iff no direction D has M vec(D) >= 0 with some
margin > 0 (a recession direction). Stiemke's alternative: exactly one of that and "some y > 0 has
M^T y = 0" holds. At a point A, the wrong-class probabilities y (sigmoid(-y_i o_i), resp. p_ik, k != c_i)
are > 0 and M^T y = -m grad ell(A), nearly 0 near the optimum. `stiemke_certificate` projects y onto
{M^T y = 0} (the least-norm correction c = M (M^T M)^+ M^T y) and checks that y - c stays > 0: then no
recession direction exists, exactly (up to rounding in c, reported). The Newton polish first brings
grad ell(A) to rounding level, so that c is tiny compared with min y.

vec(A) is row-major: index k * d_in + a for A[k, a].
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from scipy.special import expit

__all__ = ["MARGIN_LOSSES", "value_grad", "hessian", "newton_polish", "margin_gram", "stiemke_certificate"]

MARGIN_LOSSES = ("logistic", "cross_entropy")


def _softmax(O: np.ndarray) -> np.ndarray:
    P = np.exp(O - O.max(1, keepdims=True))
    return P / P.sum(1, keepdims=True)


def value_grad(name: str, X: np.ndarray, T: np.ndarray, A: np.ndarray) -> tuple[float, np.ndarray]:
    """ell(A) (mean over samples, the lab's convention) and its gradient (d_out, d_in)."""
    m = X.shape[0]
    O = X @ A.T
    if name == "logistic":
        z = -T * O
        v = float(np.logaddexp(0.0, z).mean())
        return v, (-(T * expit(z)).T @ X) / m   # d/do softplus(-t o) = -t sigmoid(-t o)
    mx = O.max(1, keepdims=True)
    lse = (mx + np.log(np.exp(O - mx).sum(1, keepdims=True))).ravel()
    v = float((lse - (T * O).sum(1)).mean())
    return v, ((_softmax(O) - T).T @ X) / m


def hessian(name: str, X: np.ndarray, T: np.ndarray, A: np.ndarray) -> np.ndarray:
    """The Hessian of ell in vec(A), (d_out d_in) x (d_out d_in)."""
    m, d = X.shape
    O = X @ A.T
    if name == "logistic":
        s = expit(T * O)
        return (X * (s * (1.0 - s))).T @ X / m
    P = _softmax(O)
    C = P.shape[1]
    Z = (P[:, :, None] * X[:, None, :]).reshape(m, C * d)      # rows p_i (x) x_i
    Hs = -(Z.T @ Z)                                            # - sum_i p_i p_i^T (x) x_i x_i^T
    for k in range(C):                                         # + sum_i diag(p_i) (x) x_i x_i^T
        Hs[k * d:(k + 1) * d, k * d:(k + 1) * d] += (X * P[:, k:k + 1]).T @ X
    return Hs / m


def _pinv_solve(Hm: np.ndarray, g: np.ndarray, rcond: float = 1e-13) -> np.ndarray:
    """H^+ g through eigh (the fallback when Cholesky fails)."""
    lam, V = np.linalg.eigh(Hm)
    keep = lam > rcond * max(lam[-1], 1e-300)
    return V[:, keep] @ ((V[:, keep].T @ g) / lam[keep])


def _spd_solve(Hm: np.ndarray, g: np.ndarray) -> np.ndarray:
    try:
        return cho_solve(cho_factor(Hm), g)
    except LinAlgError:
        return _pinv_solve(Hm, g)


def _reduced(name: str, X: np.ndarray, d_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(V_r, X V_r, rows): the strongly convex restriction. ell(A) reads A only through X A^T, so only
    A V_r matters (V_r: an orthonormal basis of X's row space), and cross-entropy does not change when one
    row is added to every class row, so the last class row is fixed; on the remaining `rows` x r
    variables the Hessian and M^T M are positive definite (all probabilities > 0)."""
    lam, W = np.linalg.eigh(X.T @ X)                      # d_in x d_in: cheaper than an SVD of X
    keep = lam > max(lam[-1], 1e-300) * 1e-13 if lam.size else lam > 0
    V = W[:, keep]
    return V, X @ V, (1 if name == "logistic" else d_out - 1)


def _lift(S: np.ndarray, V: np.ndarray, d_out: int) -> np.ndarray:
    """The full (d_out, d_in) move of reduced variables S (rows, r): zero last class row."""
    D = np.zeros((d_out, V.shape[0]))
    D[:S.shape[0]] = S @ V.T
    return D


def newton_polish(name: str, X: np.ndarray, T: np.ndarray, A: np.ndarray, max_iter: int = 8,
                  gtol: float = 0.0) -> tuple[np.ndarray, int]:
    """Newton steps with a backtracking (Armijo) line search from A, restricted to the range of the
    Hessian. A step is kept when it lowers ell (Armijo) or, at rounding level of ell, when it lowers
    ||grad||; stops when neither happens, when ||grad|| no longer halves (rounding level) or ||grad||_F <= gtol.

    Returns:
        (the polished A, the number of steps taken)."""
    V, Xr, rows = _reduced(name, X, A.shape[0])
    v, g = value_grad(name, X, T, A)
    steps = 0
    for _ in range(max_iter):
        gn = np.linalg.norm(g)
        if gn <= gtol or gn == 0.0:
            break
        k = rows * Xr.shape[1]
        sr = -_spd_solve(hessian(name, Xr, T, A @ V)[:k, :k], (g @ V)[:rows].ravel())
        s = _lift(sr.reshape(rows, -1), V, A.shape[0])
        slope = float((g * s).sum())
        if not slope < 0:
            break
        t, moved = 1.0, False
        for _ in range(30):
            A2 = A + t * s
            v2, g2 = value_grad(name, X, T, A2)
            if v2 <= v + 1e-4 * t * slope or (v2 <= v + 4 * np.finfo(float).eps * abs(v)
                                               and np.linalg.norm(g2) < gn):
                A, v, g, moved = A2, v2, g2, True
                break
            t *= 0.5
        if not moved:
            break
        steps += 1
        if np.linalg.norm(g) > 0.5 * gn:  # no longer quadratic: at rounding level
            break
    return A, steps


def _margin_rows_T(name: str, X: np.ndarray, T: np.ndarray, W: np.ndarray) -> np.ndarray:
    """M^T w as a (d_out, d_in) matrix; w (m,) for logistic, (m, C) with zeros at the true classes
    for cross-entropy (row (i, k) of M is (e_(c_i) - e_k) x_i^T)."""
    if name == "logistic":
        return ((T.ravel() * W) @ X)[None, :]
    return (T * W.sum(1, keepdims=True) - W).T @ X


def _margins_of(name: str, X: np.ndarray, T: np.ndarray, D: np.ndarray) -> np.ndarray:
    """M vec(D) in the layout of `_margin_rows_T`'s w."""
    O = X @ D.T
    if name == "logistic":
        return (T * O).ravel()
    return ((O * T).sum(1, keepdims=True) - O) * (1.0 - T)


def margin_gram(name: str, X: np.ndarray, T: np.ndarray) -> np.ndarray:
    """M^T M in vec(D) coordinates: X^T X (logistic); for cross-entropy the block (k, l) is
    delta_kl (S + C S_k) - S_k - S_l with S_k = sum over class-k samples of x_i x_i^T, S = sum_k S_k."""
    if name == "logistic":
        return X.T @ X
    m, d = X.shape
    C = T.shape[1]
    Sk = np.stack([(X * T[:, k:k + 1]).T @ X for k in range(C)])       # (C, d, d)
    S = Sk.sum(0)
    G = -(Sk[:, None] + Sk[None, :])                                     # (C, C, d, d)
    for k in range(C):
        G[k, k] += S + C * Sk[k]
    return G.transpose(0, 2, 1, 3).reshape(C * d, C * d)


def stiemke_certificate(name: str, X: np.ndarray, T: np.ndarray, A: np.ndarray) -> tuple[bool, float, float]:
    """Is there an exact Stiemke vector y' > 0 with M^T y' = 0, built from the probabilities at A?

    Returns:
        (certified, min y' (relative to max y), the residual ||M^T y'||_F / (||M||_F-scale ||y'||)):
        certified iff min y' > 0 and the residual is at rounding level (<= 1e-10)."""
    O = X @ A.T
    if name == "logistic":
        y = expit(-T * O).ravel()
    else:
        y = _softmax(O) * (1.0 - T)
    V, Xr, rows = _reduced(name, X, A.shape[0])
    k = rows * Xr.shape[1]
    r = _margin_rows_T(name, Xr, T, y)[:rows].ravel()
    z = _spd_solve(margin_gram(name, Xr, T)[:k, :k], r)
    yc = y - _margins_of(name, X, T, _lift(z.reshape(rows, -1), V, A.shape[0]))
    mask = np.ones_like(yc, dtype=bool) if name == "logistic" else (T == 0)
    ymin = float(yc[mask].min()) if mask.any() else 0.0
    scale = np.sqrt(2.0) * np.linalg.norm(X) * np.linalg.norm(yc[mask]) + 1e-300
    resid = float(np.linalg.norm(_margin_rows_T(name, X, T, yc))) / scale
    ymax = float(y[mask].max()) if mask.any() else 1.0
    return (ymin > 0 and resid <= 1e-10), ymin / ymax, resid
