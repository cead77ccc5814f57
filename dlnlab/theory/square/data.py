"""The square-loss landscape of a deep linear network (Achour, Malgouyres & Gerchinovitz, JMLR 2024).

Theory: docs/theory.md (cited below as "docs/theory.md §n"). Everything here is float64 and pure
(no global state); inputs may be torch tensors of any dtype or numpy arrays.

Names (the paper's):
  H      depth = number of weight matrices (H >= 2).
  d_h    width of layer h; d_0 = d_x (input), d_H = d_y (output); `dims` = [d_0, ..., d_H].
  W_h    weight matrix of layer h, shape (d_h, d_{h-1}); `weights` = [W_1, ..., W_H] (W_1 first).
  X, Y   data with samples as ROWS: X (m, d_x), Y (m, d_y); the paper's X is X.T.
  Sxx, Sxy, Syx, Syy   X^T X, X^T Y, Y^T X, Y^T Y (the paper's Sigma_XX, ...).
  A      Syx Sxx^{-1}, the least-squares map (d_y, d_x).
  Sigma  A Sxy = Syx Sxx^{-1} Sxy (d_y, d_y); eigenvalues lam_1 > lam_2 > ... (descending), eigenvectors U.
  S      a set of 1-based eigen-indices; a critical point "associated with S" has product U_S U_S^T A.
  r      rank of the product W_H ... W_1 (= |S| at a critical point).
  r_max  min(d_0, ..., d_H), the largest rank the product can have.
  loss   the paper's L = ||W_H ... W_1 X^T - Y^T||_F^2 (sum over samples, no 1/2, no 1/m).

Contents:
  LandscapeData.from_xy(X, Y)      precomputed statistics + the Assumption 1 report
  critical_values, plateau_values  every critical value tr(Syy) - sum_{i in S} lam_i, with its labels
  product, loss, loss_and_grad     closed forms (no autograd)
  random_global_min, saddle_family, random_normal_form_point, enumeration_points, escape_path
                                   generators of labelled points (docs/theory.md §3-§4)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import torch

F64 = torch.float64

LABELS = ("not_critical", "global_min", "strict_saddle", "nonstrict_saddle", "ambiguous")


# ---------------------------------------------------------------------------------------------
# Conversions

def as_f64(a: Any) -> torch.Tensor:
    """A detached float64 CPU tensor from a torch tensor (any dtype/device) or an array-like."""
    if isinstance(a, torch.Tensor):
        return a.detach().to(device="cpu", dtype=F64)
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def as_weights(weights: Sequence[Any]) -> list[torch.Tensor]:
    """[W_1, ..., W_H] as float64 tensors; each may be (d_h, d_{h-1}) or an ensemble (E, d_h, d_{h-1})."""
    ws = [as_f64(w) for w in weights]
    if len(ws) < 2:
        raise ValueError(f"depth H = number of weight matrices must be >= 2, got {len(ws)}")
    for h in range(1, len(ws)):
        if ws[h].shape[-1] != ws[h - 1].shape[-2]:
            raise ValueError(f"W_{h + 1} has {ws[h].shape[-1]} columns but W_{h} has {ws[h - 1].shape[-2]} rows "
                             "(weights are [W_1, ..., W_H], W_h of shape (d_h, d_{h-1}))")
    return ws


def dims_of(weights: Sequence[torch.Tensor]) -> list[int]:
    """[d_0, ..., d_H] read from the weight shapes."""
    return [int(weights[0].shape[-1])] + [int(w.shape[-2]) for w in weights]


def format_S(S: Sequence[int] | None) -> str:
    """S as a table string: "{1,2}", "{}" for the empty set, "" for None."""
    return "" if S is None else "{" + ",".join(str(i) for i in S) + "}"


# ---------------------------------------------------------------------------------------------
# Data

@dataclass(frozen=True)
class AssumptionReport:
    """Which parts of Assumption 1 (docs/theory.md §1) hold for the data, and the transposed extension (docs/theory.md §5).

    `failures` lists the conditions that fail for the version of the theorem that applies: the paper's
    Assumption 1 when d_y <= d_x, the transposed extension when d_y > d_x (Sxx invertible,
    rk Sxy = min(d_x, d_y), the min(d_x, d_y) non-zero eigenvalues of Sigma distinct). It is empty
    iff Theorem 7 applies (`ok`). `paper_failures` are the failures of the paper's literal Assumption 1
    (it always contains the d_y <= d_x condition when d_y > d_x).
    """
    m: int
    d_x: int
    d_y: int
    transposed: bool                 # d_y > d_x: S ranges over the min(d_x, d_y) non-zero eigenvalues
    dims_ok: bool                    # d_y <= d_x <= m (paper) / d_x <= m (transposed extension)
    sxx_invertible: bool
    sxx_cond: float                  # condition number of Sxx (inf if singular)
    sxy_rank: int                    # numerical rank of Sxy
    sxy_full_rank: bool              # sxy_rank == min(d_x, d_y)
    eig_min_rel_gap: float           # min_i (lam_i - lam_{i+1}) / lam_1 over the non-zero eigenvalues
    eig_gap_rtol: float              # eigenvalues closer than eig_gap_rtol * lam_1 count as repeated
    distinct: bool                   # eig_min_rel_gap > eig_gap_rtol
    failures: tuple[str, ...]
    paper_failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Theorem 7 applies (the paper's assumption, or its transposed extension when d_y > d_x)."""
        return not self.failures

    @property
    def holds(self) -> bool:
        """The paper's literal Assumption 1 holds."""
        return not self.paper_failures


@dataclass(frozen=True, eq=False)
class LandscapeData:
    """Statistics of (X, Y) needed by every landscape computation, computed once (float64).

    Sigma = A Sxy = M M^T with M = Syx Sxx^{-1/2}; (lam, U) come from the SVD of M, which is the
    eigen-decomposition of Sigma (lam descending, zero-padded to d_y; U a full d_y x d_y orthogonal
    matrix). `k` = number of non-zero eigenvalues (= min(d_x, d_y) when the assumptions hold): S ranges
    over subsets of {1..k}. Singular Sxx is handled with pseudo-inverses (and reported, never raised).
    """
    m: int
    d_x: int
    d_y: int
    Sxx: torch.Tensor
    Sxy: torch.Tensor
    Syx: torch.Tensor
    tr_syy: float                  # tr(Syy) = ||Y||_F^2 = the loss at W = 0
    A: torch.Tensor                # Syx Sxx^{-1} (d_y, d_x), the least-squares map
    Sxx_half: torch.Tensor         # symmetric square root of Sxx
    M: torch.Tensor                # Syx Sxx^{-1/2}; Sigma = M M^T
    lam: torch.Tensor              # eigenvalues of Sigma, descending (d_y,)
    U: torch.Tensor                # eigenvectors of Sigma as columns (d_y, d_y)
    k: int                         # number of non-zero eigenvalues
    ls_loss: float                 # min_P ||P X^T - Y^T||^2 = tr(Syy) - tr(Sigma), from the data directly
    assumptions: AssumptionReport
    gamma_right: torch.Tensor      # Sxy U_k diag(1/lam_k) (d_x, k): Gamma = U^T P gamma_right (docs/theory.md §5 step 3)

    @staticmethod
    def from_xy(X: Any, Y: Any, eig_gap_rtol: float = 1e-6, rank_rtol: float = 1e-10) -> "LandscapeData":
        """Build from X (m, d_x), Y (m, d_y), samples as rows.

        eig_gap_rtol: two eigenvalues of Sigma with lam_i - lam_{i+1} <= eig_gap_rtol * lam_1 count as
          repeated (Assumption 1 fails: S is not unique).
        rank_rtol: a singular value of Sxx (resp. Sxy, M) below rank_rtol times the largest counts as zero.
        """
        X, Y = as_f64(X), as_f64(Y)
        if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
            raise ValueError(f"X and Y must be (m, d_x) and (m, d_y) with samples as rows, got {tuple(X.shape)} "
                             f"and {tuple(Y.shape)}")
        _check_finite(X, "X")
        _check_finite(Y, "Y")
        m, d_x = X.shape
        d_y = Y.shape[1]
        Sxx = X.T @ X
        Sxx = (Sxx + Sxx.T) / 2
        Sxy = X.T @ Y
        Syx = Sxy.T.contiguous()
        tr_syy = float((Y * Y).sum())
        ev, V = torch.linalg.eigh(Sxx)
        ev_max = float(ev.max()) if d_x else 0.0
        pos = ev > rank_rtol * max(ev_max, 0.0) if ev_max > 0 else torch.zeros_like(ev, dtype=torch.bool)
        sxx_rank = int(pos.sum())
        sxx_cond = float(ev_max / ev.min()) if sxx_rank == d_x and d_x else math.inf
        sq = ev.clamp(min=0).sqrt()
        Sxx_half = (V * sq) @ V.T
        inv = torch.where(pos, 1.0 / torch.where(pos, ev, torch.ones_like(ev)), torch.zeros_like(ev))
        inv_half = torch.where(pos, 1.0 / torch.where(pos, sq, torch.ones_like(sq)), torch.zeros_like(sq))
        A = Syx @ ((V * inv) @ V.T)
        M = Syx @ ((V * inv_half) @ V.T)
        U, s, _ = torch.linalg.svd(M, full_matrices=True)
        lam = torch.zeros(d_y, dtype=F64)
        lam[: s.numel()] = s * s
        s_max = float(s.max()) if s.numel() else 0.0
        k = int((s > rank_rtol * s_max).sum()) if s_max > 0 else 0
        sxy_s = torch.linalg.svdvals(Sxy)
        sxy_rank = int((sxy_s > rank_rtol * sxy_s.max()).sum()) if sxy_s.numel() and sxy_s.max() > 0 else 0
        resid = Y - X @ A.T
        ls_loss = float((resid * resid).sum())
        lk = lam[:k]
        gaps = (lk[:-1] - lk[1:]) / lk[0] if k >= 2 else torch.zeros(0, dtype=F64)
        min_gap = float(gaps.min()) if gaps.numel() else math.inf
        distinct = min_gap > eig_gap_rtol
        transposed = d_y > d_x
        kk = min(d_x, d_y)
        common = []
        if sxx_rank < d_x:
            common.append(f"Sxx is singular (numerical rank {sxx_rank} < d_x = {d_x})")
        if sxy_rank < kk:
            common.append(f"Sxy is rank deficient (numerical rank {sxy_rank} < min(d_x, d_y) = {kk})")
        if not distinct:
            common.append(f"Sigma has (nearly) repeated non-zero eigenvalues (min relative gap {min_gap:.3g} "
                          f"<= eig_gap_rtol = {eig_gap_rtol:g})")
        dim_fail = [f"d_x <= m fails (d_x = {d_x}, m = {m})"] if d_x > m else []
        paper = ([f"d_y <= d_x fails (d_y = {d_y}, d_x = {d_x}; the transposed extension of docs/theory.md §5 applies "
                  "if the rest holds)"] if transposed else []) + dim_fail + common
        failures = dim_fail + common
        report = AssumptionReport(
            m=m, d_x=d_x, d_y=d_y, transposed=transposed, dims_ok=not dim_fail,
            sxx_invertible=sxx_rank == d_x, sxx_cond=sxx_cond, sxy_rank=sxy_rank, sxy_full_rank=sxy_rank == kk,
            eig_min_rel_gap=min_gap, eig_gap_rtol=eig_gap_rtol, distinct=distinct,
            failures=tuple(failures), paper_failures=tuple(paper))
        gamma_right = (Sxy @ U[:, :k]) / lk if k else torch.zeros(d_x, 0, dtype=F64)
        return LandscapeData(m=m, d_x=d_x, d_y=d_y, Sxx=Sxx, Sxy=Sxy, Syx=Syx, tr_syy=tr_syy, A=A,
                             Sxx_half=Sxx_half, M=M, lam=lam, U=U, k=k, ls_loss=ls_loss,
                             assumptions=report, gamma_right=gamma_right)

    def critical_value(self, S: Sequence[int]) -> float:
        """tr(Syy) - sum_{i in S} lam_i (S 1-based): the loss of every critical point associated with S.

        Evaluated as ls_loss + sum_{i <= k, i not in S} lam_i (the same number, without the cancellation
        of tr(Syy) - sum near the global minimum).
        """
        S = set(int(i) for i in S)
        lam = self.lam_values
        return self.ls_loss + float(sum(lam[i - 1] for i in range(1, self.k + 1) if i not in S))

    @cached_property
    def lam_values(self) -> tuple[float, ...]:
        """lam as Python floats (read once per S by `critical_value`, on every checkpoint)."""
        return tuple(self.lam.tolist())

    @cached_property
    def top_values(self) -> torch.Tensor:
        """(k+1,) float64: critical_value({1..r}) for r = 0..k, the plateau values of small-init
        training. Computed on first use and kept (read on every record of a run)."""
        return torch.tensor([self.critical_value(range(1, r + 1)) for r in range(self.k + 1)], dtype=F64)

    def check_dims(self, dims: Sequence[int]) -> list[int]:
        """dims = [d_0..d_H] as ints, checked against the data (H >= 2, d_0 = d_x, d_H = d_y; else
        ValueError)."""
        dims = [int(d) for d in dims]
        if len(dims) < 3:
            raise ValueError(f"dims = [d_0, ..., d_H] needs H >= 2, got {dims}")
        if dims[0] != self.d_x or dims[-1] != self.d_y:
            raise ValueError(f"dims {dims} must start with d_x = {self.d_x} and end with d_y = {self.d_y}")
        return dims


def _check_finite(M: torch.Tensor, name: str) -> None:
    """NaN/inf data would surface later as an opaque LinAlgError from eigh/svd: name the array instead."""
    bad = ~torch.isfinite(M)
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf), the first at "
                         f"{name}[{i}, {j}] = {float(M[i, j])}")


def as_data(X_or_data: Any, Y: Any = None, **kw) -> LandscapeData:
    """A LandscapeData from itself or from (X, Y)."""
    if isinstance(X_or_data, LandscapeData):
        if Y is not None:
            raise ValueError("pass either a LandscapeData or (X, Y), not both")
        return X_or_data
    if Y is None:
        raise ValueError("Y is required when X is given")
    return LandscapeData.from_xy(X_or_data, Y, **kw)


