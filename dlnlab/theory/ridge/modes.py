"""Labels for regularised and completion landscapes, where the square-loss theorem does not apply.

With ridge lambda > 0 (objective C(A_theta) + lambda * sum_h ||W_h||_F^2), and for matrix completion at
any lambda, Theorem 7 (docs/theory.md §3) says nothing. `classify` labels a point by first and second
order instead:

  not_critical   ||grad|| > grad_tol
  strict_saddle  the Hessian has an eigenvalue < -eig_tol (found through Hessian-vector products)
  local_min      PSD, and positive definite on the space normal to the symmetry orbit (below)
  degenerate     PSD, and singular beyond the symmetry orbit; `reason` says where

The symmetry orbit. A point is never an isolated critical point: for lambda > 0 the objective is
invariant under W_{h+1} -> W_{h+1} Q^T, W_h -> Q W_h for every orthogonal Q acting on hidden layer h
(for lambda = 0 under any invertible D: the product is all that counts). At a critical point the
Hessian vanishes on the tangent space T of that orbit (dimension sum_h d_h(d_h-1)/2 minus the
generators that fix the point). So "PSD and singular" holds at EVERY minimum of a network with a hidden
layer of width >= 2. The rule used here: `local_min` iff the Hessian restricted to the orthogonal
complement of T is positive definite (a Morse-Bott minimum, hence a strict local minimum modulo the
symmetry); otherwise `degenerate`. T is computed numerically from the generators (`orbit_basis`).

What we observed (float64, tests/theory/test_ridge.py): at the ridge minima of docs/theory.md §7 (H = 3, lambda > 0)
the Hessian's null space is exactly T (nullity == orbit dimension); zero modes are NOT flat to second
order, they carry curvature 2*lambda from the ridge term (the origin of an H >= 3 network has Hessian
2*lambda*I). Their stability against the O(eps^{H-1}) data force is what makes them absorbing. Flat
directions beyond the orbit appear (`degenerate`) at lambda = 0 (zero modes, then the data term alone
is flat to order H-1 >= 2) and when a mode sits exactly at its existence threshold y* (the on-state and
the barrier merge, the radial curvature vanishes).

Tolerances are named fields of `LabelTolerances` / `RankTolerances` (no other number decides); a
label whose deciding number lies within a factor `margin` of its tolerance lists that in
`near_boundary`.

Closed forms (docs/theory.md §7) for a fully observed target Y with the lab's loss a * ||A - Y||_F^2,
a = 1/N: each singular mode y of Y behaves like the scalar g(x) = a (x^L - y)^2 + lambda L x^2 (balanced
layers of size x, s = x^L): `mode_threshold`, `mode_roots`, `mode_energy`, `tie_value`, `mode_table`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from dlnlab.linalg import balancedness, product

F64 = torch.float64
LABELS = ("not_critical", "strict_saddle", "local_min", "degenerate")
TOL_MODES = ("absolute", "relative")


# ---------------------------------------------------------------------------------------------
# Tolerances

@dataclass
class RankTolerances:
    """Ranks and the sets B_r (docs/theory.md §7, "Rank metrics").

    a_tol      A-rank (end-to-end): #{s_i(A) > a_tol}
    layer_tol  layer rank: max_l #{s_i(W_l) > layer_tol}  (the B_r membership test)
    mode       "absolute": the tolerances above are thresholds on s_i (the spec's numbers, made for
               targets of scale ~10); "relative": thresholds are tol * s_1 of that same matrix.
    bal_rtol   B_r needs approximate balancedness:
               max_h ||W_{h+1}^T W_{h+1} - W_h W_h^T||_F <= bal_rtol * ||theta||^2 / H.
               The ratio lies in [0, H] (||W^T W||_F <= ||W||_F^2), so bal_rtol >= H is vacuous.
               Measured (float64): ~1e-15 at GD minima; 0.4-0.8 at the lab's random inits (gaussian,
               small; H = 3, 4); along the 16 SGD members of R1 (lr 0.1, batch 1, 1280 records)
               0.13-1.51, median 0.56: single-entry steps unbalance the layers by O(lr^2) per step
               and the ridge rebalances them at rate 4 lr lambda, so along SGD the ratio is a noisy
               O(1) number, as large as at a random init. With bal_rtol = 1.0, 2 of those 1280
               records fell outside B (membership flickering along chains that stay at rank 1),
               hence the default 2.0: above every measured SGD ratio (1.51, margin 1.3). The price:
               the condition is weak. It excludes only points whose norm sits in unmatched layers,
               e.g. a balanced H = 3 point with one mode on and W_1 -> c W_1, W_2 -> W_2 / c has
               ratio 3 |c^2 - c^-2| / (c^2 + c^-2 + 1), > 2 for c > (1 + 6^(1/2))^(1/2) = 1.857.
               Tighten it (and lr) to study balancedness itself; the paper's constants are unknown
               (A.2).
    norm_bound B_r needs ||theta||^2 <= norm_bound (the paper's constant C); None: no bound.

    B_r (operational; the paper's exact f_alpha and constants are unknown, docs/theory.md §7) holds
    the points with layer rank <= r that are approximately balanced and norm-bounded.
    """
    a_tol: float = 1e-2
    layer_tol: float = 0.1
    mode: str = "absolute"
    bal_rtol: float = 2.0
    norm_bound: float | None = None

    def __post_init__(self):
        if self.mode not in TOL_MODES:
            raise ValueError(f"rank tolerance mode={self.mode!r}: allowed {' | '.join(TOL_MODES)}")
        for name in ("a_tol", "layer_tol", "bal_rtol"):
            v = getattr(self, name)
            if not v > 0 or (self.mode == "relative" and name != "bal_rtol" and not v < 1):
                raise ValueError(f"{name}={v}: allowed a number > 0 (< 1 in relative mode)")
        if self.norm_bound is not None and not self.norm_bound > 0:
            raise ValueError(f"norm_bound={self.norm_bound}: allowed None or a number > 0")


@dataclass
class LabelTolerances:
    """Every number `classify` decides with.

    grad_tol        first order: ||grad L_lambda|| (Frobenius over all layers, the lab's loss scaling)
                    <= grad_tol is critical. Absolute.
    eig_rtol, eig_atol
                    second order: eig_tol = max(eig_rtol * rho, eig_atol), rho = the Hessian's
                    spectral radius. An eigenvalue < -eig_tol is negative, |e| <= eig_tol is zero.
    orbit_rtol      a symmetry tangent counts when its singular value in the generator map exceeds
                    orbit_rtol * the largest one.
    identity_rtol   the balanced-minimum identity ||theta||^2 = H sum_i s_i(A)^(2/H) "holds"
                    (RidgePoint.identity_holds) when |relative residual| <= identity_rtol (reported,
                    never used to label). 1e-6 is the issue's requirement at float64 minima; measured
                    |residuals| there are <= 3e-15 (closed-form points, L-BFGS end points of
                    tests/theory/test_ridge.py, the R1 GD and polished SGD end points), so 1e-6 leaves room
                    for minima reached less tightly (||grad|| up to grad_tol).
    identity_roundoff
                    balanced_identity leaves out singular values s_i <= identity_roundoff *
                    max(n1, n2) * eps * s_1 (the roundoff level of an SVD): s^(2/H) would amplify them.
    state_rtol      mode_table: a measured mode is "on"/"barrier" when within this relative distance
                    of the closed form.
    shallow_rtol    mode_table: an "on" mode lies in a shallow basin, and `could_switch_off`, when its
                    barrier height g(barrier) - g(on) <= shallow_rtol * g(off) = shallow_rtol * a y^2.
                    The ratio rises monotonically with y, from 0 at the threshold y* towards 1 for
                    y >> y* (lambda = a = 0.01, H = 3: 5.5e-4 for the R1 mode y = 1.763, 0.139 for the
                    R3 mode y = 2.2, which SGD still switches off in 13/32 chains by 20k steps, 0.24
                    at y = 2.5 and 0.87 for the dominant R1 mode y = 10.43), hence the default 0.2,
                    i.e. y < 2.375 at those lambda and a.
    threshold_rtol  a mode with |y - y*| <= threshold_rtol * y* "sits at the threshold" (the reason
                    given for a `degenerate` label: on-state and barrier merge there).
    rank_margin     rank near-boundary factor: a singular value within [thr/rank_margin,
                    thr*rank_margin] of a rank threshold is flagged in near_boundary.
    margin          near-boundary factor of grad_tol and eig_tol: a deciding number within
                    [tol/margin, tol*margin] is flagged.
    full_max_params full Hessian (exact eigen-decomposition, nullity) up to this many parameters,
                    Lanczos (dlnlab.theory.square.hessian.min_eigenvalue) above.
    """
    grad_tol: float = 1e-7
    eig_rtol: float = 1e-6
    eig_atol: float = 1e-12
    orbit_rtol: float = 1e-7
    identity_rtol: float = 1e-6
    identity_roundoff: float = 1.0
    state_rtol: float = 1e-3
    shallow_rtol: float = 0.2
    threshold_rtol: float = 1e-6
    rank_margin: float = 2.0
    margin: float = 10.0
    full_max_params: int = 2000
    ranks: RankTolerances = field(default_factory=RankTolerances)

    def __post_init__(self):
        for name in ("grad_tol", "eig_rtol", "eig_atol", "orbit_rtol", "identity_rtol", "identity_roundoff",
                     "state_rtol", "shallow_rtol", "threshold_rtol"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"{name}={v}: allowed a number > 0")
        for name in ("eig_rtol", "orbit_rtol", "state_rtol", "threshold_rtol"):
            if not getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: allowed a relative tolerance in (0, 1)")
        for name in ("rank_margin", "margin"):
            if not getattr(self, name) > 1:
                raise ValueError(f"{name}={getattr(self, name)}: allowed a factor > 1")
        if not self.full_max_params >= 0:
            raise ValueError(f"full_max_params={self.full_max_params}: allowed an integer >= 0")


# ---------------------------------------------------------------------------------------------
# Ranks, balancedness, the balanced-minimum identity (batched: weights may be (E, d_h, d_{h-1}))

def _count(s: torch.Tensor, tol: float, mode: str) -> torch.Tensor:
    thr = tol * s[..., :1] if mode == "relative" else torch.full_like(s[..., :1], tol)
    return (s > thr).sum(-1)


@dataclass
class RankState:
    """Per member (leading dim E, or scalars for one network)."""
    e2e_rank: torch.Tensor      # A-rank
    layer_ranks: torch.Tensor   # (..., H) per layer
    layer_rank: torch.Tensor    # max over layers
    balance: torch.Tensor       # max_h ||W_{h+1}^T W_{h+1} - W_h W_h^T||_F / (||theta||^2 / H)
    theta_sq: torch.Tensor
    in_B: torch.Tensor          # balanced within bal_rtol and norm-bounded: the point lies in B_{layer_rank}
    sv_e2e: torch.Tensor
    sv_layers: list


def rank_state(weights: Sequence[torch.Tensor], tol: RankTolerances | None = None,
               sv_layers: Sequence[torch.Tensor] | None = None, sv_e2e: torch.Tensor | None = None,
               balances: Sequence[torch.Tensor] | None = None,
               theta_sq: torch.Tensor | None = None) -> RankState:
    """Ranks and B_r membership of one network or an ensemble. Singular values, balancedness and
    ||theta||^2 already computed (e.g. by MetricsHook) can be passed to skip the SVDs."""
    tol = tol or RankTolerances()
    ws = [w.detach().to(F64) for w in weights]
    H = len(ws)
    if sv_layers is None:
        sv_layers = [torch.linalg.svdvals(w) for w in ws]
    if sv_e2e is None:
        sv_e2e = torch.linalg.svdvals(product(ws))
    if theta_sq is None:
        theta_sq = sum(w.pow(2).sum((-1, -2)) for w in ws)
    if balances is None:
        balances = balancedness(ws)
    layer_ranks = torch.stack([_count(s, tol.layer_tol, tol.mode) for s in sv_layers], -1)
    bal = torch.stack(list(balances), -1).max(-1).values / (theta_sq / H).clamp(min=1e-300)
    in_B = bal <= tol.bal_rtol
    if tol.norm_bound is not None:
        in_B = in_B & (theta_sq <= tol.norm_bound)
    return RankState(_count(sv_e2e, tol.a_tol, tol.mode), layer_ranks, layer_ranks.max(-1).values, bal,
                     theta_sq, in_B, sv_e2e, list(sv_layers))


def balanced_identity(weights: Sequence[torch.Tensor], roundoff: float = 1.0) -> tuple[float, float, float]:
    """(||theta||^2, H * sum_i s_i(A)^(2/H), relative residual (first - second) / first).

    min{||theta||^2 : A_theta = A} = H sum_i s_i(A)^(2/H), reached exactly at balanced factorisations
    (docs/theory.md §7), so the residual is >= 0 and vanishes at every ridge minimum.

    Singular values at roundoff level, s_i <= roundoff * max(n1, n2) * eps * s_1
    (LabelTolerances.identity_roundoff), are left out of the sum: s^(2/H) amplifies them
    (1e-16 -> 2e-11 for H = 3, 1e-8 for H = 4), which would swamp the identity at points whose zero
    modes are exactly zero up to roundoff."""
    ws = [torch.as_tensor(w).detach().to(F64) for w in weights]
    H = len(ws)
    th = float(sum(w.pow(2).sum() for w in ws))
    A = product(ws)
    s = torch.linalg.svdvals(A)
    s = s[s > roundoff * max(A.shape) * torch.finfo(F64).eps * s[0]] if s.numel() and s[0] > 0 else s[:0]
    bound = float(H * s.pow(2.0 / H).sum())
    return th, bound, (th - bound) / th if th > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# A.3 closed forms: one singular mode y of a fully observed target, balanced depth L

def mode_threshold(lam: float, a: float, L: int) -> float:
    """y*: a nonzero local minimum of g exists iff y > y* (L >= 3); for L = 2 the on-state exists
    iff y > lambda / a; lambda = 0: 0."""
    if lam == 0:
        return 0.0
    if L == 2:
        return lam / a
    c = ((L - 2) / (2 * L - 2)) ** ((L - 2) / L) * (L / (2 * L - 2))
    return (lam / (a * c)) ** (L / (2 * L - 2))


def _brentq(f, lo, hi):
    from scipy.optimize import brentq
    return brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)


def mode_roots(y: float, lam: float, a: float, L: int) -> tuple[float | None, float | None]:
    """(x_barrier, x_on): the per-layer sizes of the nonzero stationary points of
    g(x) = a (x^L - y)^2 + lambda L x^2, i.e. the roots of a (y - x^L) x^(L-2) = lambda.

    L >= 3: the smaller root is the barrier, the larger the on-state minimum; (None, None) below the
    threshold, one double root exactly at it. L = 2: no barrier, on-state x^2 = y - lambda / a.
    lambda = 0: on-state x = y^(1/L), no barrier."""
    y = abs(float(y))
    if lam == 0:
        return None, (y ** (1.0 / L) if y > 0 else None)
    if L == 2:
        return None, (math.sqrt(y - lam / a) if y > lam / a else None)
    yt = mode_threshold(lam, a, L)
    x_peak = (y * (L - 2) / (2 * L - 2)) ** (1.0 / L)
    if y < yt * (1 - 1e-13):
        return None, None
    if y <= yt * (1 + 1e-13):
        return x_peak, x_peak
    f = lambda x: a * (y - x ** L) * x ** (L - 2) - lam
    return _brentq(f, 0.0, x_peak), _brentq(f, x_peak, y ** (1.0 / L))


def mode_energy(x: float, y: float, lam: float, a: float, L: int) -> float:
    """g(x) = a (x^L - y)^2 + lambda L x^2: the objective of one balanced mode."""
    return a * (x ** L - y) ** 2 + lam * L * x ** 2


def mode_curvature(x: float, y: float, lam: float, a: float, L: int) -> float:
    """g''(x) along the balanced path (0 at the threshold, where barrier and on-state merge)."""
    return (2 * a * (L * x ** (L - 1)) ** 2 + 2 * a * (x ** L - y) * L * (L - 1) * x ** (L - 2)
            + 2 * lam * L)


def tie_value(lam: float, a: float, L: int) -> float:
    """The y at which the on-state and the off-state (x = 0, energy a y^2) have equal energy: for
    y in (y*, tie) the on-state is a rank-overestimating local minimum (L >= 3). L = 2: y* itself."""
    yt = mode_threshold(lam, a, L)
    if L == 2 or lam == 0:
        return yt

    def h(y):
        return a * y * y - mode_energy(mode_roots(y, lam, a, L)[1], y, lam, a, L)

    lo, hi = yt * (1 + 1e-9), 2 * yt
    while h(hi) <= 0:
        hi *= 2
    return _brentq(h, lo, hi)


def mode_table(Y: Any, ridge: float, a: float, L: int, A: Any = None,
               a_tol: float = 1e-2, state_rtol: float = 1e-3, shallow_rtol: float = 0.2) -> list[dict]:
    """One row per singular mode y_i of a fully observed target Y (loss a ||A - Y||_F^2 + ridge term):
    threshold y*, the closed-form on-state and barrier (as s = x^L), the energies of the on- and
    off-states, the barrier height g(barrier) - g(on) and its ratio to g(off) (`barrier_ratio`),
    whether switching the mode off would lower the objective (`off_preferred`), whether the
    off-state is a local minimum (`off_stable`: always for L >= 3 and lambda > 0) and whether the
    on-state's basin is shallow (`shallow`: barrier_ratio <= shallow_rtol, see
    LabelTolerances.shallow_rtol). With A (a point's product) also the measured s_i = u_i^T A v_i, its
    state ("on", "off", "barrier" or "other") and `could_switch_off`: measured on, off-state stable
    and a shallow basin. A deep basin (the dominant mode of R1: ratio 0.87) is a local minimum too,
    but no one expects SGD to leave it, so it is not reported as a candidate."""
    Y = torch.as_tensor(Y).detach().to(F64)
    U, y, Vh = torch.linalg.svd(Y, full_matrices=False)
    yt = mode_threshold(ridge, a, L)
    meas = None
    if A is not None:
        M = U.T @ torch.as_tensor(A).detach().to(F64) @ Vh.T
        meas = torch.diagonal(M).tolist()
        off_diag = float(torch.linalg.matrix_norm(M - torch.diag(torch.diagonal(M))))
    rows = []
    for i, yi in enumerate(y.tolist()):
        xb, xo = mode_roots(yi, ridge, a, L)
        e_off = a * yi * yi
        e_on = mode_energy(xo, yi, ridge, a, L) if xo is not None else None
        row = {
            "mode": i + 1, "y": yi, "threshold": yt,
            "s_on": xo ** L if xo is not None else None,
            "s_barrier": xb ** L if xb is not None else None,
            "energy_on": e_on, "energy_off": e_off,
            "barrier_height": (mode_energy(xb, yi, ridge, a, L) - e_on) if xb is not None else None,
            "off_preferred": bool(e_on is None or e_off < e_on),
            "off_stable": bool(ridge > 0 and (L >= 3 or yi < ridge / a)),
        }
        bh = row["barrier_height"]
        row["barrier_ratio"] = bh / e_off if bh is not None and e_off > 0 else None
        row["shallow"] = bool(row["barrier_ratio"] is not None and row["barrier_ratio"] <= shallow_rtol)
        if meas is not None:
            s = meas[i]
            row["s"] = s
            if row["s_on"] is not None and abs(s - row["s_on"]) <= state_rtol * row["s_on"]:
                state = "on"
            elif row["s_barrier"] is not None and abs(s - row["s_barrier"]) <= state_rtol * row["s_barrier"]:
                state = "barrier"
            elif abs(s) <= a_tol:
                state = "off"
            else:
                state = "other"
            row["state"] = state
            row["could_switch_off"] = bool(state == "on" and row["off_stable"] and row["shallow"])
            row["alignment_residual"] = off_diag
        rows.append(row)
    return rows


def balanced_mode_point(Y: Any, xs: Sequence[float], dims: Sequence[int],
                        generator: torch.Generator | int | None = 0) -> list[torch.Tensor]:
    """[W_1..W_H] of the balanced point whose mode i has per-layer size xs[i] (0: off), with Y's
    singular vectors at the ends and random orthonormal hidden bases: W_1 = Q_1 diag(x) V^T,
    W_h = Q_h diag(x) Q_{h-1}^T, W_H = U diag(x) Q_{H-1}^T. Every hidden width must be >= len(xs)."""
    Y = torch.as_tensor(Y).detach().to(F64)
    U, _, Vh = torch.linalg.svd(Y, full_matrices=False)
    k = len(xs)
    if min(dims[1:-1]) < k or k > U.shape[1]:
        raise ValueError(f"balanced_mode_point: {k} modes need hidden widths >= {k} and a target of rank >= {k}")
    g = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(int(generator or 0))
    bases = [Vh[:k].T]
    for d in dims[1:-1]:
        q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
        bases.append((q * torch.sign(torch.diagonal(r)))[:, :k])
    bases.append(U[:, :k])
    D = torch.diag(torch.as_tensor(list(xs), dtype=F64))
    return [bases[h + 1] @ D @ bases[h].T for h in range(len(dims) - 1)]


