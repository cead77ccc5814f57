"""The square-loss landscape of a deep linear network (Achour, Malgouyres & Gerchinovitz, JMLR 2024).

Spec: /work/shared/theory/landscape.md (cited below as "spec §n"). Everything here is float64 and pure
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
                                   generators of labelled points (spec §3-§4)
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
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


def _gen(generator: torch.Generator | int | None) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(int(generator))


def format_S(S: Sequence[int] | None) -> str:
    """S as a table string: "{1,2}", "{}" for the empty set, "" for None."""
    return "" if S is None else "{" + ",".join(str(i) for i in S) + "}"


# ---------------------------------------------------------------------------------------------
# Data

@dataclass(frozen=True)
class AssumptionReport:
    """Which parts of Assumption 1 (spec §1) hold for the data, and the transposed extension (spec §5).

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
    gamma_right: torch.Tensor      # Sxy U_k diag(1/lam_k) (d_x, k): Gamma = U^T P gamma_right (spec §5 step 3)

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
        paper = ([f"d_y <= d_x fails (d_y = {d_y}, d_x = {d_x}; the transposed extension of spec §5 applies "
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
        return self.ls_loss + float(sum(float(self.lam[i - 1]) for i in range(1, self.k + 1) if i not in S))

    def check_dims(self, dims: Sequence[int]) -> list[int]:
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


# ---------------------------------------------------------------------------------------------
# Critical values

@dataclass(frozen=True)
class CriticalValue:
    """One admissible S (|S| <= r_max) and what a critical point associated with it can be (Theorem 7).

    labels: the labels a critical point associated with S can carry for depth H (for H=None: any H >= 2):
      S = {1..r_max}           -> global_min
      S = {1..r}, r < r_max    -> strict_saddle only (H = 2); strict_saddle or nonstrict_saddle (H >= 3)
      any other S              -> strict_saddle
    """
    S: tuple[int, ...]
    r: int
    value: float
    top: bool            # S == {1..r}
    labels: tuple[str, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["S"] = format_S(self.S)
        d["labels"] = "|".join(self.labels)
        return d


def labels_for(S: Sequence[int], r_max: int, H: int | None = None) -> tuple[str, ...]:
    """Labels a critical point associated with S can carry (Theorem 7); H None means "some H >= 2"."""
    S = tuple(S)
    top = S == tuple(range(1, len(S) + 1))
    if top and len(S) == r_max:
        return ("global_min",)
    if top and (H is None or H >= 3):
        return ("strict_saddle", "nonstrict_saddle")
    return ("strict_saddle",)


def _frame(rows: list, as_frame: bool):
    if not as_frame:
        return rows
    import pandas as pd
    return pd.DataFrame([r.to_dict() for r in rows])


def _data_and_r_max(X_or_data: Any, Y: Any, r_max: int | None) -> tuple[LandscapeData, int]:
    """(data, r_max) from (X, Y, r_max) or (data, r_max): with a LandscapeData the r_max may come second,
    as in critical_values(data, 2)."""
    if isinstance(X_or_data, LandscapeData) and isinstance(Y, (int, np.integer)) and not isinstance(Y, bool):
        if r_max is not None:
            raise ValueError("r_max given twice (critical_values(data, r_max) or (X, Y, r_max))")
        Y, r_max = None, int(Y)
    data = as_data(X_or_data, Y)
    r_max = min(data.d_x, data.d_y) if r_max is None else int(r_max)
    if r_max < 0:
        raise ValueError(f"r_max must be >= 0, got {r_max}")
    return data, r_max


def critical_values(X_or_data: Any, Y: Any = None, r_max: int | None = None, *, H: int | None = None,
                    as_frame: bool = False, max_count: int = 1_000_000):
    """Every critical value of the landscape (Prop. 2): one row per admissible S, |S| <= r_max.

    critical_values(X, Y, r_max) or critical_values(data, r_max) (data: a LandscapeData).
    r_max: the thinnest layer min(d_0..d_H) of the architecture; default min(d_x, d_y) (no bottleneck).
    H: depth, for the `labels` column (None: labels possible for some H >= 2, i.e. H >= 3).
    Rows are sorted by value (ascending), then by S. S ranges over the k non-zero eigenvalues.
    Returns a list of CriticalValue, or a pandas DataFrame with `as_frame=True`.
    """
    data, r_max = _data_and_r_max(X_or_data, Y, r_max)
    r_top = min(r_max, data.k)
    count = sum(math.comb(data.k, r) for r in range(r_top + 1))
    if count > max_count:
        raise ValueError(f"{count} admissible sets S (k = {data.k}, r_max = {r_max}) exceed max_count = {max_count}")
    rows = []
    for r in range(r_top + 1):
        for S in itertools.combinations(range(1, data.k + 1), r):
            rows.append(CriticalValue(S=S, r=r, value=data.critical_value(S), top=S == tuple(range(1, r + 1)),
                                      labels=labels_for(S, r_max, H)))
    rows.sort(key=lambda c: (c.value, c.S))
    return _frame(rows, as_frame)


@dataclass(frozen=True)
class PlateauValue:
    """The plateau of S = {1..r}: value tr(Syy) - sum_{i<=r} lam_i. kind = "global_min" for r = r_max
    (the global-minimum value), else "plateau" (a non-strict saddle value when H >= 3)."""
    r: int
    S: tuple[int, ...]
    value: float
    kind: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["S"] = format_S(self.S)
        return d


def plateau_values(X_or_data: Any, Y: Any = None, r_max: int | None = None, *, as_frame: bool = False):
    """tr(Syy) - sum_{i<=r} lam_i for r = 0..r_max (the values visited by small-init gradient descent).
    plateau_values(X, Y, r_max) or plateau_values(data, r_max)."""
    data, r_max = _data_and_r_max(X_or_data, Y, r_max)
    rows = []
    for r in range(min(r_max, data.k) + 1):
        S = tuple(range(1, r + 1))
        rows.append(PlateauValue(r=r, S=S, value=data.critical_value(S),
                                 kind="global_min" if r == r_max else "plateau"))
    return _frame(rows, as_frame)


# ---------------------------------------------------------------------------------------------
# Loss and gradient in closed form

def chain(weights: Sequence[torch.Tensor], b: int, a: int) -> torch.Tensor | None:
    """W_b ... W_a (1-based, b >= a); None for the empty product (b = a - 1, the identity)."""
    if b < a:
        return None
    p = weights[a - 1]
    for h in range(a + 1, b + 1):
        p = weights[h - 1] @ p
    return p


def product(weights: Sequence[Any]) -> torch.Tensor:
    """The end-to-end matrix W_H ... W_1 (d_y, d_x) (batched over a leading ensemble dim)."""
    ws = as_weights(weights)
    return chain(ws, len(ws), 1)


def loss_of_product(P: torch.Tensor, data: LandscapeData) -> torch.Tensor:
    """L = ||(P - A) Sxx^{1/2}||_F^2 + ls_loss, which equals ||P X^T - Y^T||_F^2 (>= 0, accurate near 0)."""
    E = (P - data.A) @ data.Sxx_half
    return (E * E).sum((-2, -1)) + data.ls_loss


def _loss_grad(ws: list[torch.Tensor], data: LandscapeData, with_grad: bool = True):
    """(L, [dL/dW_1, ..., dL/dW_H], prefixes, suffixes) with tensors (batched)."""
    H = len(ws)
    pre = [None] * (H + 1)         # pre[h] = W_h ... W_1 (pre[0] = identity)
    p = None
    for h in range(1, H + 1):
        p = ws[h - 1] if p is None else ws[h - 1] @ p
        pre[h] = p
    P = pre[H]
    L = loss_of_product(P, data)
    if not with_grad:
        return L, None
    G = 2.0 * ((P - data.A) @ data.Sxx)               # dL/dP = 2 (P Sxx - Syx)
    grads = [None] * H
    suf = None                                          # W_H ... W_{h+1}
    for h in range(H, 0, -1):
        left = G if suf is None else suf.transpose(-1, -2) @ G
        grads[h - 1] = left if h == 1 else left @ pre[h - 1].transpose(-1, -2)
        suf = ws[h - 1] if suf is None else suf @ ws[h - 1]
    return L, grads


def loss(weights: Sequence[Any], X_or_data: Any, Y: Any = None):
    """The paper's loss ||W_H...W_1 X^T - Y^T||_F^2 (float; a numpy array for an ensemble)."""
    data = as_data(X_or_data, Y)
    L = loss_of_product(product(weights), data)
    return float(L) if L.ndim == 0 else L.numpy()


def loss_and_grad(weights: Sequence[Any], X_or_data: Any, Y: Any = None):
    """(L, [dL/dW_1, ..., dL/dW_H]) in closed form: dL/dW_h = (W_H..W_{h+1})^T 2(P Sxx - Syx) (W_{h-1}..W_1)^T.

    L is a float (a numpy array for an ensemble), the gradients float64 tensors shaped like the weights.
    """
    data = as_data(X_or_data, Y)
    L, grads = _loss_grad(as_weights(weights), data)
    return (float(L) if L.ndim == 0 else L.numpy()), grads


def grad_norm(weights: Sequence[Any], X_or_data: Any, Y: Any = None):
    """||grad L||, the Frobenius norm over all parameters (float; numpy array for an ensemble)."""
    _, grads = loss_and_grad(weights, X_or_data, Y)
    g = torch.stack([(g * g).sum((-2, -1)) for g in grads]).sum(0).sqrt()
    return float(g) if g.ndim == 0 else g.numpy()


# ---------------------------------------------------------------------------------------------
# Generators of labelled points (spec §2-§4)

@dataclass(eq=False)
class LabelledPoint:
    """A constructed point with what theory says about it.

    label: the label Theorem 7 predicts, or None when it needs the pivot test (generic normal forms with
      S = {1..r}, r < r_max, H >= 4). "not_critical" when the construction is not critical.
    critical: whether the construction is a first-order critical point (by construction, or by
      conditions (a)-(c) of spec §2 for random normal forms).
    value: tr(Syy) - sum_{i in S} lam_i, the loss if critical.
    Zs: [Z_1, ..., Z_H] of the normal form (Prop. 9); Ds: [D_1, ..., D_{H-1}] (Lemma 16).
    """
    weights: list[torch.Tensor]
    dims: list[int]
    S: tuple[int, ...]
    r: int
    r_max: int
    label: str | None
    critical: bool
    value: float
    kind: str
    Zs: list[torch.Tensor] = field(default_factory=list)
    Ds: list[torch.Tensor] = field(default_factory=list)

    @property
    def H(self) -> int:
        return len(self.weights)


def random_invertible(d: int, cond: float = 4.0, generator: torch.Generator | int | None = None) -> torch.Tensor:
    """A random d x d matrix Q_1 diag(s) Q_2 (Q Haar-like orthogonal, s log-uniform in [cond^-1/2, cond^1/2])."""
    g = _gen(generator)
    if d == 0:
        return torch.zeros(0, 0, dtype=F64)
    q1, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    half = 0.5 * math.log(max(cond, 1.0))
    s = torch.exp((2 * torch.rand(d, generator=g, dtype=F64) - 1) * half)
    return (q1 * s) @ q2


def apply_gauge(weights: Sequence[torch.Tensor], Ds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Lemma 16 change of variables: W_H D_{H-1}, D_h^{-1} W_h D_{h-1}, D_1^{-1} W_1 (keeps every label).

    Ds = [D_1, ..., D_{H-1}], D_h of shape (d_h, d_h). Linear in the weights, so it also maps directions.
    """
    H = len(weights)
    out = []
    for h in range(1, H + 1):
        w = weights[h - 1]
        if h < H:
            w = torch.linalg.solve(Ds[h - 1], w)
        if h > 1:
            w = w @ Ds[h - 2]
        out.append(w)
    return out


def normal_form(data: LandscapeData, dims: Sequence[int], S: Sequence[int], Zs: Sequence[torch.Tensor],
                Ds: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The normal form of Prop. 9 (r = |S|, Q = complement of S in {1..d_y}):

      W_H = [U_S, U_Q Z_H] D_{H-1}^{-1},  W_h = D_h diag(I_r, Z_h) D_{h-1}^{-1},  W_1 = D_1 [U_S^T A ; Z_1],

    Zs = [Z_1 (d_1-r, d_x), Z_2 (d_2-r, d_1-r), ..., Z_H (d_y-r, d_{H-1}-r)]; Ds = [D_1..D_{H-1}] (None: I).
    """
    dims = data.check_dims(dims)
    H = len(dims) - 1
    S = tuple(S)
    r = len(S)
    Q = tuple(i for i in range(1, data.d_y + 1) if i not in S)
    US = data.U[:, [i - 1 for i in S]]
    UQ = data.U[:, [i - 1 for i in Q]]
    ws = []
    for h in range(1, H + 1):
        Z = as_f64(Zs[h - 1])
        if h == 1:
            w = torch.cat([US.T @ data.A, Z.reshape(dims[1] - r, dims[0])], 0)
        elif h == H:
            w = torch.cat([US, UQ @ Z.reshape(dims[H] - r, dims[H - 1] - r)], 1)
        else:
            w = torch.zeros(dims[h], dims[h - 1], dtype=F64)
            w[:r, :r] = torch.eye(r, dtype=F64)
            w[r:, r:] = Z.reshape(dims[h] - r, dims[h - 1] - r)
        ws.append(w)
    if Ds is not None:
        # normal form uses D_h W~_h D_{h-1}^{-1}: the inverse gauge of apply_gauge
        ws = apply_gauge(ws, [torch.linalg.inv(D) for D in Ds])
    return ws


def _z_shapes(dims: Sequence[int], r: int) -> list[tuple[int, int]]:
    H = len(dims) - 1
    return [(dims[1] - r, dims[0])] + [(dims[h] - r, dims[h - 1] - r) for h in range(2, H + 1)]


def _random_Ds(dims, cond, g) -> list[torch.Tensor]:
    return [random_invertible(d, cond, g) for d in dims[1:-1]]


def _check_S(data: LandscapeData, dims: Sequence[int], S: Sequence[int]) -> tuple[int, ...]:
    S = tuple(sorted(int(i) for i in S))
    r_max = min(dims)
    if len(set(S)) != len(S) or any(i < 1 or i > data.k for i in S):
        raise ValueError(f"S = {S} must be distinct indices in 1..k = {data.k} (the non-zero eigenvalues)")
    if len(S) > r_max:
        raise ValueError(f"|S| = {len(S)} exceeds r_max = {r_max}")
    return S


def _theory_label(S, r_max, H) -> str | None:
    """Label from S alone (Theorem 7); None when the pivot test decides."""
    top = tuple(S) == tuple(range(1, len(S) + 1))
    if len(S) == r_max:
        return "global_min" if top else "strict_saddle"
    if not top or H == 2:
        return "strict_saddle"
    return None


def random_global_min(data: LandscapeData, dims: Sequence[int], *, generator: torch.Generator | int | None = None,
                      z_scale: float = 1.0, d_cond: float = 4.0) -> LabelledPoint:
    """A random global minimizer (Prop. 11): S = {1..r_max}, random Z's (N(0, z_scale^2)), random D_h.

    Transposed case (d_y > d_x) with r_max = d_x and no hidden layer of width r_max: Z_1 is set to 0
    (otherwise U_Q Z_H...Z_1 would spoil the product; with Z_1 = 0 the product is A).
    """
    g = _gen(generator)
    dims = data.check_dims(dims)
    r_max = min(dims)
    S = _check_S(data, dims, range(1, r_max + 1))
    Zs = [z_scale * torch.randn(*sh, generator=g, dtype=F64) for sh in _z_shapes(dims, r_max)]
    if data.d_y > r_max and all(d > r_max for d in dims[1:-1]):
        Zs[0] = torch.zeros_like(Zs[0])
    Ds = _random_Ds(dims, d_cond, g)
    return LabelledPoint(weights=normal_form(data, dims, S, Zs, Ds), dims=dims, S=S, r=r_max, r_max=r_max,
                         label="global_min", critical=True, value=data.critical_value(S), kind="global_min",
                         Zs=Zs, Ds=Ds)


def saddle_family(data: LandscapeData, dims: Sequence[int], r: int, strict: bool, *,
                  generator: torch.Generator | int | None = None, z_scale: float = 1.0,
                  d_cond: float | None = 4.0) -> LabelledPoint:
    """The App. B.8 family (Prop. 8), H >= 3, S = {1..r}, r < r_max, then random D_h (Lemma 16):

      W_H = [U_S, 0], W_h = diag(I_r, Z_h) (2 <= h <= H-1), W_1 = [U_S^T A; 0]   (Z_1 = Z_H = 0: critical)

    strict=True: all middle Z_h random dense (Z_{H-1}...Z_2 != 0, pivot (H,1) loose) -> strict saddle.
    strict=False: one random middle Z_h is 0 (Z_{H-1}...Z_2 = 0, tightened) -> non-strict saddle.
    d_cond=None: no gauge (D_h = I).
    """
    g = _gen(generator)
    dims = data.check_dims(dims)
    H = len(dims) - 1
    if H < 3:
        raise ValueError("saddle_family needs H >= 3 (for H = 2 every saddle is strict)")
    r_max = min(dims)
    if not 0 <= r < r_max:
        raise ValueError(f"saddle_family needs 0 <= r < r_max = {r_max}, got r = {r}")
    S = _check_S(data, dims, range(1, r + 1))
    shapes = _z_shapes(dims, r)
    Zs = [torch.zeros(*sh, dtype=F64) for sh in shapes]
    for h in range(2, H):
        Zs[h - 1] = z_scale * torch.randn(*shapes[h - 1], generator=g, dtype=F64)
    if not strict:
        h0 = 2 + int(torch.randint(0, H - 2, (1,), generator=g))
        Zs[h0 - 1] = torch.zeros(*shapes[h0 - 1], dtype=F64)
    Ds = _random_Ds(dims, d_cond, g) if d_cond is not None else []
    ws = normal_form(data, dims, S, Zs, Ds or None)
    return LabelledPoint(weights=ws, dims=dims, S=S, r=r, r_max=r_max,
                         label="strict_saddle" if strict else "nonstrict_saddle", critical=True,
                         value=data.critical_value(S), kind="saddle_family", Zs=Zs, Ds=Ds)


def _is_zero(M: torch.Tensor, scale: float, rtol: float = 1e-12) -> bool:
    return M.numel() == 0 or float(M.abs().max()) <= rtol * max(scale, 1e-300)


def _prod_scale(mats) -> float:
    s = 1.0
    for m in mats:
        s *= max(float(torch.linalg.matrix_norm(m)) if m.numel() else 0.0, 1.0)
    return s


def _chainZ(Zs, b, a):
    """Z_b ... Z_a (1-based), or None if b < a."""
    return chain(Zs, b, a)


def normal_form_critical(data: LandscapeData, dims: Sequence[int], S: Sequence[int],
                         Zs: Sequence[torch.Tensor]) -> bool:
    """Conditions (a)-(c) of spec §2: the normal form with these Z's is critical iff
      (a) Z_H...Z_2 = 0, (b) Z_{H-1}...Z_1 Sxy U_Q = 0, (c) Z_{h-1}...Z_1 Sxy U_Q Z_H...Z_{h+1} = 0 (2<=h<=H-1).
    Exact zeros are tested to 1e-12 relative to the product of the factors' norms (sparse Z's give exact 0).
    Derived under Assumption 1 (d_y <= d_x); for d_y > d_x the conditions are sufficient, not necessary
    (e.g. d_x = r = r_max < d_y with Z_H...Z_2 != 0 but Z_H...Z_1 = 0 is critical).
    """
    dims = data.check_dims(dims)
    H = len(dims) - 1
    S = tuple(S)
    Q = [i - 1 for i in range(1, data.d_y + 1) if i not in S]
    SU = data.Sxy @ data.U[:, Q]
    Zs = [as_f64(z) for z in Zs]
    a = _chainZ(Zs, H, 2)
    if not _is_zero(a, _prod_scale(Zs[1:])):
        return False
    b = _chainZ(Zs, H - 1, 1) @ SU
    if not _is_zero(b, _prod_scale(Zs[:H - 1] + [SU])):
        return False
    for h in range(2, H):
        c = _chainZ(Zs, h - 1, 1) @ SU @ _chainZ(Zs, H, h + 1)
        if not _is_zero(c, _prod_scale(Zs[:h - 1] + [SU] + Zs[h:])):
            return False
    return True


def _sparse_Zs(dims, r, density, zero_prob, z_scale, g) -> list[torch.Tensor]:
    """Z_1..Z_H: each 0 with probability zero_prob, else i.i.d. N(0, z_scale^2) entries kept with prob. density."""
    Zs = []
    for sh in _z_shapes(dims, r):
        if float(torch.rand(1, generator=g)) < zero_prob:
            Zs.append(torch.zeros(*sh, dtype=F64))
        else:
            mask = (torch.rand(*sh, generator=g, dtype=F64) < density).to(F64)
            Zs.append(z_scale * torch.randn(*sh, generator=g, dtype=F64) * mask)
    return Zs


def _normal_form_is_critical(data: LandscapeData, dims, S, Zs, ws) -> bool:
    if data.assumptions.transposed:
        # (a)-(c) are derived under d_y <= d_x; they are sufficient but not necessary when d_y > d_x
        # (U_Q then contains null directions of Sigma). Decide by the closed-form gradient instead.
        _, grads = _loss_grad(ws, data)
        gn = math.sqrt(sum(float((g * g).sum()) for g in grads))
        return gn <= 1e-9 * max(data.tr_syy, 1e-300) * _prod_scale(ws)
    return normal_form_critical(data, dims, S, Zs)


def _normal_form_label(data: LandscapeData, S, Zs, r_max: int, H: int, critical: bool) -> str | None:
    """Theorem 7 without a pivot test, or the explicit H = 3 rule of spec §4; None when neither decides."""
    if not critical:
        return "not_critical"
    label = _theory_label(S, r_max, H)
    if label is None and H == 3 and not data.assumptions.transposed:
        Q = [i - 1 for i in range(1, data.d_y + 1) if i not in S]
        z1 = Zs[0] @ data.Sxy @ data.U[:, Q]
        tight = (_is_zero(Zs[1], 1.0) and _is_zero(Zs[2], 1.0)
                 and _is_zero(z1, _prod_scale([Zs[0], data.Sxy])))
        label = "nonstrict_saddle" if tight else "strict_saddle"
    return label


def _zero_two(Zs: list[torch.Tensor], g) -> list[torch.Tensor]:
    """Prop. 10: a normal form with (at least) two zero Z_h is critical whatever the other Z's."""
    idx = torch.randperm(len(Zs), generator=g)[:2].tolist()
    return [torch.zeros_like(z) if h in idx else z for h, z in enumerate(Zs)]


def random_normal_form_point(data: LandscapeData, dims: Sequence[int], S: Sequence[int], *,
                             generator: torch.Generator | int | None = None, density: float = 0.5,
                             zero_prob: float = 0.3, z_scale: float = 1.0,
                             d_cond: float | None = 4.0, critical_only: bool = False,
                             max_tries: int = 100) -> LabelledPoint:
    """A random point in the normal form of Prop. 9 with sparse random Z_h and random D_h.

    Each Z_h is 0 with probability zero_prob, else has i.i.d. entries N(0, z_scale^2) kept with
    probability `density`. `critical` comes from conditions (a)-(c) (spec §2); when d_y > d_x (where
    (a)-(c) are sufficient but not necessary) from the closed-form gradient. With the defaults about
    a third of the draws are NOT critical (label "not_critical").

    critical_only=True guarantees a critical point: the Z's are redrawn until (a)-(c) hold (rejection
    sampling, i.e. the same sparse law conditioned on criticality, so it still yields critical points
    with fewer than two zero Z's, e.g. Z_3 Z_2 = 0 with both non-zero); after max_tries failed draws,
    two random Z's of the last draw are zeroed (Prop. 10: then critical for any other Z's), and the
    result is checked again.

    The label is what Theorem 7 gives without a pivot test (r = r_max; S not top; H = 2), or for H = 3
    the explicit rule of spec §4 (non-strict iff Z_2 = 0, Z_3 = 0 and Z_1 Sxy U_Q = 0); None otherwise
    (H >= 4, S top, r < r_max: the pivot test decides, e.g. `dlnlab.classify`), and "not_critical"
    when (a)-(c) fail.
    """
    g = _gen(generator)
    dims = data.check_dims(dims)
    H = len(dims) - 1
    S = _check_S(data, dims, S)
    r, r_max = len(S), min(dims)
    for attempt in range(max(1, max_tries) if critical_only else 1):
        Zs = _sparse_Zs(dims, r, density, zero_prob, z_scale, g)
        Ds = _random_Ds(dims, d_cond, g) if d_cond is not None else []
        ws = normal_form(data, dims, S, Zs, Ds or None)
        critical = _normal_form_is_critical(data, dims, S, Zs, ws)
        if critical:
            break
    if critical_only and not critical:
        Zs = _zero_two(Zs, g)
        ws = normal_form(data, dims, S, Zs, Ds or None)
        critical = _normal_form_is_critical(data, dims, S, Zs, ws)
        if not critical:  # pragma: no cover - Prop. 10
            raise RuntimeError(f"normal form with two zero Z's is not critical (dims {dims}, S {S})")
    return LabelledPoint(weights=ws, dims=dims, S=S, r=r, r_max=r_max,
                         label=_normal_form_label(data, S, Zs, r_max, H, critical), critical=critical,
                         value=data.critical_value(S), kind="normal_form", Zs=Zs, Ds=Ds)


def enumeration_points(data: LandscapeData, dims: Sequence[int], *, generator: torch.Generator | int | None = None,
                       d_cond: float | None = 4.0, max_count: int = 10_000) -> list[LabelledPoint]:
    """One critical point per admissible S (|S| <= r_max), all Z = 0 (Prop. 2), random D_h (spec §6.2).

    Labels: S = {1..r_max} global_min; S = {1..r}, r < r_max: strict (H = 2) / non-strict (H >= 3,
    all Z = 0 is tightened); any other S strict.
    """
    g = _gen(generator)
    dims = data.check_dims(dims)
    H = len(dims) - 1
    r_max = min(dims)
    count = sum(math.comb(data.k, r) for r in range(min(r_max, data.k) + 1))
    if count > max_count:
        raise ValueError(f"{count} admissible sets S exceed max_count = {max_count}")
    out = []
    for r in range(min(r_max, data.k) + 1):
        for S in itertools.combinations(range(1, data.k + 1), r):
            Zs = [torch.zeros(*sh, dtype=F64) for sh in _z_shapes(dims, r)]
            Ds = _random_Ds(dims, d_cond, g) if d_cond is not None else []
            label = _theory_label(S, r_max, H) or "nonstrict_saddle"
            out.append(LabelledPoint(weights=normal_form(data, dims, S, Zs, Ds or None), dims=dims, S=S, r=r,
                                     r_max=r_max, label=label, critical=True, value=data.critical_value(S),
                                     kind="enumeration", Zs=Zs, Ds=Ds))
    return out


@dataclass(eq=False)
class EscapePath:
    """The third-order escape path from the App. B.8 tightened point (spec §3), S = {1..r}, r < r_max:

      W'_H = u_{r+1} e_{r+1}^T,  W'_h = e_{r+1} e_{r+1}^T (2 <= h <= H-1),  W'_1 = e_{r+1} u_{r+1}^T A,
      L(W + t W') = L(W) - 2 lam_{r+1} t^H + lam_{r+1} t^{2H}   exactly (t = 1: the critical point of S + {r+1}).
    """
    base: list[torch.Tensor]
    direction: list[torch.Tensor]
    r: int
    lam: float          # lam_{r+1}
    base_loss: float    # tr(Syy) - sum_{i<=r} lam_i

    @property
    def H(self) -> int:
        return len(self.base)

    def weights_at(self, t: float) -> list[torch.Tensor]:
        return [w + t * d for w, d in zip(self.base, self.direction)]

    def loss_formula(self, t: float) -> float:
        return self.base_loss - 2 * self.lam * t ** self.H + self.lam * t ** (2 * self.H)


def escape_path(data: LandscapeData, dims: Sequence[int], r: int, *,
                generator: torch.Generator | int | None = None, d_cond: float | None = None) -> EscapePath:
    """The escape path of spec §3 at the all-Z = 0 point of S = {1..r} (non-strict for H >= 3).

    With d_cond given, base and direction are both gauged by the same random D_h (Lemma 16; the
    loss along the path is unchanged).
    """
    dims = data.check_dims(dims)
    H = len(dims) - 1
    r_max = min(dims)
    if not 0 <= r < r_max or r + 1 > data.k:
        raise ValueError(f"escape_path needs 0 <= r < r_max = {r_max} and r + 1 <= k = {data.k}, got r = {r}")
    S = tuple(range(1, r + 1))
    base = normal_form(data, dims, S, [torch.zeros(*sh, dtype=F64) for sh in _z_shapes(dims, r)])
    u = data.U[:, r]
    direction = []
    for h in range(1, H + 1):
        d = torch.zeros(dims[h], dims[h - 1], dtype=F64)
        if h == 1:
            d[r] = u @ data.A
        elif h == H:
            d[:, r] = u
        else:
            d[r, r] = 1.0
        direction.append(d)
    if d_cond is not None:
        Ds = _random_Ds(dims, d_cond, _gen(generator))
        base, direction = apply_gauge(base, Ds), apply_gauge(direction, Ds)
    return EscapePath(base=base, direction=direction, r=r, lam=float(data.lam[r]),
                      base_loss=data.critical_value(S))
