"""Batched Hessian-vector products of the square loss and a batched Lanczos for the extreme eigenvalues.

Everything is float64 and batched over an ensemble dim E: weights [W_1..W_H], W_h of shape
(E, d_h, d_{h-1}); parameter vectors are flat (E, P), P = sum_h d_h d_{h-1}, in the row-major order of
`dlnlab.theory.hessian.flatten` (vec(W_1), ..., vec(W_H)).

The loss is the paper's L = ||(W_H..W_1 - A) Sxx^{1/2}||_F^2 + const (docs/theory.md §1), so with
G = dL/dP = 2 (P - A) Sxx, Pre_h = W_h..W_1 and Suf_h = W_H..W_{h+1}:
    dL/dW_h        = Suf_h^T G Pre_{h-1}^T
    (Hess V)_h     = dSuf_h^T G Pre_{h-1}^T + Suf_h^T dG Pre_{h-1}^T + Suf_h^T G dPre_{h-1}^T,
with dPre, dSuf the directional derivatives of the partial products along V and dG = 2 dPre_H Sxx.
No autograd: the HVP is ~6H batched matmuls, which is what makes E = 256 members cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

F64 = torch.float64


def split(v: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """(E, P) flat vectors -> [(E, d_h, d_{h-1})] views (row-major, the order of hessian.flatten)."""
    out, i = [], 0
    for a, b in shapes:
        out.append(v[:, i:i + a * b].reshape(v.shape[0], a, b))
        i += a * b
    return out


def join(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """[(E, d_h, d_{h-1})] -> (E, P)."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in ts], 1)


class SquareLossHVP:
    """Closed-form gradient and Hessian-vector products of the paper's square loss at fixed weights.

    Args:
        weights: [W_1..W_H], each (E, d_h, d_{h-1}) float64.
        A: the least-squares map Syx Sxx^{-1} (d_y, d_x); Sxx: X^T X (d_x, d_x).
    """

    def __init__(self, weights: Sequence[torch.Tensor], A: torch.Tensor, Sxx: torch.Tensor):
        self.ws = list(weights)
        self.H = len(self.ws)
        self.shapes = [tuple(w.shape[-2:]) for w in self.ws]
        self.Sxx = Sxx
        # pre[h] = W_h..W_1 (pre[0] = None: identity); suf[h] = W_H..W_{h+1} (suf[H] = None)
        self.pre = [None] * (self.H + 1)
        for h in range(1, self.H + 1):
            self.pre[h] = self.ws[0] if h == 1 else self.ws[h - 1] @ self.pre[h - 1]
        self.suf = [None] * (self.H + 1)
        for h in range(self.H - 1, -1, -1):
            w = self.ws[h]                                    # W_{h+1}
            self.suf[h] = w if self.suf[h + 1] is None else self.suf[h + 1] @ w
        self.G = 2.0 * ((self.pre[self.H] - A) @ Sxx)

    @staticmethod
    def _lmul(a, b):
        """a @ b with None as the identity."""
        return b if a is None else (a if b is None else a @ b)

    def _assemble(self, left: list, G: torch.Tensor, right: list) -> list[torch.Tensor]:
        """[left_h^T G right_h^T] for h = 1..H (None = identity)."""
        out = []
        for h in range(1, self.H + 1):
            L, R = left[h], right[h - 1]
            t = G if L is None else L.transpose(-1, -2) @ G
            out.append(t if R is None else t @ R.transpose(-1, -2))
        return out

    def grad(self) -> list[torch.Tensor]:
        """[dL/dW_h], each (E, d_h, d_{h-1})."""
        return self._assemble(self.suf, self.G, self.pre)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Hess @ v for flat directions v (E, P) -> (E, P)."""
        V = split(v, self.shapes)
        H = self.H
        dpre = [None] * (H + 1)                               # d(W_h..W_1); dpre[0] = 0
        for h in range(1, H + 1):
            t = V[h - 1] if h == 1 else V[h - 1] @ self.pre[h - 1]
            dpre[h] = t if h == 1 else t + self.ws[h - 1] @ dpre[h - 1]
        dsuf = [None] * (H + 1)                               # d(W_H..W_{h+1}); dsuf[H] = 0
        for h in range(H - 1, -1, -1):
            t = self._lmul(self.suf[h + 1], V[h])             # Suf_{h+1} V_{h+1}
            dsuf[h] = t if dsuf[h + 1] is None else t + dsuf[h + 1] @ self.ws[h]
        dG = 2.0 * (dpre[H] @ self.Sxx)
        out = []
        for h in range(1, H + 1):
            S, R, dS, dR = self.suf[h], self.pre[h - 1], dsuf[h], dpre[h - 1]
            St = None if S is None else S.transpose(-1, -2)
            term = self._lmul(St, dG)
            term = term if R is None else term @ R.transpose(-1, -2)
            if dS is not None:
                t = dS.transpose(-1, -2) @ self.G
                term = term + (t if R is None else t @ R.transpose(-1, -2))
            if dR is not None:
                term = term + self._lmul(St, self.G) @ dR.transpose(-1, -2)
            out.append(term)
        return join(out)


@dataclass
class LanczosResult:
    """lam_min, lam_max (E,); their Ritz vectors (E, P) (the next record's warm start); residuals
    ||Hv - lam v|| (E, 2) for (min, max); n_hvp: HVPs per member; converged: (E,) bool."""
    lam_min: torch.Tensor
    lam_max: torch.Tensor
    v_min: torch.Tensor
    v_max: torch.Tensor
    residual: torch.Tensor
    n_hvp: int
    converged: torch.Tensor


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    return v / n.clamp(min=1e-300)


def lanczos_extremes(op, v0: torch.Tensor, steps: int, restarts: int, rtol: float,
                     generator: torch.Generator | None = None) -> LanczosResult:
    """Extreme eigenvalues of the symmetric operators `op` ((E, P) -> (E, P)), all members at once.

    Lanczos with full reorthogonalisation (two Gram-Schmidt passes: the Hessian of a deep linear
    network has a huge null space, and a lost orthogonality makes ghost copies of lam_max), `steps`
    vectors per cycle, restarted from u_min + u_max of the previous cycle (one Krylov space serves
    both ends). Stops when every member's Ritz residuals are <= rtol * |lam_max|.

    Args:
        op: the batched HVP. v0: (E, P) start vectors (warm start: the previous record's Ritz vectors).
        steps: Krylov dimension per cycle (capped at P). restarts: cycles at most. rtol: see above.
        generator: for the random vectors that replace an exhausted Krylov space.

    Returns:
        LanczosResult.
    """
    E, P = v0.shape
    k = min(steps, P)
    v = _unit(v0)
    n_hvp = 0
    for cycle in range(max(restarts, 1)):
        Q = torch.zeros(E, k, P, dtype=F64)
        alpha = torch.zeros(E, k, dtype=F64)
        beta = torch.zeros(E, k, dtype=F64)
        q = v
        for i in range(k):
            Q[:, i] = q
            w = op(q)
            n_hvp += 1
            alpha[:, i] = (w * q).sum(1)
            Qi = Q[:, :i + 1]
            for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan)
                w = w - torch.bmm(torch.bmm(Qi, w.unsqueeze(2)).transpose(1, 2), Qi).squeeze(1)
            b = torch.linalg.vector_norm(w, dim=1)
            beta[:, i] = b
            if i + 1 < k:
                # an exhausted Krylov space (b ~ 0) continues with a fresh random direction: T stays
                # the projection of Hess on span(Q), with a zero coupling
                dead = b <= 1e-12 * alpha[:, :i + 1].abs().amax(1).clamp(min=1e-300)
                if bool(dead.any()):
                    r = torch.randn(E, P, dtype=F64, generator=generator)
                    r = r - torch.bmm(torch.bmm(Qi, r.unsqueeze(2)).transpose(1, 2), Qi).squeeze(1)
                    beta[:, i] = torch.where(dead, 0.0, b)
                    w = torch.where(dead[:, None], r, w)
                q = _unit(w)
        T = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
        theta, Y = torch.linalg.eigh(T)
        lam_min, lam_max = theta[:, 0], theta[:, -1]
        # Ritz residual of eigenpair (theta, Q^T y): |beta_k * y_k| (last component)
        res = (beta[:, -1:] * Y[:, -1, :]).abs()
        res = torch.stack([res[:, 0], res[:, -1]], 1)
        u_min = torch.einsum("ekp,ek->ep", Q, Y[:, :, 0])
        u_max = torch.einsum("ekp,ek->ep", Q, Y[:, :, -1])
        scale = torch.maximum(lam_max.abs(), lam_min.abs()).clamp(min=1e-300)
        conv = (res <= rtol * scale[:, None]).all(1) | (k == P)
        if bool(conv.all()):
            break
        v = _unit(u_min + u_max)
    return LanczosResult(lam_min, lam_max, u_min, u_max, res, n_hvp, conv)
