"""A folder already used is handled on purpose: a second sweep into a sweep's folder is refused,
a run into a finished run's folder keeps only the new run (a resume keeps the old one)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlnlab.analysis.runs import load_runs
from dlnlab.cli.sweep import SweepFolderInUse, claim_sweep_dir
from dlnlab.experiments.build import compose, conf_dir
from dlnlab.experiments.guards import clean_run_dir
from dlnlab.experiments.run import run

BIN = Path(sys.executable).parent
QUIET = ["record.progress=off", "classify.enabled=false", "record.tensorboard=false"]


def train(*args, timeout=240):
    return subprocess.run([str(BIN / "dlnlab-train"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


# -- sweeps and reruns -------------------------------------------------------------------------------------
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
