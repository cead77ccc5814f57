"""The pivots of Theorem 7 and their complementary blocks (docs/theory.md §3), one builder for the
classifier's pivot test (`classify`, `classify_batch`) and the trajectory's tight margin (`trajectory`).

For a pivot (i, j), 1 <= j < i <= H, the blocks are the two arcs of the cycle W_H..W_1 Sxy that avoid
W_i and W_j:  B1(i, j) = W_{j-1}..W_1 Sxy W_H..W_{i+1},  B2(i, j) = W_{i-1}..W_{j+1}.

A block is described by a source, so that callers decompose each matrix once and share what they
already have (the partial products of the metrics hook and their spectra):
    ("I", j)        the identity I_{d_j} (B2(j+1, j))
    ("S",)          Sxy itself (B1(H, 1))
    ("P", b, a)     the partial product W_b..W_a
    ("B1", i, j)    a true B1 block with Sxy inside (`sandwiches` builds it)
The rank shortcuts of docs/theory.md §5 replace some B1 blocks by a partial product of the same rank
but other singular values: only a rank test may use them (`shortcuts=True`), never a margin.
"""
from __future__ import annotations

import torch

__all__ = ["pivots", "block_sources", "sandwiches", "b1_cores", "factor_scale", "rank_spec"]


def pivots(H: int) -> list[tuple[int, int]]:
    """Every pivot (i, j), 1 <= j < i <= H, in the order the classifier reports them."""
    return [(i, j) for i in range(2, H + 1) for j in range(1, i)]


def block_sources(H: int, sxy_inj: bool = False, sxy_surj: bool = False) -> dict:
    """{(i, j): (source of B1, source of B2)}.

    sxy_inj (Sxy of full column rank): rk B1(i, 1) = rk W_H..W_{i+1}; sxy_surj (full row rank):
    rk B1(H, j) = rk W_{j-1}..W_1. False for both gives the true blocks."""
    out = {}
    for i, j in pivots(H):
        b2 = ("I", j) if i == j + 1 else ("P", i - 1, j + 1)
        if i == H and j == 1:
            b1 = ("S",)
        elif j == 1 and sxy_inj:
            b1 = ("P", H, i + 1)
        elif i == H and sxy_surj:
            b1 = ("P", j - 1, 1)
        else:
            b1 = ("B1", i, j)
        out[(i, j)] = (b1, b2)
    return out


def sandwiches(products: dict, Sxy: torch.Tensor, keys, H: int) -> dict:
    """{(i, j): B1(i, j)} for the pivots in `keys`, from the partial products {(b, a): W_b..W_a}
    (batched or not); the left arcs W_{j-1}..W_1 Sxy are shared between pivots of the same j.
    A batched product by the 2-D Sxy is one GEMM of the stack, which rounds as the 2-D product of
    each member (a bmm of an expanded Sxy would not, for small blocks)."""
    left: dict = {}
    out = {}
    for i, j in keys:
        if j not in left:
            left[j] = Sxy if j == 1 else products[(j - 1, 1)] @ Sxy
        out[(i, j)] = left[j] if i == H else left[j] @ products[(H, i + 1)]
    return out


def b1_cores(pp: dict, Sxy: torch.Tensor, keys, H: int) -> dict:
    """{("B1", i, j): a matrix with the singular values of B1(i, j) = L Sxy R}, L = W_{j-1}..W_1,
    R = W_H..W_{i+1}. A factor with more rows (L) or columns (R) than Sxy is replaced by the
    triangular factor of its QR decomposition, which has its singular values and right (left)
    singular vectors: the block then shrinks to at most d_x x d_y, however wide the layers. For
    singular values only (the tight margin); a rank test that must round as the per-point
    classifier does uses `sandwiches`."""
    dx, dy = Sxy.shape
    left, right, out = {}, {}, {}
    for i, j in keys:
        if j not in left:
            L = pp[(j - 1, 1)] if j > 1 else None
            if L is not None and L.shape[-2] > dx:
                L = torch.linalg.qr(L).R
            left[j] = Sxy if L is None else L @ Sxy
        if i not in right:
            R = pp[(H, i + 1)] if i < H else None
            if R is not None and R.shape[-1] > dy:
                R = torch.linalg.qr(R.transpose(-1, -2)).R.transpose(-1, -2)
            right[i] = R
        out[("B1", i, j)] = left[j] if right[i] is None else left[j] @ right[i]
    return out


def factor_scale(source: tuple, norms: list, sxy_norm, H: int):
    """The product of the norms of a block's factors (math.prod's order: left to right), given the
    per-layer norms [|W_1|..|W_H|] and |Sxy| in the same norm; 1 for an identity."""
    kind = source[0]
    if kind == "I":
        return 1
    if kind == "S":
        return sxy_norm
    if kind == "P":
        b, a = source[1], source[2]
        return _prod(norms[a - 1:b])
    i, j = source[1], source[2]
    return _prod(norms[:j - 1]) * sxy_norm * _prod(norms[i:H])


def _prod(xs):
    out = 1
    for x in xs:
        out = out * x
    return out


def rank_spec(H: int, dims, sxy_rank: int, sxy_inj: bool, sxy_surj: bool) -> tuple[dict, dict]:
    """The classifier's pivot test (docs/theory.md §5 step 5, with the rank shortcuts):
    ({(i, j): (key of B1, key of B2)}, {key: source of the matrix to rank}).

    A key is an int where the rank is known exactly (I_{d_j}: d_j; Sxy: its rank), else the name of
    the matrix in messages: ("C", b, a) for W_b..W_a standing in for a B1 block, ("B2", i, j),
    ("B1", i, j). dims = [d_0..d_H]."""
    spec, sources = {}, {}
    for (i, j), (s1, s2) in block_sources(H, sxy_inj, sxy_surj).items():
        if s2[0] == "I":
            k2 = dims[j]
        else:
            k2 = ("B2", i, j)
            sources[k2] = s2
        if s1[0] == "S":
            k1 = sxy_rank
        else:
            k1 = ("C",) + s1[1:] if s1[0] == "P" else s1
            sources[k1] = s1
        spec[(i, j)] = (k1, k2)
    return spec, sources
