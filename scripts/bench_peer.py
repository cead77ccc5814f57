"""dlnlab side by side with the loop a user would write by hand (issue 13), in one process.

    from bench_peer import bench_peer   # run from scripts/
    r = bench_peer()

The hand-written loop: nn.Sequential of bias-free Linear layers, torch.optim.SGD, MSE, and every 100
steps the full-data loss and torch.linalg.svdvals of every partial product written to a
SummaryWriter and appended to a pandas table (H = 4, width 32, m = 256, SGD batch 1, float64,
1 thread). dlnlab runs at the same shapes and the default cadence (record.every = 100): one network
with the classifier, an ensemble of E = 256 with recording, and the same ensemble without hooks.
Every section runs torch on 1 thread; dlnlab's recording sections run its hooks on their record
thread (a second core, `record.thread`), and again with record.thread=off ("1 core").

Memory: the peak resident set size (RSS, read from /proc/self/statm every 2 ms by a thread) above
the RSS at the start of each section: what that section added to the process at its worst.
"""
from __future__ import annotations

import tempfile
import threading
import time

import pandas as pd
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dlnlab.experiments.build import (
    build_hooks,
    build_net,
    build_trainer,
    compose,
    prepare,
)
from dlnlab.recording.base import Record
from dlnlab.recording.classifier import ClassifierHook
from dlnlab.recording.metrics import MetricsHook

H, WIDTH, M = 4, 32, 256
OVERRIDES = ["optim=sgd", "optim.lr=1e-4", "optim.batch_size=1", f"model.depth={H}",
             f"model.width={WIDTH}", "model.init.kind=gaussian", "model.init.scale=1.0",
             f"task.m={M}", f"task.d_x={WIDTH}", f"task.d_y={WIDTH}", "task.spectrum=[]",
             "record.progress=off", "precision=float64"]


class PeakRSS:
    """Peak RSS (bytes) above the RSS at entry, sampled every 2 ms from /proc/self/statm."""

    def __init__(self):
        import os
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()

        def watch():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, self._rss())

        self._t = threading.Thread(target=watch, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def hand_written(X: torch.Tensor, Y: torch.Tensor, steps: int, out: str, seed: int = 0) -> float:
    """The user's loop; returns steps/s (start-up and the final table write included)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    net = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(H)]).double()
    for lin in net:
        nn.init.normal_(lin.weight, std=WIDTH ** -0.5)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)
    mse = nn.MSELoss()
    writer = SummaryWriter(out)
    rows = []
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(M, (steps,), generator=gen)

    def record(step):
        with torch.no_grad():
            loss = float(mse(net(X), Y)) * WIDTH  # mean over samples of the squared error
            writer.add_scalar("loss", loss, step)
            row = {"step": step, "loss": loss}
            ws = [lin.weight for lin in net]
            for i in range(H):
                p = ws[i]
                for j in range(i, H):
                    if j > i:
                        p = ws[j] @ p
                    s = torch.linalg.svdvals(p)
                    key = f"{j + 1}_{i + 1}"
                    writer.add_scalar(f"sv_max/{key}", float(s[0]), step)
                    row.update({f"sv_{key}_{k}": float(v) for k, v in enumerate(s.tolist())})
            rows.append(row)

    record(0)
    for step in range(1, steps + 1):
        k = idx[step - 1: step]
        opt.zero_grad()
        mse(net(X[k]), Y[k]).backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            record(step)
    writer.close()
    pd.DataFrame(rows).to_parquet(f"{out}/table.parquet")
    return steps / (time.perf_counter() - t0)


def dlnlab_sps(extra, steps: int, hooks: bool) -> float:
    cfg = compose(OVERRIDES + [f"optim.steps={steps}"] + list(extra))
    task = prepare(cfg)
    with tempfile.TemporaryDirectory() as out:
        net = build_net(cfg, task)
        trainer = build_trainer(cfg, task, net, build_hooks(cfg, out) if hooks else [], out)
        t0 = time.perf_counter()
        trainer.run()
        return steps / (time.perf_counter() - t0)


def classify_ms_per_member(E: int = 256, repeats: int = 5) -> tuple[float, float]:
    """ms per member-checkpoint of the classifier hook (Theorem 7 labels) and of the metrics hook,
    at E members (Gaussian init: mostly not_critical; the full pipeline still runs for each)."""
    cfg = compose(OVERRIDES + ["optim.steps=1", f"model.ensemble={E}"])
    task = prepare(cfg)
    net = build_net(cfg, task)
    metrics, clf = MetricsHook(cfg.record.rank_rtol, cfg.record.rank_floor), ClassifierHook()
    trainer = build_trainer(cfg, task, net, [metrics, clf])
    metrics.on_start(trainer)
    clf.on_start(trainer)
    tm = tc = float("inf")
    for _ in range(repeats):
        rec = Record(step=0, weights=trainer.weights, active=trainer.active.clone(), lr=1e-4, ridge=0.0)
        with torch.no_grad():
            t0 = time.perf_counter()
            metrics.on_record(trainer, rec)
            t1 = time.perf_counter()
            clf.on_record(trainer, rec)
            t2 = time.perf_counter()
        tm, tc = min(tm, t1 - t0), min(tc, t2 - t1)
    return tc / E * 1e3, tm / E * 1e3


def bench_peer(steps: int = 12000, e_steps: int = 1000, E: int = 256) -> dict:
    torch.set_num_threads(1)
    cfg = compose(OVERRIDES)
    task = prepare(cfg)
    X, Y = task.X, task.Y
    r: dict = {"mem_mib": {}}
    best = {}

    def run(name, fn, repeats=2):
        v = 0.0
        for _ in range(repeats):
            with PeakRSS() as mem:
                v = max(v, fn())
            r["mem_mib"][name] = max(r["mem_mib"].get(name, 0.0), mem.mib)
        best[name] = v

    with tempfile.TemporaryDirectory() as out:
        run("hand-written", lambda: hand_written(X, Y, steps, out))
    run("one, recording", lambda: dlnlab_sps([], steps, hooks=True))
    run("one, rec., 1 core", lambda: dlnlab_sps(["record.thread=off"], steps, hooks=True))
    run("one, no hooks", lambda: dlnlab_sps([], steps, hooks=False))
    run(f"E={E}, recording", lambda: dlnlab_sps([f"model.ensemble={E}"], e_steps, hooks=True) * E, repeats=1)
    run(f"E={E}, rec., 1 core", lambda: dlnlab_sps([f"model.ensemble={E}", "record.thread=off"], e_steps,
                                                   hooks=True) * E, repeats=1)
    run(f"E={E}, no hooks", lambda: dlnlab_sps([f"model.ensemble={E}"], e_steps, hooks=False) * E, repeats=1)
    with PeakRSS() as mem:
        r["classify_ms"], r["metrics_ms"] = classify_ms_per_member(E)
    r["mem_mib"]["classify"] = mem.mib
    r["sps"] = best
    r["steps"], r["e_steps"], r["E"] = steps, e_steps, E
    return r
