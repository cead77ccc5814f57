"""Reading a run folder's small files (status, config, overrides) and finding and selecting runs.

`load_runs(root, where=...)` (dlnlab.analysis.runs) reads many run folders into one tidy DataFrame,
one row per (run, step, member): `run` (the run folder's path), the recorded metrics, then `status`,
`wall_time` and `overrides` of the run and every config value as a column with its dotted name.
`list_runs` gives one row per run without reading any table; `load_events` reads the rank
tracker's jump events (<run>/events.parquet); `summarize` turns a run table into one row per run
(or per member): final loss, rank and label, and jumps / first passages from the events.

Damaged files never sink a load: a truncated parquet file, or a status.json / config.yaml /
overrides.yaml that does not parse, is skipped with a `DamagedRunWarning` naming the file.
Unfinished runs load (their parts), with the status they wrote ("running" if still going, or
killed).

Speed (1,000 runs x 1,000 records, H = 4, in a few seconds): tables are read with pyarrow on
threads, only the columns asked for (`columns=`), and concatenated once; per-run values (run,
status, overrides, string config values) become categorical columns built from codes, numbers
plain numeric columns, all added in one concat.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dlnlab.runfolder import (
    CONFIG_FILE,
    METRICS_DIR,
    OVERRIDES_FILE,
    STATUS_FILE,
    YAML_LOADER,
    has_table,
)

__all__ = [
    # finding and selecting runs
    "find_runs", "scan_runs", "run_selector", "RunInfo", "effective_status",
    # a run's small files
    "read_config", "read_overrides", "flatten_config",
    # per-run columns of a loaded table
    "RUN_COLUMNS", "config_keys", "with_run_columns",
    # damaged files
    "DamagedRunWarning", "warn_damaged", "first_line",
]

RUN_COLUMNS = ("status", "wall_time", "overrides")  # per-run columns added after the metrics
_HERE = os.path.dirname(__file__)


class DamagedRunWarning(UserWarning):
    """A run file that could not be read; that file is skipped and the load goes on."""


def warn_damaged(messages) -> None:
    """Warn (`DamagedRunWarning`) about each message, attributed to the first caller outside
    dlnlab.analysis."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == _HERE:
        frame, level = frame.f_back, level + 1
    for m in messages:
        warnings.warn(m, DamagedRunWarning, stacklevel=level)


def first_line(e: Exception) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


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


def _read_yaml(path: Path, what: str, messages: list | None, default):
    """The parsed YAML file, `default` if it is missing; a damaged one adds a message (or warns)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return default
    except (OSError, UnicodeDecodeError) as e:
        problem = first_line(e)
    else:
        try:
            value = yaml.load(text, Loader=YAML_LOADER)
        except yaml.YAMLError as e:
            problem = first_line(e)
        else:
            if value is None:
                return default
            if isinstance(value, type(default)):
                return value
            problem = f"not a YAML {type(default).__name__}"
    msg = f"damaged {what} {path} skipped ({problem})"
    if messages is None:
        warn_damaged([msg])
    else:
        messages.append(msg)
    return default


def read_config(run_dir, messages: list | None = None) -> dict:
    """The run's config.yaml as a nested dict ({} if missing; damaged: {} and a warning)."""
    return _read_yaml(Path(run_dir) / CONFIG_FILE, "config", messages, {})


def read_overrides(run_dir, messages: list | None = None) -> str:
    """The command-line overrides of a run launched by the CLI, as one string ("" if none)."""
    items = _read_yaml(Path(run_dir) / OVERRIDES_FILE, "overrides", messages, [])
    return " ".join(str(o) for o in items)


# The fields of status.json that readers compute with, and the types they must have.
_STATUS_TYPES = {"status": (str,), "step": (int,), "steps": (int,), "ensemble": (int,), "pid": (int,),
                 "host": (str,), "started": (int, float), "updated": (int, float),
                 "ended": (int, float), "wall_time": (int, float)}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def effective_status(status: dict) -> str:
    """The run's status, with "running" turned into "killed" when the run's process, on this host,
    is gone: it ended without writing its status (kill -9, out of memory, a lost node). Runs on
    other hosts (a cluster's nodes) keep "running": their processes cannot be checked from here."""
    st = status.get("status", "unknown")
    if (st == "running" and status.get("host") == socket.gethostname()
            and isinstance(status.get("pid"), int) and not _pid_alive(status["pid"])):
        return "killed"
    return st


def _read_status_checked(run_dir: Path, messages: list) -> dict:
    path = run_dir / STATUS_FILE
    try:
        status = json.loads(path.read_text())
        if not isinstance(status, dict):
            problem = "not a JSON object"
        else:
            bad = [k for k, types in _STATUS_TYPES.items() if k in status and status[k] is not None
                   and (not isinstance(status[k], types) or isinstance(status[k], bool))]
            if not bad:
                return status
            # keep what is sound: a wrong field must not cost the run its other values
            messages.append(f"damaged status {path}: field(s) {', '.join(bad)} of the wrong type ignored")
            return {k: v for k, v in status.items() if k not in bad}
    except FileNotFoundError:
        messages.append(f"run {run_dir}: {STATUS_FILE} is missing; its status is 'unknown'")
        return {}
    except (OSError, ValueError) as e:
        problem = first_line(e)
    messages.append(f"damaged status {path} skipped ({problem}); the run's status is 'unknown'")
    return {}


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_runs(root) -> list[Path]:
    """Every run folder under `root` (a folder holding a status.json, or a run table: a run whose
    status.json was lost is still a run, with status 'unknown'), in natural order (job 2 before
    job 10)."""
    root = Path(root)
    if (root / STATUS_FILE).exists() or has_table(root):
        return [root]
    found = {p.parent for p in root.rglob(STATUS_FILE)}
    found |= {p.parent for p in root.rglob(METRICS_DIR) if p.is_dir() and has_table(p.parent)}
    return sorted(found, key=_natural_key)


@dataclass
class RunInfo:
    """What a scan reads of one run folder: its path, status.json, flattened config, overrides."""
    path: Path
    status: dict
    config: dict  # flattened
    overrides: str


def _number(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))


def _equal(have, want) -> bool:
    if _number(have) and _number(want):
        return have == want or math.isclose(have, want, rel_tol=1e-9, abs_tol=0.0)
    return have == want


def run_selector(where):
    """A predicate on a run's flattened config (plus `status`) from `where` (None, a dict
    {dotted key: value or list of values}, or a callable)."""
    if where is None:
        return None
    if callable(where):
        return where
    if not isinstance(where, dict):
        raise TypeError(f"where={where!r}: allowed a dict {{'optim.lr': 0.1}} or a callable on the "
                        "flattened config")

    def match(flat: dict) -> bool:
        for key, want in where.items():
            if key not in flat:
                return False
            wants = want if isinstance(want, (list, tuple, set, frozenset)) else [want]
            if not any(_equal(flat[key], w) for w in wants):
                return False
        return True
    return match


def scan_runs(paths, where=None) -> list[RunInfo]:
    """Status, config and overrides of every run folder in `paths`, those `where` selects (see
    `load_runs`); damaged files are skipped with a `DamagedRunWarning`."""
    messages: list = []
    runs = []
    for p in paths:
        p = Path(p)
        if not (p / CONFIG_FILE).exists() and has_table(p):  # a failed start has neither: no news
            messages.append(f"run {p}: {CONFIG_FILE} is missing; the run has no config columns "
                            "(and is left out of the swept keys)")
        runs.append(RunInfo(p, _read_status_checked(p, messages), flatten_config(read_config(p, messages)),
                         read_overrides(p, messages)))
    warn_damaged(messages)
    select = run_selector(where)
    if select is None:
        return runs
    if isinstance(where, dict) and runs:
        known = set().union(*(r.config for r in runs)) | {"status"}
        unknown = [k for k in where if k not in known]
        if unknown:
            raise KeyError(f"where: unknown config key {unknown[0]!r}; known keys: "
                           + ", ".join(sorted(known)))
    return [r for r in runs if select({**r.config, "status": effective_status(r.status)})]


def config_keys(runs: list[RunInfo], config) -> list[str]:
    """The config keys to add as columns: `config` True: every key of the runs; False or None:
    none; a key or a list of keys: those (a KeyError for one no run has)."""
    if config is False or config is None:
        return []
    keys: dict = {}
    for r in runs:
        keys.update(dict.fromkeys(r.config))
    if config is True:
        return list(keys)
    wanted = [config] if isinstance(config, str) else list(config)
    unknown = [k for k in wanted if k not in keys]
    if unknown and runs:
        raise KeyError(f"unknown config key {unknown[0]!r}; known keys: {', '.join(sorted(keys))}")
    return wanted


def _per_run_frame(runs: list[RunInfo], keys: list[str], taken: set) -> pd.DataFrame:
    """One row per run: `run` (its folder), status, wall time, overrides and the config values
    `keys`. Numbers and booleans stay numeric; strings and mixed values become categoricals."""
    cols: dict = {"run": pd.Categorical([str(r.path) for r in runs])}
    cols["status"] = pd.Categorical([effective_status(r.status) for r in runs])
    cols["wall_time"] = np.array([r.status.get("wall_time", np.nan) for r in runs], dtype=float)
    cols["overrides"] = pd.Categorical([r.overrides for r in runs])
    for key in keys:
        if key not in cols:
            values = [r.config.get(key) for r in runs]
            present = [v for v in values if v is not None]
            if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
                cols[key] = pd.array(values, dtype="Int64")  # a run without the key: <NA>, not 4.0
                continue
            per_run = pd.Series(values, dtype=None if runs else float)
            cols[key] = per_run.to_numpy() if per_run.dtype.kind in "biuf" else pd.Categorical(per_run.tolist())
    # a recorded column wins over a run value of the same name
    return pd.DataFrame({k: v for k, v in cols.items() if k == "run" or k not in taken})


def with_run_columns(table: pd.DataFrame, runs: list[RunInfo], codes: np.ndarray, keys: list[str]) -> pd.DataFrame:
    """`table` (rows of the runs `codes`) with `run` in front and the per-run columns after it,
    expanded from one row per run with a single take per column block."""
    per_run = _per_run_frame(runs, keys, set(table.columns))
    head = per_run[["run"]].take(codes)
    tail = per_run.drop(columns="run").take(codes)
    head.index = tail.index = table.index
    return pd.concat([head, table, tail], axis=1)


