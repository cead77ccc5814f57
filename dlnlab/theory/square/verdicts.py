"""The verdict of Theorem 7, its tolerances and the data it is computed from (docs/theory.md §3, §5):
the types of the classifier (`dlnlab.theory.square.theorem7`) and of its public face
(`dlnlab.theory.square.classify`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from dlnlab.theory.square.data import LandscapeData, format_S

__all__ = [
    # tolerances and the data they apply to
    "Tolerances", "TRAINING_TOLERANCES", "PreparedData",
    # verdicts
    "LABELS", "Classification", "EnsembleClassification",
    # helpers
    "input_eps", "check_ndims", "block_name",
]

LABELS = ("not_critical", "global_min", "strict_saddle", "nonstrict_saddle", "ambiguous")


@dataclass(frozen=True)
class Tolerances:
    """Every tolerance of the classifier (all relative ones are dimensionless).

    grad_rtol, grad_atol: the point is not critical iff ||grad L||_F > grad_atol + g * tr(Syy),
        g = max(grad_rtol, grad_eps * eps(input dtype)) (grad over all parameters, paper loss;
        tr(Syy) = the loss at W = 0). Exact float64 points give ~1e-13 * tr(Syy); for training
        checkpoints use ~1e-2 (docs/theory.md §5 "training checkpoints").
    exact_grad_rtol: a point that passes the gradient test is *exactly* critical iff also ||grad L||_F <=
        max(exact_grad_rtol, grad_eps * eps) * |G|_F * (sum_h prod_{k != h} |W_k|_F^2)^{1/2},
        G = 2 (P - A) Sxx: the gradient is zero up to rounding of the size of the terms it is made
        of, whatever the weights' scale. A point that is not exactly critical and reaches the pivot
        test gets the pivots of the critical point of its plateau S = {1..r} (docs/theory.md §5 step
        5, §6): numerical ranks of a point that is not critical say nothing about its pivots. Exact
        points keep their own pivots.
    grad_eps: the gradient floor in units of the input dtype's machine epsilon: exact critical points
        rounded to float32 have ||grad L|| up to ~10 eps * tr(Syy) (measured on gauged H = 4 global
        minima), above grad_rtol's 1e-6. No effect for float64 input (100 * 2.2e-16 << 1e-6).
    rank_rtol: relative numerical-rank threshold. The product's threshold is rank_rtol * sqrt(lam_k), lam_k
        the data's smallest non-zero eigenvalue of Sigma (the smallest non-zero singular value of P Sxx^{1/2}
        at any critical point); a pivot block's is rank_rtol * its s_1 (docs/theory.md §5). Exact points:
        any value in 1e-12..1e-3 works; for training checkpoints 1e-2.
    rank_floor_rtol: float64 noise floor, relative to the product of the factors' Frobenius norms.
    rank_floor_eps: the same floor in units of the input dtype's machine epsilon (the weights' dtype
        before the float64 conversion): floor = max(rank_floor_rtol, rank_floor_eps * eps). Rounding
        each W_h to float32 leaves "zero" singular values of a block at ~eps32 * prod ||W_h||_F; at
        the float64 floor they land inside the gap and exact non-strict points read "ambiguous". No
        effect for float64 input (100 * 2.2e-16 < 1e-11).
    rank_band: the ambiguity band: thr/rank_band < s <= thr*rank_band is inside the gap (default 10: one
        decade each side; keep rank_rtol * rank_band well below 1).
    gamma_tol: S is readable from Gamma iff every diagonal entry is within gamma_tol of 0 or 1 and every
        off-diagonal entry within gamma_tol of 0; otherwise (at a point that passed the gradient test)
        the label is "ambiguous".
    value_rtol: a critical point whose loss differs from its critical value by more than
        value_rtol * tr(Syy) gets a warning.
    eig_gap_rtol: eigenvalues of Sigma closer than eig_gap_rtol * lam_1 are "repeated" (data check).
    data_rank_rtol: relative rank tolerance for Sxx and Sxy (data check).
    """
    grad_rtol: float = 1e-6
    grad_atol: float = 0.0
    exact_grad_rtol: float = 1e-6
    grad_eps: float = 100.0
    rank_rtol: float = 1e-6
    rank_floor_rtol: float = 1e-11
    rank_floor_eps: float = 100.0
    rank_band: float = 10.0
    gamma_tol: float = 0.25
    value_rtol: float = 1e-6
    eig_gap_rtol: float = 1e-6
    data_rank_rtol: float = 1e-10

    def __post_init__(self):
        for name in ("grad_rtol", "grad_atol", "exact_grad_rtol", "grad_eps", "rank_floor_rtol", "rank_floor_eps",
                     "value_rtol", "eig_gap_rtol", "data_rank_rtol"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Tolerances.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.rank_rtol < 1:
            raise ValueError(f"Tolerances.rank_rtol must lie in (0, 1), got {self.rank_rtol}")
        if not self.rank_band >= 1:
            raise ValueError(f"Tolerances.rank_band must be >= 1, got {self.rank_band}")
        if not 0 < self.gamma_tol < 0.5:
            raise ValueError(f"Tolerances.gamma_tol must lie in (0, 0.5), got {self.gamma_tol}")

    def with_(self, **overrides) -> "Tolerances":
        """A copy with some fields replaced (unknown names raise TypeError)."""
        return replace(self, **overrides) if overrides else self


# Training iterates are only approximately critical: looser tolerances than the defaults for exact
# points (docs/theory.md §5). The one source of the `classify.*` config defaults.
TRAINING_TOLERANCES = Tolerances(grad_rtol=1.0e-2, rank_rtol=1.0e-2, rank_band=10.0, gamma_tol=0.25)


@dataclass
class Classification:
    """The verdict of Theorem 7 on one point, with its evidence.

    label: "not_critical" | "global_min" | "strict_saddle" | "nonstrict_saddle" | "ambiguous" (a decision
        inside a tolerance gap, or a critical point of data outside Assumption 1: see `reason`).
    S: sorted 1-based eigen-indices the product projects on (None if not critical or unreadable).
    r: numerical rank of the product W_H...W_1 (always reported); r_max: min(d_0..d_H); H: depth.
    critical_value: tr Syy - sum_{i in S} lam_i (None unless S is known); loss: the paper's L(W).
    grad_norm, grad_tol: ||grad L||_F and the threshold used.
    loose_pivots: pivots (i, j) with rk B1 > r and rk B2 > r (None: the pivot test was not needed).
    block_ranks: {(i, j): (rk B1, rk B2)} when the pivot test ran.
    reason: which branch of Theorem 7 decided (human readable).
    hessian_min_eig: lam_min of the Hessian (None unless asked).
    nearest_S, nearest_value: S read from the product (Gamma_ii > 1/2) even when the gradient is not
        small, and its critical value: "on the plateau of S" for training checkpoints.
    gamma_diag: diag(Gamma) (the fraction of each eigen-direction the product has learned).
    ambiguous_values: (what, singular value, threshold) for each singular value inside the tolerance gap
        that a decision depended on.
    assumptions_ok: Theorem 7 applies to the data (LandscapeData.assumptions.ok); warnings: failed
        assumptions and failed consistency checks (Lemma 24, Prop. 4, loss == critical value).
    """
    label: str
    S: tuple[int, ...] | None
    r: int
    r_max: int
    H: int
    critical_value: float | None
    loss: float
    grad_norm: float
    grad_tol: float
    loose_pivots: tuple[tuple[int, int], ...] | None
    reason: str
    nearest_S: tuple[int, ...]
    nearest_value: float
    gamma_diag: tuple[float, ...]
    hessian_min_eig: float | None = None
    block_ranks: dict | None = None
    ambiguous_values: tuple[tuple[str, float, float], ...] = ()
    assumptions_ok: bool = True
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """A flat dict of scalars and strings, one table row (S as "{1,2}", pivots as "(3,1) (2,1)")."""
        return {
            "label": self.label, "S": format_S(self.S) if self.S is not None else None, "r": self.r,
            "r_max": self.r_max, "H": self.H, "critical_value": self.critical_value, "loss": self.loss,
            "grad_norm": self.grad_norm, "grad_tol": self.grad_tol,
            "loose_pivots": None if self.loose_pivots is None else " ".join(f"({i},{j})" for i, j in self.loose_pivots),
            "reason": self.reason, "hessian_min_eig": self.hessian_min_eig,
            "nearest_S": format_S(self.nearest_S), "nearest_value": self.nearest_value,
            "ambiguous_values": "; ".join(f"{w}: s={s:.3g} thr={t:.3g}" for w, s, t in self.ambiguous_values),
            "assumptions_ok": self.assumptions_ok, "warnings": "; ".join(self.warnings),
        }


@dataclass(frozen=True)
class PreparedData:
    """A data set and tolerances with the constants Theorem 7 reads at every point, computed once.

    UT: U^T (contiguous); sqrt_lam_min: sqrt(lam_k), the data's smallest non-zero sqrt(lam_i) (0 when
    Sxy = 0), the product's rank scale (docs/theory.md §5 step 2); sxy_fro, sxxh_fro: the
    Frobenius norms of Sxy and Sxx^{1/2} (noise floors); sxy_inj / sxy_surj: Sxy has full column /
    row rank (the rank shortcuts of docs/theory.md §5); data_warnings: the failed parts of Assumption 1.
    """
    data: LandscapeData
    tol: Tolerances
    UT: torch.Tensor
    sqrt_lam_min: float
    sxy_fro: float
    sxxh_fro: float
    sxy_inj: bool
    sxy_surj: bool
    data_warnings: tuple[str, ...]
    # per-architecture bookkeeping of the classifier (`pivots`), built at its first point
    cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def critical_value(self, S: tuple) -> float:
        """`LandscapeData.critical_value` of a 1-based tuple S, kept for the next point on the same plateau."""
        values = self.cache.setdefault("critical_value", {})
        v = values.get(S)
        if v is None:
            v = self.data.critical_value(S)
            if len(values) < 4096:  # at most 2^k plateaus: a bound for large k
                values[S] = v
        return v

    @classmethod
    def of(cls, data: LandscapeData, tol: Tolerances) -> "PreparedData":
        """Prepare `data` for classification under `tol`."""
        return cls(
            data=data, tol=tol, UT=data.U.T.contiguous(),
            sqrt_lam_min=math.sqrt(max(float(data.lam[data.k - 1]), 0.0)) if data.k else 0.0,
            sxy_fro=float(torch.linalg.matrix_norm(data.Sxy)) if data.Sxy.numel() else 0.0,
            sxxh_fro=float(torch.linalg.matrix_norm(data.Sxx_half)) if data.Sxx_half.numel() else 0.0,
            sxy_inj=data.assumptions.sxy_rank == data.d_y,     # rk B1(i,1) = rk W_H..W_{i+1}
            sxy_surj=data.assumptions.sxy_rank == data.d_x,    # rk B1(H,j) = rk W_{j-1}..W_1
            data_warnings=tuple(f"Assumption 1: {f}" for f in data.assumptions.failures))


@dataclass
class EnsembleClassification:
    """Columns over the E members (the fields of `Classification`, batched); `.member(e)` is member
    e's Classification. Members whose weights or loss are not finite (`broken`) report r = 0, no
    nearest plateau and no diag(Gamma)."""
    label: list                 # E strings
    S: list                     # E tuples or None
    r: torch.Tensor             # (E,) int64
    critical_value: torch.Tensor  # (E,) float64, NaN where S is unknown
    loss: torch.Tensor          # (E,) float64 (paper units)
    grad_norm: torch.Tensor     # (E,) float64
    nearest_S: list             # E tuples
    nearest_value: torch.Tensor  # (E,) float64
    gamma_diag: torch.Tensor    # (E, k), NaN rows where broken
    reason: list                # E strings
    warnings: list              # E tuples
    r_max: int
    H: int
    grad_tol: float
    assumptions_ok: bool
    code: torch.Tensor = None   # (E,) int64: index of the label in LABELS
    pivots: list = field(default_factory=list)  # the pivots (i, j) of the pivot test, in order
    pivot_ran: torch.Tensor = None  # (E,) bool: the member went through the pivot test
    block_ranks: torch.Tensor = None  # (E, n_pivots, 2) int64: (rk B1, rk B2) where the test ran
    loose: torch.Tensor = None  # (E, n_pivots) bool: both blocks of rank > r
    ambiguous_values: dict = field(default_factory=dict)  # member -> its deciding singular values
    broken: torch.Tensor = None  # (E,) bool: non-finite weights, or a loss or gradient that overflows
    hessian_min_eig: list = None  # E floats (None where broken) when asked for, else None

    def member(self, e: int) -> Classification:
        """Member e's Classification."""
        # numpy views of the (CPU) columns: an entry without a torch indexing op per field
        cv = float(self.critical_value.numpy()[e])
        loose, ranks = None, None
        if self.pivot_ran is not None and bool(self.pivot_ran.numpy()[e]):
            loose = tuple(p for p, x in zip(self.pivots, self.loose.numpy()[e].tolist()) if x)
            ranks = {p: (a, b) for p, (a, b) in zip(self.pivots, self.block_ranks.numpy()[e].tolist())}
        broken = self.broken is not None and bool(self.broken.numpy()[e])
        return Classification(
            label=self.label[e], S=self.S[e], r=int(self.r.numpy()[e]), r_max=self.r_max, H=self.H,
            critical_value=None if math.isnan(cv) else cv, loss=float(self.loss.numpy()[e]),
            grad_norm=float(self.grad_norm.numpy()[e]), grad_tol=self.grad_tol, loose_pivots=loose,
            reason=self.reason[e], nearest_S=self.nearest_S[e], nearest_value=float(self.nearest_value.numpy()[e]),
            gamma_diag=() if broken else tuple(self.gamma_diag.numpy()[e].tolist()), assumptions_ok=self.assumptions_ok,
            warnings=self.warnings[e], block_ranks=ranks, ambiguous_values=self.ambiguous_values.get(e, ()),
            hessian_min_eig=None if self.hessian_min_eig is None else self.hessian_min_eig[e])

    def members(self) -> list:
        """Every member's Classification, in order."""
        return [self.member(e) for e in range(len(self.label))]


def input_eps(weights: Sequence[Any]) -> float:
    """Machine epsilon of the least precise floating dtype among the weights as handed in (torch or
    numpy; 0 for integer/bool input, which is exact). Sets the rank and gradient noise floors."""
    eps = 0.0
    for w in weights:
        dt = w.dtype if isinstance(w, torch.Tensor) else np.asarray(w).dtype
        if isinstance(dt, torch.dtype):
            if dt.is_floating_point:
                eps = max(eps, float(torch.finfo(dt).eps))
        elif np.issubdtype(dt, np.inexact):
            eps = max(eps, float(np.finfo(dt).eps))
    return eps


def check_ndims(ws: list[torch.Tensor]) -> None:
    """Raise ValueError unless the weights are one network (every W_h 2-D) or one ensemble (every W_h
    3-D with the same E): never a mix."""
    nd = [w.ndim for w in ws]
    if any(n not in (2, 3) for n in nd) or len(set(nd)) != 1:
        raise ValueError("weights must be all 2-D (one network) or all 3-D (an ensemble (E, d_h, d_{h-1})); got "
                         "shapes " + ", ".join(f"W_{h + 1} {tuple(w.shape)}" for h, w in enumerate(ws)))
    if nd[0] == 3 and len({w.shape[0] for w in ws}) != 1:
        raise ValueError("ensemble weights disagree on the number of members E: "
                         + ", ".join(f"W_{h + 1} {tuple(w.shape)}" for h, w in enumerate(ws)))


def block_name(key) -> str:
    """The name of a ranked matrix in reasons and warnings: ('C', b, a) -> 'W_b..W_a' (or 'W_a'),
    ('B1', i, j) -> 'B1(i,j)', ('B2', i, j) -> 'B2(i,j)' (keys of `pivots.rank_spec`)."""
    kind, a, b = key
    if kind == "C" and a == b:
        return f"W_{a}"
    if kind == "C":
        return f"W_{a}..W_{b}"
    return f"{kind}({a},{b})"
