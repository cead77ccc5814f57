"""dlnlab.theory: data statistics, Assumption 1 report, critical values, closed-form loss/gradient,
and the generators of labelled points (docs/theory.md)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from landscape_data import clean_data, data_loss, gaussian_data, random_dims

from dlnlab.linalg import product
from dlnlab.theory.square.classify import classify
from dlnlab.theory.square.critical import (
    critical_values,
    grad_norm,
    loss,
    loss_and_grad,
    plateau_values,
)
from dlnlab.theory.square.data import LandscapeData
from dlnlab.theory.square.points import (
    apply_gauge,
    enumeration_points,
    escape_path,
    random_global_min,
    random_invertible,
    random_normal_form_point,
    saddle_family,
)

F64 = torch.float64
# torch loads its forward-mode AD decompositions with torch.jit.script on first use (a torch-internal warning)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")

# Tolerances of the tests (why each value):
GRAD_ZERO_RTOL = 1e-9       # ||grad L|| / tr(Syy) at constructed critical points (gauges of cond 4 cost digits)
VALUE_RTOL = 1e-9           # loss vs critical value at constructed points, relative (+ GRAD_ZERO_RTOL * tr(Syy))
PATH_RTOL = 1e-10           # escape-path loss vs its closed form (polynomial of degree 2H in t)
EXACT_ATOL = 1e-12          # clean data (integer entries): exact to float64 rounding
HESS_PSD_RTOL = 1e-9        # a PSD Hessian's smallest eigenvalue is >= -HESS_PSD_RTOL * spectral radius
LAM_RTOL = 1e-10            # lam_{r+1} from the library's SVD vs numpy's eigendecomposition of Sigma


def _sigma_eigenvalues(X, Y):
    """Independent reference: eigenvalues of Sigma = Syx Sxx^{-1} Sxy by numpy (descending)."""
    Xn, Yn = X.numpy(), Y.numpy()
    Sxy = Xn.T @ Yn
    return np.sort(np.linalg.eigvalsh(Sxy.T @ np.linalg.solve(Xn.T @ Xn, Sxy)))[::-1]


def _hessian_eigs(weights, X, Y):
    """Independent reference: float64 eigenvalues of torch.func.hessian of the sample loss (ascending)."""
    shapes, sizes = [w.shape for w in weights], [w.numel() for w in weights]
    f = lambda th: data_loss([p.reshape(sh) for p, sh in zip(torch.split(th, sizes), shapes)], X, Y)
    Hm = torch.func.hessian(f)(torch.cat([w.reshape(-1) for w in weights]))
    return torch.linalg.eigvalsh((Hm + Hm.T) / 2)


def _autograd_grad_norm(weights, X, Y) -> float:
    """Independent reference: ||grad|| of the sample loss by autograd in float64."""
    wr = [w.detach().clone().requires_grad_(True) for w in weights]
    data_loss(wr, X, Y).backward()
    return math.sqrt(sum(float((w.grad ** 2).sum()) for w in wr))


# ---------------------------------------------------------------------------------------------
# Data statistics and the assumption report

def test_clean_data_statistics():
    d = LandscapeData.from_xy(*clean_data())
    torch.testing.assert_close(d.lam, torch.tensor([9.0, 4.0, 1.0], dtype=F64))
    torch.testing.assert_close(d.U.abs(), torch.eye(3, dtype=F64))
    assert d.tr_syy == 14.0 and d.k == 3 and abs(d.ls_loss) < 1e-14
    torch.testing.assert_close(d.A, clean_data()[1].T)
    assert d.assumptions.ok and d.assumptions.holds and d.assumptions.failures == ()


def test_eigen_decomposition_matches_sigma_on_random_data():
    X, Y = gaussian_data(20, 6, 4)
    d = LandscapeData.from_xy(X, Y)
    Sxx, Sxy = X.T @ X, X.T @ Y
    Sigma = Sxy.T @ torch.linalg.solve(Sxx, Sxy)
    torch.testing.assert_close(d.U @ torch.diag(d.lam) @ d.U.T, Sigma)
    assert bool((d.lam[:-1] > d.lam[1:]).all())
    torch.testing.assert_close(d.A, Sxy.T @ torch.linalg.inv(Sxx))
    assert d.ls_loss == pytest.approx(float(((X @ d.A.T - Y) ** 2).sum()), rel=1e-12)


def test_inputs_may_be_numpy_or_float32():
    X, Y = clean_data()
    d1 = LandscapeData.from_xy(X.numpy(), Y.numpy())
    d2 = LandscapeData.from_xy(X.float(), Y.float())
    assert d1.lam.dtype == F64 and d2.lam.dtype == F64
    torch.testing.assert_close(d1.lam, d2.lam)


@pytest.mark.parametrize("case, needle", [
    ("m<d_x", "d_x <= m"),
    ("repeated", "repeated"),
    ("sxy_deficient", "Sxy is rank deficient"),
    ("sxx_singular", "Sxx is singular"),
])
def test_failing_assumptions_are_reported_not_raised(case, needle):
    X, Y = clean_data()
    if case == "m<d_x":
        X, Y = gaussian_data(3, 5, 2)
    elif case == "repeated":
        Y = torch.zeros(4, 3, dtype=F64)
        Y[0, 0] = Y[1, 1] = 2.0
        Y[2, 2] = 1.0
    elif case == "sxy_deficient":
        Y[:, 2] = 0.0
    elif case == "sxx_singular":
        X = X.clone()
        X[:, 3] = X[:, 2]
    d = LandscapeData.from_xy(X, Y)
    rep = d.assumptions
    assert not rep.ok and not rep.holds
    assert any(needle in f for f in rep.failures), rep.failures
    # everything downstream still works
    assert len(critical_values(d)) >= 1
    assert np.isfinite(loss([torch.zeros(2, d.d_x), torch.zeros(d.d_y, 2)], d))


@pytest.mark.parametrize("which", ["X", "Y"])
def test_non_finite_data_name_the_array(which):
    X, Y = (t.clone() for t in clean_data())
    (X if which == "X" else Y)[3, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"^{which} contains 1 non-finite value.*{which}\[3, 0\]"):
        LandscapeData.from_xy(X, Y)


def test_transposed_extension_d_y_greater_than_d_x():
    X, Y = gaussian_data(10, 3, 5)
    d = LandscapeData.from_xy(X, Y)
    rep = d.assumptions
    assert rep.transposed and rep.ok and not rep.holds
    assert rep.failures == () and any("d_y <= d_x" in f for f in rep.paper_failures)
    assert d.k == 3 and bool((d.lam[3:].abs() < 1e-10 * d.lam[0]).all())
    # S ranges over the 3 non-zero eigenvalues only
    assert max(max(c.S, default=0) for c in critical_values(d)) == 3


# ---------------------------------------------------------------------------------------------
# Critical values

CLEAN_VALUES = {(): 14, (1,): 5, (2,): 10, (3,): 13, (1, 2): 1, (1, 3): 4, (2, 3): 9, (1, 2, 3): 0}


def test_clean_critical_values_r_max_3():
    rows = critical_values(*clean_data(), r_max=3, H=3)
    assert {c.S: c.value for c in rows} == CLEAN_VALUES
    labels = {c.S: c.labels for c in rows}
    assert labels[(1, 2, 3)] == ("global_min",)
    assert labels[(1, 2)] == labels[()] == ("strict_saddle", "nonstrict_saddle")
    assert labels[(1, 3)] == labels[(2,)] == ("strict_saddle",)
    assert [c.value for c in rows] == sorted(c.value for c in rows)


def test_critical_values_depend_on_r_max_and_H():
    rows = critical_values(*clean_data(), r_max=2, H=2)
    assert {c.S for c in rows} == {S for S in CLEAN_VALUES if len(S) <= 2}
    labels = {c.S: c.labels for c in rows}
    assert labels[(1, 2)] == ("global_min",)
    assert labels[(1,)] == labels[()] == ("strict_saddle",)          # H = 2: every saddle is strict
    df = critical_values(*clean_data(), r_max=2, as_frame=True)
    assert isinstance(df, pd.DataFrame) and len(df) == 7
    assert set(df.columns) >= {"S", "r", "value", "top", "labels"}
    assert df.loc[df.S == "{1,2}", "labels"].item() == "global_min"


def test_r_max_may_be_positional():
    """The issue's signature critical_values(X, Y, r_max); also (data, r_max) for a LandscapeData."""
    X, Y = clean_data()
    d = LandscapeData.from_xy(X, Y)
    want = {c.S: c.value for c in critical_values(X, Y, r_max=2)}
    assert {c.S: c.value for c in critical_values(X, Y, 2)} == want
    assert {c.S: c.value for c in critical_values(d, 2)} == want
    assert max(len(c.S) for c in critical_values(d, 2)) == 2
    assert [p.value for p in plateau_values(d, 2)] == [p.value for p in plateau_values(X, Y, r_max=2)]
    with pytest.raises(ValueError, match="twice"):
        critical_values(d, 2, r_max=2)


def test_plateau_values():
    rows = plateau_values(*clean_data(), r_max=3)
    assert [(p.r, p.value, p.kind) for p in rows] == [(0, 14, "plateau"), (1, 5, "plateau"), (2, 1, "plateau"),
                                                       (3, 0, "global_min")]
    df = plateau_values(*clean_data(), r_max=2, as_frame=True)
    assert list(df.value) == [14, 5, 1] and list(df.kind) == ["plateau", "plateau", "global_min"]


def test_critical_values_equal_rank_constrained_least_squares():
    """Eckart-Young after whitening: min_{rk R <= r} ||R X^T - Y^T||^2 = tr Syy - sum_{i<=r} lam_i."""
    X, Y = gaussian_data(30, 6, 4, seed=3)
    d = LandscapeData.from_xy(X, Y)
    Sxx_h = d.Sxx_half
    for p in plateau_values(d):
        M = d.M
        U, s, Vt = torch.linalg.svd(M)
        Mr = U[:, :p.r] @ torch.diag(s[:p.r]) @ Vt[:p.r]
        R = Mr @ torch.linalg.inv(Sxx_h)
        assert float(((X @ R.T - Y) ** 2).sum()) == pytest.approx(p.value, rel=1e-10, abs=1e-10)


# ---------------------------------------------------------------------------------------------
# Closed-form loss and gradient

@pytest.mark.parametrize("dims", [[5, 3, 4], [5, 4, 2, 3], [4, 6, 3, 5, 2]])
def test_loss_and_grad_match_autograd(dims):
    X, Y = gaussian_data(12, dims[0], dims[-1], seed=len(dims))
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(dims[h + 1], dims[h], generator=g, dtype=F64) for h in range(len(dims) - 1)]
    L, grads = loss_and_grad(ws, X, Y)
    wr = [w.clone().requires_grad_(True) for w in ws]
    ref = data_loss(wr, X, Y)
    ref.backward()
    assert L == pytest.approx(float(ref.detach()), rel=1e-12)
    for gr, w in zip(grads, wr):
        torch.testing.assert_close(gr, w.grad, rtol=1e-10, atol=1e-10)
    assert grad_norm(ws, X, Y) == pytest.approx(math.sqrt(sum(float((w.grad ** 2).sum()) for w in wr)))


def test_loss_is_batched_over_an_ensemble():
    X, Y = gaussian_data(12, 4, 3)
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(5, 2, 4, generator=g, dtype=F64), torch.randn(5, 3, 2, generator=g, dtype=F64)]
    L = loss(ws, X, Y)
    assert L.shape == (5,)
    for e in range(5):
        assert L[e] == pytest.approx(float(data_loss([w[e] for w in ws], X, Y)), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Generators

def _assert_critical(pt, d, X, Y):
    gn = grad_norm(pt.weights, d)
    assert gn < GRAD_ZERO_RTOL * d.tr_syy, (pt.kind, pt.S, gn)
    assert float(data_loss(pt.weights, X, Y)) == pytest.approx(pt.value, rel=VALUE_RTOL, abs=GRAD_ZERO_RTOL * d.tr_syy)


@pytest.mark.parametrize("dims", [[6, 3, 4], [6, 5, 3, 4], [5, 4, 4, 4, 3], [3, 4, 2, 5]])
def test_enumeration_points_are_critical_with_the_right_values(dims):
    X, Y = gaussian_data(9, dims[0], dims[-1], seed=sum(dims))
    d = LandscapeData.from_xy(X, Y)
    pts = enumeration_points(d, dims, generator=0)
    r_max = min(dims)
    assert len(pts) == sum(math.comb(d.k, r) for r in range(min(r_max, d.k) + 1))
    for pt in pts:
        _assert_critical(pt, d, X, Y)
        top = pt.S == tuple(range(1, pt.r + 1))
        expected = ("global_min" if top else "strict_saddle") if pt.r == r_max else (
            "strict_saddle" if not top or len(dims) == 3 else "nonstrict_saddle")
        assert pt.label == expected


@pytest.mark.parametrize("dims", [[6, 3, 4], [6, 5, 3, 4], [5, 4, 6, 4, 3], [3, 5, 6], [2, 4, 3, 5]])
def test_random_global_min_is_critical_at_the_global_value(dims):
    X, Y = gaussian_data(9, dims[0], dims[-1], seed=7)
    d = LandscapeData.from_xy(X, Y)
    for seed in range(3):
        pt = random_global_min(d, dims, generator=seed)
        _assert_critical(pt, d, X, Y)
        assert pt.value == pytest.approx(plateau_values(d, r_max=min(dims))[-1].value)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("dims, r", [([6, 4, 5, 4], 1), ([5, 4, 4, 4, 3], 2), ([6, 5, 5, 5, 5, 4], 0)])
def test_saddle_family_is_critical(dims, r, strict):
    X, Y = gaussian_data(9, dims[0], dims[-1], seed=11)
    d = LandscapeData.from_xy(X, Y)
    pt = saddle_family(d, dims, r, strict, generator=5)
    _assert_critical(pt, d, X, Y)
    assert pt.label == ("strict_saddle" if strict else "nonstrict_saddle")
    Zmid = pt.Zs[1:-1]
    prod = Zmid[0]
    for Z in Zmid[1:]:
        prod = Z @ prod
    assert (float(prod.abs().max()) > 0) == strict   # Z_{H-1}...Z_2 != 0 iff strict


def test_saddle_family_rejects_H2_and_bad_r():
    d = LandscapeData.from_xy(*gaussian_data(9, 6, 4))
    with pytest.raises(ValueError):
        saddle_family(d, [6, 3, 4], 1, True)
    with pytest.raises(ValueError):
        saddle_family(d, [6, 3, 3, 4], 3, True)


def test_normal_form_conditions_a_to_c_match_the_gradient():
    """Spec §2 [D+N]: in the normal form, critical iff (a)-(c); checked against the closed-form gradient."""
    rng = np.random.default_rng(0)
    counts = {True: 0, False: 0}
    for trial in range(150):
        H = int(rng.integers(2, 6))
        d_y = int(rng.integers(1, 5))
        d_x = d_y + int(rng.integers(0, 3))
        dims = [d_x] + [int(rng.integers(1, 6)) for _ in range(H - 1)] + [d_y]
        X, Y = gaussian_data(d_x + 3, d_x, d_y, seed=trial)
        d = LandscapeData.from_xy(X, Y)
        r = int(rng.integers(0, min(dims) + 1))
        S = tuple(sorted(rng.choice(np.arange(1, d_y + 1), size=r, replace=False).tolist()))
        pt = random_normal_form_point(d, dims, S, generator=trial)
        crit = grad_norm(pt.weights, d) < GRAD_ZERO_RTOL * d.tr_syy
        assert crit == pt.critical, (trial, dims, S)
        counts[crit] += 1
    assert counts[True] > 20 and counts[False] > 20


def test_random_normal_form_point_critical_only():
    """critical_only=True: every point is critical (gradient by independent float64 autograd of the
    sample loss), at its critical value, including d_y > d_x; the same draws without the option are
    often not critical (so the option is what guarantees it)."""
    rng = np.random.default_rng(7)
    plain_not_critical = 0
    for trial in range(60):
        dims = random_dims(rng, trial, transposed_every=4)
        d_x, d_y = dims[0], dims[-1]
        X, Y = gaussian_data(d_x + 3, d_x, d_y, seed=trial)
        d = LandscapeData.from_xy(X, Y)
        r = int(rng.integers(0, min(min(dims), d.k) + 1))
        S = tuple(sorted(rng.choice(np.arange(1, d.k + 1), size=r, replace=False).tolist()))
        pt = random_normal_form_point(d, dims, S, generator=trial, critical_only=True)
        assert pt.critical and pt.label != "not_critical"
        gn = _autograd_grad_norm(pt.weights, X, Y)
        assert gn < GRAD_ZERO_RTOL * d.tr_syy, (trial, dims, S, gn)
        assert float(data_loss(pt.weights, X, Y)) == pytest.approx(pt.value, rel=VALUE_RTOL,
                                                                    abs=GRAD_ZERO_RTOL * d.tr_syy)
        plain = random_normal_form_point(d, dims, S, generator=trial)
        plain_not_critical += _autograd_grad_norm(plain.weights, X, Y) >= GRAD_ZERO_RTOL * d.tr_syy
    assert plain_not_critical > 0


def test_apply_gauge_keeps_loss_and_product():
    g = torch.Generator().manual_seed(0)
    dims = [5, 4, 6, 3]
    ws = [torch.randn(dims[h + 1], dims[h], generator=g, dtype=F64) for h in range(3)]
    Ds = [random_invertible(k, 4.0, g) for k in dims[1:-1]]
    torch.testing.assert_close(product(apply_gauge(ws, Ds)), product(ws))


# ---------------------------------------------------------------------------------------------
# The third-order escape path of the non-strict saddle (docs/theory.md §3)

def test_escape_path_O7_numbers():
    X, Y = clean_data()
    d = LandscapeData.from_xy(X, Y)
    ep = escape_path(d, [4, 3, 2, 3], r=1)
    t_ = lambda rows: torch.tensor(rows, dtype=F64)
    # the O7 point and the direction printed in the oracles of docs/theory.md §4
    torch.testing.assert_close(ep.base[1], t_([[1, 0, 0], [0, 0, 0]]))
    torch.testing.assert_close(ep.direction[0], t_([[0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]]))
    torch.testing.assert_close(ep.direction[1], t_([[0, 0, 0], [0, 1, 0]]))
    torch.testing.assert_close(ep.direction[2], t_([[0, 0], [0, 1], [0, 0]]))
    for t, L in [(0.0, 5.0), (0.1, 4.992004), (0.5, 4.0625), (1.0, 1.0)]:
        assert float(data_loss(ep.weights_at(t), X, Y)) == pytest.approx(L, abs=EXACT_ATOL)
        assert ep.loss_formula(t) == pytest.approx(L, abs=EXACT_ATOL)


SMALL_T = (0.05, 0.1)        # "small t > 0": L(t) - L(0) ~ -2 lam t^H is still far above float64 rounding


def _escape_setup(dims, r):
    X, Y = gaussian_data(10, dims[0], dims[-1], seed=2)
    d = LandscapeData.from_xy(X, Y)
    lam = float(_sigma_eigenvalues(X, Y)[r])                     # lam_{r+1}, independently of the library
    return X, Y, d, lam, escape_path(d, dims, r, generator=3, d_cond=4.0)


def _assert_path_formula(ep, d, X, Y, lam, r):
    H = ep.H
    assert ep.lam == pytest.approx(lam, rel=LAM_RTOL)
    for t in (0.05, 0.1, 0.3, 1.0):
        expected = ep.base_loss - 2 * lam * t ** H + lam * t ** (2 * H)
        assert float(data_loss(ep.weights_at(t), X, Y)) == pytest.approx(expected, rel=PATH_RTOL)
    assert float(data_loss(ep.weights_at(1.0), X, Y)) == pytest.approx(d.critical_value(range(1, r + 2)),
                                                                        rel=PATH_RTOL)


@pytest.mark.parametrize("dims, r", [([6, 5, 4, 4], 1), ([5, 4, 4, 4, 4, 3], 2)])
def test_escape_path_leaves_a_nonstrict_saddle(dims, r):
    """Spec §3: at a non-strict saddle (Hessian PSD, so no second-order descent) the third-order path
    still lowers the loss: a non-strict saddle is not a local minimum."""
    X, Y, d, lam, ep = _escape_setup(dims, r)
    assert classify(ep.base, X, Y).label == "nonstrict_saddle"
    ev = _hessian_eigs(ep.base, X, Y)
    assert float(ev[0]) >= -HESS_PSD_RTOL * float(ev.abs().max())
    L0 = float(data_loss(ep.base, X, Y))
    assert L0 == pytest.approx(ep.base_loss, rel=PATH_RTOL)
    for t in SMALL_T:
        assert float(data_loss(ep.weights_at(t), X, Y)) < L0
    _assert_path_formula(ep, d, X, Y, lam, r)


def test_escape_path_H2_starts_at_a_strict_saddle():
    """H = 2 has no non-strict saddles (docs/theory.md §3): the same construction starts at a strict saddle, and
    the path is a second-order descent (L = L0 - 2 lam t^2 + lam t^4)."""
    dims, r = [6, 3, 4], 1
    X, Y, d, lam, ep = _escape_setup(dims, r)
    assert classify(ep.base, X, Y).label == "strict_saddle"
    ev = _hessian_eigs(ep.base, X, Y)
    assert float(ev[0]) < -HESS_PSD_RTOL * float(ev.abs().max())
    _assert_path_formula(ep, d, X, Y, lam, r)
