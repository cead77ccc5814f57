"""Resuming a rank-jump experiment (`jumps.enabled`; README "Resuming a stopped run or sweep"): a shortened
`experiment=one_way_jumps` killed (SIGKILL, in a forked child) in its warm-up or in its main phase, then
resumed, ends bitwise like the experiment that was never stopped: every phase's table, events and
last.pt, and jumps_summary.json but for its timing fields. Phases that had ended are not run again."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlnlab import ConfigError, compose, run
from dlnlab.experiments import jumps
from dlnlab.recording.base import Hook
from dlnlab.runfolder import read_status

sys.path.insert(0, str(Path(__file__).parent))
from test_resume import assert_same  # noqa: E402

OVERRIDES = ["experiment=one_way_jumps", "record.progress=off", "model.ensemble=3", "optim.steps=400",
             "record.every=20", "record.flush_every=3", "jumps.warmup.steps=400", "jumps.warmup.every=20",
             "jumps.polish_steps=200", "jumps.gd_every=40"]
PHASES = ("warmup", "sgd", "gd")
TIMING = ("wall_time", "seconds", "tracker_seconds")  # jumps_summary.json fields that a resume may change


class Kill(Hook):
    """kill -9 of its own process at the first record at or after `step` of the phase `phase`."""

    def __init__(self, step: int):
        self.step = step

    def on_record(self, trainer, rec) -> None:
        if rec.step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _killed_run(out: str, phase: str, step: int) -> None:
    sys.stdout = sys.stderr = open(os.devnull, "w")
    build = jumps.build_hooks  # this forked child only: every phase's hooks, plus the killer in one

    def build_hooks(cfg, out_dir, extra=()):
        return build(cfg, out_dir, [*extra, Kill(step)] if cfg.jumps.phase == phase else extra)

    jumps.build_hooks = build_hooks
    run(compose(OVERRIDES), out_dir=out)


def kill_in(out: Path, phase: str, step: int) -> None:
    proc = multiprocessing.get_context("fork").Process(target=_killed_run, args=(str(out), phase, step))
    proc.start()
    proc.join(timeout=300)
    assert proc.exitcode == -signal.SIGKILL


def untimed(x):
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "exp"
    assert run(compose(OVERRIDES), out_dir=out).status == "finished"
    return out


def assert_same_experiment(a: Path, b: Path) -> None:
    for name in PHASES:
        assert_same(a / name, b / name)
    sa, sb = (json.loads((d / "jumps_summary.json").read_text()) for d in (a, b))
    assert sa["status"] == sb["status"] == "finished"
    sa["out_dir"] = sb["out_dir"]
    for s in (sa, sb):
        for p in s["phases"].values():
            p["dir"] = Path(p["dir"]).name
    assert untimed(sa) == untimed(sb)


def test_the_warm_up_hands_its_last_pt_on_bitwise(reference):
    """What a resume reads back as the main and GD phases' start (the warm-up's last.pt, member 0) is
    the tensor the uninterrupted run handed on: every member of the main phase's step-0 checkpoint."""
    start = jumps._end_point(reference / "warmup")
    for name in ("sgd", "gd"):
        ck = torch.load(reference / name / "checkpoints/step_000000000.pt", weights_only=True)
        for w0, w in zip(start, ck["weights"]):
            assert all(torch.equal(w0, w[k]) for k in range(w.shape[0])), name


@pytest.mark.parametrize("phase", ["warmup", "sgd"])
def test_an_experiment_killed_in_a_phase_resumes_bitwise(reference, tmp_path, phase):
    out = tmp_path / "exp"
    kill_in(out, phase, 310)  # the newest checkpoint: step 200
    assert read_status(out / phase)["status"] == "running"
    ended = {n: (out / n / "metrics").stat().st_mtime_ns for n in PHASES[:PHASES.index(phase)]}
    summary = run(None, resume=str(out))
    assert summary.status == "finished"
    assert read_status(out / phase)["resumed_from"] == 200  # from its checkpoint, not from the start
    assert_same_experiment(reference, out)
    for n, t in ended.items():  # not run again
        assert (out / n / "metrics").stat().st_mtime_ns == t, n


def test_a_finished_experiment_is_not_run_again_and_a_phase_folder_is_refused(reference):
    before = {n: (reference / n / "metrics").stat().st_mtime_ns for n in PHASES}
    s = run(None, resume=str(reference))
    assert s.status == "finished" and set(s.phases) == set(PHASES) and s.headline.members == 3
    assert {n: (reference / n / "metrics").stat().st_mtime_ns for n in PHASES} == before
    with pytest.raises(ConfigError, match="a phase of a rank-jump experiment; resume the experiment"):
        run(None, resume=str(reference / "sgd"))


def test_the_cli_resumes_an_experiment_killed_in_its_gd_reference(reference, tmp_path):
    out = tmp_path / "exp"
    kill_in(out, "gd", 250)  # gd_every = 40: the newest checkpoint is at step 0
    assert read_status(out / "gd")["status"] == "running"
    p = subprocess.run([str(Path(sys.executable).parent / "dlnlab-train"), f"resume={out}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "resuming the rank-jump experiment" in p.stderr and "3 members" in p.stdout
    assert_same_experiment(reference, out)


@pytest.mark.slow
def test_a_sweep_of_experiments_resumes_each(tmp_path):
    """Job 0 had ended (read back, nothing run), job 1 stopped before its GD reference (which runs)."""
    import shutil

    exe = Path(sys.executable).parent / "dlnlab-train"
    sweep = tmp_path / "sweep"
    args = [*OVERRIDES, "optim.steps=200", "jumps.warmup.steps=200", "task.seed=0,1"]
    subprocess.run([exe, "-m", *args, f"hydra.sweep.dir={sweep}"], check=True, capture_output=True)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    reference = tmp_path / "reference"
    shutil.copytree(jobs[1], reference)
    shutil.rmtree(jobs[1] / "gd")
    s = json.loads((jobs[1] / "jumps_summary.json").read_text())
    del s["phases"]["gd"]
    (jobs[1] / "jumps_summary.json").write_text(json.dumps({**s, "status": "running", "headline": {}}))
    before = {n: (jobs[0] / n / "metrics").stat().st_mtime_ns for n in PHASES}
    done = subprocess.run([exe, f"resume={sweep}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("resuming the rank-jump experiment") == 2
    assert {n: (jobs[0] / n / "metrics").stat().st_mtime_ns for n in PHASES} == before
    assert_same_experiment(reference, jobs[1])
