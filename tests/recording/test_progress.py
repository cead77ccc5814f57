"""What a user sees during and after a run: the ensemble summary, the progress bar and status lines."""
import io

import pytest
import torch

from dlnlab.experiments.build import compose, prepare
from dlnlab.experiments.config import ConfigError
from dlnlab.experiments.run import RunSummary, run
from dlnlab.recording.base import Record
from dlnlab.recording.progress import ProgressHook


def test_an_ensemble_summary_gives_quartiles_and_counts_not_a_list():
    E = 64
    loss = [float(k) for k in range(E)]
    loss[5] = float("nan")
    rank = [1 if k < 40 else 2 for k in range(E)]
    rank[5] = None
    labels = ["strict_saddle (S = {})"] * 40 + ["global_min (S = {1, 2})"] * 24
    text = str(RunSummary("runs/x", "finished", 300, 1.5, loss, rank, [None] * 5 + [120] + [None] * 58, labels))
    assert "..." not in text.split("diverged")[0]
    assert "members     64 (1 diverged)" in text
    assert "final loss  median 32  quartiles [16.5, 47.5]  range [0, 63]" in text
    assert "final rank  median 1  quartiles [1, 2]  counts 1: 39, 2: 24" in text
    assert "final label strict_saddle 40, global_min 24" in text
    assert "diverged    1 of 64 members (5)" in text
    # one network: its values as they are
    one = str(RunSummary(None, "finished", 10, 0.1, [2.5], [1], [None], ["global_min (S = {1})"]))
    assert "final loss  2.5" in one and "final label global_min (S = {1})" in one and "members" not in one


class FakeTrainer:
    steps = 1000


def rec(step, loss=1.0, rank=2, final=False):
    return Record(step=step, weights=[], active=torch.ones(2, dtype=torch.bool), lr=0.1, ridge=0.0, final=final,
                  metrics={"loss": torch.tensor([loss, loss]), "rank": torch.tensor([rank, rank])})


def test_without_a_terminal_a_status_line_with_eta_every_few_seconds():
    now = [0.0]
    out = io.StringIO()  # not a terminal: a log file, a SLURM job
    hook = ProgressHook(out, every_seconds=10, clock=lambda: now[0])
    assert hook.mode == "lines"
    for step in range(0, 1001, 100):  # a record every 100 steps, 4 s apart
        now[0] = step * 0.04
        hook.on_record(FakeTrainer, rec(step, final=step == 1000))
    hook.on_end(FakeTrainer, "finished")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # at 0 s, then the first record >= 10 s after the last line (12 s, 24 s, 36 s), and the final record
    assert [ln.split()[2] for ln in lines[:-1]] == ["0/1000", "300/1000", "600/1000", "900/1000", "1000/1000"]
    assert lines[1] == "progress: step 300/1000 (30%)  loss 1  rank 2  elapsed 12s  ETA 28s"
    assert lines[-2].endswith("ETA 0s") and lines[-1] == "progress: finished"


def test_on_a_terminal_the_bar_shows_an_eta():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    now = [0.0]
    out = Tty()
    hook = ProgressHook(out, clock=lambda: now[0])
    assert hook.mode == "bar"
    hook.on_record(FakeTrainer, rec(0))
    now[0] = 30.0
    hook.on_record(FakeTrainer, rec(250))
    assert out.getvalue().split("\r")[-1].rstrip().endswith("step 250/1000  loss 1  rank 2  ETA 1m30s")


def test_progress_seconds_is_an_option_and_is_checked(tmp_path, capfd):
    with pytest.raises(ConfigError, match="record.progress_seconds"):
        prepare(compose(["record.progress_seconds=0"]))
    cfg = compose(["optim.steps=200", "record.every=50", "record.progress_seconds=1e-9", "record.tensorboard=false"])
    run(cfg, out_dir=tmp_path)  # pytest's stderr is not a terminal: status lines
    err = capfd.readouterr().err
    assert err.count("progress: step ") == 5 and "progress: finished" in err
