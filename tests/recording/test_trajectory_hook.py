"""The TrajectoryHook on the default run (docs/columns.md: near_*, tight_margin, lam_*) and the
staircase.csv written at the end of a square-loss run (docs/theory.md §6)."""
import numpy as np
import pandas as pd
import pytest

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import compose, prepare
from dlnlab.experiments.config import ConfigError
from dlnlab.experiments.run import run


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


@pytest.mark.parametrize("override", ["classify.curvature_every=-1", "classify.full_max_params=-5",
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
