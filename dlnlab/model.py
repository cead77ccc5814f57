"""`DeepLinearNet`: f(x) = W_H ... W_1 x, optionally an ensemble of E independent networks.

Notation of the papers: H is the depth (number of weight matrices), d_h the width of layer h
(d_0 = d_x input, d_H = d_y output) and W_h the (d_h, d_{h-1}) weight of layer h.

Every parameter carries a leading ensemble dimension: W_h is stored as (E, d_h, d_{h-1}) so that E
networks train together with batched matmuls. E = 1 is the default; `net.member(k)` returns the
plain (d_h, d_{h-1}) matrices of member k.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dlnlab.linalg import chain, forward, random_orthogonal

INITS = ("gaussian", "orthogonal", "zero", "small", "balanced")


def member_generator(seed: int, member: int) -> torch.Generator:
    """The RNG of ensemble member k: a single network seeded with `seed + k` is member k."""
    return torch.Generator().manual_seed(int(seed) + int(member))


def _gaussian(shape, std, gen, dtype):
    return torch.randn(shape, generator=gen, dtype=torch.float64).mul_(std).to(dtype)


def _semi_orthogonal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A (rows, cols) matrix with orthonormal rows or columns (whichever is fewer), Haar-random."""
    q = random_orthogonal(max(rows, cols), min(rows, cols), gen)
    return q if rows >= cols else q.T


def init_weights(dims: Sequence[int], kind: str, scale: float, gen: torch.Generator,
                 dtype: torch.dtype = torch.float64, target: torch.Tensor | None = None
                 ) -> list[torch.Tensor]:
    """Initial [W_1, ..., W_H] of one network.

    kind:
      gaussian   - entries N(0, scale^2 / d_{h-1}) (scale 1 keeps the input variance);
      orthogonal - scale times a Haar (semi-)orthogonal matrix;
      zero       - all zeros (a non-strict saddle for H >= 3);
      small      - entries N(0, scale^2): the absolute scale of the saddle-to-saddle regime;
      balanced   - the layers of a balanced factorisation of `scale * target`: every W_h carries
                   s^(1/H) of the target's spectrum, with random orthonormal hidden bases, so that
                   W_{h+1}^T W_{h+1} = W_h W_h^T and the product equals the rank-r_max truncation.
    """
    if kind not in INITS:
        raise ValueError(f"model.init: unknown initialisation {kind!r}; allowed: {', '.join(INITS)}")
    H = len(dims) - 1
    shapes = [(dims[h + 1], dims[h]) for h in range(H)]
    if kind == "zero":
        return [torch.zeros(s, dtype=dtype) for s in shapes]
    if kind == "gaussian":
        return [_gaussian(s, scale / s[1] ** 0.5, gen, dtype) for s in shapes]
    if kind == "small":
        return [_gaussian(s, scale, gen, dtype) for s in shapes]
    if kind == "orthogonal":
        return [(scale * _semi_orthogonal(*s, gen)).to(dtype) for s in shapes]
    if target is None:
        raise ValueError("model.init=balanced needs a target matrix (d_H, d_0)")
    target = torch.as_tensor(target, dtype=torch.float64)
    if tuple(target.shape) != (dims[-1], dims[0]):
        raise ValueError(f"balanced init: target has shape {tuple(target.shape)}, "
                         f"expected (d_H, d_0) = {(dims[-1], dims[0])}")
    return [w.to(dtype) for w in balanced_factors(scale * target, dims, gen)]


def balanced_factors(M: torch.Tensor, dims: Sequence[int], gen: torch.Generator) -> list[torch.Tensor]:
    """[W_1..W_H] with W_H...W_1 = best rank-r_max approximation of M and all layers balanced."""
    H = len(dims) - 1
    k = min(dims)  # r_max: the thinnest layer, inputs and outputs included
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    U, root, Vh = U[:, :k], s[:k].pow(1.0 / H), Vh[:k]
    # Random orthonormal bases of the hidden layers carry the modes from layer to layer.
    bases = [Vh.T] + [_semi_orthogonal(d, k, gen) for d in dims[1:-1]] + [U]
    return [bases[h + 1] @ torch.diag(root) @ bases[h].T for h in range(H)]


class DeepLinearNet(nn.Module):
    """E independent deep linear networks x -> W_H ... W_1 x of widths `dims = [d_0, ..., d_H]`.

    >>> net = DeepLinearNet([4, 3, 3, 2], ensemble=2, init="small", scale=1e-2, seed=0)
    >>> net(torch.randn(5, 4, dtype=torch.float64)).shape   # (E, m, d_H)
    torch.Size([2, 5, 2])
    """

    def __init__(self, dims: Sequence[int], ensemble: int = 1, init: str = "gaussian",
                 scale: float = 1.0, seed: int = 0, dtype: torch.dtype = torch.float64,
                 target: torch.Tensor | None = None):
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 3:
            raise ValueError(f"dims must list d_0..d_H with depth H >= 2, got {dims}")
        if min(dims) < 1:
            raise ValueError(f"every width must be >= 1, got dims={dims}")
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        self.dims, self.E, self.seed = dims, int(ensemble), int(seed)
        members = [init_weights(dims, init, scale, member_generator(seed, k), dtype, target)
                   for k in range(self.E)]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([m[h] for m in members])) for h in range(self.H))

    @property
    def H(self) -> int:
        """Depth: the number of weight matrices."""
        return len(self.dims) - 1

    @property
    def r_max(self) -> int:
        """min(d_0, ..., d_H): the largest rank the end-to-end product can have."""
        return min(self.dims)

    def member(self, k: int) -> list[torch.Tensor]:
        """[W_1, ..., W_H] of member k as (d_h, d_{h-1}) views (detached)."""
        return [w.detach()[k] for w in self.weights]

    @torch.no_grad()
    def load_member(self, k: int, weights: Sequence[torch.Tensor]) -> None:
        """Copy the layers `weights` = [W_1..W_H] of one network into member `k`, in place."""
        for p, w in zip(self.weights, weights):
            p[k].copy_(torch.as_tensor(w, dtype=p.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (m, d_0) rows, or (E, m, d_0) per member; returns (E, m, d_H)."""
        return forward(self.weights, x)

    def product(self, i: int, j: int) -> torch.Tensor:
        """W_i ... W_j (1-based, i >= j) as (E, d_i, d_{j-1}); the identity when i = j - 1."""
        if not (1 <= j <= self.H + 1 and j - 1 <= i <= self.H):
            raise ValueError(f"product(i={i}, j={j}) needs 1 <= j <= i + 1 <= H + 1 (H={self.H})")
        w0 = self.weights[0]
        if i == j - 1:
            eye = torch.eye(self.dims[i], dtype=w0.dtype, device=w0.device)
            return eye.expand(self.E, -1, -1)
        return chain(self.weights, i, j)

    def end_to_end(self) -> torch.Tensor:
        """W_H ... W_1, shape (E, d_H, d_0)."""
        return self.product(self.H, 1)

    def theta_sq(self) -> torch.Tensor:
        """||theta||^2 = sum_h ||W_h||_F^2 per member, shape (E,)."""
        return sum(w.pow(2).sum(dim=(-1, -2)) for w in self.weights)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, ensemble={self.E}"
