"""Predictions from theory for the trajectory numbers (docs/theory.md §3, §9): each test can fail.

Fast: projections are critical and their Hessians agree with their labels; batched curvature equals a
per-member torch.func Hessian; Lanczos equals the full decomposition; the pivot margin vanishes exactly
at tightened points; the staircase table. Slow: the eps scaling at the S = {1} plateau of the default
teacher (H = 3, 4) and the H = 2 control.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from landscape_data import clean_data, gaussian_data

from dlnlab.experiments.build import compose, prepare
from dlnlab.experiments.run import run
from dlnlab.linalg import partial_products, product, singular_values
from dlnlab.recording.base import Hook
from dlnlab.recording.staircase import StaircaseTolerances, staircase
from dlnlab.tasks import make_regression
from dlnlab.theory.square.critical import loss_of_product, plateau_values
from dlnlab.theory.square.data import LandscapeData
from dlnlab.theory.square.hessian import full_hessian, square_loss_fn
from dlnlab.theory.square.lanczos import SquareLossHVP, lanczos_extremes
from dlnlab.theory.square.pivots import b1_cores, block_sources, sandwiches
from dlnlab.theory.square.points import normal_form, saddle_family
from dlnlab.theory.square.trajectory import (
    DEFAULT,
    TrajectoryTolerances,
    curvature,
    project_to_critical,
    tight_margin,
)

F64 = torch.float64
PSD_RTOL = 1e-8        # lam_min >= -PSD_RTOL * lam_max counts as PSD (non-strict saddles, global minima)
CRIT_RTOL = 1e-10      # ||grad|| / tr(Syy) of a projected point
EIG_ATOL = 1e-10       # batched vs per-member eigenvalues (relative to max(1, |lam_max|))
LANCZOS_RTOL = DEFAULT.lanczos_rtol   # Lanczos vs exact, relative to max|lam|: the residual bound it stops on
TIGHT_RTOL = 1e-11     # a tight Lanczos run (lanczos_rtol = TIGHT_RTOL) vs exact, relative to max|lam|
PLATEAU_REL = 1e-4     # plateau checkpoints: default-tolerance lam_min vs exact, relative to |lam_min|
RES_RTOL = 1e-8        # reported Ritz residuals vs ||H v - lam v|| recomputed, relative to max|lam|
SLOPE_RTOL = 0.25      # log-log slopes within 25% of the prediction
H2_PLATEAU_RTOL = 1e-2  # staircase band for the H = 2 control (see that test)


def _stack(points):
    return [torch.stack([p[h] for p in points]) for h in range(len(points[0]))]


def _near_points(data, dims, n, noise, seed):
    """Checkpoint-like points, plus noise: even members are the Z = 0 normal form of S = {1..r} (the
    tightened point a small-init plateau passes), odd ones (H >= 3) App. B.8 strict saddles whose
    unlearned directions are O(1). Returns (weights, clean mask of the even members)."""
    g = torch.Generator().manual_seed(seed)
    r_max = min(dims)
    pts = []
    for k in range(n):
        r = (k // 2) % r_max
        if k % 2 and len(dims) > 3:
            base = saddle_family(data, dims, r, strict=True, generator=g).weights
        else:
            base = normal_form(data, dims, tuple(range(1, r + 1)),
                               [torch.zeros(a, b, dtype=F64) for a, b in _zshapes(dims, r)])
        pts.append([w + noise * torch.randn(w.shape, generator=g, dtype=F64) for w in base])
    return _stack(pts), torch.arange(n) % 2 == 0


@pytest.mark.parametrize("r", [0, 1, 2])
def test_projection_labels_outside_assumption_1_are_the_classifiers(r):
    """lam = (9, 9, 1): Theorem 7 does not apply, and the labels read from the construction say so
    as the numerical classifier does."""
    X, Y = clean_data()
    Y = Y.clone()
    Y[1, 1] = 3.0
    data = LandscapeData.from_xy(X, Y)
    assert not data.assumptions.ok
    g = torch.Generator().manual_seed(0)
    ws = [0.3 * torch.randn(3, a, b, generator=g, dtype=F64) for a, b in [(4, 4), (4, 4), (3, 4)]]
    labels = project_to_critical(ws, data, r=r).near_label
    assert labels == ["ambiguous"] * 3 == project_to_critical(ws, data, r=r, label="classifier").near_label


def _zshapes(dims, r):
    return [(dims[1] - r, dims[0])] + [(dims[h] - r, dims[h - 1] - r) for h in range(2, len(dims))]


@pytest.mark.parametrize("dims", [[5, 4, 3], [5, 4, 4, 3], [5, 3, 4, 3, 3]])
def test_projection_is_critical_and_hessian_agrees_with_label(dims):
    X, Y = gaussian_data(12, 5, 3, seed=1)
    data = LandscapeData.from_xy(X, Y)
    ws, clean = _near_points(data, dims, 8, 1e-2, seed=2)
    pr = project_to_critical(ws, data)
    assert float(pr.grad_rel.max()) <= CRIT_RTOL
    # the labels read from the construction's ranks are the numerical classifier's
    assert pr.near_label == project_to_critical(ws, data, label="classifier").near_label
    lmin, lmax, _ = curvature(pr.weights_proj, data)
    H = len(dims) - 1
    for e, lab in enumerate(pr.near_label):
        r = int(pr.r[e])
        expected = "global_min" if r == min(dims) else ("strict_saddle" if H == 2 else "nonstrict_saddle")
        assert lab == expected, (e, r, lab)
        if lab == "strict_saddle":
            assert float(lmin[e]) < -PSD_RTOL * float(lmax[e])
        else:
            assert float(lmin[e]) >= -PSD_RTOL * float(lmax[e])
    learned = clean & (pr.r > 0)              # r = 0 projects onto W = 0: near_dist = 1 by definition
    assert float(pr.near_dist[learned].max()) < 0.1 and bool((pr.near_dist[pr.r == 0] == 1).all())


def test_batched_curvature_equals_per_member_hessian():
    X, Y = gaussian_data(10, 4, 3, seed=3)
    data = LandscapeData.from_xy(X, Y)
    g = torch.Generator().manual_seed(4)
    dims = [4, 3, 5, 3]
    ws = [torch.randn(5, dims[h + 1], dims[h], generator=g, dtype=F64) for h in range(3)]
    lmin, lmax, state = curvature(ws, data)
    assert state.method == "full"
    for e in range(5):
        ev = torch.linalg.eigvalsh(full_hessian(square_loss_fn(data), [w[e] for w in ws]))
        tol = EIG_ATOL * max(1.0, float(ev.abs().max()))
        assert abs(float(lmin[e] - ev[0])) <= tol and abs(float(lmax[e] - ev[-1])) <= tol


def _exact(ws, data):
    """(lam_min, lam_max, Hessians) per member from torch.func Hessians (independent of SquareLossHVP)."""
    Hs = torch.stack([full_hessian(square_loss_fn(data), [w[e] for w in ws]) for e in range(ws[0].shape[0])])
    ev = torch.linalg.eigvalsh(Hs)
    return ev[:, 0], ev[:, -1], Hs


def _random_points(dims, n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, dims[h + 1], dims[h], generator=g, dtype=F64) for h in range(len(dims) - 1)]


def _plateau_points(dims, n, seed):
    """Small-init GD checkpoints of the default teacher (init scales 0.03..0.06, 600 steps) that sit on the
    S = {1} plateau: lam_min < 0 is 1e-3..1e-2 of lam_max there, next to the near-null cluster. (data, weights)"""
    task = make_regression(64, dims[0], dims[-1], [8.0, 4.0, 2.0, 1.0])
    data = LandscapeData.from_xy(task.X, task.Y)
    g = torch.Generator().manual_seed(seed)
    eps = torch.linspace(0.03, 0.06, n, dtype=F64).view(n, 1, 1)
    ws = [eps * torch.randn(n, dims[h + 1], dims[h], generator=g, dtype=F64) for h in range(len(dims) - 1)]
    for _ in range(600):
        ws = [w - 0.008 / data.m * gw for w, gw in zip(ws, SquareLossHVP(ws, data.A, data.Sxx).grad())]
    on = (loss_of_product(product(ws), data) / data.critical_value((1,)) - 1).abs() <= 1e-3
    assert int(on.sum()) >= 3
    return data, [w[on] for w in ws]


@pytest.mark.parametrize("kind", ["near_saddles", "random", "plateau"])
def test_lanczos_matches_exact_eigenvalues(kind):
    """Batched Lanczos (E = 8 or 6) against eigvalsh of each member's torch.func Hessian, at P = 100 > lanczos_steps:
    the default tolerance holds its bound, a tight one agrees to roundoff, the residuals are honest."""
    X, Y = gaussian_data(16, 6, 4, seed=5)
    data = LandscapeData.from_xy(X, Y)
    dims = [6, 5, 5, 5, 4]
    if kind == "near_saddles":
        ws, _ = _near_points(data, dims, 8, 3e-2, seed=6)
    elif kind == "random":
        ws = _random_points(dims, 6, 0.7, seed=7)
    else:
        data, ws = _plateau_points(dims, 12, seed=8)
    ex_min, ex_max, Hs = _exact(ws, data)
    scale = torch.maximum(ex_min.abs(), ex_max.abs())
    lmin, lmax, st = curvature(ws, data, full_max_params=0)
    assert st.method == "lanczos" and bool(st.converged.all())
    assert bool(((lmin - ex_min).abs() <= LANCZOS_RTOL * scale).all()), (lmin - ex_min) / scale
    assert bool(((lmax - ex_max).abs() <= LANCZOS_RTOL * scale).all()), (lmax - ex_max) / scale
    for v, lam in ((st.v_min, lmin), (st.v_max, lmax)):      # unit Ritz vectors with small residuals
        r = torch.linalg.vector_norm(torch.einsum("epq,eq->ep", Hs, v) - lam[:, None] * v, dim=1)
        assert bool((r <= LANCZOS_RTOL * scale * (1 + 1e-6)).all())
        assert torch.allclose(torch.linalg.vector_norm(v, dim=1), torch.ones(len(lam), dtype=F64), atol=1e-12)
    tight = TrajectoryTolerances(lanczos_rtol=TIGHT_RTOL)
    tmin, tmax, _ = curvature(ws, data, full_max_params=0, tol=tight)
    assert bool(((tmin - ex_min).abs() <= 10 * TIGHT_RTOL * scale).all())
    assert bool(((tmax - ex_max).abs() <= 10 * TIGHT_RTOL * scale).all())
    if kind == "plateau":
        assert bool((ex_min < 0).all()) and bool((ex_min.abs() < 1e-2 * ex_max).all())
        assert bool(((lmin - ex_min).abs() <= PLATEAU_REL * ex_min.abs()).all()), (lmin - ex_min) / ex_min


@pytest.mark.parametrize("full_max_params", [0, 1000])
def test_a_member_about_to_diverge_gets_nan_curvature_and_the_others_theirs(full_max_params):
    """Finite weights whose Hessian overflows (a member on its way to diverging) used to fail the
    eigendecomposition of the whole batch; now that member alone gets NaN (Lanczos and full paths)."""
    X, Y = gaussian_data(16, 6, 4, seed=5)
    data = LandscapeData.from_xy(X, Y)
    ws = _random_points([6, 5, 5, 5, 4], 4, 0.7, seed=7)
    ex_min, ex_max, _ = _exact(ws, data)
    for w in ws:
        w[2] *= 1e40
    lmin, lmax, st = curvature(ws, data, full_max_params=full_max_params)
    assert bool(lmin[2].isnan()) and bool(lmax[2].isnan())
    keep = torch.tensor([0, 1, 3])
    scale = torch.maximum(ex_min.abs(), ex_max.abs())[keep]
    assert bool(((lmin[keep] - ex_min[keep]).abs() <= LANCZOS_RTOL * scale).all())
    assert bool(((lmax[keep] - ex_max[keep]).abs() <= LANCZOS_RTOL * scale).all())
    if st.method == "lanczos":
        assert st.converged.tolist() == [True, True, False, True]
        again_min, _, _ = curvature(ws, data, full_max_params=0, warm=st)   # its zero warm vector: a fresh start
        assert bool(again_min[2].isnan()) and torch.allclose(again_min[keep], lmin[keep], rtol=1e-6)


def test_lanczos_residuals_and_dropping_converged_members():
    """The reported residuals equal ||H v - lam v||; dropping finished members (subset) changes no value."""
    X, Y = gaussian_data(16, 6, 4, seed=9)
    data = LandscapeData.from_xy(X, Y)
    ws, _ = _near_points(data, [6, 5, 5, 5, 4], 8, 3e-2, seed=10)
    op = SquareLossHVP(ws, data.A, data.Sxx)
    v0 = torch.randn(8, 100, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = lanczos_extremes(op.hvp, v0, 20, 60, 1e-8, keep=(4, 2), subset=lambda i: op.subset(i).hvp)
    b = lanczos_extremes(op.hvp, v0, 20, 60, 1e-8, keep=(4, 2))
    assert bool(a.converged.all()) and bool(b.converged.all())
    scale = a.lam_max.abs()
    for r, v, lam in ((a.residual[:, 0], a.v_min, a.lam_min), (a.residual[:, 1], a.v_max, a.lam_max)):
        true = torch.linalg.vector_norm(op.hvp(v) - lam[:, None] * v, dim=1)
        assert bool(((true - r).abs() <= RES_RTOL * scale).all())
    # each member stops at its own step: same values with and without the shrinking batch
    assert torch.equal(a.hvps, b.hvps) or bool((a.hvps <= b.hvps).all())
    assert torch.allclose(a.lam_min, b.lam_min, rtol=0, atol=1e-10 * float(scale.max()))
    assert int(a.hvps.min()) < int(a.hvps.max())              # members do stop at different steps


def test_lanczos_warm_start():
    """A warm start at the same point costs two HVPs; a small step away fewer than the cold start."""
    X, Y = gaussian_data(16, 6, 4, seed=5)
    data = LandscapeData.from_xy(X, Y)
    ws, _ = _near_points(data, [6, 5, 5, 5, 4], 6, 3e-2, seed=6)
    lmin, lmax, st = curvature(ws, data, full_max_params=0)
    same_min, same_max, same = curvature(ws, data, full_max_params=0, warm=st)
    assert same.n_hvp == 2 and torch.allclose(same_min, lmin, rtol=1e-9) and torch.allclose(same_max, lmax, rtol=1e-12)
    ws2 = [w * 1.001 for w in ws]
    f2, g2, _ = _exact(ws2, data)
    l2, _, st2 = curvature(ws2, data, full_max_params=0, warm=st)
    assert bool(((l2 - f2).abs() <= LANCZOS_RTOL * g2.abs()).all())
    assert float(st2.hvps.double().mean()) < float(st.hvps.double().mean())


def test_tight_margin_zero_exactly_at_tightened_points():
    X, Y = gaussian_data(14, 6, 4, seed=7)
    data = LandscapeData.from_xy(X, Y)
    for dims in ([6, 5, 5, 4], [6, 5, 5, 5, 4], [6, 4, 5, 4, 5, 4]):
        for r in range(min(dims)):
            for seed in range(3):
                tight = saddle_family(data, dims, r, strict=False, generator=seed).weights
                loose = saddle_family(data, dims, r, strict=True, generator=seed).weights
                assert float(tight_margin(tight, r, data)[0]) <= 1e-12
                assert float(tight_margin(loose, r, data)[0]) > 1e-4
    # spec §6.1 clean oracles (H = 3): O7, O11 tightened; O8, O12, O13 loose
    X, Y = clean_data()
    data = LandscapeData.from_xy(X, Y)
    W1s = torch.tensor([[3.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=F64)
    W3s = torch.tensor([[1.0, 0], [0, 0], [0, 0]], dtype=F64)
    W2t = torch.tensor([[1.0, 0, 0], [0, 0, 0]], dtype=F64)
    O11 = W1s.clone()
    O11[1, 3] = 1.0
    O12 = W1s.clone()
    O12[1, 1] = 1.0
    cases = {"O7": ([W1s, W2t, W3s], True), "O11": ([O11, W2t, W3s], True),
             "O8": ([W1s, torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=F64), W3s], False),
             "O12": ([O12, W2t, W3s], False),
             "O13": ([W1s, W2t, torch.tensor([[1.0, 0], [0, 1], [0, 0]], dtype=F64)], False)}
    for name, (ws, tight) in cases.items():
        m = float(tight_margin(ws, 1, data)[0])
        assert (m == 0.0) if tight else (m > 0.1), (name, m)


def test_tight_margin_with_shared_spectra_is_the_same():
    """The hook passes the checkpoint's partial products and spectra (the metrics hook's): the margin
    is the one computed from the weights alone."""
    X, Y = gaussian_data(14, 6, 4, seed=8)
    data = LandscapeData.from_xy(X, Y)
    ws, _ = _near_points(data, [6, 5, 5, 5, 4], 8, 1e-2, seed=3)
    pp = partial_products(ws)
    r = torch.arange(8) % 4
    want = tight_margin(ws, r, data)
    got = tight_margin(ws, r, data, products=pp, singular_values=singular_values(pp))
    assert torch.equal(got, want) and float(want.max()) > 1e-6


@pytest.mark.parametrize("dims", [[6, 9, 8, 7, 4], [3, 5, 5, 2], [6, 4, 4, 4, 5]])
def test_b1_cores_have_the_singular_values_of_the_pivot_blocks(dims):
    """The margin decomposes B1 = L Sxy R through the triangular factors of L and R (at most d_x x d_y):
    the same singular values as the blocks themselves, to rounding."""
    X, Y = gaussian_data(14, dims[0], dims[-1], seed=4)
    data = LandscapeData.from_xy(X, Y)
    g = torch.Generator().manual_seed(5)
    ws = [torch.randn(3, dims[h + 1], dims[h], generator=g, dtype=F64) for h in range(len(dims) - 1)]
    pp, H = partial_products(ws), len(ws)
    keys = [k[1:] for k, _ in block_sources(H).values() if k[0] == "B1"]
    full, cores = sandwiches(pp, data.Sxy, keys, H), b1_cores(pp, data.Sxy, keys, H)
    for key in keys:
        s, c = torch.linalg.svdvals(full[key]), torch.linalg.svdvals(cores[("B1",) + key])
        n = min(s.shape[-1], c.shape[-1])
        assert bool((s[:, n:] <= 1e-12 * s[:, :1]).all()) and bool((c[:, n:] <= 1e-12 * c[:, :1]).all())
        torch.testing.assert_close(c[:, :n], s[:, :n], rtol=0, atol=1e-12 * float(s.max()))


def test_tight_margin_is_unit_free():
    X, Y = gaussian_data(14, 6, 4, seed=8)
    data = LandscapeData.from_xy(X, Y)
    ws = saddle_family(data, [6, 5, 5, 5, 4], 1, strict=True, generator=0).weights
    m0 = tight_margin(ws, 1, data)
    scaled = [w * c for w, c in zip(ws, (2.0, 0.5, 3.0, 0.1))]
    assert torch.allclose(tight_margin(scaled, 1, LandscapeData.from_xy(7 * X, Y)), m0, rtol=1e-10)


def test_staircase_rows_and_midpoints():
    steps = np.arange(0, 1000, 10)
    loss = np.where(steps < 300, 85.0, np.where(steps < 600, 21.0 + 1e-4 * (1 + steps % 7), 5.0))
    loss[30] = 50.0                                       # a record between two plateaus
    t = pd.DataFrame({"step": steps, "member": 0, "loss": loss, "lam_min": -steps.astype(float),
                      "near_label": "nonstrict_saddle", "near_dist": 0.1})
    t = pd.concat([t, t.assign(member=1, loss=85.0)])
    rows = staircase(t, [85.0, 21.0, 5.0, 1.0, 0.0])
    m0 = rows[rows.member == 0]
    assert list(m0.S) == ["{}", "{1}", "{1,2}"]
    assert list(m0.theory_value) == [85.0, 21.0, 5.0]
    assert m0.iloc[1].start_step == 310 and m0.iloc[1].end_step == 590
    assert m0.iloc[1].lam_min == -450.0                   # midpoint record (310 + 590) / 2
    assert list(rows[rows.member == 1].S) == ["{}"]
    # a loose tolerance merges nothing new; a strict one drops the wiggling {1} plateau
    assert "{1}" not in list(staircase(t, [85.0, 21.0, 5.0], StaircaseTolerances(rtol=1e-7)).S)
    # paper units with paper_scale
    assert list(staircase(t, [85.0 * 64, 21.0 * 64], paper_scale=64).S)[:2] == ["{}", "{1}"]


# ------------------------------------------------------------------------------------------------
# Slow: the eps scaling on the default teacher (docs/theory.md §9)

def _train(H, eps, steps, every):
    """The default teacher (conf/config.yaml), depth H, init scale eps: (LandscapeData, paper_scale,
    table of step/loss, weights per record). Same seed: the init is eps times the same matrices."""
    class Grab(Hook):
        def __init__(self):
            self.steps, self.loss, self.ws = [], [], []

        def on_record(self, trainer, rec):
            self.steps.append(rec.step)
            self.loss.append(float(rec.metrics["loss"][0]))
            self.ws.append([w[0].clone() for w in rec.weights])

    cfg = compose([f"model.depth={H}", f"model.init.scale={eps}", f"optim.steps={steps}",
                   f"record.every={every}", "record.progress=off", "record.tensorboard=false"])
    task = prepare(cfg)
    grab = Grab()
    run(cfg, out_dir=None, extra_hooks=[grab], task=task)
    data = LandscapeData.from_xy(*task.landscape_data())
    return data, task.paper_scale, pd.DataFrame({"step": grab.steps, "loss": grab.loss}), grab.ws


def _at_plateau(H, eps, steps, every, S="{1}"):
    data, scale, table, ws = _train(H, eps, steps, every)
    rows = staircase(table, plateau_values(data), paper_scale=scale)
    row = rows[rows.S == S].iloc[0]
    k = int(np.flatnonzero(table.step.to_numpy() == row.start_step)[0]) + (int(row.records) - 1) // 2
    w = [x.unsqueeze(0) for x in ws[k]]
    pr = project_to_critical(w, data)
    lmin, _, _ = curvature(w, data)
    return dict(records=int(row.records), near_dist=float(pr.near_dist[0]), near_label=pr.near_label[0],
                S=pr.S_str[0], lam_min=float(lmin[0]), margin=float(tight_margin(w, pr.r, data)[0]),
                rows=rows, data=data, scale=scale, table=table, ws=ws)


def _slope(x, y):
    return float(np.polyfit(np.log(x), np.log(np.abs(y)), 1)[0])


@pytest.mark.slow
@pytest.mark.parametrize("H, eps_list, steps", [(4, (0.03, 0.015, 0.0075), (4000, 15000, 60000)),
                                                (3, (0.003, 0.0015, 0.00075), (5000, 9000, 18000))])
def test_plateau_scaling_with_init(H, eps_list, steps):
    res = [_at_plateau(H, e, s, 100) for e, s in zip(eps_list, steps)]
    for r in res:
        assert r["records"] >= 10 and r["S"] == "{1}" and r["near_label"] == "nonstrict_saddle", r["records"]
        assert r["lam_min"] < 0
    eps = np.array(eps_list)
    slopes = {"near_dist": _slope(eps, [r["near_dist"] for r in res]),
              "lam_min": _slope(eps, [r["lam_min"] for r in res]),
              "tight_margin": _slope(eps, [r["margin"] for r in res])}
    print(H, slopes, [(r["near_dist"], r["lam_min"], r["margin"]) for r in res])
    assert abs(slopes["near_dist"] - 1) <= SLOPE_RTOL
    assert abs(slopes["lam_min"] - (H - 2)) <= SLOPE_RTOL * (H - 2)
    assert abs(slopes["tight_margin"] - (H - 2)) <= SLOPE_RTOL * (H - 2)


@pytest.mark.slow
def test_depth_two_control_strict_everywhere():
    """H = 2: every saddle is strict, so the passage is fast (log(1/eps) steps) and the curvature O(1).
    The strict saddles are crossed too fast for the 1e-3 band at any practical eps (one record at
    eps = 1e-4, every = 5), hence H2_PLATEAU_RTOL; smaller eps to have >= 3 saddle plateaus."""
    tol = StaircaseTolerances(rtol=H2_PLATEAU_RTOL)
    lams = {}
    for eps in (1e-4, 1e-5, 1e-6):
        data, scale, table, ws = _train(2, eps, 1000, 5)
        rows = staircase(table, plateau_values(data), tol, paper_scale=scale)
        saddles = rows[rows.r < 4]
        assert list(saddles.S) == ["{}", "{1}", "{1,2}", "{1,2,3}"], rows
        for _, row in saddles.iterrows():
            k = int(np.flatnonzero(table.step.to_numpy() == row.start_step)[0]) + (int(row.records) - 1) // 2
            w = [x.unsqueeze(0) for x in ws[k]]
            pr = project_to_critical(w, data)
            assert pr.near_label[0] == "strict_saddle" and pr.S_str[0] == row.S
            lmin, _, _ = curvature(w, data)
            lams[(row.S, eps)] = float(lmin[0]) / scale          # lab units
    print(lams)
    assert max(lams.values()) < -0.5, lams       # O(1) negative curvature on every plateau
    for S in ("{1}", "{1,2}", "{1,2,3}"):            # and no eps^k decay (within a factor 2 over 100x eps)
        v = [lams[(S, e)] for e in (1e-4, 1e-5, 1e-6)]
        assert max(v) / min(v) > 0.5, (S, v)
