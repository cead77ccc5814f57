"""dlnlab.theory.square.hessian: HVPs and smallest Hessian eigenvalue for generic closures; full vs Lanczos."""
import math

import numpy as np
import pytest
import torch
from landscape_data import data_loss, gaussian_data

from dlnlab.theory.square.data import LandscapeData
from dlnlab.theory.square.hessian import (
    flatten,
    full_hessian,
    hessian_min_eig,
    hvp,
    hvp_operator,
    min_eigenvalue,
    square_loss_fn,
    unflatten,
)
from dlnlab.theory.square.points import random_global_min, saddle_family

F64 = torch.float64
# torch loads its forward-mode AD decompositions with torch.jit.script on first use (a torch-internal warning)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")

# Tolerances of the tests (why each value):
AGREE_RTOL = 1e-6           # the issue: full and Lanczos agree to 1e-6 relative (to |lam_min| at strict points,
                            # to the spectral radius rho at PSD points, where lam_min ~ 0)
RHO_RTOL = 2e-2             # Lanczos estimates rho with eigsh tol 1e-2
PSD_FULL_RTOL = 1e-9        # full Hessian: a PSD point's lam_min is ~0 to this fraction of rho
STRICT_MARGIN = 1e-3        # the generic strict test point is well inside: lam_min < -STRICT_MARGIN * rho
NEAR_BOUNDARY = 1e-5        # the near-boundary points have |lam_min| < NEAR_BOUNDARY * rho
CLOSURE_RTOL = 1e-12        # two float64 evaluations of the same loss
HESS_RTOL = 1e-9            # two float64 Hessians / HVPs of the same loss (entries O(10))
RIDGE_RTOL = 1e-10          # ridge shifts every Hessian eigenvalue by exactly 2 mu
EIGVEC_RTOL = 1e-6          # Hess v = lam v for the returned vector, relative to rho
LANCZOS_SIGN_RTOL = 1e-6    # P = 1e5: strict iff lam_min < -LANCZOS_SIGN_RTOL * rho (Lanczos accuracy ~tol rho)
def random_weights(dims, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(dims[h + 1], dims[h], generator=g, dtype=F64) for h in range(len(dims) - 1)]


def test_square_loss_closure_equals_the_sample_loss():
    X, Y = gaussian_data(15, 5, 3)
    ws = random_weights([5, 4, 6, 3])
    assert float(square_loss_fn(X, Y)(ws)) == pytest.approx(float(data_loss(ws, X, Y)), rel=CLOSURE_RTOL)


def test_full_hessian_matches_independent_reference():
    X, Y = gaussian_data(15, 5, 3)
    ws = random_weights([5, 4, 6, 3])
    Hm = full_hessian(square_loss_fn(X, Y), ws)
    ref = torch.func.hessian(lambda th: data_loss(unflatten(th, [w.shape for w in ws]), X, Y))(flatten(ws))
    torch.testing.assert_close(Hm, ref, rtol=HESS_RTOL, atol=HESS_RTOL)


def test_hvp_generic_closure_ridge_and_completion():
    """Generic closures (ridge-regularised square loss, a masked matrix-completion loss): HVP == Hess @ v."""
    X, Y = gaussian_data(12, 4, 3)
    ws = random_weights([4, 5, 5, 3], seed=1)
    ridge = lambda w: data_loss(w, X, Y) + 0.1 * sum((x ** 2).sum() for x in w)
    g = torch.Generator().manual_seed(2)
    target = torch.randn(3, 4, generator=g, dtype=F64)
    mask = (torch.rand(3, 4, generator=g) < 0.6).to(F64)

    def completion(w):
        A = w[0]
        for x in w[1:]:
            A = x @ A
        return (((A - target) * mask) ** 2).sum() / mask.sum()

    for fn in (ridge, completion):
        Hm = full_hessian(fn, ws)
        v = [torch.randn(w.shape, generator=g, dtype=F64) for w in ws]
        got = flatten(hvp(fn, ws, v))
        torch.testing.assert_close(got, Hm @ flatten(v), rtol=HESS_RTOL, atol=HESS_RTOL)
        op = hvp_operator(fn, ws)
        np.testing.assert_allclose(op.matvec(flatten(v).numpy()), (Hm @ flatten(v)).numpy(), rtol=HESS_RTOL,
                                   atol=HESS_RTOL)


def test_ridge_shifts_the_spectrum():
    X, Y = gaussian_data(12, 4, 3)
    ws = random_weights([4, 5, 5, 3], seed=3)
    mu = 0.25
    base = min_eigenvalue(lambda w: data_loss(w, X, Y), ws, method="full").value
    ridge = min_eigenvalue(lambda w: data_loss(w, X, Y) + mu * sum((x ** 2).sum() for x in w), ws,
                              method="full").value
    assert ridge == pytest.approx(base + 2 * mu, rel=RIDGE_RTOL)


def _points(data, dims):
    r = 2
    return {
        "strict": saddle_family(data, dims, r, True, generator=0, z_scale=0.3).weights,
        "nonstrict": saddle_family(data, dims, r, False, generator=1).weights,
        "global_min": random_global_min(data, dims, generator=2).weights,
        "random": random_weights(dims, seed=4, scale=0.2),
    }


def _agreement(full, lan) -> float:
    """|full - lanczos| in units of the issue's "relative": |lam_min| at strict points, rho at PSD ones."""
    strict = full.value < -PSD_FULL_RTOL * full.scale
    return abs(full.value - lan.value) / (abs(full.value) if strict else full.scale)


def test_full_and_lanczos_agree():
    """Agreement to 1e-6 relative: relative to |lam_min| at strict points, to rho at PSD ones."""
    dims = [20, 16, 16, 16, 12]                               # P = 1024
    X, Y = gaussian_data(30, 20, 12, seed=1)
    data = LandscapeData.from_xy(X, Y)
    for kind, ws in _points(data, dims).items():
        full = hessian_min_eig(ws, data, method="full", return_result=True)
        lan = hessian_min_eig(ws, data, method="lanczos", return_result=True)
        assert full.n_params == lan.n_params == 1024 and lan.converged
        assert lan.scale == pytest.approx(full.scale, rel=RHO_RTOL)
        assert _agreement(full, lan) <= AGREE_RTOL, (kind, full.value, lan.value, full.scale)
        if kind in ("nonstrict", "global_min"):
            assert abs(full.value) < PSD_FULL_RTOL * full.scale
        if kind == "strict":
            assert full.value < -STRICT_MARGIN * full.scale


@pytest.mark.parametrize("generator", [0, 2])
def test_full_and_lanczos_agree_near_the_boundary(generator):
    """Near the strict/non-strict boundary (App. B.8 strict family with tiny Z's, z_scale 1e-3):
    lam_min ~ -3e-3 at rho ~ 600 sits at the edge of a cluster of small negative eigenvalues (the next
    one 4.5% higher). An absolute accuracy of 1e-6 rho cannot resolve it (the single Lanczos pass was
    off by 4.6%); the refinement pass must reach 1e-6 relative to |lam_min|."""
    dims = [20, 16, 16, 16, 12]
    X, Y = gaussian_data(30, 20, 12, seed=1)
    data = LandscapeData.from_xy(X, Y)
    ws = saddle_family(data, dims, 2, True, generator=generator, z_scale=1e-3).weights
    full = hessian_min_eig(ws, data, method="full", return_result=True)
    lan = hessian_min_eig(ws, data, method="lanczos", return_result=True)
    assert full.value < 0 and abs(full.value) < NEAR_BOUNDARY * full.scale     # really near the boundary
    assert lan.converged and lan.refined
    assert abs(full.value - lan.value) <= AGREE_RTOL * abs(full.value), (full.value, lan.value)
    assert lan.residual <= AGREE_RTOL * abs(lan.value)
    single = hessian_min_eig(ws, data, method="lanczos", refine=False, return_result=True)
    assert not single.refined and single.value >= lan.value             # both are upper bounds on lam_min


def test_auto_method_threshold():
    X, Y = gaussian_data(10, 6, 4)
    ws = random_weights([6, 5, 4])
    assert hessian_min_eig(ws, X, Y, return_result=True).method == "full"
    assert hessian_min_eig(ws, X, Y, return_result=True, full_max_params=10).method == "lanczos"
    with pytest.raises(ValueError):
        hessian_min_eig(ws, X, Y, method="power")


def test_return_vector_is_an_eigenvector():
    X, Y = gaussian_data(10, 6, 4)
    data = LandscapeData.from_xy(X, Y)
    ws = saddle_family(data, [6, 5, 5, 4], 1, True, generator=0).weights
    fn = square_loss_fn(data)
    Hm = full_hessian(fn, ws)
    for method in ("full", "lanczos"):
        res = min_eigenvalue(fn, ws, method=method, return_vector=True)
        v = torch.as_tensor(res.vector)
        torch.testing.assert_close(Hm @ v, res.value * v, rtol=EIGVEC_RTOL, atol=EIGVEC_RTOL * res.scale)


@pytest.mark.slow
def test_lanczos_at_100k_parameters():
    """P = 99,856 (H = 4, width 158): Lanczos separates a strict from a non-strict saddle.
    (Its time, target under 30 s on 2 cores, is measured by scripts/bench.py classify.)"""
    w = 158
    X, Y = gaussian_data(w + 16, w, w, seed=1)
    data = LandscapeData.from_xy(X, Y)
    dims = [w] * 5
    for strict in (True, False):
        ws = saddle_family(data, dims, w // 4, strict, generator=0, z_scale=1 / math.sqrt(w)).weights
        res = hessian_min_eig(ws, data, return_result=True)
        assert res.method == "lanczos" and res.n_params == 4 * w * w and res.converged
        assert (res.value < -LANCZOS_SIGN_RTOL * res.scale) == strict, (res.value, res.scale)


def test_lanczos_on_an_identically_zero_hessian():
    """W = 0 with H >= 3 has Hess = 0 (spec O6, O15b): ARPACK cannot start there; we return 0."""
    X, Y = gaussian_data(10, 6, 4)
    ws = [torch.zeros(5, 6, dtype=F64), torch.zeros(5, 5, dtype=F64), torch.zeros(4, 5, dtype=F64)]
    res = hessian_min_eig(ws, X, Y, method="lanczos", return_result=True)
    assert res.value == 0.0 and res.converged
    assert hessian_min_eig(ws, X, Y, method="full") == 0.0


def test_lanczos_restores_torch_threads():
    X, Y = gaussian_data(10, 6, 4)
    ws = random_weights([6, 5, 4])
    before = torch.get_num_threads()
    hessian_min_eig(ws, X, Y, method="lanczos", torch_threads=1)
    assert torch.get_num_threads() == before
