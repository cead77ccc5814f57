"""Partial products of a checkpoint, their singular values and numerical ranks.

A partial product is W_j ... W_i for 1 <= i <= j <= H (the product of layers i through j). All
H(H+1)/2 of them come from H(H-1)/2 matmuls by extending each prefix W_i, W_{i+1} W_i, ... once
(O(H^2) matmuls, not O(H^3)); their spectra are computed with one batched `svdvals` per shape.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch


def partial_products(weights: Sequence[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
    """{(j, i): W_j ... W_i} for 1 <= i <= j <= H; weights may carry a leading ensemble dim."""
    H = len(weights)
    out = {}
    for i in range(1, H + 1):
        p = weights[i - 1]
        out[(i, i)] = p
        for j in range(i + 1, H + 1):
            p = weights[j - 1] @ p
            out[(j, i)] = p
    return out


def grouped_singular_values(mats: dict) -> list[tuple[list, torch.Tensor]]:
    """[(keys, singular values stacked along dim 0)], one batched svdvals per shape of matrix."""
    groups = defaultdict(list)
    for key, m in mats.items():
        groups[tuple(m.shape)].append(key)
    return [(keys, torch.linalg.svdvals(torch.stack([mats[k] for k in keys]))) for keys in groups.values()]


def singular_values(mats: dict) -> dict:
    """Singular values (descending) of every matrix in `mats`, one batched svdvals per shape."""
    return {k: s[n] for keys, s in grouped_singular_values(mats) for n, k in enumerate(keys)}


def numerical_rank(s: torch.Tensor, rtol: float, floor: float = 0.0) -> torch.Tensor:
    """#{s_i > rtol * max(s_1, floor)} along the last dim.

    `rtol` alone is the usual relative rank; `floor` (a scale of the problem, >= 0) keeps a matrix
    whose singular values are all tiny (small initialisation) at rank 0 instead of full rank.
    """
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rank tolerance must lie in (0, 1), got {rtol}")
    top = s[..., :1].clamp(min=floor)
    return (s > rtol * top).sum(-1)


def balancedness(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """||W_{h+1}^T W_{h+1} - W_h W_h^T||_F for h = 1..H-1 (zero along gradient flow from a balanced start)."""
    return [torch.linalg.matrix_norm(weights[h].transpose(-1, -2) @ weights[h]
                                     - weights[h - 1] @ weights[h - 1].transpose(-1, -2))
            for h in range(1, len(weights))]
