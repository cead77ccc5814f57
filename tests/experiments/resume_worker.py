"""A run for the resume tests (tests/experiments/test_resume.py), in a process of its own so that it can be killed (forked by the tests):
SGD, an ensemble of 4, a ridge schedule, the rank-jump tracker on. `python resume_worker.py OUT`."""
from __future__ import annotations

import os
import sys
import time

from dlnlab import Hook, compose, run
from dlnlab.recording.jumps import RankJumpHook
from dlnlab.theory.ridge.modes import RankTolerances

OVERRIDES = ["optim=sgd", "optim.steps=600", "optim.lr=0.02", "optim.batch_size=2", "model.ensemble=4",
             "optim.milestones=[200,400]", "optim.ridge_values=[0.0,0.01,0.001]", "record.every=10",
             "record.flush_every=3", "record.progress=off", "record.tb_members=2",
             "classify.ridge_members=1"]


def hooks(pause: float = 0.0) -> list:
    out = [RankJumpHook(RankTolerances(a_tol=0.5, layer_tol=0.5), label_final=False)]
    if pause:
        out.append(Pause(pause))
    return out


class Pause(Hook):
    """Slows the run down (no state, no columns), so that a kill lands in its middle."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_record(self, trainer, rec) -> None:
        time.sleep(self.seconds)


def worker_main(out: str, pause: float) -> None:
    """The run, quiet (a process of its own: forked by the tests, or `python resume_worker.py OUT PAUSE`)."""
    sys.stdout = sys.stderr = open(os.devnull, "w")
    run(compose(OVERRIDES), out_dir=out, extra_hooks=hooks(pause))


if __name__ == "__main__":
    worker_main(sys.argv[1], float(sys.argv[2]))
