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

from dataclasses import dataclass, field

import numpy as np
import torch

from dlnlab.linalg import grouped_singular_values
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
    lemma: list = field(default_factory=list)  # [(name, (E,) rank)]: Lemma 24's ranks, when asked for


@dataclass
class _Blocks:
    """Matrices ranked together and what their thresholds need, fixed by the architecture. The noise
    floor of a block is (L * mid) * R, L and R the left-to-right products of the norms of the factors
    left and right of Sxy (`factor_scale`'s rounding); index H, a norm of 1 (an exact factor), pads."""
    keys: list                  # the matrix's name (rank_spec's keys; ("C", b, a) for Lemma 24)
    sources: list               # its source: ("P", b, a) or ("B1", i, j)
    row: dict                   # key (or an exact rank) -> row of the rank arrays
    width: int                  # the longest spectrum (at least 1)
    left: np.ndarray            # (blocks, n) int
    mid: np.ndarray             # (blocks,) |Sxy|_F for a B1 block, 1 for a partial product
    right: np.ndarray           # (blocks, n) int
    pairs: np.ndarray = None    # (n_pivots, 2) rows of (B1, B2) of each pivot, when the blocks are rank_spec's
    exact: np.ndarray = None    # (len(exact), 1) the known exact ranks, rows after the blocks'
    b1: bool = False            # some block is a B1 block (has factors right of Sxy)


def _padded(rows: list, pad: int) -> np.ndarray:
    """Ragged index lists as one (len, max(1, longest)) int array, padded with `pad` at the end."""
    n = max([1] + [len(r) for r in rows])
    return np.array([r + [pad] * (n - len(r)) for r in rows], dtype=np.int64).reshape(len(rows), n)


def _blocks(sources: dict, exact: list, dims, H: int, sxy_fro: float, spec: dict | None = None) -> _Blocks:
    """The `_Blocks` of {key: source} (spec: rank_spec's pivots, to locate their blocks' rows)."""
    lefts, rights, mids, width = [], [], [], 1
    for kind, x, y in sources.values():
        if kind == "P":     # W_x..W_y: d_x x d_{y-1}
            lefts.append(list(range(y - 1, x)))
            rights.append([])
            mids.append(1.0)
            width = max(width, min(dims[x], dims[y - 1]))
        else:               # B1(x, y) = W_{y-1}..W_1 Sxy W_H..W_{x+1}: d_{y-1} x d_x
            lefts.append(list(range(y - 1)))
            rights.append(list(range(x, H)))
            mids.append(sxy_fro)
            width = max(width, min(dims[y - 1], dims[x]))
    keys = list(sources)
    row = {**{k: i for i, k in enumerate(keys)}, **{x: len(keys) + i for i, x in enumerate(exact)}}
    pairs = None
    if spec is not None:
        pairs = np.array([[row[k1], row[k2]] for k1, k2 in spec.values()], dtype=np.int64).reshape(-1, 2)
    return _Blocks(keys, list(sources.values()), row, width, _padded(lefts, H), np.array(mids, dtype=np.float64),
                   _padded(rights, H), pairs, np.array(exact, dtype=np.int64).reshape(-1, 1),
                   any(src[0] == "B1" for src in sources.values()))


@dataclass
class _Plan:
    """The pivot test of one architecture, computed once per (H, dims) and kept on the PreparedData:
    rank_spec, and its blocks alone, with the Lemma 24 blocks, and the Lemma 24 blocks alone."""
    spec: dict
    pivots: list                # the pivots, in rank_spec's order
    exact: list
    lemma: list                 # [(name, key)] of Lemma 24's ranked partial products, in report order
    pivot: _Blocks
    both: _Blocks
    lemma_only: _Blocks


def _plan(prep: PreparedData, dims) -> _Plan:
    """The cached `_Plan` of the architecture dims = [d_0..d_H]."""
    key = ("pivot_plan", tuple(dims))
    plan = prep.cache.get(key)
    if plan is None:
        H = len(dims) - 1
        spec, sources = rank_spec(H, dims, prep.data.assumptions.sxy_rank, prep.sxy_inj, prep.sxy_surj)
        exact = sorted({k for pair in spec.values() for k in pair if not isinstance(k, tuple)})
        lemma = {}
        if H >= 2:  # rk(W_H..W_2) when Sxy has full column rank, rk(W_{H-1}..W_1) when full row rank
            for (b, a), on in (((H, 2), prep.sxy_inj), ((H - 1, 1), prep.sxy_surj)):
                if on:
                    lemma[("C", b, a)] = ("P", b, a)
        plan = _Plan(spec, list(spec), exact, [(block_name(k), k) for k in lemma],
                     _blocks(sources, exact, dims, H, prep.sxy_fro, spec),
                     _blocks({**sources, **lemma}, exact, dims, H, prep.sxy_fro, spec),
                     _blocks(lemma, [], dims, H, prep.sxy_fro))
        prep.cache[key] = plan
    return plan


@dataclass
class _Ranks:
    """The ranked blocks' numerical ranks over the members, one row per block, then one row per
    known exact rank: rank, rank at thr * band (lo), rank at thr / band (hi), stacked in `counts`;
    the blocks' zero-padded spectra, in-band mask and threshold."""
    counts: np.ndarray          # (3, rows, E): rank, lo, hi
    S: np.ndarray               # (blocks, E, width), descending, zero-padded (a zero never counts)
    inside: np.ndarray          # (blocks, E, width): thr / band < s <= thr * band
    thr: np.ndarray             # (blocks, E)


def _spectra(prep: PreparedData, bl: _Blocks, ch: dict, idx: torch.Tensor | None, n: int, H: int,
             singular_values: dict | None) -> np.ndarray:
    """(blocks, n, width) zero-padded singular values of `bl`'s matrices for the members idx (None:
    all), one batched svdvals per shape; partial products' spectra from `singular_values` when given."""
    S = np.zeros((len(bl.keys), n, bl.width))
    b1_keys = [s[1:] for s in bl.sources if s[0] == "B1"]
    if idx is None:
        sub = ch
    else:
        need = {s[1:] for s in bl.sources if s[0] == "P"} | {(j - 1, 1) for _, j in b1_keys if j > 1} \
            | {(H, i + 1) for i, _ in b1_keys if i < H}
        sub = {k: ch[k][idx] for k in need}
    b1 = sandwiches(sub, prep.data.Sxy, b1_keys, H) if b1_keys else {}
    mats = {}
    for row, src in enumerate(bl.sources):
        if src[0] == "P" and singular_values is not None:
            s = singular_values[src[1:]] if idx is None else singular_values[src[1:]][idx]
            S[row, :, :s.shape[-1]] = s.numpy()
        else:
            mats[row] = b1[src[1:]] if src[0] == "B1" else sub[src[1:]]
    for rows, s in grouped_singular_values(mats) if mats else ():
        S[rows, :, :s.shape[-1]] = s.numpy()
    return S


def _rank_blocks(prep: PreparedData, bl: _Blocks, ch: dict, fro: list, floor_rtol: float, idx: torch.Tensor | None,
                 n: int, H: int, singular_values: dict | None, bands: bool = True) -> _Ranks:
    """Rank every block of `bl` at once for the n members idx (None: all; fro: their norms): the
    thresholds max(rank_rtol * s_1, floor_rtol * prod of the factors' norms) per block and member.
    numpy: the same float64 comparisons as torch, with a fraction of the overhead per operation
    (one point runs this path too). bands=False: the ranks alone (no exact rows, lo, hi, inside)."""
    tol, band = prep.tol, prep.tol.rank_band
    S = _spectra(prep, bl, ch, idx, n, H, singular_values)
    norms = np.vstack(fro + [np.ones(n)])
    scale = norms[bl.left[:, 0]]
    for c in range(1, bl.left.shape[1]):
        scale = scale * norms[bl.left[:, c]]
    if bl.b1:  # (L * |Sxy|) * R; a product's factors of 1 are exact, so they are skipped
        R = norms[bl.right[:, 0]]
        for c in range(1, bl.right.shape[1]):
            R = R * norms[bl.right[:, c]]
        scale = (scale * bl.mid[:, None]) * R
    thr = np.maximum(tol.rank_rtol * S[:, :, 0], floor_rtol * scale)
    t = thr[..., None]
    if not bands:
        return _Ranks((S > t)[None].sum(-1), S, None, thr)
    T = np.stack([t, t * band, t / band])           # one comparison and one count for the three ranks
    gt = S > T
    nb = len(bl.keys)
    counts = np.empty((3, nb + bl.exact.shape[0], n), dtype=np.int64)
    counts[:, :nb] = gt.sum(-1)
    counts[:, nb:] = bl.exact
    return _Ranks(counts, S, gt[2] & (S <= T[1]), thr)


def _lemma_ranks(plan: _Plan, bl: _Blocks, rk: _Ranks) -> list:
    """[(name, (E,) rank)] of Lemma 24's blocks, read from ranks over all members."""
    return [(name, rk.counts[0, bl.row[key]]) for name, key in plan.lemma]


def pivot_test(prep: PreparedData, ch: dict, fro: list, dims, floor_rtol: float, piv: np.ndarray,
               r: np.ndarray, singular_values: dict | None, lemma: bool = False) -> PivotTest:
    """Theorem 7.2 for the members in `piv` (S = {1..r}, r < r_max; docs/theory.md §5 step 5): rank
    every block of `rank_spec` once for all of them and decide strict (some pivot certainly loose),
    ambiguous (some pivot inside the tolerance gap) or non-strict (every pivot tightened).

    ch: the partial products {(b, a): W_b..W_a}; fro: [|W_1|_F..|W_H|_F] per member (numpy);
    piv: (E,) bool, the members to test; r: (E,) their ranks. lemma: also rank Lemma 24's partial
    products for every member (`PivotTest.lemma`), with the pivot blocks when every member is tested."""
    H, E = len(fro), piv.shape[0]
    plan = _plan(prep, dims)
    idx = np.nonzero(piv)[0]
    n_p = len(plan.spec)
    lemma = lemma and bool(plan.lemma)
    if not idx.size or not n_p:  # nobody tested, or H = 1: no pivot, so none is loose
        lem = []
        if lemma:
            bl = plan.lemma_only
            lem = _lemma_ranks(plan, bl, _rank_blocks(prep, bl, ch, fro, floor_rtol, None, E, H, singular_values,
                                                         bands=False))
        code = np.full(idx.size, _NS, dtype=np.int64)
        return PivotTest(plan.pivots, code, np.zeros((E, n_p, 2), dtype=np.int64),
                         *np.zeros((3, E, n_p), dtype=bool), {}, H, min(dims), lem)
    every = idx.size == E   # all members tested (one point): no copies of their products
    bl = plan.both if every and lemma else plan.pivot
    rk_ = _rank_blocks(prep, bl, ch, fro if every else [f[idx] for f in fro], floor_rtol,
                       None if every else torch.from_numpy(idx), idx.size, H, singular_values)
    lem = _lemma_ranks(plan, bl, rk_) if bl is plan.both else []
    if lemma and bl is not plan.both:
        lb = plan.lemma_only
        lem = _lemma_ranks(plan, lb, _rank_blocks(prep, lb, ch, fro, floor_rtol, None, E, H, singular_values,
                                                      bands=False))
    return _decide_pivots(plan, bl, rk_, idx, r[idx], E, H, min(dims), lem)


def _decide_pivots(plan: _Plan, bl: _Blocks, rk_: _Ranks, idx: np.ndarray, rr: np.ndarray, E: int, H: int,
                   r_max: int, lem: list) -> PivotTest:
    """The pivot test's verdicts from the ranks of the tested members idx (ranks rr)."""
    n_p = len(plan.pivots)
    ranks = np.zeros((E, n_p, 2), dtype=np.int64)
    flags = np.zeros((3, E, n_p), dtype=bool)
    c = rk_.counts[:, bl.pairs]                          # (3, n_pivots, 2 blocks, members)
    loose = (c[0] > rr).all(1)                           # both blocks of rank > r
    certain = (c[1] > rr).all(1)
    unsure = ~(c[2] <= rr).any(1) & ~certain
    prop4 = (c[0] < rr).any(1)
    strict, amb = certain.any(0), unsure.any(0)
    code = np.where(strict, _SS, np.where(amb, _AM, _NS)).astype(np.int64)
    ranks[idx] = c[0].transpose(2, 0, 1)
    flags[0, idx], flags[1, idx], flags[2, idx] = loose.T, unsure.T, prop4.T
    amb_values = _gap_values(list(plan.spec.values()), bl, rk_, idx, amb & ~strict, unsure.T) if amb.any() else {}
    return PivotTest(plan.pivots, code, ranks, *flags, amb_values, H, r_max, lem)


def _gap_values(keys: list, bl: _Blocks, rk: _Ranks, idx: np.ndarray, amb: np.ndarray, unsure: np.ndarray) -> dict:
    """{member: ((block, singular value, threshold), ...)} of the ambiguous members (rare)."""
    out = {}
    for n in np.nonzero(amb)[0].tolist():
        vals = []
        for p in np.nonzero(unsure[n])[0].tolist():
            for key in keys[p]:
                if isinstance(key, tuple):
                    i = bl.row[key]
                    s, band_mask, thr = rk.S[i, n], rk.inside[i, n], float(rk.thr[i, n])
                    vals += [(block_name(key), v, thr) for v in s[band_mask].tolist()]
        out[int(idx[n])] = tuple(vals)
    return out
