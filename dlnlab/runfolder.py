"""The run folder's format: its file names, the run-table files, status.json, the events schema and
the one atomic writer. The recording hooks write with it and `dlnlab.analysis` reads with it; it
knows no hook and no trainer (docs/architecture.md).

A run folder holds:
  config.yaml             the resolved config
  status.json             status (running, finished, diverged, interrupted, failed), step, wall time
  metrics/part-*.arrow    the run table: one row per (step, member), written in parts as the run
                          goes, each part atomically, so an unfinished or killed run stays readable
                          (Arrow IPC files: a part costs a tenth of a parquet one; runs of earlier
                          versions left part-*.parquet, read the same way);
  metrics/table.parquet   the same parts compacted into one file when the run ends
  events.parquet          the rank tracker's jump events (EVENT_COLUMNS), when it followed the run
  staircase.csv           the staircase table (one row per plateau visit), written at the end
  jumps_summary.json      the rank tracker's summary of a jumps experiment's folder
  events.out.tfevents.*   TensorBoard (`tensorboard --logdir runs`)
  checkpoints/            step_*.pt and last.pt
  .hydra/                 Hydra's own record of the job (overrides.yaml) when launched by the CLI

Every file is written through `atomic_write`: a reader sees the old file or the new one, never
half of one.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import yaml

__all__ = [
    # file names
    "STATUS_FILE", "CONFIG_FILE", "OVERRIDES_FILE", "METRICS_DIR", "TABLE_FILE", "TMP_SUFFIX",
    "PART_SUFFIXES", "EVENTS_FILE", "STAIRCASE_FILE", "SUMMARY_FILE", "JUMPS_REPORT_PNG", "REPORT_TB_DIR",
    "CHECKPOINTS_DIR",
    "LAST_CHECKPOINT", "STEP_CHECKPOINTS", "step_checkpoint",
    # the run table
    "part_path", "part_files", "table_files", "has_table", "write_part", "read_table_file",
    "read_table_schema",
    # atomic writes
    "atomic_write", "write_json", "json_default", "save_torch", "remove_tmp_files",
    # status.json, config and sweeps
    "write_status", "read_status", "YAML_LOADER", "swept_keys_of",
    # the rank tracker's events and summary
    "EVENT_COLUMNS", "events_frame", "quartiles",
]

STATUS_FILE, CONFIG_FILE, METRICS_DIR = "status.json", "config.yaml", "metrics"
OVERRIDES_FILE = ".hydra/overrides.yaml"  # the command-line overrides of a run launched by the CLI
TABLE_FILE = "table.parquet"  # the compacted table of a run that ended
TMP_SUFFIX = ".tmp"  # a file being written; `atomic_write` never leaves one behind
PART_SUFFIXES = (".arrow", ".parquet")  # run-table parts: this version's, and earlier versions'
EVENTS_FILE = "events.parquet"
STAIRCASE_FILE = "staircase.csv"  # the staircase table of a run, written at its end
SUMMARY_FILE = "jumps_summary.json"
JUMPS_REPORT_PNG = "jumps_report.png"
# TensorBoard folder of the jumps report figure, inside the report's run folder: replaced on every
# report, so re-running the report leaves exactly one `jumps/report` image.
REPORT_TB_DIR = "jumps_report_tb"
CHECKPOINTS_DIR, LAST_CHECKPOINT, STEP_CHECKPOINTS = "checkpoints", "last.pt", "step_*.pt"

# The rank tracker's jump events (dlnlab.recording.jumps), one row per event; load_events reads these
# columns first. in_B: the point at the event record also meets B's balance and norm conditions
# (ridge.RankTolerances.bal_rtol, norm_bound), so "entered" means it entered B_{to_rank} itself,
# not just the layer-rank stratum.
EVENT_COLUMNS = {"member": "int64", "step": "int64", "from_rank": "int64", "to_rank": "int64",
                 "kind": "str", "rank_type": "str", "in_B": "bool"}

try:  # libyaml parses a config ~10x faster than the pure-Python loader
    YAML_LOADER = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    YAML_LOADER = yaml.SafeLoader


def step_checkpoint(step: int) -> str:
    """The file name of the resumable checkpoint at `step` (in CHECKPOINTS_DIR)."""
    return f"step_{step:09d}.pt"


# ---------------------------------------------------------------------------------------------
# The run table

def part_path(metrics_dir, n: int) -> Path:
    """The path of part n of a run table."""
    return Path(metrics_dir) / f"part-{n:05d}.arrow"


def part_files(metrics_dir) -> list[Path]:
    """The parts of a run table, in order (never a file still being written)."""
    return sorted(p for p in Path(metrics_dir).glob("part-*") if p.suffix in PART_SUFFIXES)


def table_files(run_dir) -> list[Path]:
    """The files that hold a run folder's table: its compacted table.parquet, else its parts."""
    table = Path(run_dir) / METRICS_DIR / TABLE_FILE
    # The compacted table is written (atomically) before any part is removed, so when it exists
    # it is complete, even if a crash left some parts behind.
    if table.exists():
        return [table]
    return part_files(Path(run_dir) / METRICS_DIR)


def has_table(run_dir) -> bool:
    """Whether the folder holds a run table (compacted or in parts)."""
    metrics = Path(run_dir) / METRICS_DIR
    return metrics.is_dir() and bool((metrics / TABLE_FILE).exists() or part_files(metrics))


def write_part(table, path) -> None:
    """A run-table part, as an Arrow IPC file (the caller makes it atomic)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with pa.OSFile(str(path), "wb") as f, ipc.new_file(f, table.schema) as w:
        w.write_table(table)


def read_table_file(path, columns=None):
    """A run-table file (a part, or a compacted table.parquet) as a pyarrow Table, only the
    `columns` it has of those given (all of them for None)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix == ".arrow":
        with pa.OSFile(str(path), "rb") as f:
            table = ipc.open_file(f).read_all()
        return table if columns is None else table.select([c for c in table.column_names if c in columns])
    f = pq.ParquetFile(path)
    cols = None if columns is None else [c for c in f.schema_arrow.names if c in columns]
    return f.read(columns=cols, use_threads=False)


def read_table_schema(path):
    """The pyarrow schema of a run-table file, without reading its rows."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix == ".arrow":
        with pa.OSFile(str(path), "rb") as f:
            return ipc.open_file(f).schema
    return pq.read_schema(path)


# ---------------------------------------------------------------------------------------------
# Atomic writes

def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path, data, fsync: bool = True) -> None:
    """Write a run-folder file crash-safely: into `<name>.tmp` in the same folder, fsync'd, then
    `os.replace`d over `path` (and the folder fsync'd, so the rename survives a power loss). A reader
    sees the old file or the new one, never half of one. `data`: str, bytes, or a callable writing
    the file at the path it is given (e.g. `lambda p: pq.write_table(table, p)`). On any failure
    (disk full included) the temporary file is removed and the error raised."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        if callable(data):
            data(str(tmp))
            if fsync:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    if fsync:
        _fsync_dir(path.parent)


def json_default(o):
    """JSON for the numpy scalars, tensors and paths a summary holds (`json.dumps(default=...)`)."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(obj, path) -> None:
    """`obj` as indented JSON at `path`, atomically (numpy scalars, tensors and paths allowed)."""
    atomic_write(path, json.dumps(obj, indent=1, default=json_default))


def save_torch(obj, path) -> None:
    """`torch.save(obj)` at `path`, atomically. Not fsync'd: a checkpoint is written often and the
    next one replaces it, so a power loss costs at most the newest one."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), fsync=False)


def remove_tmp_files(run_dir) -> list[Path]:
    """Remove the `*.tmp` files a killed writer left in a run folder (and its subfolders); the
    removed paths."""
    removed = []
    for p in Path(run_dir).rglob("*" + TMP_SUFFIX):
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


# ---------------------------------------------------------------------------------------------
# status.json and sweeps

def write_status(run_dir, fsync: bool = True, **fields) -> None:
    """Update status.json with `fields` (atomically; `fsync=False` for a mere heartbeat). When the
    disk is full even for the temporary copy, the file is rewritten in place: a failed run must
    still say so."""
    path = Path(run_dir) / STATUS_FILE
    old = read_status(run_dir) if path.exists() else {}
    old.update(fields)
    text = json.dumps(old, indent=1)
    try:
        atomic_write(path, text, fsync=fsync)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.exists():
            raise
        with open(path, "r+b") as f:  # its own blocks are enough for a file of about the same size
            f.write(text.encode())
            f.truncate()


def read_status(run_dir) -> dict:
    """The run's status.json as a dict ({} when it is missing or does not parse)."""
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def swept_keys_of(run_dir) -> list[str]:
    """The config keys (or groups) that the Hydra multirun of a job's run folder sweeps, read from
    multirun.yaml in the sweep folder above it (the overrides with a sweep: a,b / range() /
    choice() ...); [] for a single run."""
    run_dir = Path(run_dir)
    path = run_dir.parent / "multirun.yaml"
    if not path.exists() or not (run_dir / ".hydra").is_dir():
        return []
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        task = yaml.load(path.read_text(), Loader=YAML_LOADER)["hydra"]["overrides"]["task"]
        overrides = OverridesParser.create().parse_overrides([str(o) for o in task or []])
        return [o.key_or_group for o in overrides if o.is_sweep_override()]
    except Exception:  # noqa: BLE001 - only a presentation hint for TensorBoard
        return []


# ---------------------------------------------------------------------------------------------
# The rank tracker's events and summary

def events_frame(rows: Sequence[tuple]) -> pd.DataFrame:
    """Rows (member, step, from_rank, to_rank, kind, rank_type, in_B) as the events table."""
    cols = list(EVENT_COLUMNS)
    data = list(zip(*rows)) if rows else [[] for _ in cols]
    return pd.DataFrame({c: pd.Series(list(v), dtype=EVENT_COLUMNS[c]) for c, v in zip(cols, data)})


def quartiles(values: Sequence[float]) -> dict:
    """count, min, q1, median, q3 and max of `values`, as jumps_summary.json holds them (None when
    there are none)."""
    if not len(values):
        return {"count": 0, "min": None, "q1": None, "median": None, "q3": None, "max": None}
    v = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"count": int(v.size), "min": float(v.min()), "q1": float(q1), "median": float(med),
            "q3": float(q3), "max": float(v.max())}
