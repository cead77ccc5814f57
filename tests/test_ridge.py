"""Labels of regularised / completion landscapes (dlnlab.ridge) against closed forms and independent
computations: rank_jumps.md A.1 and A.3, the depth-2 strict saddle, perturbation checks."""
import math

import pytest
import torch

from dlnlab import ridge as R
from dlnlab.model import DeepLinearNet
from dlnlab.tasks import make_completion, make_regression

A_R1, LAM = 0.01, 0.01  # a = 1/N for a fully observed 10 x 10 matrix; lambda of R1


@pytest.fixture(scope="module")
def r1_task():
    return make_completion(10, 10, 1, [10.0], noise=0.35, observed_fraction=1.0, seed=0)


def lbfgs(weights, loss_fn, rounds=5):
    """Converge to a nearby critical point with torch's L-BFGS (independent of the lab's trainer)."""
    ws = [w.detach().clone().requires_grad_(True) for w in weights]
    opt = torch.optim.LBFGS(ws, lr=1, max_iter=200, tolerance_grad=1e-13, tolerance_change=0,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(ws)
        loss.backward()
        return loss
    for _ in range(rounds):
        opt.step(closure)
    return [w.detach() for w in ws]


# --- A.3 closed forms -----------------------------------------------------------------------------

@pytest.mark.parametrize("lam, y_star", [(0.01, 1.755), (0.005, 1.043), (0.002, 0.525)])
def test_threshold_matches_the_spec(lam, y_star):
    assert R.mode_threshold(lam, A_R1, 3) == pytest.approx(y_star, abs=5e-4)
    # the L = 3 formula of the spec, written out independently
    assert R.mode_threshold(lam, A_R1, 3) == pytest.approx((4 ** (4 / 3) * lam / (3 * A_R1)) ** 0.75, rel=1e-12)


@pytest.mark.parametrize("y, s_on, s_barrier", [(1.9, 0.840, None), (2.2, 1.279, None), (1.7633, 0.519, 0.369)])
def test_on_state_and_barrier_match_the_spec(y, s_on, s_barrier):
    xb, xo = R.mode_roots(y, LAM, A_R1, 3)
    assert xo ** 3 == pytest.approx(s_on, abs=5e-4)
    if s_barrier is not None:
        assert xb ** 3 == pytest.approx(s_barrier, abs=5e-4)
    # independent: brute-force minimisation of g on a fine grid above the barrier
    g = lambda x: R.mode_energy(x, y, LAM, A_R1, 3)
    grid = torch.linspace(xb * 1.0001, y ** (1 / 3), 200001, dtype=torch.float64)
    vals = A_R1 * (grid ** 3 - y) ** 2 + LAM * 3 * grid ** 2
    assert float(grid[vals.argmin()]) == pytest.approx(xo, abs=1e-5)
    # stationarity and curvature by finite differences
    h = 1e-5
    assert (g(xo + h) - g(xo - h)) / (2 * h) == pytest.approx(0.0, abs=1e-9)
    assert (g(xo + h) - 2 * g(xo) + g(xo - h)) / h ** 2 == pytest.approx(R.mode_curvature(xo, y, LAM, A_R1, 3), rel=1e-4)
    assert R.mode_curvature(xb, y, LAM, A_R1, 3) < 0 < R.mode_curvature(xo, y, LAM, A_R1, 3)


def test_tie_energies_and_the_r1_mode():
    assert R.tie_value(LAM, A_R1, 3) == pytest.approx(2.0, abs=1e-9)  # the spec: "the tie is at y = 2.0"
    y2 = 1.7633
    _, xo = R.mode_roots(y2, LAM, A_R1, 3)
    assert A_R1 * y2 ** 2 == pytest.approx(0.0311, abs=5e-5)              # rank-1 (off) per-mode energy
    assert R.mode_energy(xo, y2, LAM, A_R1, 3) == pytest.approx(0.0349, abs=5e-5)
    assert R.mode_roots(1.7, LAM, A_R1, 3) == (None, None)  # below y*: no on-state
    # depth 2: no barrier, x^2 = y - lambda/a
    assert R.mode_roots(1.7633, LAM, A_R1, 2) == (None, pytest.approx(math.sqrt(0.7633)))
    assert R.mode_threshold(LAM, A_R1, 2) == pytest.approx(1.0)


# --- labels ---------------------------------------------------------------------------------------

def test_r1_rank2_minimum_is_a_local_min_whose_null_space_is_the_orbit(r1_task):
    Y = r1_task.observed_matrix()
    y = torch.linalg.svdvals(Y)
    xs = [R.mode_roots(float(y[i]), LAM, A_R1, 3)[1] for i in range(2)]
    ws = R.balanced_mode_point(Y, xs, [10, 10, 10, 10], generator=0)
    p = R.classify(ws, r1_task, LAM)
    assert p.label == "local_min", str(p)
    assert p.grad_norm < 1e-12 and p.layer_rank == 2 and p.e2e_rank == 2 and p.in_B == 2
    # the Hessian is singular, but exactly along the O(10) x O(10) orbit: 2 * (45 - 28) directions
    assert p.nullity == p.orbit_dim == 34
    assert p.min_eig == pytest.approx(0.0, abs=1e-12) and p.min_eig_normal > 1e-3
    assert abs(p.identity_residual) < 1e-12 and p.theta_sq == pytest.approx(15.828696, abs=1e-6)  # spec A.1
    states = [m["state"] for m in p.modes[:3]]
    assert states == ["on", "on", "off"]
    assert p.modes[1]["could_switch_off"] and p.modes[1]["off_preferred"]  # the R1 mode
    assert not p.modes[0]["off_preferred"]
    # independent check of minimality: random perturbations normal to the orbit all raise the objective
    fn = R.ridge_loss_fn(r1_task, LAM)
    B = R.orbit_basis(ws)
    theta = torch.cat([w.reshape(-1) for w in ws])
    f0 = float(fn(ws))
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        d = torch.randn(theta.numel(), generator=g, dtype=torch.float64)
        d -= B @ (B.T @ d)
        d *= 1e-3 / d.norm()
        parts, i = [], 0
        for w in ws:
            parts.append((theta[i:i + w.numel()] + d[i:i + w.numel()]).reshape(w.shape))
            i += w.numel()
        assert float(fn(parts)) - f0 > 0.4 * p.min_eig_normal * 1e-6 / 2


def test_zero_modes_have_curvature_2_lambda_not_zero(r1_task):
    """At lambda > 0 a zero mode of an H >= 3 network is flat only in the data term; the ridge gives it
    curvature 2 lambda. The origin's Hessian is exactly 2 lambda I (a local minimum); at lambda = 0 it is
    the zero matrix (degenerate)."""
    zero = [torch.zeros(10, 10, dtype=torch.float64) for _ in range(3)]
    p = R.classify(zero, r1_task, LAM)
    assert p.label == "local_min" and p.orbit_dim == 0
    assert p.min_eig == pytest.approx(2 * LAM, rel=1e-12) and p.eig_scale == pytest.approx(2 * LAM, rel=1e-12)
    p0 = R.classify(zero, r1_task, 0.0)
    assert p0.label == "degenerate" and "ridge = 0" in p0.reason


def test_depth2_off_mode_is_a_strict_saddle_with_the_closed_form_eigenvalue(r1_task):
    """H = 2, only mode 1 on: the off modes are strict saddles, lambda_min = 2 lambda - 2 a y_2."""
    Y = r1_task.observed_matrix()
    y = torch.linalg.svdvals(Y)
    x1 = R.mode_roots(float(y[0]), LAM, A_R1, 2)[1]
    ws = R.balanced_mode_point(Y, [x1], [10, 10, 10], generator=0)
    p = R.classify(ws, r1_task, LAM)
    assert p.label == "strict_saddle"
    assert p.min_eig == pytest.approx(2 * LAM - 2 * A_R1 * float(y[1]), abs=1e-10)
    # the same point at H = 3 (mode 1 at its H = 3 on-state) is a minimum: zero modes absorb
    x1 = R.mode_roots(float(y[0]), LAM, A_R1, 3)[1]
    p3 = R.classify(R.balanced_mode_point(Y, [x1], [10, 10, 10, 10], generator=0), r1_task, LAM)
    assert p3.label == "local_min" and p3.layer_rank == 1


def test_a_mode_exactly_at_its_threshold_is_degenerate():
    """y_2 = y*: the on-state and the barrier merge (saddle-node), g'' = 0 along the mode: PSD,
    singular beyond the orbit."""
    from dlnlab.tasks import CompletionTask

    n = 6
    y_star = R.mode_threshold(LAM, 1 / n ** 2, 3)
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    Y = U @ torch.diag(torch.tensor([8.0, y_star, 0.5, 0.3, 0.2, 0.1], dtype=torch.float64)) @ V.T
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    task = CompletionTask(n, n, rows.flatten(), cols.flatten(), Y.flatten(), Y)
    a = 1 / n ** 2
    xs = [R.mode_roots(8.0, LAM, a, 3)[1], R.mode_roots(y_star, LAM, a, 3)[1]]
    assert R.mode_curvature(xs[1], y_star, LAM, a, 3) == pytest.approx(0.0, abs=1e-9)
    p = R.classify(R.balanced_mode_point(Y, xs, [n, n, n, n], generator=0), task, LAM)
    assert p.label == "degenerate", str(p)
    assert "threshold" in p.reason and p.modes[1]["state"] in ("on", "barrier")


def test_not_critical_and_near_boundary_flags(r1_task):
    net = DeepLinearNet([10, 10, 10, 10], init="gaussian", seed=0)
    p = R.classify(net.member(0), r1_task, LAM)
    assert p.label == "not_critical" and p.min_eig is None and "grad_tol" in p.reason
    Y = r1_task.observed_matrix()
    y = torch.linalg.svdvals(Y)
    ws = R.balanced_mode_point(Y, [R.mode_roots(float(y[0]), LAM, A_R1, 3)[1]], [10, 10, 10, 10])
    ws[0] = ws[0] * (1 + 1e-9)  # a gradient of order 1e-9
    gn = R.classify(ws, r1_task, LAM).grad_norm
    tol = R.LabelTolerances(grad_tol=3 * gn)
    p = R.classify(ws, r1_task, LAM, tol=tol)
    assert p.label == "local_min" and any("grad_tol" in s for s in p.near_boundary)
    p = R.classify(ws, r1_task, LAM, tol=R.LabelTolerances(grad_tol=gn / 3))
    assert p.label == "not_critical" and any("grad_tol" in s for s in p.near_boundary)
    # a layer singular value within a factor 2 of the layer-rank threshold is flagged
    p = R.classify(ws, r1_task, LAM, tol=R.LabelTolerances(ranks=R.RankTolerances(layer_tol=1.5)))
    assert any("layer rank" in s for s in p.near_boundary)


def test_local_minima_found_by_lbfgs_satisfy_the_balanced_identity():
    """Partially observed completion (no closed form) and ridge regression: wherever the label is
    local_min, ||theta||^2 = H sum s_i(A)^(2/H) to 1e-6 relative (float64)."""
    cases = [(make_completion(8, 8, 2, [6.0, 3.0], noise=0.1, observed_fraction=0.6, seed=3), [8, 8, 8, 8], 0.01),
             (make_regression(40, 6, 5, [5.0, 3.0, 1.0], noise=0.1, seed=0), [6, 6, 6, 5], 0.05),
             (make_completion(6, 6, 1, [5.0], noise=0.2, observed_fraction=0.7, seed=1), [6, 5, 4, 5, 6], 0.005)]
    for task, dims, lam in cases:
        net = DeepLinearNet(dims, init="balanced", seed=0, target=task.target())
        ws = lbfgs(net.member(0), R.ridge_loss_fn(task, lam))
        p = R.classify(ws, task, lam)
        assert p.label == "local_min", (dims, str(p))
        assert abs(p.identity_residual) < 1e-6, p.identity_residual
        assert p.nullity == p.orbit_dim
        assert p.balance < 1e-6


def test_lanczos_and_full_hessian_agree(r1_task):
    Y = r1_task.observed_matrix()
    y = torch.linalg.svdvals(Y)
    xs = [R.mode_roots(float(y[i]), LAM, A_R1, 3)[1] for i in range(2)]
    ws = R.balanced_mode_point(Y, xs, [10, 10, 10, 10], generator=0)
    full = R.classify(ws, r1_task, LAM, method="full")
    lan = R.classify(ws, r1_task, LAM, method="lanczos")
    assert lan.label == full.label == "local_min"
    assert lan.min_eig_normal == pytest.approx(full.min_eig_normal, abs=1e-6 * full.eig_scale)


def test_rank_state_absolute_and_relative_tolerances():
    s = torch.tensor([10.0, 0.5, 0.05, 1e-3], dtype=torch.float64)
    W = [torch.diag(s), torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)]
    st = R.rank_state(W, R.RankTolerances(a_tol=1e-2, layer_tol=0.1))
    assert int(st.e2e_rank) == 3 and int(st.layer_rank) == 4  # eye has 4 singular values 1 > 0.1
    st = R.rank_state(W, R.RankTolerances(a_tol=1e-2, layer_tol=0.1, mode="relative"))
    assert int(st.e2e_rank) == 2 and st.layer_ranks.tolist() == [1, 4, 4]  # thresholds 0.1 (A), 1.0, 0.1, 0.1
    with pytest.raises(ValueError, match="mode"):
        R.RankTolerances(mode="percent")
