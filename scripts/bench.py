"""dlnlab benchmarks: every figure is a ratio (or a time) measured in this one run.

    .venv/bin/python scripts/bench.py            # all sections
    .venv/bin/python scripts/bench.py train      # one section

Targets (issue numbers in brackets):
  train     [2] SGD batch 1, H = 4, width 32: steps/s with recording at the default cadence
                divided by steps/s with no hooks (target >= 0.9); ensemble E = 256
                model-steps/s divided by one network's (target >= 20)
"""
from __future__ import annotations

import sys
import tempfile
import time

import torch

from dlnlab.experiment import build_hooks, build_net, build_trainer, compose, prepare

BENCH_OVERRIDES = ["optim=sgd", "optim.lr=1e-4", "optim.batch_size=1", "model.depth=4",
                   "model.width=32", "model.init.kind=gaussian", "model.init.scale=1.0",
                   "task.m=256", "task.d_x=32", "task.d_y=32", "task.spectrum=[]",
                   "record.progress=off"]


def steps_per_second(overrides, steps, hooks: bool, repeats: int = 3) -> float:
    """Best of `repeats` (the least disturbed by other load on a shared machine)."""
    cfg = compose(BENCH_OVERRIDES + [f"optim.steps={steps}"] + overrides)
    task = prepare(cfg)
    best = 0.0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            net = build_net(cfg, task)
            trainer = build_trainer(cfg, task, net, build_hooks(cfg, out) if hooks else [], out)
            t0 = time.perf_counter()
            trainer.run()
            best = max(best, steps / (time.perf_counter() - t0))
    return best


def bench_train() -> None:
    torch.set_num_threads(1)
    steps = 4000
    plain = steps_per_second([], steps, hooks=False)
    recorded = steps_per_second([], steps, hooks=True)
    print(f"train   H=4 width=32 SGD batch 1, {steps} steps, 1 thread")
    print(f"        no hooks            {plain:9.0f} steps/s")
    print(f"        default recording   {recorded:9.0f} steps/s   ratio {recorded / plain:.3f}  (target >= 0.9)")
    E, e_steps = 256, 400
    one = steps_per_second([], e_steps, hooks=False)
    many = steps_per_second([f"model.ensemble={E}"], e_steps, hooks=False)
    print(f"        ensemble E={E}      {many * E:9.0f} model-steps/s vs {one:.0f}: "
          f"ratio {many * E / one:.1f}x  (target >= 20x)")


SECTIONS = {"train": bench_train}


def main(argv) -> None:
    names = argv or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        sys.exit(f"bench.py: unknown section(s) {unknown}; allowed: {', '.join(SECTIONS)}")
    for n in names:
        SECTIONS[n]()


if __name__ == "__main__":
    main(sys.argv[1:])
