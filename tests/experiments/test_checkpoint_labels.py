"""classify_checkpoint: a run's checkpoint labelled with the run's own tolerances, loss and task, so
its rows are the run table's rows at that step, whichever rule labelled them."""
import numpy as np
import pandas as pd
import pytest
import torch

from dlnlab import CheckpointNotFound, classify_checkpoint
from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run

QUIET = ["record.progress=off", "record.tensorboard=false"]


def _run(tmp_path_factory, name, overrides):
    out = tmp_path_factory.mktemp(name)
    run(compose(QUIET + overrides), out_dir=out)
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (np.isnan(a) and np.isnan(b))
    return a == b


def assert_rows_are_the_tables(got: pd.DataFrame, run_dir, step: int) -> None:
    """Every column classify_checkpoint gives equals the run table's at `step`, bit for bit."""
    table = load_run(run_dir)
    want = table[table.step == step].sort_values("member").reset_index(drop=True)
    assert len(got) == len(want) > 0 and (got.step == step).all()
    missing = [c for c in got.columns if c not in want.columns]
    assert not missing, missing
    for col in got.columns:
        diff = [(k, x, y) for k, (x, y) in enumerate(zip(got[col], want[col])) if not _same(x, y)]
        assert not diff, (col, diff[:3])


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return _run(tmp_path_factory, "default", [])   # the default saddle-to-saddle run (~2 s)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    return _run(tmp_path_factory, "ensemble", ["model.ensemble=4", "optim.steps=3000"])


def test_the_last_checkpoint_gets_the_run_tables_final_labels(default_run):
    got = classify_checkpoint(default_run)
    assert got.step.iloc[0] == 12000 and got.label.iloc[0] == "global_min" and got.S.iloc[0] == "{1,2,3,4}"
    assert_rows_are_the_tables(got, default_run, 12000)
    assert {"label", "S", "r", "critical_value", "nearest_S", "near_label", "lam_min", "loss"} <= set(got.columns)


def test_an_intermediate_checkpoint_gets_the_run_tables_labels_at_its_step(default_run):
    got = classify_checkpoint(default_run, step=2000)   # on the {1} plateau
    assert got.nearest_S.iloc[0] == "{1}"
    assert_rows_are_the_tables(got, default_run, 2000)
    assert np.isfinite(got.lam_min.iloc[0])   # a curvature record of the run (the 21st record): the same number


@pytest.mark.parametrize("step", [None, 1000])
def test_every_member_of_an_ensemble_gets_its_row(ensemble_run, step):
    got = classify_checkpoint(ensemble_run, step=step)
    assert list(got.member) == [0, 1, 2, 3]
    assert_rows_are_the_tables(got, ensemble_run, 3000 if step is None else step)


def test_a_ridge_run_gets_its_ridge_labels(tmp_path_factory):
    out = _run(tmp_path_factory, "ridge", ["optim.ridge=0.01", "optim.steps=3000", "classify.ridge_every=10"])
    for step in (None, 2000):   # 2000: the 21st record, labelled by ridge_every = 10
        got = classify_checkpoint(out, step=step)
        assert "S" not in got.columns and got.label.iloc[0] and got.label_reason.iloc[0]
        assert_rows_are_the_tables(got, out, 3000 if step is None else step)


def test_a_cross_entropy_run_gets_its_convex_labels(tmp_path_factory):
    out = _run(tmp_path_factory, "ce", ["loss=cross_entropy", "task.targets=classes", "task.noise=3",
                                        "optim.lr=0.05", "model.init.scale=0.3", "optim.steps=2000"])
    for step in (None, 1000):   # last.pt: with the Hessian, as the run's last record
        got = classify_checkpoint(out, step=step)
        assert "label" not in got.columns and got.convex_label.iloc[0]
        assert_rows_are_the_tables(got, out, 2000 if step is None else step)


def test_the_runs_own_tolerances_label_the_checkpoint(tmp_path_factory):
    """classify.rank_band = 1 (no ambiguity gap): on the {1} plateau the run's label is a confident
    saddle where the default band says ambiguous; the checkpoint's label is the run's."""
    out = _run(tmp_path_factory, "band", ["optim.steps=2000", "classify.rank_band=1.0"])
    got = classify_checkpoint(out)
    assert got.label.iloc[0] != "ambiguous"
    assert_rows_are_the_tables(got, out, 2000)


def test_a_missing_step_names_the_checkpoints_there(default_run):
    with pytest.raises(CheckpointNotFound, match=r"no checkpoint at step 1500 .* 0, 1000, 2000, .*last\.pt \(step 12000\)"):
        classify_checkpoint(default_run, step=1500)


def test_a_missing_folder_names_the_run_folders_beside_it(default_run):
    with pytest.raises(CheckpointNotFound, match=rf"no run folder .*nope.*the run folders in .*{default_run.name}"):
        classify_checkpoint(default_run.parent / "nope")


def test_a_folder_without_checkpoints_says_what_it_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(CheckpointNotFound, match=r"no checkpoint .*notes\.txt"):
        classify_checkpoint(tmp_path)


def test_a_checkpoint_file_is_labelled_as_its_run_folders(default_run):
    path = default_run / "checkpoints" / "step_000002000.pt"
    a, b = classify_checkpoint(path), classify_checkpoint(default_run, step=2000)
    pd.testing.assert_frame_equal(a, b)
    assert torch.load(path, weights_only=True)["step"] == 2000
