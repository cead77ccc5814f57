"""A synthetic sweep in the real run-folder format (for tests and the load benchmark), and the
load benchmark itself."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from omegaconf import OmegaConf

from dlnlab.analysis.folders import find_runs
from dlnlab.analysis.runs import default_threads, load_runs
from dlnlab.experiments.build import compose
from dlnlab.recording.base import Record
from dlnlab.recording.metrics import MetricsHook
from dlnlab.runfolder import EVENTS_FILE, STATUS_FILE, TABLE_FILE
from dlnlab.tasks import make_regression


def _metric_names(dims: list[int]) -> list[str]:
    """The recorded metric columns of a real run with layer widths `dims`, in their order
    (computed by the real MetricsHook on one random network)."""



    task = make_regression(4 * dims[0], dims[0], dims[-1])
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(1, dims[h + 1], dims[h], generator=gen, dtype=torch.float64)
          for h in range(len(dims) - 1)]
    stub = types.SimpleNamespace(task=task)
    hook = MetricsHook()
    hook.on_start(stub)
    rec = Record(0, ws, torch.ones(1, dtype=torch.bool), 0.01, 0.0)
    hook.on_record(stub, rec)
    names = []
    for key, v in rec.metrics.items():
        names += [key] if v.dim() == 1 else [f"{key}_{n + 1}" for n in range(v.shape[1])]
    return names


def make_runs_fixture(root, runs: int = 1000, records: int = 1000, depth: int = 4, width: int = 6,
                      ensemble: int = 1, steps: int = 20000, events: bool = False,
                      seed: int = 0) -> dict:
    """Write `runs` finished run folders under `root` (root/0, root/1, ...) in the real format
    (config.yaml, status.json, .hydra/overrides.yaml, metrics/table.parquet with the columns of a
    real run of that depth) with `records` records each: a synthetic SGD sweep over optim.lr (5
    values), task.noise (2) and seed. Loss curves walk down a saddle-to-saddle staircase and the
    end-to-end rank climbs with it. events=True also writes events.parquet as the rank tracker
    does (a member's layer rank jumping 4 -> 3, an "entered" event, at an exponential time with
    mean 200 / lr). Returns {'runs', 'records', 'rows', 'seconds'}."""


    t0 = time.perf_counter()
    root = Path(root)
    base = OmegaConf.to_container(compose(["optim=sgd", f"model.depth={depth}", f"model.width={width}",
                                           f"model.ensemble={ensemble}", f"optim.steps={steps}"]),
                                  resolve=True)
    d_x, d_y = base["task"]["d_x"], base["task"]["d_y"]
    dims = [d_x, *[width] * (depth - 1), d_y]
    names = _metric_names(dims)
    spectrum = np.asarray(base["task"]["spectrum"], dtype=float)[: min(d_x, d_y)]
    lrs, noises = [0.001, 0.002, 0.005, 0.01, 0.02], [0.0, 0.1]
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    rng = np.random.default_rng(seed)
    step = np.unique(np.linspace(0, steps, records).round().astype(np.int64))
    n = step.size
    col = {name: k for k, name in enumerate(names)}
    for i in range(runs):
        lr, noise, s = lrs[i % len(lrs)], noises[(i // len(lrs)) % len(noises)], i // (len(lrs) * len(noises))
        cfg = json.loads(json.dumps(base))
        cfg["optim"]["lr"], cfg["task"]["noise"], cfg["seed"] = lr, noise, s
        d = root / str(i)
        (d / "metrics").mkdir(parents=True, exist_ok=True)
        (d / ".hydra").mkdir(exist_ok=True)
        (d / "config.yaml").write_text(yaml.dump(cfg, Dumper=dumper, sort_keys=False))
        (d / ".hydra" / "overrides.yaml").write_text(
            yaml.dump([f"optim.lr={lr}", f"task.noise={noise}", f"seed={s}"], Dumper=dumper))
        frames, ev = [], []
        for k in range(ensemble):
            # mode k is learnt around t_k ~ 1 / (lr * s_k) (log-normal jitter per run and member)
            t_mode = np.log(1 / (0.05 * spectrum)) / (lr * spectrum) * 40 * rng.lognormal(0, 0.2, spectrum.size)
            learnt = 1 / (1 + np.exp(-(step[:, None] - t_mode) / (0.1 * t_mode)))  # (n, modes)
            values = rng.lognormal(0, 0.1, (n, len(names)))
            loss = ((spectrum * (1 - learnt)) ** 2).sum(1) / d_y + noise ** 2
            rank = (learnt > 0.5).sum(1).astype(float)
            values[:, col["loss"]] = loss
            values[:, col["reg_loss"]] = loss
            values[:, col["paper_loss"]] = loss * 64
            values[:, col["lr"]] = lr
            values[:, col["ridge"]] = 0.0
            for name, j in col.items():
                if name.startswith("rank_"):
                    values[:, j] = rank
            values[:, col["rank"]] = rank
            sv = spectrum * learnt
            for m in range(sv.shape[1]):
                values[:, col[f"sv_{depth}_1_{m + 1}"]] = sv[:, m]
            for m in range(sv.shape[1], min(d_x, d_y)):
                values[:, col[f"sv_{depth}_1_{m + 1}"]] = 1e-6
            table = {"step": step, "member": np.full(n, k, dtype=np.int64)}
            table.update({name: values[:, j] for name, j in col.items()})
            # the classifier hook's columns (dlnlab.recording.classifier), numbers first as the table writes them
            top = "{" + ",".join(str(j + 1) for j in range(int(rank[-1]))) + "}"
            labels = np.where(rank < min(dims), "strict_saddle", "global_min").astype(object)
            table.update({"label_code": np.where(rank < min(dims), 1.0, 3.0), "r": rank,
                          "critical_value": loss, "nearest_value": loss,
                          "classify_grad_norm": values[:, col["grad_norm"]] * 64})
            # the trajectory hook's columns (dlnlab.recording.trajectory): lam_* every 10th record
            every10 = np.arange(n) % 10 == 0
            table.update({"near_dist": 0.03 * rng.lognormal(0, 0.1, n),
                          "tight_margin": 1e-3 * rng.lognormal(0, 0.1, n),
                          "lam_min": np.where(every10, -0.1 * rng.lognormal(0, 0.1, n), np.nan),
                          "lam_max": np.where(every10, 20 * rng.lognormal(0, 0.1, n), np.nan),
                          "lam_converged": np.where(every10, 1.0, np.nan)})
            table["member_status"] = np.full(n, "training", dtype=object)
            table.update({"label": labels, "label_reason": np.full(n, "synthetic", dtype=object),
                          "S": np.full(n, top, dtype=object), "nearest_S": np.full(n, top, dtype=object),
                          "near_label": np.where(rank < min(dims), "nonstrict_saddle", "global_min").astype(object),
                          "near_S": np.full(n, top, dtype=object)})
            frames.append(pa.table(table))
            if events:  # a one-way jump of the layer rank, 4 -> 3, sooner for a larger lr
                t_jump = rng.exponential(200 / lr)
                if t_jump <= step[-1]:
                    ev.append((k, int(step[np.searchsorted(step, t_jump)]), 4, 3, "entered", "layer"))
        t = frames[0] if ensemble == 1 else pa.concat_tables(frames)
        if ensemble > 1:  # rows in record order, members interleaved, as a real run writes them
            t = t.take(np.lexsort((t["member"].to_numpy(), t["step"].to_numpy())))
        pq.write_table(t, d / "metrics" / TABLE_FILE)
        if events:
            cols = list(zip(*ev)) if ev else [[]] * 6
            pq.write_table(pa.table({"member": pa.array(cols[0], pa.int64()), "step": pa.array(cols[1], pa.int64()),
                                     "from_rank": pa.array(cols[2], pa.int64()),
                                     "to_rank": pa.array(cols[3], pa.int64()),
                                     "kind": pa.array(cols[4], pa.string()),
                                     "rank_type": pa.array(cols[5], pa.string()),
                                     "in_B": pa.array([True] * len(cols[0]), pa.bool_())}), d / EVENTS_FILE)
        now = time.time()
        (d / STATUS_FILE).write_text(json.dumps(
            {"status": "finished", "step": steps, "steps": steps, "started": now - 60, "ensemble": ensemble,
             "ended": now, "wall_time": float(rng.uniform(30, 90)), "diverged_members": {}}, indent=1))
    return {"runs": runs, "records": n, "rows": runs * n * ensemble, "seconds": time.perf_counter() - t0}


def bench_load(root=None, runs: int = 1000, records: int = 1000, repeat: int = 1) -> dict:
    """Time `load_runs` on a sweep of `runs` runs x `records` records (H = 4): under `root` if it
    holds runs already, else a fixture written there (or in a temporary folder, removed after).
    Returns {'runs', 'rows', 'columns', 'seconds' (best of `repeat` loads), 'fixture_seconds',
    'cpus' (the cores this process may use: the reader threads)}."""
    tmp = None
    if root is None:
        tmp = root = tempfile.mkdtemp(prefix="dlnlab-bench-")
    try:
        fixture = {"seconds": 0.0}
        if not find_runs(root):
            fixture = make_runs_fixture(root, runs=runs, records=records)
        best, df = float("inf"), None
        for _ in range(max(1, repeat)):
            del df
            t0 = time.perf_counter()
            df = load_runs(root)
            best = min(best, time.perf_counter() - t0)
        return {"runs": int(df["run"].nunique()), "rows": len(df), "columns": df.shape[1],
                "seconds": best, "fixture_seconds": fixture["seconds"], "cpus": default_threads()}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

