"""The pivots of Theorem 7 and their complementary blocks (docs/theory.md §3), one builder for the
classifier's pivot test (`pivot_test`, for `theorem7`) and the trajectory's tight margin (`trajectory`).

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

from dataclasses import dataclass

import numpy as np
import torch

from dlnlab.linalg import singular_values as spectra_of
from dlnlab.theory.square.verdicts import PreparedData, block_name

__all__ = [
    # the blocks
    "pivots", "block_sources", "sandwiches", "b1_cores", "factor_scale", "ordered_prod", "rank_spec",
    # the pivot test of Theorem 7.2
    "PivotTest", "pivot_test",
]

# label codes (indices into verdicts.LABELS) the pivot test decides
_SS, _NS, _AM = 2, 3, 4


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
        return ordered_prod(norms[a - 1:b])
    i, j = source[1], source[2]
    return ordered_prod(norms[:j - 1]) * sxy_norm * ordered_prod(norms[i:H])


def ordered_prod(xs):
    """math.prod of per-layer factors (floats or per-member tensors), multiplied left to right as
    math.prod does: the noise floors then round alike for one point and for an ensemble."""
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


@dataclass
class PivotTest:
    """The pivot test's columns over all E members (zeros where it did not run), numpy arrays."""
    pivots: list
    code: np.ndarray            # (n,) labels of the tested members, in member order
    block_ranks: np.ndarray     # (E, n_pivots, 2)
    loose: np.ndarray           # (E, n_pivots) both blocks of rank > r
    amb: np.ndarray             # (E, n_pivots) neither certainly loose nor certainly tight
    prop4: np.ndarray           # (E, n_pivots) a block of rank < r (Prop. 4 fails)
    amb_values: dict            # member -> ambiguous_values
    H: int
    r_max: int


def _block_spectra(prep: PreparedData, ch: dict, sources: dict, idx: torch.Tensor | None, H: int,
                   singular_values: dict | None) -> dict:
    """Singular values of every ranked block of `rank_spec`, for the members idx (None: all; each
    matrix once, batched); the partial products' own spectra are taken from `singular_values` when given."""
    b1_keys = [s[1:] for s in sources.values() if s[0] == "B1"]
    if idx is None:
        sub = ch
    else:
        sub = {k: ch[k][idx] for k in {s[1:] for s in sources.values() if s[0] == "P"}}
        sub.update({k: ch[k][idx] for k in [(j - 1, 1) for _, j in b1_keys if j > 1]
                    + [(H, i + 1) for i, _ in b1_keys if i < H]})
    b1 = sandwiches(sub, prep.data.Sxy, b1_keys, H)
    mats = {key: b1[src[1:]] if src[0] == "B1" else sub[src[1:]] for key, src in sources.items()
            if not (src[0] == "P" and singular_values is not None)}
    sv = spectra_of(mats) if mats else {}
    if singular_values is not None:
        sv.update({key: singular_values[src[1:]] if idx is None else singular_values[src[1:]][idx]
                   for key, src in sources.items() if src[0] == "P"})
    return sv


@dataclass
class _Ranks:
    """The ranked blocks' numerical ranks over the members, one row per block (`keys`), then one row
    per known exact rank (`exact`): rank, rank at thr * band (lo), rank at thr / band (hi); in-band
    mask and threshold of the ranked blocks."""
    row: dict                   # key (tuple, or an int: an exact rank) -> row
    rank: np.ndarray            # (rows, E)
    lo: np.ndarray
    hi: np.ndarray
    inside: np.ndarray          # (blocks, E, n): thr / band < s <= thr * band (zero-padded spectra)
    thr: np.ndarray             # (blocks, E)


def _block_ranks(prep: PreparedData, sources: dict, sv: dict, fro: list, floor_rtol: float, H: int,
                 exact: list, E: int) -> _Ranks:
    """Rank every block of `sources` at once: their spectra zero-padded into one (blocks, E, n) array
    (a zero never counts), the thresholds max(rank_rtol * s_1, floor_rtol * prod of the factors'
    norms) per block and member. numpy: the same float64 comparisons as torch, with a fraction of the
    overhead per operation (one point runs this path too)."""
    tol, band = prep.tol, prep.tol.rank_band
    keys = list(sources)
    S = np.zeros((len(keys), E, max([1] + [sv[k].shape[-1] for k in keys])))
    for i, k in enumerate(keys):
        S[i, :, :sv[k].shape[-1]] = sv[k].numpy()
    scale = np.zeros((len(keys), E))
    for i, k in enumerate(keys):
        scale[i] = factor_scale(sources[k], fro, prep.sxy_fro, H)
    thr = np.maximum(tol.rank_rtol * S[:, :, 0], floor_rtol * scale)
    t = thr[..., None]
    above = S > t / band
    ex = np.repeat(np.array(exact, dtype=np.int64)[:, None], E, 1)
    row = {**{k: i for i, k in enumerate(keys)}, **{x: len(keys) + i for i, x in enumerate(exact)}}
    return _Ranks(row, np.concatenate([(S > t).sum(-1), ex]), np.concatenate([(S > t * band).sum(-1), ex]),
                  np.concatenate([above.sum(-1), ex]), above & (S <= t * band), thr)


def pivot_test(prep: PreparedData, ch: dict, fro: list, dims, floor_rtol: float, piv: np.ndarray,
               r: np.ndarray, singular_values: dict | None) -> PivotTest:
    """Theorem 7.2 for the members in `piv` (S = {1..r}, r < r_max; docs/theory.md §5 step 5): rank
    every block of `rank_spec` once for all of them and decide strict (some pivot certainly loose),
    ambiguous (some pivot inside the tolerance gap) or non-strict (every pivot tightened).

    ch: the partial products {(b, a): W_b..W_a}; fro: [|W_1|_F..|W_H|_F] per member (numpy);
    piv: (E,) bool, the members to test; r: (E,) their ranks."""
    d, H, E = prep.data, len(fro), piv.shape[0]
    idx = np.nonzero(piv)[0]
    if not idx.size:
        n_p = H * (H - 1) // 2
        return PivotTest(pivots(H), np.zeros(0, dtype=np.int64), np.zeros((E, n_p, 2), dtype=np.int64),
                         *np.zeros((3, E, n_p), dtype=bool), {}, H, min(dims))
    spec, sources = rank_spec(H, dims, d.assumptions.sxy_rank, prep.sxy_inj, prep.sxy_surj)
    n_p = len(spec)
    ranks = np.zeros((E, n_p, 2), dtype=np.int64)
    flags = np.zeros((3, E, n_p), dtype=bool)
    if not n_p:  # H = 1: no pivot, so none is loose
        return PivotTest([], np.full(idx.size, _NS, dtype=np.int64), ranks, *flags, {}, H, min(dims))
    every = idx.size == E   # all members tested (one point): no copies of their products
    sv = _block_spectra(prep, ch, sources, None if every else torch.from_numpy(idx), H, singular_values)
    exact = sorted({k for pair in spec.values() for k in pair if not isinstance(k, tuple)})
    rk_ = _block_ranks(prep, sources, sv, fro if every else [f[idx] for f in fro], floor_rtol, H, exact,
                       idx.size)
    rr = r[idx]
    i1 = np.array([rk_.row[k1] for k1, _ in spec.values()])
    i2 = np.array([rk_.row[k2] for _, k2 in spec.values()])
    b1, b2 = rk_.rank[i1], rk_.rank[i2]                       # (n_pivots, members)
    loose = (b1 > rr) & (b2 > rr)
    certain = (rk_.lo[i1] > rr) & (rk_.lo[i2] > rr)
    unsure = ~((rk_.hi[i1] <= rr) | (rk_.hi[i2] <= rr)) & ~certain
    prop4 = (b1 < rr) | (b2 < rr)
    strict, amb = certain.any(0), unsure.any(0)
    code = np.where(strict, _SS, np.where(amb, _AM, _NS)).astype(np.int64)
    ranks[idx] = np.stack([b1, b2], -1).transpose(1, 0, 2)
    flags[0, idx], flags[1, idx], flags[2, idx] = loose.T, unsure.T, prop4.T
    amb_values = _gap_values(list(spec.values()), sv, rk_, idx, amb & ~strict, unsure.T)
    return PivotTest(list(spec), code, ranks, *flags, amb_values, H, min(dims))


def _gap_values(keys: list, sv: dict, rk: _Ranks, idx: np.ndarray, amb: np.ndarray, unsure: np.ndarray) -> dict:
    """{member: ((block, singular value, threshold), ...)} of the ambiguous members (rare)."""
    out = {}
    for n in np.nonzero(amb)[0].tolist():
        vals = []
        for p in np.nonzero(unsure[n])[0].tolist():
            for key in keys[p]:
                if isinstance(key, tuple):
                    s, i = sv[key][n].numpy(), rk.row[key]
                    band_mask, thr = rk.inside[i, n, :s.shape[-1]], float(rk.thr[i, n])
                    vals += [(block_name(key), v, thr) for v in s[band_mask].tolist()]
        out[int(idx[n])] = tuple(vals)
    return out
