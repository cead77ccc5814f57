"""Critical values and plateau values of the square loss, and the loss and its gradient in closed form
(docs/theory.md §2).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from dlnlab.linalg import product
from dlnlab.theory.square.data import LandscapeData, as_data, as_weights, format_S

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
        """The fields as a flat dict (one table row; S as "{1,2}", labels joined by "|")."""
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
        """The fields as a flat dict (one table row; S as "{1,2}")."""
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

def loss_of_product(P: torch.Tensor, data: LandscapeData) -> torch.Tensor:
    """L = ||(P - A) Sxx^{1/2}||_F^2 + ls_loss, which equals ||P X^T - Y^T||_F^2 (>= 0, accurate near 0)."""
    E = (P - data.A) @ data.Sxx_half
    return (E * E).sum((-2, -1)) + data.ls_loss


def weight_grads(ws: list[torch.Tensor], data: LandscapeData, with_grad: bool = True):
    """(L, [dL/dW_1, ..., dL/dW_H]) as tensors (batched or not) of float64 weights already converted
    (`as_weights`); with_grad=False: (L, None)."""
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
    L, grads = weight_grads(as_weights(weights), data)
    return (float(L) if L.ndim == 0 else L.numpy()), grads


def grad_norm(weights: Sequence[Any], X_or_data: Any, Y: Any = None):
    """||grad L||, the Frobenius norm over all parameters (float; numpy array for an ensemble)."""
    _, grads = loss_and_grad(weights, X_or_data, Y)
    g = torch.stack([(g * g).sum((-2, -1)) for g in grads]).sum(0).sqrt()
    return float(g) if g.ndim == 0 else g.numpy()


