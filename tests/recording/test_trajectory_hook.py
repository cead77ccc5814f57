"""The TrajectoryHook on the default run (docs/columns.md: near_*, tight_margin, lam_*) and the
staircase.csv written at the end of a square-loss run (docs/theory.md §6)."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import compose, prepare
from dlnlab.experiments.config import ConfigError
from dlnlab.experiments.run import run
from dlnlab.recording.base import Hook
from dlnlab.recording.midpoints import MIDPOINT_SLOTS, PlateauVisits
from dlnlab.runfolder import write_status
from dlnlab.theory import full_hessian


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    summary = run(compose(["record.progress=off", "record.tensorboard=false"]), out_dir=str(out))
    return out, summary, load_run(str(out))


def test_default_staircase(default_run):
    out, summary, _ = default_run
    rows = pd.read_csv(out / "staircase.csv")
    assert list(rows.S) == ["{}", "{1}", "{1,2}", "{1,2,3}", "{1,2,3,4}"]
    np.testing.assert_allclose(rows.theory_value, [85, 21, 5, 1, 0], atol=1e-9)
    np.testing.assert_allclose(rows.loss, [85, 21, 5, 1, 0], rtol=1e-3, atol=1e-5)
    assert (rows.start_step <= rows.end_step).all() and (rows.end_step.iloc[:-1].values < rows.start_step.iloc[1:].values).all()
    assert list(rows.near_label.iloc[1:4]) == ["nonstrict_saddle"] * 3 and rows.near_label.iloc[-1] == "global_min"
    assert rows.lam_min.notna().all()
    assert "staircase" in str(summary)


def test_default_columns(default_run):
    _, _, df = default_run
    for c in ["near_label", "near_S", "near_dist", "tight_margin", "lam_min", "lam_max"]:
        assert c in df.columns, c
    vals = np.array([85, 21, 5, 1, 0.0])
    on = (np.abs(df.loss.to_numpy()[:, None] - vals) <= 1e-3 * np.maximum(vals, 1e-2)).any(1)
    assert on.sum() > 50
    assert df.near_label[on].map(lambda s: isinstance(s, str) and s != "").all()
    assert df.near_dist[on].notna().all() and df.tight_margin[on].notna().all()
    # curvature every 10th record and the last, NaN elsewhere; LAB units (loss 21 plateau: O(0.1))
    n = df.lam_min.notna().sum()
    assert 12 <= n <= 14 and df.lam_min.iloc[0] == df.lam_min.iloc[0] and np.isnan(df.lam_min.iloc[1])
    assert (df.lam_max.dropna() > 0).all()
    assert ((df.tight_margin >= 0) & (df.tight_margin <= 1 + 1e-12)).all()


@pytest.mark.parametrize("override", ["classify.curvature_every=-1", "classify.full_max_params=-5", "classify.midpoint_window=0.7",
                                      "classify.near_members=0"])
def test_config_validation(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        prepare(compose([override]))


def test_off_writes_nothing(tmp_path):
    run(compose(["record.progress=off", "record.tensorboard=false", "classify.near=false",
                 "classify.curvature_every=0", "optim.steps=500"]), out_dir=str(tmp_path))
    assert not (tmp_path / "staircase.csv").exists()
    assert "near_label" not in load_run(str(tmp_path)).columns


def test_ensemble_staircase_print(tmp_path):
    s = run(compose(["record.progress=off", "record.tensorboard=false", "model.ensemble=3", "optim.steps=3000",
                     "classify.curvature_every=5"]), out_dir=str(tmp_path))
    rows = pd.read_csv(tmp_path / "staircase.csv")
    assert sorted(rows.member.unique()) == [0, 1, 2]
    for m in range(3):
        assert list(rows[rows.member == m].S)[:2] == ["{}", "{1}"]
    text = str(s)
    assert "staircase, member 2" in text and "staircase over 3 members" in text


def test_a_large_ensemble_gets_its_curvature_for_the_first_members_only(tmp_path):
    """A Lanczos run per member costs too much at E = 256: classify.near_members bounds the curvature
    (NaN for the others, as for a diverged member); the batched projection, its label and the tight
    margin come for every member."""
    run(compose(["record.progress=off", "record.tensorboard=false", "model.ensemble=3", "optim.steps=300",
                 "classify.near_members=2"]), out_dir=str(tmp_path))
    df = load_run(str(tmp_path))
    assert df.near_dist.notna().all() and df.tight_margin.notna().all()
    assert df.near_label.astype(str).map(lambda s: s not in ("", "nan")).all()
    assert df[df.member == 2].lam_min.isna().all() and df[df.member < 2].lam_min.notna().any()


def test_depth_two_control_in_the_run_table(tmp_path):
    """The H = 2 control through the hook (fast; the eps sweep is the slow test_depth_two_control_strict_everywhere):
    every checkpoint that is not at the global minimum projects onto a strict saddle (H = 2 has no
    non-strict saddle), and near a saddle plateau the negative curvature is O(1), not O(eps^(H-2)) small."""
    run(compose(["record.progress=off", "record.tensorboard=false", "model.depth=2", "model.init.scale=1e-4",
                 "optim.steps=1000", "record.every=5", "classify.curvature_every=1"]), out_dir=str(tmp_path))
    df = load_run(str(tmp_path))
    saddle = df.near_S != "{1,2,3,4}"
    assert saddle.sum() >= 20 and set(df.near_S[saddle]) == {"{}", "{1}", "{1,2}", "{1,2,3}"}
    assert (df.near_label[saddle] == "strict_saddle").all()
    assert (df.near_label[~saddle] == "global_min").all()
    vals = np.array([85, 21, 5, 1.0])
    near = (np.abs(df.loss.to_numpy()[:, None] - vals) <= 1e-2 * vals).any(1)   # within 1% of a saddle value
    assert near.sum() >= 10 and (df.lam_min[near] < -0.5).all(), df.lam_min[near].max()
    rows = pd.read_csv(tmp_path / "staircase.csv", dtype={"S": str})
    assert (rows.near_label[rows.r < 4] == "strict_saddle").all() and rows.near_label.iloc[-1] == "global_min"


class KeepWeights(Hook):
    """Every record's weights (float64 copies), to check the staircase against."""

    def __init__(self):
        self.weights = {}

    def on_record(self, trainer, rec):
        self.weights[rec.step] = [w.detach().to(torch.float64).clone() for w in rec.weights]


LAM_ATOL = 1e-9   # closed-form-HVP Hessian vs autograd's, both eigvalsh in float64: rounding of O(lam_max = 181)


@pytest.mark.parametrize("ensemble", [1, 3])
def test_every_staircase_row_has_the_curvature_at_its_midpoint(tmp_path, ensemble):
    """Curvature records every 1000th record (the first and the last only): every plateau visit still
    gets lam_min, lam_max, at its midpoint record (lam_step), equal to an independent float64 Hessian there.
    Before, the {1}, {1,2}, {1,2,3} rows had lam_min = NaN."""
    keep = KeepWeights()
    cfg = compose(["record.progress=off", "record.tensorboard=false", "classify.curvature_every=1000",
                   f"model.ensemble={ensemble}", "optim.steps=9000"])
    run(cfg, out_dir=str(tmp_path), extra_hooks=[keep])
    table = load_run(str(tmp_path))
    assert table.lam_min.notna().sum() == 2 * ensemble            # the run table's curvature records: as before
    rows = pd.read_csv(tmp_path / "staircase.csv", dtype={"S": str})
    for m in range(ensemble):   # every member passes the saddles {}, {1}, {1,2} (the first member {1,2,3} too)
        assert {"{}", "{1}", "{1,2}"} <= set(rows[rows.member == m].S)
    task = prepare(cfg)
    X, Y = (a.to(torch.float64) for a in task.landscape_data())

    def paper_loss(ws):   # the landscape paper's loss, straight from the samples (no statistics)
        P = ws[0]
        for w in ws[1:]:
            P = w @ P
        return ((X @ P.T - Y) ** 2).sum()

    every = cfg.record.every
    for _, row in rows.iterrows():
        assert np.isfinite(row.lam_min) and np.isfinite(row.lam_max), row
        mid = row.start_step + every * ((row.records - 1) // 2)
        if row.records < 2 * MIDPOINT_SLOTS:   # every record kept: the midpoint itself
            assert row.lam_step == mid, row
        assert abs(row.lam_step - mid) <= every * row.records / (2 * (MIDPOINT_SLOTS - 1)), row
        ws = [w[int(row.member)] for w in keep.weights[int(row.lam_step)]]
        eig = torch.linalg.eigvalsh(full_hessian(paper_loss, ws)) / task.paper_scale   # lab units
        assert abs(row.lam_min - float(eig[0])) <= LAM_ATOL and abs(row.lam_max - float(eig[-1])) <= LAM_ATOL


def test_a_long_visit_keeps_a_record_near_its_midpoint():
    """PlateauVisits with 4 slots: a 7-record visit keeps its exact midpoint, a 101-record one a record
    within 101 / (2 (4 - 1)) of it, with at most 4 copies at any time."""
    visits = PlateauVisits([85.0, 21.0], members=1, slots=4)
    ws = lambda n: [torch.full((1, 2, 2), float(n))]   # noqa: E731 - the record's number as its weights
    losses = [85.0] * 7 + [21.0] * 101 + [50.0]
    ended = []
    for n, loss in enumerate(losses):
        ended += visits.observe([n], [loss], ws(n))
        assert all(len(v.kept) <= 4 for v in visits.open.values())
    (_, first), (_, second) = ended
    assert first.nearest()[0] == 3 and first.nearest()[1][0][0, 0].item() == 3.0
    pos, w = second.nearest()
    assert abs(pos - 50) <= 101 / 6 and w[0][0, 0].item() == 7 + pos


def test_a_run_resumed_inside_a_plateau_visit_gets_the_same_staircase(tmp_path):
    """The weights kept near an open visit's midpoint travel in the checkpoint: a run stopped at step
    2000 (inside the {1} visit, 1200..2600) and resumed writes the staircase of a run never stopped."""
    a, b = tmp_path / "a", tmp_path / "b"
    run(compose(["record.progress=off", "record.tensorboard=false", "classify.curvature_every=1000",
                 "optim.steps=5000"]), out_dir=str(a))
    shutil.copytree(a, b)
    for f in (b / "checkpoints").glob("*.pt"):
        if f.name != "step_000002000.pt":
            f.unlink()
    write_status(b, status="interrupted", step=2000)
    run(None, resume=str(b))
    sa, sb = (pd.read_csv(d / "staircase.csv", dtype={"S": str}) for d in (a, b))
    assert "{1}" in set(sa.S) and sa.lam_min.notna().all()
    pd.testing.assert_frame_equal(sa, sb, check_exact=True)
