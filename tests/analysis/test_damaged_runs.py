"""Run folders that lost a file are still read, with a warning that names what is missing, and a
comparison flags the runs that did not end."""
import io
import shutil
import warnings

import pytest

from dlnlab.analysis.compare import unfinished
from dlnlab.analysis.folders import DamagedRunWarning
from dlnlab.analysis.runs import load_runs
from dlnlab.cli.compare import run_cli
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run
from dlnlab.runfolder import write_status

QUIET = ["record.progress=off", "classify.enabled=false", "record.tensorboard=false"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for lr in (0.004, 0.008):
        run(compose([*QUIET, "optim.steps=100", "record.every=50", f"optim.lr={lr}"]), out_dir=root / f"lr{lr}")
    return root


def copy_runs(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_a_run_without_config_warns_and_is_not_grouped_by(two_runs, tmp_path):
    root = copy_runs(two_runs, tmp_path / "runs")
    (root / "lr0.004" / "config.yaml").unlink()
    with pytest.warns(DamagedRunWarning, match=r"lr0.004: config.yaml is missing"):
        df = load_runs(root)
    assert df["run"].nunique() == 2
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedRunWarning)
        assert run_cli([str(root)], out=out) == 0
    assert "grouped by nothing (all runs)" in out.getvalue()  # not by ~80 keys


def test_a_run_without_status_is_still_found(two_runs, tmp_path):
    root = copy_runs(two_runs, tmp_path / "runs")
    (root / "lr0.004" / "status.json").unlink()
    with pytest.warns(DamagedRunWarning, match=r"lr0.004: status.json is missing; its status is 'unknown'"):
        df = load_runs(root)
    assert df.groupby("run", observed=True)["status"].first().astype(str).tolist() == ["unknown", "finished"]


def test_compare_flags_runs_that_did_not_end(two_runs, tmp_path):
    root = copy_runs(two_runs, tmp_path / "runs")
    write_status(root / "lr0.004", status="interrupted")
    out = io.StringIO()
    assert run_cli([str(root), "--plot", str(tmp_path / "loss.png")], out=out) == 0
    text = out.getvalue()
    assert "unfinished" in text.splitlines()[1]
    assert "note: groups with runs that did not end" in text and "0.004: 1 interrupted" in text
    assert unfinished(load_runs(root), ["optim.lr"]) == {(0.004,): "1 interrupted"}
