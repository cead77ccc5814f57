"""Batched Hessian-vector products of the square loss and a batched Lanczos for the extreme eigenvalues.

Everything is float64 and batched over an ensemble dim E: weights [W_1..W_H], W_h of shape
(E, d_h, d_{h-1}); parameter vectors are flat (E, P), P = sum_h d_h d_{h-1}, in the row-major order of
`dlnlab.theory.square.hessian.flatten` (vec(W_1), ..., vec(W_H)).

The loss is the paper's L = ||(W_H..W_1 - A) Sxx^{1/2}||_F^2 + const (docs/theory.md §1), so with
G = dL/dP = 2 (P - A) Sxx, Pre_h = W_h..W_1 and Suf_h = W_H..W_{h+1}:
    dL/dW_h        = Suf_h^T G Pre_{h-1}^T
    (Hess V)_h     = dSuf_h^T G Pre_{h-1}^T + Suf_h^T dG Pre_{h-1}^T + Suf_h^T G dPre_{h-1}^T,
with dPre, dSuf the directional derivatives of the partial products along V and dG = 2 dPre_H Sxx.
No autograd: the HVP is ~6H batched matmuls, which is what makes E = 256 members cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

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
        self.A, self.Sxx = A, Sxx
        # pre[h] = W_h..W_1 (pre[0] = None: identity); suf[h] = W_H..W_{h+1} (suf[H] = None)
        self.pre = [None] * (self.H + 1)
        for h in range(1, self.H + 1):
            self.pre[h] = self.ws[0] if h == 1 else self.ws[h - 1] @ self.pre[h - 1]
        self.suf = [None] * (self.H + 1)
        for h in range(self.H - 1, -1, -1):
            w = self.ws[h]                                    # W_{h+1}
            self.suf[h] = w if self.suf[h + 1] is None else self.suf[h + 1] @ w
        self.G = 2.0 * ((self.pre[self.H] - A) @ Sxx)
        self.Sxx2 = (2.0 * Sxx).expand(self.ws[0].shape[0], -1, -1)   # dG = dP (2 Sxx)
        self._factors = False

    def _hvp_factors(self) -> None:
        """The direction-free factors of every HVP, formed once per point (not for a gradient alone):
        Suf_h^T, Pre_{h-1}^T, Suf_h^T G and G Pre_{h-1}^T (None = the identity, so G itself)."""
        T = lambda M: None if M is None else M.transpose(-1, -2).contiguous()   # noqa: E731
        self.sufT = [T(S) for S in self.suf]
        self.preT = [T(R) for R in self.pre]
        self.SG = [None] + [self._lmul(self.sufT[h], self.G) for h in range(1, self.H + 1)]
        self.GR = [None] + [self._rmul(self.G, self.preT[h - 1]) for h in range(1, self.H + 1)]
        self._factors = True

    @staticmethod
    def _lmul(a, b):
        """a @ b with None as the identity (bmm: matmul's broadcasting costs more than the 32 x 32
        products themselves for a single network)."""
        return b if a is None else (a if b is None else torch.bmm(a, b))

    _rmul = _lmul

    def subset(self, idx: torch.Tensor) -> "SquareLossHVP":
        """The operator of the members idx only (a Lanczos run drops its converged members)."""
        return SquareLossHVP([w[idx] for w in self.ws], self.A, self.Sxx)

    def grad(self) -> list[torch.Tensor]:
        """[dL/dW_h] = Suf_h^T G Pre_{h-1}^T, each (E, d_h, d_{h-1})."""
        T = lambda M: None if M is None else M.transpose(-1, -2)   # noqa: E731
        return [self._rmul(self._lmul(T(self.suf[h]), self.G), T(self.pre[h - 1])) for h in range(1, self.H + 1)]

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Hess @ v for flat directions v (E, P) -> (E, P)."""
        if not self._factors:
            self._hvp_factors()
        V = split(v, self.shapes)
        H, mm, madd = self.H, torch.bmm, torch.baddbmm   # madd(c, a, b) = c + a @ b, one call
        dpre = [None] * (H + 1)                               # d(W_h..W_1); dpre[0] = 0
        for h in range(1, H + 1):
            dpre[h] = V[0] if h == 1 else madd(mm(V[h - 1], self.pre[h - 1]), self.ws[h - 1], dpre[h - 1])
        dsuf = [None] * (H + 1)                               # d(W_H..W_{h+1}); dsuf[H] = 0
        for h in range(H - 1, 0, -1):
            t = self._lmul(self.suf[h + 1], V[h])             # Suf_{h+1} V_{h+1}
            dsuf[h] = t if dsuf[h + 1] is None else madd(t, dsuf[h + 1], self.ws[h])
        dG = mm(dpre[H], self.Sxx2[:dpre[H].shape[0]])
        out = []
        for h in range(1, H + 1):
            term = self._rmul(self._lmul(self.sufT[h], dG), self.preT[h - 1])
            if dsuf[h] is not None:
                term = madd(term, dsuf[h].transpose(-1, -2), self.GR[h])
            if dpre[h - 1] is not None:
                term = madd(term, self.SG[h], dpre[h - 1].transpose(-1, -2))
            out.append(term)
        return join(out)


@dataclass
class LanczosResult:
    """lam_min, lam_max (E,); their Ritz vectors (E, P) (the next record's warm start); residuals
    ||Hv - lam v|| (E, 2) for (min, max); n_hvp: HVPs of the slowest member; hvps: (E,) HVPs per member;
    converged: (E,) bool."""
    lam_min: torch.Tensor
    lam_max: torch.Tensor
    v_min: torch.Tensor
    v_max: torch.Tensor
    residual: torch.Tensor
    n_hvp: int
    converged: torch.Tensor
    hvps: torch.Tensor | None = None


def unit_rows(v: torch.Tensor) -> torch.Tensor:
    """Each row of v (E, P) divided by its norm (a zero row stays zero)."""
    n = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    return v / n.clamp(min=1e-300)


def _project_out(Q: torch.Tensor, w: torch.Tensor, lo: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """w minus its projection on the orthonormal rows of Q (E, j, P), and the coefficients Q w.

    Two passes (Kahan: twice is enough): the first against the rows lo.. only, the second against all.
    In a Lanczos step, H q_j has large components only along q_j, q_{j-1} (and the kept Ritz vectors
    right after a thick restart); along the older vectors they are roundoff, so one full pass removes
    them and the first pass can skip most of Q, which halves the memory traffic.
    """
    Ql = Q[:, lo:]
    h = torch.zeros(w.shape[0], Q.shape[1], dtype=w.dtype)
    hl = torch.bmm(Ql, w.unsqueeze(2)).squeeze(2)
    w = torch.baddbmm(w.unsqueeze(1), hl.unsqueeze(1), Ql, alpha=-1.0).squeeze(1)
    h[:, lo:] = hl
    h2 = torch.bmm(Q, w.unsqueeze(2)).squeeze(2)
    w = torch.baddbmm(w.unsqueeze(1), h2.unsqueeze(1), Q, alpha=-1.0).squeeze(1)
    return w, h + h2


def lanczos_extremes(op, v0: torch.Tensor, steps: int, restarts: int, rtol: float,
                     generator: torch.Generator | None = None, keep: tuple[int, int] = (4, 2),
                     subset=None, check_every: int = 1, first: torch.Tensor | None = None) -> LanczosResult:
    """Extreme eigenvalues of the symmetric operators `op` ((E, P) -> (E, P)), all members at once.

    Thick-restart Lanczos (Wu & Simon) with full reorthogonalisation: a lost orthogonality makes ghost
    copies of lam_max, and the Hessian of a deep linear network has a huge near-null cluster next to
    lam_min. Each step projects H q_j on every stored vector, so the small matrix T = Q^T H Q is formed
    column by column (no three-term assumption) and the Ritz residual of (theta, Q y) is |beta y_last|.
    A cycle holds at most `steps` vectors; a restart keeps the keep[0] lowest and keep[1] highest Ritz
    vectors (convergence continues near the unrestarted rate, instead of starting over from one vector).
    Every `check_every` steps (and at the first two and the last step of a cycle) a member whose
    residuals of lam_min and lam_max are both <= rtol * max|theta| (then each is within its residual
    of an eigenvalue) is finished and leaves the batch: the check is an eigendecomposition of T and a
    dozen small tensor operations, which cost more than the HVP itself for one 4096-parameter network.

    Args:
        op: the batched HVP. v0: (E, P) start vectors (warm start: the previous record's Ritz vectors).
        steps: vectors per cycle (capped at P). restarts: cycles at most. rtol: see above.
        generator: for the random vectors that replace an exhausted Krylov space.
        keep: Ritz vectors kept at each end on a restart (lowest, highest).
        subset: idx -> the operator of members idx (None: converged members stay in the batch).
        check_every: steps between two convergence checks (a member may take check_every - 1 HVPs
            more than it needs); the first two steps of a cycle are always checked.
        first: op(unit_rows(v0)), if the caller has computed it already (the first step's HVP).

    Returns:
        LanczosResult (members not converged after `restarts` cycles: their last Ritz pairs).
    """
    E, P = v0.shape
    k = min(steps, P)
    n_lo, n_hi = keep
    n_lo, n_hi = min(n_lo, max(k - 2, 1)), min(n_hi, max(k - 2 - n_lo, 0))
    st = _Batch.start(op, subset, E, P, k)
    q, m = unit_rows(v0), 0                    # m: Ritz vectors kept at the front of Q
    cycles = max(restarts, 1)
    its, scale, compact = 0, None, False       # its: HVPs so far (every live row has had them all)
    for cycle in range(cycles):
        for j in range(m, k):
            st.Q[:, j] = q
            w = first if its == 0 and first is not None else st.op(q)
            its += 1
            w, b = st.extend(w, j, m)
            last = j + 1 == k
            if last or j == m or (j - m) % check_every == 1 % check_every or j + 1 >= P:
                theta, Y, res, scale, conv = _ritz(st.T, b, j, rtol, P)
                new = st.live & (conv | (last and cycle == cycles - 1))
                if bool(new.any()):
                    st.finish(new.nonzero().squeeze(1), theta, Y, j, res, conv, its)
                    if not bool(st.live.any()):
                        return st.result(its)
                    # dropping finished rows copies the filled part of Q: worth it once half are done
                    compact = subset is not None and 2 * int(st.live.sum()) <= st.live.numel()
            q = unit_rows(_refresh(st.Q, w, b, j, scale, generator))
            if last:
                break
            if compact:
                compact = False
                scale, q = st.compact(j, scale, q)
        m, q = st.restart(theta, Y, n_lo, n_hi, k, q)
    raise AssertionError("unreachable")


def _ritz(T: torch.Tensor, b: torch.Tensor, j: int, rtol: float, P: int):
    """Ritz values and vectors of T[:j+1, :j+1], the residuals of lam_min and lam_max, the scale
    max|theta|, and which rows have converged."""
    theta, Y = torch.linalg.eigh(T[:, :j + 1, :j + 1])
    res = b[:, None] * torch.stack([Y[:, j, 0], Y[:, j, -1]], 1).abs()
    scale = theta.abs().amax(1).clamp(min=1e-300)
    # two vectors at least: a start vector inside an eigenspace would give lam_min = lam_max
    conv = ((res <= rtol * scale[:, None]).all(1) & (j >= 1)) | (j + 1 >= P)
    return theta, Y, res, scale, conv


def _refresh(Q: torch.Tensor, w: torch.Tensor, b: torch.Tensor, j: int, scale, generator) -> torch.Tensor:
    """An exhausted Krylov space (b ~ 0) continues with a fresh random direction: T stays the
    projection of Hess on span(Q) (its entries are computed, not assumed), with no coupling."""
    dead = b <= 1e-12 * scale
    if bool(dead.any()):
        r = torch.randn(w.shape, dtype=F64, generator=generator)
        r, _ = _project_out(Q[:, :j + 1], r)
        w = torch.where(dead[:, None], r, w)
    return w


@dataclass
class _Batch:
    """A Lanczos run's batch: its rows (members act; `live`: still running, finished rows wait for a
    compaction), the Krylov vectors Q and T = Q^T H Q, and every member's results."""
    op: Any
    subset: Any
    Q: torch.Tensor             # (rows, k, P); only Q[:, :j + 1] is ever read
    T: torch.Tensor             # (rows, k, k)
    act: torch.Tensor
    live: torch.Tensor
    lam_min: torch.Tensor
    lam_max: torch.Tensor
    v_min: torch.Tensor
    v_max: torch.Tensor
    res_out: torch.Tensor
    hvps: torch.Tensor
    done: torch.Tensor

    @classmethod
    def start(cls, op, subset, E: int, P: int, k: int) -> "_Batch":
        """Every member in the batch, no result yet."""
        return cls(op, subset, torch.empty(E, k, P, dtype=F64), torch.zeros(E, k, k, dtype=F64), torch.arange(E),
                   torch.ones(E, dtype=torch.bool), torch.zeros(E, dtype=F64), torch.zeros(E, dtype=F64),
                   torch.zeros(E, P, dtype=F64), torch.zeros(E, P, dtype=F64), torch.zeros(E, 2, dtype=F64),
                   torch.zeros(E, dtype=torch.long), torch.zeros(E, dtype=torch.bool))

    def extend(self, w: torch.Tensor, j: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Orthogonalise w = H q_j against Q[:, :j+1], fill column j of T; (w, |w|)."""
        w, h = _project_out(self.Q[:, :j + 1], w, 0 if j == m else j - 1)
        self.T[:, :j + 1, j] = h
        self.T[:, j, :j + 1] = h
        return w, torch.linalg.vector_norm(w, dim=1)

    def finish(self, sel, theta, Y, j, res, conv, its: int) -> None:
        """Store the Ritz pairs of the batch rows sel (members act[sel]); they stop running."""
        g = self.act[sel]
        Qs = self.Q[sel, :j + 1]
        self.lam_min[g], self.lam_max[g] = theta[sel, 0], theta[sel, -1]
        self.v_min[g] = torch.bmm(Y[sel, :, :1].transpose(1, 2), Qs).squeeze(1)
        self.v_max[g] = torch.bmm(Y[sel, :, -1:].transpose(1, 2), Qs).squeeze(1)
        self.res_out[g] = res[sel]
        self.done[g] = conv[sel]
        self.hvps[g] = its
        self.live[sel] = False

    def result(self, its: int) -> "LanczosResult":
        """The members' results."""
        return LanczosResult(self.lam_min, self.lam_max, self.v_min, self.v_max, self.res_out, its, self.done,
                             self.hvps)

    def compact(self, j: int, scale, q: torch.Tensor):
        """Drop the finished rows mid-cycle (the filled part of Q is copied); (scale, q) of the rest."""
        rows = self.live.nonzero().squeeze(1)
        self.act, self.op, self.live = self.act[rows], self.subset(self.act[rows]), self.live[rows]
        Qn = torch.empty(rows.numel(), *self.Q.shape[1:], dtype=F64)
        Qn[:, :j + 1] = self.Q[rows, :j + 1]
        self.Q, self.T = Qn, self.T[rows]
        return scale[rows], q[rows]

    def restart(self, theta, Y, n_lo: int, n_hi: int, k: int, q: torch.Tensor):
        """Thick restart: the kept Ritz vectors, then q (the residual direction) continues the space;
        the finished rows leave here, where only the m kept vectors have to be copied. (m, q)."""
        idx = torch.cat([torch.arange(n_lo), torch.arange(k - n_hi, k)])
        m = idx.numel()
        kept = torch.bmm(Y[:, :, idx].transpose(1, 2), self.Q)
        diag = theta[:, idx]
        if self.subset is not None and not bool(self.live.all()):
            rows = self.live.nonzero().squeeze(1)
            self.act, self.op, self.live = self.act[rows], self.subset(self.act[rows]), self.live[rows]
            kept, diag, q = kept[rows], diag[rows], q[rows]
            self.Q = torch.empty(rows.numel(), *self.Q.shape[1:], dtype=F64)
            self.T = torch.zeros(rows.numel(), k, k, dtype=F64)
        self.Q[:, :m] = kept
        self.T.zero_()
        self.T[:, torch.arange(m), torch.arange(m)] = diag
        return m, q
