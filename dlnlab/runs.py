"""The run folder's format, and reading runs into pandas.

A run folder holds:
  config.yaml             the resolved config
  status.json             status (running, finished, diverged, interrupted, failed), step, wall time
  metrics/part-*.parquet  the run table: one row per (step, member), written in parts as the run
                          goes, each part atomically, so an unfinished or killed run stays readable;
  metrics/table.parquet   the same parts compacted into one file when the run ends
  events.out.tfevents.*   TensorBoard (`tensorboard --logdir runs`)
  checkpoints/            step_*.pt and last.pt
  .hydra/                 Hydra's own record of the job (overrides.yaml) when launched by the CLI

`load_run(path)` and `load_runs(root)` are the one way to read run tables.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from dlnlab.hooks import Hook, Record

STATUS_FILE, CONFIG_FILE, METRICS_DIR = "status.json", "config.yaml", "metrics"
TABLE_FILE = "table.parquet"  # the compacted table of a run that ended


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_status(run_dir, **fields) -> None:
    path = Path(run_dir) / STATUS_FILE
    old = read_status(run_dir) if path.exists() else {}
    old.update(fields)
    _atomic_write_text(path, json.dumps(old, indent=1))


def read_status(run_dir) -> dict:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


class TableHook(Hook):
    """Writes `rec.metrics` as rows (step, member, member_status, ...) to metrics/part-NNNNN.parquet,
    plus status.json and config.yaml. A part is written every `flush_every` records or
    `flush_seconds` seconds, whichever comes first (a part costs tens of ms, so not every record);
    at the end the parts are compacted into metrics/table.parquet."""

    def __init__(self, run_dir, flush_every: int = 200, flush_seconds: float = 10.0):
        self.dir = Path(run_dir)
        self.flush_every, self.flush_seconds = int(flush_every), float(flush_seconds)
        self.last_flush = time.monotonic()
        self.names: list | None = None
        self.object_names: list = []
        self.blocks: list = []
        self.objects: list = []
        self.part = 0
        self.t0 = time.time()

    def on_start(self, trainer) -> None:
        (self.dir / METRICS_DIR).mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.dir / CONFIG_FILE, yaml.safe_dump(trainer.config, sort_keys=False))
        write_status(self.dir, status="running", step=0, steps=trainer.steps, started=self.t0,
                     ensemble=trainer.net.E)

    def on_record(self, trainer, rec: Record) -> None:
        # Numbers go into one (E, n_columns) block per record and become a DataFrame only at flush;
        # strings (labels) are kept as object columns beside it.
        E = rec.active.shape[0]
        names, blocks, objects = ["step", "member"], [
            torch.full((E, 1), float(rec.step), dtype=torch.float64),
            torch.arange(E, dtype=torch.float64).unsqueeze(1)], {}
        objects["member_status"] = np.where(rec.active.numpy(), "training", "diverged").astype(object)
        for key, v in rec.metrics.items():
            if isinstance(v, torch.Tensor):
                # (E,) -> one column `key`; (E, k) -> columns key_1..key_k (a spectrum)
                names += [key] if v.dim() == 1 else [f"{key}_{n + 1}" for n in range(v.shape[1])]
                blocks.append(v.detach().to(torch.float64).reshape(E, -1))
            else:
                objects[key] = np.asarray(v, dtype=object)
        if self.names is not None and (names != self.names or list(objects) != self.object_names):
            self.flush(trainer)  # the set of columns changed: start a new part
        self.names, self.object_names = names, list(objects)
        self.blocks.append(torch.cat(blocks, dim=1).numpy())
        self.objects.append(objects)
        if (len(self.blocks) >= self.flush_every or rec.final
                or time.monotonic() - self.last_flush > self.flush_seconds):
            self.flush(trainer)

    def flush(self, trainer=None) -> None:
        if not self.blocks:
            return
        df = pd.DataFrame(np.concatenate(self.blocks), columns=self.names)
        df["step"] = df["step"].astype(np.int64)
        df["member"] = df["member"].astype(np.int64)
        for k in self.object_names:
            df[k] = np.concatenate([o[k] for o in self.objects])
        path = self.dir / METRICS_DIR / f"part-{self.part:05d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        self.part += 1
        self.blocks, self.objects = [], []
        self.last_flush = time.monotonic()
        if trainer is not None:
            write_status(self.dir, status="running", step=trainer.step)

    def compact(self) -> None:
        """One file per run reads much faster than many parts (load_runs over big sweeps)."""
        parts = sorted((self.dir / METRICS_DIR).glob("part-*.parquet"))
        if len(parts) < 2:
            return
        df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        tmp = self.dir / METRICS_DIR / f"{TABLE_FILE}.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, self.dir / METRICS_DIR / TABLE_FILE)
        for p in parts:
            p.unlink()

    def on_end(self, trainer, status: str) -> None:
        try:
            self.flush(trainer)
            self.compact()
        finally:
            write_status(self.dir, status=status, step=trainer.step, ended=time.time(),
                         wall_time=time.time() - self.t0,
                         diverged_members={str(k): d for k, d in enumerate(trainer.diverged_at)
                                           if d is not None})


# ---------------------------------------------------------------------------------------------
# Reading

def flatten_config(cfg: dict, prefix: str = "") -> dict:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; lists become strings so they fit a column."""
    out = {}
    for k, v in (cfg or {}).items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, name + "."))
        elif isinstance(v, (list, tuple)):
            out[name] = str(list(v))
        else:
            out[name] = v
    return out


def read_config(run_dir) -> dict:
    try:
        return yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def read_overrides(run_dir) -> str:
    try:
        return " ".join(yaml.safe_load((Path(run_dir) / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return ""


def _read_parts(files) -> list[pd.DataFrame]:
    frames = []
    for f in files:
        try:
            frames.append(pd.read_parquet(f))
        except Exception as e:  # noqa: BLE001 - a damaged part must not sink the whole load
            warnings.warn(f"skipping damaged run-table part {f}: {e}", stacklevel=3)
    return frames


def load_run(path, config: bool = True) -> pd.DataFrame:
    """The run table of one run folder: one row per (step, member), with `run`, `status`,
    `overrides` and, with `config`, every config value as a column with its dotted name."""
    path = Path(path)
    table = path / METRICS_DIR / TABLE_FILE
    # The compacted table is written (atomically) before any part is removed, so when it exists
    # it is complete, even if a crash left some parts behind.
    frames = _read_parts([table] if table.exists() else sorted((path / METRICS_DIR).glob("part-*.parquet")))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"step": [], "member": []})
    df.insert(0, "run", str(path))
    df["status"] = read_status(path).get("status", "unknown")
    df["overrides"] = read_overrides(path)
    if config:
        for k, v in flatten_config(read_config(path)).items():
            if k not in df.columns:
                df[k] = v
    return df


def find_runs(root) -> list[Path]:
    """Every run folder under `root` (a folder holding a status.json), sorted."""
    root = Path(root)
    if (root / STATUS_FILE).exists():
        return [root]
    return sorted(p.parent for p in root.rglob(STATUS_FILE))


def load_runs(root, config: bool = True) -> pd.DataFrame:
    """All runs under `root` in one DataFrame (see `load_run`); unfinished runs included."""
    frames = []
    for run in find_runs(root):
        try:
            frames.append(load_run(run, config=config))
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"skipping run {run}: {e}", stacklevel=2)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)
