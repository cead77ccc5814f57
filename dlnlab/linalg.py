"""Linear algebra of a deep linear network: the bottom layer of dlnlab, imports nothing of it.

One index convention everywhere (docs/theory.md §1): layers are W_1..W_H, W_h of shape
(d_h, d_{h-1}), and `chain(ws, j, i)` is the partial product W_j ... W_i for 1 <= i <= j <= H
(the layers i through j, applied to an input in that order). Every function accepts a leading
ensemble dimension: W_h of shape (E, d_h, d_{h-1}).

A partial product's numerical rank counts s > rtol * max(s_1, floor) (docs/columns.md, "ranks").
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

__all__ = [
    # products
    "chain", "product", "partial_products", "forward",
    # spectra and ranks
    "grouped_singular_values", "singular_values", "numerical_rank", "balancedness", "finite_members",
    # random matrices
    "random_orthogonal", "generator_of",
]


def chain(weights: Sequence[torch.Tensor], j: int, i: int) -> torch.Tensor | None:
    """W_j ... W_i (1-based, j >= i); None for the empty product j = i - 1 (the identity).

    Args:
        weights: [W_1, ..., W_H], each (..., d_h, d_{h-1}).
        j, i: the last and first layer of the product.

    Returns:
        The (..., d_j, d_{i-1}) product, or None when j = i - 1.
    """
    if j < i:
        if j != i - 1:
            raise ValueError(f"chain(j={j}, i={i}): needs j >= i - 1")
        return None
    p = weights[i - 1]
    for h in range(i + 1, j + 1):
        p = weights[h - 1] @ p
    return p


def product(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """The end-to-end matrix W_H ... W_1, shape (..., d_H, d_0)."""
    return chain(weights, len(weights), 1)


def forward(weights: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The network map on samples as rows: x (..., m, d_0) -> x W_1^T ... W_H^T (..., m, d_H).

    Layer by layer (m x d_h intermediates) rather than through the product: cheaper when the batch
    is smaller than the widths, as in SGD.
    """
    for w in weights:
        x = x @ w.transpose(-1, -2)
    return x


def partial_products(weights: Sequence[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
    """{(j, i): W_j ... W_i} for all 1 <= i <= j <= H.

    All H(H+1)/2 products cost H(H-1)/2 matmuls: each prefix W_i is extended once by W_{i+1}, ...
    """
    H = len(weights)
    # stacks of equal batch: bmm is the kernel `@` calls, without its reshapes (same numbers)
    mul = torch.bmm if all(w.dim() == 3 for w in weights) and len({w.shape[0] for w in weights}) == 1 \
        else torch.matmul
    out = {}
    for i in range(1, H + 1):
        p = weights[i - 1]
        out[(i, i)] = p
        for j in range(i + 1, H + 1):
            p = mul(weights[j - 1], p)
            out[(j, i)] = p
    return out


def grouped_singular_values(mats: dict, stack_below: int = 64) -> list[tuple[list, torch.Tensor]]:
    """[(keys, singular values stacked along dim 0)], one batched svdvals per shape of matrix.

    Matrices with a leading batch of `stack_below` or more are decomposed where they lie (stacking
    them would only copy); the singular values are the same either way (one LAPACK call per matrix)."""
    groups = defaultdict(list)
    for key, m in mats.items():
        groups[tuple(m.shape)].append(key)
    out = []
    for keys in groups.values():
        m0 = mats[keys[0]]
        if m0.dim() > 2 and m0.shape[0] >= stack_below:
            out.append((keys, torch.stack([torch.linalg.svdvals(mats[k]) for k in keys])))
        else:
            out.append((keys, torch.linalg.svdvals(torch.stack([mats[k] for k in keys]))))
    return out


def finite_members(mats) -> torch.Tensor:
    """(E,) bool: every entry of member e of every (E, ...) tensor in `mats` is finite. A sum is finite
    when its terms are, unless it overflows: only members with a non-finite sum are checked entry by
    entry (the cheap test on the whole batch, the exact one where it could be wrong)."""
    mats = list(mats)
    ok = torch.ones(mats[0].shape[0], dtype=torch.bool, device=mats[0].device)
    for m in mats:
        ok &= torch.isfinite(m.flatten(1).sum(1))
    if not bool(ok.all()):
        bad = torch.nonzero(~ok).flatten()
        ok[bad] = torch.isfinite(torch.cat([m[bad].flatten(1) for m in mats], 1)).all(1)
    return ok


def singular_values(mats: dict) -> dict:
    """Singular values (descending) of every matrix in `mats`, one batched svdvals per shape."""
    return {k: s[n] for keys, s in grouped_singular_values(mats) for n, k in enumerate(keys)}


def numerical_rank(s: torch.Tensor, rtol: float, floor: float | torch.Tensor = 0.0) -> torch.Tensor:
    """#{s_k > rtol * max(s_1, floor)} along the last dim of descending singular values `s`.

    `rtol` alone is the usual relative rank; `floor` (a scale of the problem, >= 0) keeps a matrix
    whose singular values are all tiny (small initialisation) at rank 0 instead of full rank.
    """
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rank tolerance must lie in (0, 1), got {rtol}")
    top = s[..., :1].clamp(min=floor) if not torch.is_tensor(floor) else torch.maximum(s[..., :1], floor)
    return (s > rtol * top).sum(-1)


def balancedness(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """||W_{h+1}^T W_{h+1} - W_h W_h^T||_F for h = 1..H-1 (zero along gradient flow from a balanced start)."""
    return [torch.linalg.matrix_norm(weights[h].transpose(-1, -2) @ weights[h]
                                     - weights[h - 1] @ weights[h - 1].transpose(-1, -2))
            for h in range(1, len(weights))]


def generator_of(seed_or_generator: torch.Generator | int | None) -> torch.Generator | None:
    """A torch.Generator from a seed (None stays None: torch's global generator)."""
    if seed_or_generator is None or isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    return torch.Generator().manual_seed(int(seed_or_generator))


def random_orthogonal(n: int, k: int | None = None, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-random (n, k) matrix with orthonormal columns (k <= n; k = n by default).

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q: without that sign fix
    the distribution is not Haar (Mezzadri 2007).
    """
    k = n if k is None else k
    q, r = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=torch.float64))
    d = torch.diagonal(r)
    q = q * torch.sign(d).where(d != 0, torch.ones((), dtype=d.dtype))
    return q.to(dtype)
