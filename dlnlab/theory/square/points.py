"""Generators of labelled points of the square-loss landscape: global minimisers, strict and non-strict
saddles, normal forms, escape paths (docs/theory.md §4).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from dlnlab.linalg import chain, generator_of
from dlnlab.theory.square.critical import weight_grads
from dlnlab.theory.square.data import F64, LandscapeData, as_f64

# ---------------------------------------------------------------------------------------------
# Generators of labelled points (docs/theory.md §2-§4)

@dataclass(eq=False)
class LabelledPoint:
    """A constructed point with what theory says about it.

    label: the label Theorem 7 predicts, or None when it needs the pivot test (generic normal forms with
      S = {1..r}, r < r_max, H >= 4). "not_critical" when the construction is not critical.
    critical: whether the construction is a first-order critical point (by construction, or by
      conditions (a)-(c) of docs/theory.md §2 for random normal forms).
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
        """The depth: number of weight matrices."""
        return len(self.weights)


def random_invertible(d: int, cond: float = 4.0, generator: torch.Generator | int | None = None) -> torch.Tensor:
    """A random d x d matrix Q_1 diag(s) Q_2 (Q Haar-like orthogonal, s log-uniform in [cond^-1/2, cond^1/2])."""
    g = generator_of(generator)
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
    g = generator_of(generator)
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
    g = generator_of(generator)
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
    """Conditions (a)-(c) of docs/theory.md §2: the normal form with these Z's is critical iff
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
        _, grads = weight_grads(ws, data)
        gn = math.sqrt(sum(float((g * g).sum()) for g in grads))
        return gn <= 1e-9 * max(data.tr_syy, 1e-300) * _prod_scale(ws)
    return normal_form_critical(data, dims, S, Zs)


def _normal_form_label(data: LandscapeData, S, Zs, r_max: int, H: int, critical: bool) -> str | None:
    """Theorem 7 without a pivot test, or the explicit H = 3 rule of docs/theory.md §4; None when neither decides."""
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
    probability `density`. `critical` comes from conditions (a)-(c) (docs/theory.md §2); when d_y > d_x (where
    (a)-(c) are sufficient but not necessary) from the closed-form gradient. With the defaults about
    a third of the draws are NOT critical (label "not_critical").

    critical_only=True guarantees a critical point: the Z's are redrawn until (a)-(c) hold (rejection
    sampling, i.e. the same sparse law conditioned on criticality, so it still yields critical points
    with fewer than two zero Z's, e.g. Z_3 Z_2 = 0 with both non-zero); after max_tries failed draws,
    two random Z's of the last draw are zeroed (Prop. 10: then critical for any other Z's), and the
    result is checked again.

    The label is what Theorem 7 gives without a pivot test (r = r_max; S not top; H = 2), or for H = 3
    the explicit rule of docs/theory.md §4 (non-strict iff Z_2 = 0, Z_3 = 0 and Z_1 Sxy U_Q = 0); None otherwise
    (H >= 4, S top, r < r_max: the pivot test decides, e.g. `dlnlab.theory.square.classify`), and "not_critical"
    when (a)-(c) fail.
    """
    g = generator_of(generator)
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
    """One critical point per admissible S (|S| <= r_max), all Z = 0 (Prop. 2), random D_h (the oracles of docs/theory.md §4).

    Labels: S = {1..r_max} global_min; S = {1..r}, r < r_max: strict (H = 2) / non-strict (H >= 3,
    all Z = 0 is tightened); any other S strict.
    """
    g = generator_of(generator)
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
    """The third-order escape path from the App. B.8 tightened point (docs/theory.md §3), S = {1..r}, r < r_max:

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
        """The depth: number of weight matrices."""
        return len(self.base)

    def weights_at(self, t: float) -> list[torch.Tensor]:
        """The point base + t * direction on the path."""
        return [w + t * d for w, d in zip(self.base, self.direction)]

    def loss_formula(self, t: float) -> float:
        """The loss along the path in closed form: L(0) - 2 lam t^H + lam t^(2H)."""
        return self.base_loss - 2 * self.lam * t ** self.H + self.lam * t ** (2 * self.H)


def escape_path(data: LandscapeData, dims: Sequence[int], r: int, *,
                generator: torch.Generator | int | None = None, d_cond: float | None = None) -> EscapePath:
    """The escape path of docs/theory.md §3 at the all-Z = 0 point of S = {1..r} (non-strict for H >= 3).

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
        Ds = _random_Ds(dims, d_cond, generator_of(generator))
        base, direction = apply_gauge(base, Ds), apply_gauge(direction, Ds)
    return EscapePath(base=base, direction=direction, r=r, lam=float(data.lam[r]),
                      base_loss=data.critical_value(S))
