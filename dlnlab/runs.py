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
import socket
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
        self.layout = None  # the metric keys and shapes of the buffered records
        self._members = None  # the member column, (E, 1)
        self.blocks: list = []
        self.objects: list = []
        self.part = 0
        self.t0 = time.time()

    def on_start(self, trainer) -> None:
        (self.dir / METRICS_DIR).mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.dir / CONFIG_FILE, yaml.safe_dump(trainer.config, sort_keys=False))
        # A reused folder must not show an earlier run's table, message or end time as this one's.
        for old in (self.dir / METRICS_DIR).glob("*.parquet"):
            old.unlink()
        info = getattr(trainer.task, "info", {}) or {}
        status = dict(status="running", step=0, steps=trainer.steps, started=self.t0, updated=self.t0,
                      ensemble=trainer.net.E, pid=os.getpid(), host=socket.gethostname(),
                      assumption1_failures=list(info.get("assumption1_failures", [])))
        _atomic_write_text(self.dir / STATUS_FILE, json.dumps(status, indent=1))

    def on_record(self, trainer, rec: Record) -> None:
        # Numbers go into one (E, n_columns) block per record and become a DataFrame only at flush;
        # strings (labels) are kept as object columns beside it.
        # One torch op per metric at most: a record has dozens of them and this runs at every one.
        E = rec.active.shape[0]
        if self._members is None or self._members.shape[0] != E:
            self._members = torch.arange(E, dtype=torch.float64).unsqueeze(1)
        blocks = [torch.full((E, 1), float(rec.step), dtype=torch.float64), self._members]
        objects = {"member_status": np.where(rec.active.numpy(), "training", "diverged").astype(object)}
        layout = []
        for key, v in rec.metrics.items():
            if isinstance(v, torch.Tensor):
                layout.append((key, tuple(v.shape)))
                blocks.append(v if v.dim() == 2 else v.reshape(E, -1))
            else:
                objects[key] = np.asarray(v, dtype=object)
        layout = (tuple(layout), tuple(objects))
        if layout != self.layout:
            if self.layout is not None:
                self.flush(trainer)  # the set of columns changed: start a new part
            self.layout = layout
            # (E,) -> one column `key`; (E, k) -> columns key_1..key_k (a spectrum)
            self.names = ["step", "member"] + [
                name for key, shape in layout[0]
                for name in ([key] if len(shape) == 1 else [f"{key}_{n + 1}" for n in range(shape[1])])]
            self.object_names = list(objects)
        self.blocks.append(torch.cat(blocks, dim=1).detach().to(torch.float64).numpy())  # cat promotes
        self.objects.append(objects)
        if (len(self.blocks) >= self.flush_every or rec.final
                or time.monotonic() - self.last_flush > self.flush_seconds):
            self.flush(trainer)

    def flush(self, trainer=None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.blocks:
            return
        # straight to arrow: a pandas DataFrame of ~400 columns costs more than the write itself
        block = np.asfortranarray(np.concatenate(self.blocks))  # contiguous columns: zero-copy arrays
        cols = [pa.array(block[:, 0].astype(np.int64)), pa.array(block[:, 1].astype(np.int64))]
        cols += [pa.array(block[:, k]) for k in range(2, block.shape[1])]
        cols += [pa.array([None if v is None else str(v) for o in self.objects for v in o[k]], type=pa.string())
                 for k in self.object_names]
        table = pa.Table.from_arrays(cols, names=self.names + self.object_names)
        path = self.dir / METRICS_DIR / f"part-{self.part:05d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        # dictionary pages only for the text columns: on floats they cost time and save nothing
        pq.write_table(table, tmp, use_dictionary=list(self.object_names))
        os.replace(tmp, path)
        self.part += 1
        self.blocks, self.objects = [], []
        self.last_flush = time.monotonic()
        if trainer is not None:
            # a heartbeat: a run killed with no chance to write its status (kill -9, power loss)
            # still tells how far it got and for how long it ran
            now = time.time()
            write_status(self.dir, status="running", step=trainer.step, updated=now, wall_time=now - self.t0)

    def compact(self) -> None:
        """One file per run reads much faster than many parts (load_runs over big sweeps)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = sorted((self.dir / METRICS_DIR).glob("part-*.parquet"))
        if not parts:
            return
        if len(parts) == 1:
            os.replace(parts[0], self.dir / METRICS_DIR / TABLE_FILE)
            return
        # parts written before and after a hook added a column differ: permissive fills the gaps
        table = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="permissive")
        tmp = self.dir / METRICS_DIR / f"{TABLE_FILE}.tmp"
        pq.write_table(table, tmp)
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

import math
import re
from dataclasses import dataclass

#
# `load_runs(root, where=...)` reads many run folders into one tidy DataFrame, one row per
# (run, step, member): `run` (the run folder's path), the recorded metrics, then `status`,
# `wall_time` and `overrides` of the run and every config value as a column with its dotted name.
# `list_runs` gives one row per run without reading any table; `load_events` reads the rank
# tracker's jump events (<run>/events.parquet); `summarize` turns a run table into one row per run
# (or per member): final loss, rank and label, and jumps / first passages from the events.
#
# Damaged files never sink a load: a truncated parquet file, or a status.json / config.yaml /
# overrides.yaml that does not parse, is skipped with a `DamagedRunWarning` naming the file.
# Unfinished runs load (their parts), with the status they wrote ("running" if still going, or
# killed).
#
# Speed (1,000 runs x 1,000 records, H = 4, in a few seconds): tables are read with pyarrow on
# threads, only the columns asked for (`columns=`), and concatenated once; per-run values (run,
# status, overrides, string config values) become categorical columns built from codes, numbers
# plain numeric columns, all added in one concat.

EVENTS_FILE = "events.parquet"
# The rank tracker's jump events (dlnlab.jumps), one row per event; load_events reads these
# columns first. in_B: the point at the event record also meets B's balance and norm conditions
# (ridge.RankTolerances.bal_rtol, norm_bound), so "entered" means it entered B_{to_rank} itself,
# not just the layer-rank stratum.
EVENT_COLUMNS = {"member": "int64", "step": "int64", "from_rank": "int64", "to_rank": "int64",
                 "kind": "str", "rank_type": "str", "in_B": "bool"}
RUN_COLUMNS = ("status", "wall_time", "overrides")  # per-run columns added after the metrics

try:  # libyaml parses a config ~10x faster than the pure-Python loader
    _YAML_LOADER = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _YAML_LOADER = yaml.SafeLoader


class DamagedRunWarning(UserWarning):
    """A run file that could not be read; that file is skipped and the load goes on."""


def _warn_all(messages) -> None:
    """Warn about each message, attributed to the first caller outside this module."""
    import sys

    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    for m in messages:
        warnings.warn(m, DamagedRunWarning, stacklevel=level)


def _first_line(e: Exception) -> str:
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
        problem = _first_line(e)
    else:
        try:
            value = yaml.load(text, Loader=_YAML_LOADER)
        except yaml.YAMLError as e:
            problem = _first_line(e)
        else:
            if value is None:
                return default
            if isinstance(value, type(default)):
                return value
            problem = f"not a YAML {type(default).__name__}"
    msg = f"damaged {what} {path} skipped ({problem})"
    if messages is None:
        _warn_all([msg])
    else:
        messages.append(msg)
    return default


def read_config(run_dir, messages: list | None = None) -> dict:
    """The run's config.yaml as a nested dict ({} if missing; damaged: {} and a warning)."""
    return _read_yaml(Path(run_dir) / CONFIG_FILE, "config", messages, {})


def read_overrides(run_dir, messages: list | None = None) -> str:
    """The command-line overrides of a run launched by the CLI, as one string ("" if none)."""
    items = _read_yaml(Path(run_dir) / ".hydra" / "overrides.yaml", "overrides", messages, [])
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
        return {}
    except (OSError, ValueError) as e:
        problem = _first_line(e)
    messages.append(f"damaged status {path} skipped ({problem}); the run's status is 'unknown'")
    return {}


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_runs(root) -> list[Path]:
    """Every run folder under `root` (a folder holding a status.json), in natural order (job 2
    before job 10)."""
    root = Path(root)
    if (root / STATUS_FILE).exists():
        return [root]
    return sorted((p.parent for p in root.rglob(STATUS_FILE)), key=_natural_key)


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

        task = yaml.load(path.read_text(), Loader=_YAML_LOADER)["hydra"]["overrides"]["task"]
        overrides = OverridesParser.create().parse_overrides([str(o) for o in task or []])
        return [o.key_or_group for o in overrides if o.is_sweep_override()]
    except Exception:  # noqa: BLE001 - only a presentation hint for TensorBoard
        return []


@dataclass
class _Run:
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


def _selector(where):
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


def _scan(paths, where=None) -> list[_Run]:
    """Status, config and overrides of every run folder in `paths`, those `where` selects."""
    messages: list = []
    runs = []
    for p in paths:
        p = Path(p)
        runs.append(_Run(p, _read_status_checked(p, messages), flatten_config(read_config(p, messages)),
                         read_overrides(p, messages)))
    _warn_all(messages)
    select = _selector(where)
    if select is None:
        return runs
    if isinstance(where, dict) and runs:
        known = set().union(*(r.config for r in runs)) | {"status"}
        unknown = [k for k in where if k not in known]
        if unknown:
            raise KeyError(f"where: unknown config key {unknown[0]!r}; known keys: "
                           + ", ".join(sorted(known)))
    return [r for r in runs if select({**r.config, "status": effective_status(r.status)})]


def _config_keys(runs: list[_Run], config) -> list[str]:
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


def _per_run_frame(runs: list[_Run], keys: list[str], taken: set) -> pd.DataFrame:
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


def _with_run_columns(table: pd.DataFrame, runs: list[_Run], codes: np.ndarray, keys: list[str]) -> pd.DataFrame:
    """`table` (rows of the runs `codes`) with `run` in front and the per-run columns after it,
    expanded from one row per run with a single take per column block."""
    per_run = _per_run_frame(runs, keys, set(table.columns))
    head = per_run[["run"]].take(codes)
    tail = per_run.drop(columns="run").take(codes)
    head.index = tail.index = table.index
    return pd.concat([head, table, tail], axis=1)


def _table_files(run_dir: Path) -> list[Path]:
    table = run_dir / METRICS_DIR / TABLE_FILE
    # The compacted table is written (atomically) before any part is removed, so when it exists
    # it is complete, even if a crash left some parts behind.
    if table.exists():
        return [table]
    return sorted((run_dir / METRICS_DIR).glob("part-*.parquet"))


def _read_parquet(path: Path, columns, messages: list, what: str = "run-table file"):
    """One parquet file as a pyarrow Table (only `columns` of it, when given), or None if damaged."""
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
        names = f.schema_arrow.names
        cols = None if columns is None else [c for c in names if c in columns]
        return f.read(columns=cols, use_threads=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file must not sink the whole load
        messages.append(f"damaged {what} {path} skipped ({_first_line(e)})")
        return None


def _drop_incompatible(tables: list, sources: list, messages: list, what: str) -> list:
    """`tables` with those whose columns cannot be merged with the ones before them (a column
    stored as text in one file and as numbers in the others) replaced by None, each with a message
    naming its source: one odd file must not sink the whole load."""
    import pyarrow as pa

    present = [t.schema for t in tables if t is not None]
    if not present:
        return tables
    try:
        pa.unify_schemas(present, promote_options="permissive")
        return tables
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    # the most common column types are the reference, so one odd file cannot outvote the others
    kinds = [tuple((f.name, str(f.type)) for f in s) for s in present]
    common = max(set(kinds), key=kinds.count)
    schema = present[kinds.index(common)]
    out = []
    for t, src in zip(tables, sources):
        if t is not None:
            try:
                schema = t.schema if schema is None else pa.unify_schemas([schema, t.schema],
                                                                          promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                messages.append(f"damaged {what} {src} skipped ({_first_line(e)})")
                t = None
        out.append(t)
    return out


def _read_table(run_dir: Path, columns):
    """(pyarrow Table or None, warning messages) of one run folder's table."""
    import pyarrow as pa

    for attempt in range(2):
        messages: list = []
        try:
            files = _table_files(run_dir)
            tables = [_read_parquet(f, columns, messages) for f in files]
        except FileNotFoundError:  # a running job compacted its parts meanwhile: list them again
            if attempt == 0:
                continue
            raise
        tables = [t for t in _drop_incompatible(tables, files, messages, "run-table file") if t is not None]
        if not tables:
            return None, messages
        if len(tables) == 1:
            return tables[0], messages
        return pa.concat_tables(tables, promote_options="permissive"), messages
    return None, []  # pragma: no cover


def _default_threads() -> int:
    try:
        return max(2, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(2, os.cpu_count() or 1)


def _load(paths: list[Path], where=None, columns=None, config=True, threads: int | None = None,
          runs: list[_Run] | None = None) -> pd.DataFrame:
    """Read the run folders `paths` (those `where` selects; or the scanned `runs`) into one
    DataFrame."""
    from concurrent.futures import ThreadPoolExecutor

    if columns is not None:
        columns = {"step", "member", *([columns] if isinstance(columns, str) else columns)}
    threads = threads or _default_threads()
    read = lambda r: _read_table(r, columns)  # noqa: E731
    if runs is not None:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            results = list(pool.map(read, [r.path for r in runs]))
    elif threads <= 1 or len(paths) < 4:
        runs = _scan(paths, where)
        results = [read(r.path) for r in runs]
    elif where is None:
        # pyarrow reads release the GIL: read the tables while the configs are parsed
        with ThreadPoolExecutor(threads) as pool:
            pending = pool.map(read, paths)
            runs = _scan(paths)
            results = list(pending)
    else:  # `where` needs the configs first, and then reads only what it selects
        runs = _scan(paths, where)
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(read, [r.path for r in runs]))
    messages = [m for _, ms in results for m in ms]
    tables = _drop_incompatible([t for t, _ in results], [r.path for r in runs], messages, "run table of")
    _warn_all(messages)
    keys = _config_keys(runs, config)
    table, counts = _to_pandas(tables, ["step", "member"])
    return _with_run_columns(table, runs, np.repeat(np.arange(len(runs)), counts), keys)


def _to_pandas(tables: list, base_columns) -> tuple[pd.DataFrame, np.ndarray]:
    """The tables concatenated into one DataFrame (strings as categoricals), and the number of rows
    each table contributed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    counts = np.array([0 if t is None else t.num_rows for t in tables], dtype=np.int64)
    present = [t for t in tables if t is not None]
    if not present:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in base_columns}), counts
    big = pa.concat_tables(present, promote_options="permissive")
    for i, field_ in enumerate(big.schema):
        if pa.types.is_string(field_.type) or pa.types.is_large_string(field_.type):
            big = big.set_column(i, field_.name, pc.dictionary_encode(big.column(i)))
        elif pa.types.is_null(field_.type):  # a column with no value at all yet
            big = big.set_column(i, field_.name, big.column(i).cast(pa.float64()))
    df = big.to_pandas(ignore_metadata=True)
    return df, counts


def list_runs(root, where=None, config=True) -> pd.DataFrame:
    """One row per run under `root`, without reading any table: `run` (its folder), `status`,
    `wall_time`, `overrides`, the last recorded `step` (from status.json) and config columns."""
    runs = _scan(find_runs(root), where)
    keys = _config_keys(runs, config)
    step = pd.DataFrame({"step": pd.array([r.status.get("step") for r in runs], dtype="Int64")})
    return _with_run_columns(step, runs, np.arange(len(runs)), keys)


def load_runs(root, where=None, columns=None, config=True, threads: int | None = None) -> pd.DataFrame:
    """All runs under `root` in one DataFrame, one row per (run, step, member).

    Columns: `run` (the run folder's path), `step`, `member`, every recorded metric (`loss`,
    `rank`, `rank_j_i`, `sv_j_i_k`, `balance_h`, ... and what other hooks add, e.g. `label`),
    `member_status`, then per run `status`, `wall_time`, `overrides` and every config value with
    its dotted name (`optim.lr`, `model.depth`, `seed`, ...). Unfinished runs load with what they
    wrote; damaged files are skipped with a `DamagedRunWarning`.

    where:   select runs by config before reading their tables: a dict {"optim.lr": 0.1,
             "seed": [0, 1]} (a list means any of; floats compare with a 1e-9 relative tolerance;
             `status` may be used too), or a callable on the flattened config dict (plus `status`).
    columns: the recorded columns to read (step and member always come), None: all.
    config:  True: all config columns; False: none; a list: those keys.
    """
    return _load(find_runs(root), where, columns, config, threads)


def load_run(path, config: bool = True, columns=None) -> pd.DataFrame:
    """The run table of one run folder (see `load_runs`), status.json or not."""
    return _load([Path(path)], None, columns, config, threads=1)


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({"run": pd.Series(dtype=object),
                         **{c: pd.Series(dtype=t) for c, t in EVENT_COLUMNS.items()}})


def _read_events(runs: list[_Run]) -> tuple[list, list[bool]]:
    """(pyarrow tables or None, whether the run has an events file) for every run."""
    messages: list = []
    tables, tracked = [], []
    for r in runs:
        path = r.path / EVENTS_FILE
        exists = path.exists()
        tracked.append(exists)
        tables.append(_read_parquet(path, None, messages, "events file") if exists else None)
    _warn_all(messages)
    return tables, tracked


def _events_frame(runs: list[_Run], tables: list, config) -> pd.DataFrame:
    messages: list = []
    tables = _drop_incompatible(tables, [r.path / EVENTS_FILE for r in runs], messages, "events file")
    _warn_all(messages)
    if all(t is None or t.num_rows == 0 for t in tables):
        return _empty_events()
    table, counts = _to_pandas(tables, list(EVENT_COLUMNS))
    for c, t in EVENT_COLUMNS.items():
        if c in table.columns and t == "int64" and table[c].dtype.kind == "f" and table[c].notna().all():
            table[c] = table[c].astype("int64")
    codes = np.repeat(np.arange(len(runs)), counts)
    df = _with_run_columns(table, runs, codes, _config_keys(runs, config))
    df = df.drop(columns=[c for c in RUN_COLUMNS if c not in ("status",)])
    first = ["run", *[c for c in EVENT_COLUMNS if c in df.columns]]
    return df[first + [c for c in df.columns if c not in first]]


def load_events(root, where=None, config=True) -> pd.DataFrame:
    """The jump events of all runs under `root` (<run>/events.parquet, written by the rank
    tracker): columns run, member, step, from_rank, to_rank, kind ("entered": first passage into
    a lower-rank set; "increase": a rank increase), rank_type ("layer" | "end_to_end"), any other
    columns present, then `status` and the config columns (config=False: none). No events: an
    empty DataFrame with those columns."""
    runs = _scan(find_runs(root), where)
    tables, _ = _read_events(runs)
    return _events_frame(runs, tables, config)


# ---------------------------------------------------------------------------------------------
# Summaries

def config_columns(df: pd.DataFrame) -> list[str]:
    """The columns of `df` that hold config values (the dotted names of dlnlab.config.Config)."""
    import dataclasses

    from dlnlab.config import Config

    groups, scalars = set(), set()
    for f in dataclasses.fields(Config):  # groups are typed by a *Config dataclass (task: Any)
        is_group = str(getattr(f.type, "__name__", f.type)).endswith("Config") or str(f.type) == "Any"
        (groups if is_group else scalars).add(f.name)
    return [c for c in df.columns
            if c in scalars or ("." in c and c.split(".", 1)[0] in groups)]


def _mode(s: pd.Series):
    s = s.dropna()
    if s.empty:
        return np.nan
    return s.value_counts(sort=True).index[0]


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last recorded row of every (run, member)."""
    if df.empty:
        return df
    idx = df.groupby(["run", "member"], observed=True, sort=False)["step"].idxmax()
    return df.loc[np.sort(idx.to_numpy())]


def _jump_columns(events: pd.DataFrame, keys: pd.DataFrame, tracked: set | None,
                  rank_type: str | None) -> pd.DataFrame:
    """For every (run, member) row of `keys`, from the events of `rank_type`: jumped, jumps,
    first_jump, first_passage_<r>, increases (as the tracker's summary counts them)."""
    ev = events
    if rank_type is not None and "rank_type" in ev.columns:
        ev = ev[ev["rank_type"].astype(object) == rank_type]
    ev = ev.assign(run=ev["run"].astype(str))
    kind = ev["kind"].astype(object)
    ent, inc = ev[kind == "entered"].sort_values("step", kind="stable"), ev[kind == "increase"]
    out = pd.DataFrame({"run": keys["run"].astype(str).to_numpy(), "member": keys["member"].to_numpy()})
    idx = pd.MultiIndex.from_frame(out)
    g = ent.groupby(["run", "member"])
    cols = {"jumps": g.size().reindex(idx).fillna(0).to_numpy(dtype=float)}
    cols["jumped"] = (cols["jumps"] > 0).astype(float)
    cols["first_jump"] = g["step"].min().reindex(idx).to_numpy(dtype=float)
    # first passage into B_r (rank <= r): the first "entered" event down to r or below, for the
    # members that started above r (the start rank is where the first event came from)
    start = g["from_rank"].first()
    for r in range(int(start.max()) if len(start) else 0):
        below = ent[ent["to_rank"] <= r].groupby(["run", "member"])["step"].min()
        below = below[start.reindex(below.index) > r]
        cols[f"first_passage_{r}"] = below.reindex(idx).to_numpy(dtype=float)
    cols["increases"] = inc.groupby(["run", "member"]).size().reindex(idx).fillna(0).to_numpy(dtype=float)
    res = pd.DataFrame(cols)
    if tracked is not None:  # runs without an events file: unknown, not zero
        res.loc[~out["run"].isin(tracked).to_numpy(), :] = np.nan
    return res


def summarize(df: pd.DataFrame, events=None, per: str = "run", metrics=("loss", "rank", "label"),
              rank_type: str | None = "layer") -> pd.DataFrame:
    """One row per run of a run table (from `load_runs`).

    Per (run, member) first: `final_step` (its last recorded step), `final_<metric>` for each of
    `metrics` present (loss, end-to-end rank, the classifier's label), `diverged` (1 if the member
    diverged), and from the rank tracker's events of `rank_type` ("layer", the default, as in the
    tracker's headline; "end_to_end"; None: both): `jumped` (1 if the rank fell below its start:
    an "entered" event), `jumps` (how many such drops), `first_jump` (the step of the first),
    `first_passage_<r>` (the first step at rank <= r, for members that started above r) and
    `increases` (rank increases; none expected under GD/SGD for H >= 3); NaN for runs the tracker
    did not see. per="member" returns those rows.

    per="run" (default) aggregates the members of a run: `members`, the median final loss and
    rank, the most frequent final label, `diverged` members, `jumped` members, total `jumps` and
    `increases`, and the median `first_jump` / `first_passage_<r>` over the members that got
    there; then `status`, `wall_time`, `overrides` and the config columns.

    events: None: read <run>/events.parquet of the runs in `df` where present (runs without one
    get NaN jump columns); a DataFrame from `load_events`; False: no jump columns.
    """
    if per not in ("run", "member"):
        raise ValueError(f"per={per!r}: allowed 'run' | 'member'")
    last = final_rows(df)
    cfg = config_columns(df)
    run_level = [c for c in (*RUN_COLUMNS, *cfg) if c in df.columns]
    out = pd.DataFrame({"run": last["run"].astype(str).to_numpy(), "member": last["member"].to_numpy(),
                        "final_step": last["step"].to_numpy()})
    for m in metrics:
        if m in last.columns:
            col = last[m]
            out[f"final_{m}"] = col.to_numpy() if col.dtype.kind in "biuf" else col.astype(object).to_numpy()
    if "member_status" in last.columns:
        out["diverged"] = (last["member_status"].astype(object) == "diverged").to_numpy().astype(int)
    tracked = None
    if events is None:
        runs = [_Run(Path(r), {}, {}, "") for r in out["run"].unique()]
        tables, has = _read_events(runs)
        # no tracked run at all: the jump columns are still there, NaN (unknown, not zero), so
        # code written for a tracked sweep runs on any sweep
        events = _events_frame(runs, tables, config=False) if any(has) else _empty_events()
        tracked = {str(r.path) for r, h in zip(runs, has) if h}
    if isinstance(events, pd.DataFrame):
        out = pd.concat([out, _jump_columns(events, out, tracked, rank_type)], axis=1)
    run_info = last.groupby("run", observed=True, sort=False)[run_level].first() if run_level else None
    if per == "member":
        if run_info is not None:
            info = run_info.reset_index()
            info["run"] = info["run"].astype(str)
            out = out.merge(info, on="run", how="left")
        return out
    agg = {"members": ("member", "size"), "final_step": ("final_step", "max")}
    total = lambda s: s.sum(min_count=1)  # noqa: E731 - NaN (not 0) for runs without events
    for name in out.columns:
        if name in ("run", "member", "final_step"):
            continue
        if name in ("diverged", "jumped", "jumps", "increases"):
            agg[name] = (name, total)
        elif name == "first_jump" or name.startswith("first_passage_"):
            agg[name] = (name, "median")
        elif name.startswith("final_"):
            agg[name] = (name, "median" if pd.api.types.is_numeric_dtype(out[name]) else _mode)
    res = out.groupby("run", sort=False).agg(**agg).reset_index()
    if run_info is not None:
        info = run_info.reset_index()
        info["run"] = info["run"].astype(str)
        res = res.merge(info, on="run", how="left")
    return res
