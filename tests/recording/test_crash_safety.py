"""Crash-safe run folders: every write goes through `atomic_write`; a run that fails (disk full)
says `failed` with a one-line reason, keeps what it flushed, and leaves no `.tmp` file."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import RunFailed, run
from dlnlab.recording import table as table_hook
from dlnlab.runfolder import atomic_write, read_status

# record.checkpoint_every=0: no step checkpoints, so the table is written in parts of exactly 5 records
# (a step checkpoint flushes the table first) and the write that fails is the part we count to
SMALL = ["optim.steps=400", "record.every=10", "record.flush_every=5", "record.tensorboard=false",
         "record.progress=off", "classify.enabled=false", "record.checkpoint_every=0"]


def test_atomic_write_leaves_the_old_file_and_no_tmp_when_the_write_fails(tmp_path):
    path = tmp_path / "status.json"
    atomic_write(path, '{"status": "running"}')

    def disk_full(tmp):
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, disk_full)
    assert path.read_text() == '{"status": "running"}'
    assert list(tmp_path.iterdir()) == [path]


def fail_after(monkeypatch, n_ok: int):
    """The table hook's part writes succeed n_ok times, then the disk is full."""
    calls = {"n": 0}
    real = table_hook.write_part

    def write_part(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(table_hook, "write_part", write_part)
    return calls


def test_disk_full_during_a_run(tmp_path, monkeypatch):
    fail_after(monkeypatch, 3)  # three parts of 5 records each reach the disk
    out = tmp_path / "run"
    with pytest.raises(RunFailed, match="No space left on device"):
        run(compose(SMALL), out_dir=out)
    st = read_status(out)
    assert st["status"] == "failed"
    assert st["message"] == "OSError: [Errno 28] No space left on device"
    monkeypatch.undo()
    df = load_run(out)  # the flushed parts are intact and readable
    assert df["step"].tolist() == list(range(0, 150, 10))
    assert not list(out.rglob("*.tmp"))


def test_the_cli_says_disk_full_in_one_line(tmp_path):
    out = tmp_path / "run"
    code = f"""
import errno, sys
import dlnlab.recording.table as T
real, n = T.write_part, [0]
def write_part(*a, **k):
    n[0] += 1
    if n[0] > 2:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(*a, **k)
T.write_part = write_part
sys.argv = ["dlnlab-train", *{SMALL!r}, "hydra.run.dir={out}"]
from dlnlab.cli.train import train
train()
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert p.returncode == 1
    errors = [line for line in p.stderr.splitlines() if "error" in line]
    assert errors == [f"dlnlab-train: error: run failed: OSError: [Errno 28] No space left on device "
                      f"(status failed in {out})"]
    assert "Traceback" not in p.stderr
    assert read_status(out)["status"] == "failed" and len(load_run(out)) == 10
    assert not list(out.rglob("*.tmp"))
