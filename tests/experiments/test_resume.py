"""Exact resume (docs/columns.md "The run folder", README "Resuming"): a run stopped by kill -9, SIGTERM
or a double Ctrl-C at a random moment, then resumed, ends bitwise like a run that was never stopped:
the run table, the events table and last.pt. The run (tests/experiments/resume_worker.py): SGD, E = 4, a ridge
schedule, the rank-jump tracker on."""
from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from dlnlab import ConfigError, compose, load_events, load_run, run
from dlnlab.runfolder import read_status

sys.path.insert(0, str(Path(__file__).parent))
from resume_worker import OVERRIDES, hooks, worker_main  # noqa: E402

STEPS = 600
WALL = ("run", "status", "wall_time")  # per-run or wall-clock columns


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert run(compose(OVERRIDES), out_dir=out, extra_hooks=hooks()).status == "finished"
    return out


def assert_same(a: Path, b: Path) -> None:
    ta, tb = load_run(a), load_run(b)
    drop = [c for c in ta.columns if c in WALL]
    pd.testing.assert_frame_equal(ta.drop(columns=drop), tb.drop(columns=drop), check_exact=True)
    ea, eb = load_events(a), load_events(b)
    drop = [c for c in ea.columns if c in WALL]
    pd.testing.assert_frame_equal(ea.drop(columns=drop), eb.drop(columns=drop), check_exact=True)
    assert_equal(torch.load(a / "checkpoints/last.pt", weights_only=True),
                 torch.load(b / "checkpoints/last.pt", weights_only=True))


def assert_equal(x, y, path="last.pt") -> None:
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), path
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for k in x:
            assert_equal(x[k], y[k], f"{path}[{k!r}]")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), path
        for k, (u, v) in enumerate(zip(x, y)):
            assert_equal(u, v, f"{path}[{k}]")
    else:
        assert x == y, path


def stop_runs(root: Path, how: list[str], seed: int) -> list[Path]:
    """Start one worker per entry of `how` (kill9 | sigterm | sigint2) and stop each at a random step."""
    rng = random.Random(seed)
    # forked from this process (torch and dlnlab imported already): a new interpreter costs ~10 s here
    ctx = multiprocessing.get_context("fork")
    jobs = []
    for k, h in enumerate(how):
        out = root / f"{k}_{h}"
        proc = ctx.Process(target=worker_main, args=(str(out), 0.01))
        proc.start()
        # records reach the table (and its heartbeat) a checkpoint's worth at a time (record
        # batches): a target in the last stretch would be seen only as the run ends
        jobs.append([proc, out, h, rng.randrange(1, STEPS - 250)])
    deadline = time.time() + 300
    while any(j[0].is_alive() and j[3] is not None for j in jobs) and time.time() < deadline:
        for j in jobs:
            proc, out, h, target = j
            if target is None or not proc.is_alive():
                continue
            if read_status(out).get("step", 0) >= target:  # the heartbeat of each table part
                if h == "kill9":
                    os.kill(proc.pid, signal.SIGKILL)
                elif h == "sigterm":
                    os.kill(proc.pid, signal.SIGTERM)
                else:  # a second Ctrl-C 50 ms after the first
                    os.kill(proc.pid, signal.SIGINT)
                    time.sleep(0.05)
                    os.kill(proc.pid, signal.SIGINT)
                j[3] = None
        time.sleep(0.005)
    for proc, out, h, _ in jobs:
        proc.join(timeout=120)
        if h != "kill9" and read_status(out).get("status") != "finished":  # stopped before it ended
            assert read_status(out)["status"] == "interrupted", out
            assert (out / "checkpoints/last.pt").exists()
            assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    return [j[1] for j in jobs]


def resume_and_compare(reference: Path, runs: list[Path]) -> int:
    for out in runs:
        assert read_status(out)["status"] in ("running", "interrupted"), out  # stopped before its end
        summary = run(None, resume=str(out), extra_hooks=hooks())
        assert summary.status == "finished", out
        assert_same(reference, out)
    return len(runs)


def test_killed_terminated_and_double_interrupted_runs_resume_bitwise(reference, tmp_path):
    runs = stop_runs(tmp_path, ["kill9", "kill9", "kill9", "sigterm", "sigint2"], seed=0)
    assert resume_and_compare(reference, runs) == 5


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill9", "sigterm", "sigint2"])
def test_twenty_random_moments_resume_bitwise(reference, tmp_path, how):
    runs = []
    for batch in range(5):
        runs += stop_runs(tmp_path / str(batch), [how] * 4, seed=100 * batch + len(how))
    assert resume_and_compare(reference, runs) == 20


def test_resume_refuses_overrides_that_change_the_trajectory(reference, tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lr=0\.5 \(saved 0\.02\)"):
        run(compose([*OVERRIDES, "optim.lr=0.5"]), resume=str(reference))
    with pytest.raises(ConfigError, match="not a run folder"):
        run(None, resume=str(tmp_path))
    # a run that ended is not run again
    before = (reference / "metrics/table.parquet").stat().st_mtime_ns
    assert run(compose([*OVERRIDES, "record.progress=on"]), resume=str(reference)).status == "finished"
    assert (reference / "metrics/table.parquet").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_sweep_resumes_as_a_whole(tmp_path):
    """Job 0 ended (skipped), job 1 stopped at its checkpoint (resumed), job 2 never started (run)."""
    import json
    import shutil
    import subprocess

    from dlnlab.recording.table import truncate_table

    exe = Path(sys.executable).parent / "dlnlab-train"
    sweep = tmp_path / "sweep"
    args = ["optim=sgd", "optim.steps=300", "record.every=10", "record.progress=off", "seed=0,1,2"]
    subprocess.run([exe, "-m", *args, f"hydra.sweep.dir={sweep}"], check=True, capture_output=True)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    reference = {j.name: load_run(j) for j in jobs}
    shutil.rmtree(jobs[2])
    # job 1 as a kill -9 after its checkpoint at step 200 leaves it
    truncate_table(jobs[1] / "metrics", 250)
    (jobs[1] / "checkpoints/last.pt").unlink()
    status = json.loads((jobs[1] / "status.json").read_text())
    (jobs[1] / "status.json").write_text(json.dumps({**status, "status": "running", "step": 250}))
    before = (jobs[0] / "metrics/table.parquet").stat().st_mtime_ns
    done = subprocess.run([exe, f"resume={sweep}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stderr and "resuming" in done.stderr and "not started before" in done.stderr
    assert (jobs[0] / "metrics/table.parquet").stat().st_mtime_ns == before
    for j in jobs:
        assert read_status(j)["status"] == "finished"
        a, b = reference[j.name], load_run(j)
        drop = [c for c in a.columns if c in WALL]
        pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop), check_exact=True)
