"""Benchmarks of the rank-jump experiment and tracker (scripts/bench.py jumps)."""
from __future__ import annotations

import time
from typing import Sequence

import torch

from dlnlab.experiments.build import compose
from dlnlab.experiments.jumps import run_experiment
from dlnlab.model import DeepLinearNet
from dlnlab.recording.base import Record
from dlnlab.recording.jumps import RankJumpHook
from dlnlab.recording.metrics import MetricsHook
from dlnlab.tasks import make_completion


def bench_r1(members: int = 256, threads: int = 2, overrides: Sequence[str] = (), out_dir=None) -> dict:
    """Recipe R1 (experiment one_way_jumps) with `members` SGD members on `threads` threads, default
    recording, in a temporary folder: wall time in total and per phase, members jumped, first passage."""
    import tempfile


    cfg = compose(["experiment=one_way_jumps", f"model.ensemble={members}", f"threads={threads}",
                   "record.progress=off", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = run_experiment(cfg, out_dir=out_dir or tmp)
        wall = time.perf_counter() - t0
    h = s.headline.to_dict() if s.headline is not None else {}
    return {"members": members, "threads": threads, "wall_time": wall,
            "phases": {n: p.wall_time for n, p in s.phases.items()},
            "jumped": h.get("jumped"), "fraction_jumped": h.get("fraction_jumped"),
            "first_jump_layer": h.get("first_jump_layer"), "increases_layer": h.get("increases_layer"),
            "gd_final_layer_rank": h.get("gd_final_layer_rank"), "status": s.status}


def bench_tracker(members: int = 256, dims: Sequence[int] = (10, 10, 10, 10), records: int = 100,
                  with_metrics: bool = True, threads: int = 1) -> dict:
    """Seconds per `RankJumpHook.on_record` on an ensemble (torch on `threads` threads), reusing the
    MetricsHook spectra (with_metrics) or computing its own SVDs; also the MetricsHook's own cost."""
    from types import SimpleNamespace


    torch.set_num_threads(threads)
    task = make_completion(dims[-1], dims[0], 1, [10.0], 0.35, seed=0)
    net = DeepLinearNet(list(dims), ensemble=members, init="gaussian", seed=0)
    trainer = SimpleNamespace(net=net, task=task, hooks=[], out_dir=None, optim_name="sgd")
    hook = RankJumpHook()
    hook.on_start(trainer)
    mh = MetricsHook()
    mh.on_start(trainer)
    recs = []
    t0 = time.perf_counter()
    for i in range(records):
        rec = Record(step=i, weights=[w.detach() for w in net.weights], active=torch.ones(members, dtype=torch.bool),
                     lr=0.1, ridge=0.01)
        if with_metrics:
            mh.on_record(trainer, rec)
        recs.append(rec)
    dt_metrics = (time.perf_counter() - t0) / records
    t0 = time.perf_counter()
    for rec in recs:
        hook.on_record(trainer, rec)
    dt = (time.perf_counter() - t0) / records
    return {"members": members, "dims": list(dims), "records": records, "with_metrics": with_metrics,
            "threads": threads, "seconds_per_record": dt, "us_per_member_record": dt / members * 1e6,
            "metrics_hook_seconds_per_record": dt_metrics if with_metrics else None}
