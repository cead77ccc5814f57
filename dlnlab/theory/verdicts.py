"""The verdict of Theorem 7 and its tolerances (docs/theory.md §3, §5): the data types shared by the
per-point classifier (`dlnlab.theory.classify`) and its batched form (`dlnlab.theory.classify_batch`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from dlnlab.theory.data import format_S


@dataclass(frozen=True)
class Tolerances:
    """Every tolerance of the classifier (all relative ones are dimensionless).

    grad_rtol, grad_atol: the point is not critical iff ||grad L||_F > grad_atol + g * tr(Syy),
        g = max(grad_rtol, grad_eps * eps(input dtype)) (grad over all parameters, paper loss;
        tr(Syy) = the loss at W = 0). Exact float64 points give ~1e-13 * tr(Syy); for training
        checkpoints use ~1e-2 (docs/theory.md §5 "training checkpoints").
    grad_eps: the gradient floor in units of the input dtype's machine epsilon: exact critical points
        rounded to float32 have ||grad L|| up to ~10 eps * tr(Syy) (measured on gauged H = 4 global
        minima), above grad_rtol's 1e-6. No effect for float64 input (100 * 2.2e-16 << 1e-6).
    rank_rtol: relative numerical-rank threshold (see the module docstring). Exact points: any value in
        1e-12..1e-3 works; for training checkpoints 1e-2.
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
        for name in ("grad_rtol", "grad_atol", "grad_eps", "rank_floor_rtol", "rank_floor_eps", "value_rtol",
                     "eig_gap_rtol", "data_rank_rtol"):
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


class _Rank:
    """Numerical rank of one matrix: nominal rank, and the [lo, hi] range over the ambiguity band."""
    __slots__ = ("rank", "lo", "hi", "amb")

    def __init__(self, s: np.ndarray, thr: float, band: float, name: str):
        self.rank = int((s > thr).sum())
        self.lo = int((s > thr * band).sum())
        self.hi = int((s > thr / band).sum())
        self.amb = tuple((name, float(v), thr) for v in s if thr / band < v <= thr * band)

    @classmethod
    def exact(cls, k: int) -> "_Rank":
        self = cls.__new__(cls)
        self.rank = self.lo = self.hi = k
        self.amb = ()
        return self


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


def _check_ndims(ws: list[torch.Tensor]) -> None:
    """One network (every W_h 2-D) or one ensemble (every W_h 3-D with the same E): never a mix."""
    nd = [w.ndim for w in ws]
    if any(n not in (2, 3) for n in nd) or len(set(nd)) != 1:
        raise ValueError("weights must be all 2-D (one network) or all 3-D (an ensemble (E, d_h, d_{h-1})); got "
                         "shapes " + ", ".join(f"W_{h + 1} {tuple(w.shape)}" for h, w in enumerate(ws)))
    if nd[0] == 3 and len({w.shape[0] for w in ws}) != 1:
        raise ValueError("ensemble weights disagree on the number of members E: "
                         + ", ".join(f"W_{h + 1} {tuple(w.shape)}" for h, w in enumerate(ws)))


def _block_name(key) -> str:
    kind, a, b = key
    if kind == "C" and a == b:
        return f"W_{a}"
    if kind == "C":
        return f"W_{a}..W_{b}"
    return f"{kind}({a},{b})"
