"""The real command line in a subprocess, as a user runs it."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dlnlab.analysis.runs import list_runs, load_run, load_runs
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run
from dlnlab.recording.base import Hook
from dlnlab.runfolder import read_status

BIN = Path(sys.executable).parent
SHORT = ["optim.steps=300", "record.every=50", "record.log_spaced=0"]


def train(*args, cwd=None, timeout=240):
    return subprocess.run([str(BIN / "dlnlab-train"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def test_default_experiment_shortened(tmp_path):
    out = tmp_path / "run"
    p = train(*SHORT, f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr
    assert "status      finished after 300 steps" in p.stdout and str(out) in p.stdout
    df = load_run(out)
    assert df["step"].tolist() == [0, 50, 100, 150, 200, 250, 300]
    assert {"loss", "reg_loss", "grad_norm", "theta_sq", "rank", "rank_4_1", "rank_2_2",
            "sv_4_1_1", "balance_3", "model.depth", "optim.lr", "status"} <= set(df.columns)
    assert (df["status"] == "finished").all() and (df["model.depth"] == 4).all()
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 300 and ck["config"]["model"]["depth"] == 4 and len(ck["weights"]) == 4

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "rank/4_1", "rank/3_2", "rank/1_1", "sv/1", "balance/1"} <= tags
    ranks = [e.value for e in acc.Scalars("rank/4_1")]
    assert ranks == df["rank_4_1"].tolist()


def test_cross_entropy_tour_line(tmp_path):
    out = tmp_path / "run"
    p = train("loss=cross_entropy", "task.targets=classes", "task.noise=3", "optim.lr=0.05",
              "model.init.scale=0.3", *SHORT, f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr
    assert "dlnlab-train: width condition holds" in p.stderr and "status      finished" in p.stdout
    st = read_status(out)
    assert st["loss"] == "cross_entropy" and st["width_condition"] is True and st["no_minimiser"] is False
    df = load_run(out)
    assert {"convex_gap", "grad_l_norm", "convex_label"} <= set(df.columns) and "label" not in df.columns
    assert (df["convex_gap"].diff().dropna() < 0).all()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"convex/gap", "convex/grad_l_norm", "convex/label_code"} <= set(acc.Tags()["scalars"])


def test_sweep_with_the_joblib_launcher(tmp_path):
    p = train("-m", *SHORT, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
              "optim.lr=0.002,0.004", "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert p.returncode == 0, p.stderr
    df = load_runs(tmp_path)
    assert df["run"].nunique() == 4
    combos = df.groupby("run")[["optim.lr", "seed"]].first()
    assert sorted(map(tuple, combos.values.tolist())) == [(0.002, 0), (0.002, 1), (0.004, 0), (0.004, 1)]
    assert set(df["status"]) == {"finished"}
    assert df.groupby("run")["overrides"].first().str.contains("optim.lr=").all()


def test_a_failing_job_leaves_the_others_intact(tmp_path):
    p = train("-m", *SHORT, "optim.lr=0.002,-1", f"hydra.sweep.dir={tmp_path}")
    assert "optim.lr=-1.0 is invalid" in p.stderr
    runs = sorted(d for d in tmp_path.iterdir() if d.is_dir() and d.name.split("_")[0].isdigit())
    assert [read_status(r)["status"] for r in runs] == ["finished", "failed"]
    # the sweep ends with a per-job table and the command that compares the jobs
    table = p.stdout[p.stdout.index(f"sweep {tmp_path}: 2 jobs (1 finished, 1 failed)"):].splitlines()
    assert table[1].split() == ["job", "overrides", "status", "members", "final_loss"]
    assert table[2].split()[-3:-1] == ["finished", "1"] and 84 < float(table[2].split()[-1]) <= 85
    assert "optim.lr=0.002" in table[2]
    assert table[3].split()[-3:] == ["failed", "0", "nan"] and "optim.lr=-1" in table[3]
    assert table[-1] == f"compare     dlnlab-compare {tmp_path}"


@pytest.mark.parametrize("args, message", [
    (["optim.lr=-1"], "optim.lr=-1.0 is invalid: allowed a finite number > 0"),
    (["model.depth=1"], "model.depth=1 is invalid"),
    (["model.widht=3"], "Key 'widht' not in 'ModelConfig'"),
    (["task=regression_file", "task.path=/no/such.npz"], "task data file not found: /no/such.npz"),
    (["optim=adam"], "optim='adam' is invalid: allowed gd | sgd"),
    (["loss=foo"], "loss='foo' is invalid: allowed"),
    (["loss=cross_entropy"], "loss=cross_entropy needs class targets"),
    (["loss=lp", "loss.p=3"], "loss.p=3.0 is invalid: allowed a number in (1, 2]"),
])
def test_user_errors_are_one_clear_message(tmp_path, args, message):
    p = train(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert p.returncode != 0
    assert message in p.stderr
    assert "Traceback" not in p.stderr


def start_endless_run(out):
    """A training run with no end in sight, once it has written its table past step 200."""
    proc = subprocess.Popen([str(BIN / "dlnlab-train"), "optim.steps=10000000", "record.every=100",
                             "record.flush_every=1", f"hydra.run.dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and read_status(out).get("step", 0) < 200:
        time.sleep(0.2)
    return proc


def test_sigterm_leaves_an_interrupted_readable_run(tmp_path):
    out = tmp_path / "run"
    proc = start_endless_run(out)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    status = read_status(out)
    assert status["status"] == "interrupted"
    df = load_run(out)
    # no last record after a signal (it could take minutes at large E): the table ends at the last
    # record, last.pt holds the weights at the step reached
    assert df["step"].max() <= status["step"] and len(df) >= 3
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == status["step"]


def test_a_killed_run_reads_as_killed_with_what_it_wrote(tmp_path):
    """kill -9 gives the run no chance to write its status: the loader tells it from a live one."""

    out = tmp_path / "run"
    proc = start_endless_run(out)
    try:
        assert list_runs(out)["status"].tolist() == ["running"]  # alive: running
        proc.kill()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    runs = list_runs(out)
    assert runs["status"].tolist() == ["killed"] and runs["wall_time"].iloc[0] > 0
    df = load_run(out)
    assert df["step"].max() >= 200 and set(df["status"]) == {"killed"}


def test_float32_ensemble_with_balanced_init_runs_from_a_notebook(tmp_path):

    cfg = compose(["precision=float32", "model.ensemble=3", "model.init.kind=balanced",
                   "model.init.scale=0.5", "optim.steps=100", "record.every=50", "record.progress=off"])
    summary = run(cfg, out_dir=tmp_path)
    assert summary.status == "finished" and len(summary.final_loss) == 3
    df = load_run(tmp_path)
    assert sorted(df["member"].unique()) == [0, 1, 2] and df["precision"].iloc[0] == "float32"
    # A balanced start (scale * the task's map) is balanced at step 0
    first = df[df.step == 0]
    assert (first[["balance_1", "balance_2", "balance_3"]] < 1e-5).all().all()


def test_a_diverging_member_leaves_the_run_finished_with_the_others(tmp_path):
    """One member of an ensemble diverges (progress bar on): the run ends `finished`, the summary
    and the table flag that member, and the healthy members' results are whole."""

    cfg = compose(["model.ensemble=4", "model.init.kind=gaussian", "model.init.scale=1.0",
                   "optim.lr=0.005", "optim.steps=300", "record.every=50", "record.progress=on"])
    scale = {1: 30.0}  # member 1 starts far too large for lr 0.005

    class Blowup(Hook):
        def on_start(self, trainer):
            with torch.no_grad():
                for w in trainer.net.weights:
                    w[1] *= scale[1]

    summary = run(cfg, out_dir=tmp_path, extra_hooks=[Blowup()])
    assert summary.status == "finished"
    assert summary.diverged_at[1] is not None and summary.diverged_at[0] is None
    assert summary.final_rank[1] is None and summary.final_loss[1] != summary.final_loss[1]  # NaN
    assert all(r == 4 for k, r in enumerate(summary.final_rank) if k != 1)
    df = load_run(tmp_path)
    last = df[df.step == df.step.max()].set_index("member")
    assert last.loc[1, "member_status"] == "diverged" and (last.drop(1)["member_status"] == "training").all()


def test_help_version_module_and_license(tmp_path):
    import dlnlab
    from dlnlab.experiments.config import Config
    from dlnlab.experiments.options import option_rows

    p = train("--help", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "_schema" not in p.stdout and "optim              gd, sgd" in p.stdout
    assert "model.depth                  [4]  H, the number of weight matrices" in p.stdout
    # every option has a one-line description, read from the comments in experiments/config.py
    rows = option_rows(Config)
    assert len(rows) > 50 and [name for name, _, note in rows if not note and name != "task"] == []
    assert "task.observed_fraction" in p.stdout and max(map(len, p.stdout.splitlines())) < 160
    assert not list(tmp_path.iterdir())  # --help runs nothing
    v = train("--version")
    assert v.returncode == 0 and v.stdout.strip() == f"dlnlab {dlnlab.__version__}"
    m = subprocess.run([sys.executable, "-m", "dlnlab", "--version"], capture_output=True, text=True, timeout=60)
    assert m.returncode == 0 and m.stdout.strip() == f"dlnlab {dlnlab.__version__}"
    assert "MIT License" in (Path(__file__).parents[2] / "LICENSE").read_text()


def test_an_internal_schema_is_not_a_choice(tmp_path):
    out = tmp_path / "run"
    p = train("optim=optim_schema", *SHORT, f"hydra.run.dir={out}")
    assert p.returncode == 2 and "optim='optim_schema' is invalid" in p.stderr and "Traceback" not in p.stderr
    assert not (out / "metrics").exists()


def test_python_m_dlnlab_trains(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "dlnlab", *SHORT, f"hydra.run.dir={out}"], capture_output=True,
                       text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    assert load_run(out)["step"].max() == 300
