"""The record thread (`record.thread`, `dlnlab.recording.background`): the built-in hooks run beside
the training loop. The run folder must not depend on it, a hook of one's own runs on the main thread
unless it says otherwise, and an error on the record thread fails the run like one between steps."""
import threading

import pandas as pd
import pytest
import torch
from test_record_batch import tensorboard_scalars

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run
from dlnlab.model import DeepLinearNet
from dlnlab.recording.base import Cadence, Hook
from dlnlab.recording.metrics import MetricsHook
from dlnlab.tasks import make_regression
from dlnlab.train import RecordSettings, Trainer


def same(a, b) -> bool:
    """Checkpoint contents equal bit for bit (tensors, numbers, strings, nested lists and dicts)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


@pytest.mark.parametrize("extra", [
    ["optim.steps=2500", "record.checkpoint_every=500"],                         # the default run
    ["optim=sgd", "optim.lr=0.01", "optim.ridge=0.001", "optim.steps=600", "model.ensemble=3",
     "record.every=20", "record.checkpoint_every=100", "classify.ridge_every=5"],
])
def test_the_record_thread_changes_no_number(tmp_path, extra):
    tables, scalars, checkpoints = [], [], []
    for thread in ("off", "on"):
        out = tmp_path / thread
        run(compose(extra + [f"record.thread={thread}", "record.progress=off"]), out_dir=out)
        tables.append(load_run(out).drop(columns=["run", "wall_time", "record.thread"], errors="ignore"))
        scalars.append(tensorboard_scalars(out))
        files = sorted((out / "checkpoints").glob("*.pt"))
        checkpoints.append({f.name: torch.load(f, weights_only=True) for f in files})
    assert len(tables[0]) > 20 and {"loss", "label", "sv_2_1_1"} <= set(tables[0])
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    assert len(scalars[0]) > 20 and scalars[0] == scalars[1]
    assert len(checkpoints[0]) >= 4 and checkpoints[0].keys() == checkpoints[1].keys()
    for name, ck in checkpoints[0].items():   # weights, optimizer, sampler and every hook's state
        other = dict(checkpoints[1][name])
        other["config"]["record"]["thread"] = ck["config"]["record"]["thread"]
        assert same(ck, other), name


class Where(Hook):
    """Notes the thread each of its records was handled on."""

    def __init__(self, background: bool):
        self.background, self.threads = background, []

    def on_record(self, trainer, rec):
        self.threads.append(threading.current_thread().name)


def train(hooks, steps=300, **kw):
    task = make_regression(40, 4, 3, [3.0, 1.0, 0.5])
    tr = Trainer(DeepLinearNet([4, 5, 3], init="gaussian", scale=0.3, seed=1), task, lr=0.01, steps=steps,
                 hooks=hooks, cadence=Cadence(every=10), recording=RecordSettings(thread="on"), **kw)
    return tr, tr.run()


def test_a_hook_runs_on_the_record_thread_only_when_it_says_so():
    mine = Where(background=False)
    _, res = train([MetricsHook(), mine])
    assert res.status == "finished" and len(mine.threads) == 31 and set(mine.threads) == {"MainThread"}
    theirs = Where(background=True)
    train([MetricsHook(), theirs])
    assert len(theirs.threads) == 31 and set(theirs.threads) == {"dlnlab-records"}


class Fails(Hook):
    background = True

    def __init__(self):
        self.n, self.ended = 0, None

    def on_record(self, trainer, rec):
        self.n += 1
        if self.n == 40:
            raise OSError(28, "No space left on device")

    def on_end(self, trainer, status):
        self.ended = status


def test_an_error_on_the_record_thread_fails_the_run():
    hook, after = Fails(), Where(background=True)
    with pytest.raises(OSError, match="No space left on device"):
        train([hook, after], steps=3000)
    assert hook.ended == "failed" and hook.n == 40   # its first error is the one raised; then it is dropped
    # every record made reached the hooks after it, the one that failed and those made before the loop
    # heard of the error included (their rows are kept); the run stopped then, far from its end
    assert 40 <= len(after.threads) < 301 // 2 and set(after.threads) == {"dlnlab-records"}
