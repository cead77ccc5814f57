"""The holes that fault and bad-input probing found (issue 12), each closed: typos, keys outside the
schema, shared sweep folders, damaged run folders, sizes and threads, names, reused run folders,
unfinished runs in comparisons, exit codes."""
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dlnlab.analysis.compare import unfinished
from dlnlab.analysis.folders import DamagedRunWarning
from dlnlab.analysis.runs import load_runs
from dlnlab.cli.compare import run_cli
from dlnlab.cli.sweep import SweepFolderInUse, claim_sweep_dir
from dlnlab.experiments.build import compose, conf_dir, prepare
from dlnlab.experiments.config import ConfigError
from dlnlab.experiments.guards import (
    check_memory,
    clean_run_dir,
    estimate_memory,
    threads_for,
)
from dlnlab.experiments.run import run
from dlnlab.runfolder import write_status

BIN = Path(sys.executable).parent
QUIET = ["record.progress=off", "classify.enabled=false", "record.tensorboard=false"]


def train(*args, timeout=240):
    return subprocess.run([str(BIN / "dlnlab-train"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def one_error_line(p) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


# -- config typos and keys outside the schema ---------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["experiment=saddle_to_sadle"], "experiment='saddle_to_sadle' is invalid: allowed annealed | "),
    (["+device=cuda"], "+device=cuda: device is not an option"),
    (["+anything.deep=1"], "+anything.deep=1: anything.deep is not an option"),
    (["name=../../../escape"], "name='../../../escape' is invalid: allowed letters, digits and ._-"),
    (["name=a/b"], "name='a/b' is invalid"),
    (["model.width=abc"], "model.width=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    (["optim.lr=-1"], "optim.lr=-1.0 is invalid"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, message):
    out = tmp_path / "run"
    p = train(*args, "optim.steps=2", f"hydra.run.dir={out}")
    assert p.returncode == 2
    line = one_error_line(p)
    assert line.startswith("dlnlab-train: error: ") and message in line
    if "=" in args[0] and not args[0].startswith(("model", "optim")):  # refused before any folder
        assert not out.exists()
    assert not list(tmp_path.rglob("escape"))


def test_the_library_refuses_the_same():
    with pytest.raises(ConfigError, match="experiment='saddle_to_sadle' is invalid"):
        compose(["experiment=saddle_to_sadle"])
    with pytest.raises(ConfigError, match="device is not an option"):
        compose(["+device=cuda"])
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(compose(["optim.steps=2"])))  # untyped, as from a dict
    cfg.model.colour = "red"
    with pytest.raises(ConfigError, match="model.colour is not an option of model"):
        prepare(cfg)
    cfg.model.pop("colour")
    cfg.name = "a/b"
    with pytest.raises(ConfigError, match="name='a/b' is invalid"):
        prepare(cfg)


# -- sizes and threads ---------------------------------------------------------------------------
def test_a_run_too_big_for_memory_is_refused_before_allocation():
    with pytest.raises(ConfigError) as e:
        prepare(compose(["model.width=100000"]))
    msg = str(e.value)
    assert msg.startswith("model.width=100000 model.depth=4 model.ensemble=1 needs about 1,120 GB")
    assert "parameters 640 GB" in msg and "recording 480 GB" in msg and "lower model.width" in msg
    cfg = compose(["model.width=1000", "model.ensemble=8"])
    est = estimate_memory(cfg, [6, 1000, 1000, 1000, 4], 64)
    assert est.total > 10**8
    with pytest.raises(ConfigError, match="model.ensemble=8 needs about"):
        check_memory(cfg, [6, 1000, 1000, 1000, 4], 64, available=est.total - 1)
    check_memory(cfg, [6, 1000, 1000, 1000, 4], 64, available=est.total + 1)


def test_threads_beyond_the_cpus_are_clamped_with_a_warning():
    cfg = compose(["threads=1000"])
    with pytest.warns(UserWarning, match="threads=1000 is more than the .* CPUs"):
        n = threads_for(cfg, warn=True)
    assert 1 <= n < 1000 and threads_for(compose(["threads=1"])) == 1


# -- folders -------------------------------------------------------------------------------------
def test_a_second_sweep_into_the_same_folder_is_refused(tmp_path):
    claim_sweep_dir(tmp_path)
    with pytest.raises(SweepFolderInUse, match="is the folder of another sweep"):
        claim_sweep_dir(tmp_path)
    claim_sweep_dir(tmp_path, resume=True)  # a resumed sweep takes its folder back
    text = (Path(conf_dir()) / "config.yaml").read_text()
    assert "${now:%H-%M-%S-%f}_${name}" in text.split("sweep:")[1].split("\n")[1]  # sub-second default


def test_the_cli_refuses_a_second_sweep_into_the_same_folder(tmp_path):
    args = ["-m", "optim.steps=2", "seed=0,1", f"hydra.sweep.dir={tmp_path}", *QUIET]
    assert train(*args).returncode == 0
    p = train(*args)
    assert p.returncode == 2 and "is the folder of another sweep" in p.stderr and "Traceback" not in p.stderr
    assert load_runs(tmp_path)["run"].nunique() == 2


def test_rerunning_into_the_same_folder_keeps_only_the_new_run(tmp_path):
    out = tmp_path / "run"
    q = ["record.progress=off", "classify.enabled=false", "record.every=100"]
    run(compose([*q, "optim.steps=300", "record.checkpoint_every=100"]), out_dir=out)
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    (out / "metrics" / "part-00009.parquet.tmp").write_text("a killed writer's leftovers")
    run(compose([*q, "optim.steps=100"]), out_dir=out)
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    # the earlier run's step_100..300 are gone; step 0 is the new run's own (default cadence)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", "step_000000000.pt"]
    assert load_runs(out)["step"].tolist() == [0, 100] and not list(out.rglob("*.tmp"))
    (out / "checkpoints" / "step_000000100.pt").write_text("x")
    assert clean_run_dir(out, resume=True) == [] and (out / "checkpoints" / "step_000000100.pt").exists()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for lr in (0.004, 0.008):
        run(compose([*QUIET, "optim.steps=100", "record.every=50", f"optim.lr={lr}"]), out_dir=root / f"lr{lr}")
    return root


def copy_runs(src, dst):
    import shutil

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
