"""Run tables and events into pandas: `load_run`, `load_runs`, `list_runs`, `load_events`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from dlnlab.analysis.folders import (
    RUN_COLUMNS,
    RunInfo,
    config_keys,
    find_runs,
    first_line,
    scan_runs,
    warn_damaged,
    with_run_columns,
)
from dlnlab.runfolder import EVENT_COLUMNS, EVENTS_FILE, read_table_file, table_files

__all__ = ["load_runs", "load_run", "list_runs", "load_events", "load_scanned", "run_events", "default_threads"]


def _read_file(path: Path, columns, messages: list, what: str = "run-table file"):
    """One table file (parquet, or an Arrow IPC part) as a pyarrow Table (only `columns` of it, when
    given), or None if damaged."""
    try:
        return read_table_file(path, columns)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file must not sink the whole load
        messages.append(f"damaged {what} {path} skipped ({first_line(e)})")
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
                messages.append(f"damaged {what} {src} skipped ({first_line(e)})")
                t = None
        out.append(t)
    return out


def _read_table(run_dir: Path, columns):
    """(pyarrow Table or None, warning messages) of one run folder's table."""
    import pyarrow as pa

    for attempt in range(2):
        messages: list = []
        try:
            files = table_files(run_dir)
            tables = [_read_file(f, columns, messages) for f in files]
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


def default_threads() -> int:
    """The reader threads of a load: the cores this process may use (at least 2)."""
    try:
        return max(2, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(2, os.cpu_count() or 1)


def _load(paths: list[Path], where=None, columns=None, config=True, threads: int | None = None,
          runs: list[RunInfo] | None = None) -> pd.DataFrame:
    """Read the run folders `paths` (those `where` selects; or the scanned `runs`) into one
    DataFrame."""
    from concurrent.futures import ThreadPoolExecutor

    if columns is not None:
        columns = {"step", "member", *([columns] if isinstance(columns, str) else columns)}
    threads = threads or default_threads()
    read = lambda r: _read_table(r, columns)  # noqa: E731
    if runs is not None:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            results = list(pool.map(read, [r.path for r in runs]))
    elif threads <= 1 or len(paths) < 4:
        runs = scan_runs(paths, where)
        results = [read(r.path) for r in runs]
    elif where is None:
        # pyarrow reads release the GIL: read the tables while the configs are parsed
        with ThreadPoolExecutor(threads) as pool:
            pending = pool.map(read, paths)
            runs = scan_runs(paths)
            results = list(pending)
    else:  # `where` needs the configs first, and then reads only what it selects
        runs = scan_runs(paths, where)
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(read, [r.path for r in runs]))
    messages = [m for _, ms in results for m in ms]
    tables = _drop_incompatible([t for t, _ in results], [r.path for r in runs], messages, "run table of")
    warn_damaged(messages)
    keys = config_keys(runs, config)
    table, counts = _to_pandas(tables, ["step", "member"])
    return with_run_columns(table, runs, np.repeat(np.arange(len(runs)), counts), keys)


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
    runs = scan_runs(find_runs(root), where)
    keys = config_keys(runs, config)
    step = pd.DataFrame({"step": pd.array([r.status.get("step") for r in runs], dtype="Int64")})
    return with_run_columns(step, runs, np.arange(len(runs)), keys)


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


def load_scanned(runs: list[RunInfo], columns=None, config=True, threads: int | None = None) -> pd.DataFrame:
    """The tables of runs already scanned and selected (`scan_runs`) in one DataFrame, as
    `load_runs` gives them."""
    return _load([], None, columns, config, threads, runs=runs)


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({"run": pd.Series(dtype=object),
                         **{c: pd.Series(dtype=t) for c, t in EVENT_COLUMNS.items()}})


def _read_events(runs: list[RunInfo]) -> tuple[list, list[bool]]:
    """(pyarrow tables or None, whether the run has an events file) for every run."""
    messages: list = []
    tables, tracked = [], []
    for r in runs:
        path = r.path / EVENTS_FILE
        exists = path.exists()
        tracked.append(exists)
        tables.append(_read_file(path, None, messages, "events file") if exists else None)
    warn_damaged(messages)
    return tables, tracked


def _events_frame(runs: list[RunInfo], tables: list, config) -> pd.DataFrame:
    messages: list = []
    tables = _drop_incompatible(tables, [r.path / EVENTS_FILE for r in runs], messages, "events file")
    warn_damaged(messages)
    if all(t is None or t.num_rows == 0 for t in tables):
        return _empty_events()
    table, counts = _to_pandas(tables, list(EVENT_COLUMNS))
    for c, t in EVENT_COLUMNS.items():
        if c in table.columns and t == "int64" and table[c].dtype.kind == "f" and table[c].notna().all():
            table[c] = table[c].astype("int64")
    codes = np.repeat(np.arange(len(runs)), counts)
    df = with_run_columns(table, runs, codes, config_keys(runs, config))
    df = df.drop(columns=[c for c in RUN_COLUMNS if c not in ("status",)])
    first = ["run", *[c for c in EVENT_COLUMNS if c in df.columns]]
    return df[first + [c for c in df.columns if c not in first]]


def run_events(paths) -> tuple[pd.DataFrame, set[str]]:
    """The jump events of the run folders `paths`, without config columns (an empty events table
    when none has any), and the paths (as str) of the runs that have an events file."""
    runs = [RunInfo(Path(p), {}, {}, "") for p in paths]
    tables, has = _read_events(runs)
    events = _events_frame(runs, tables, config=False) if any(has) else _empty_events()
    return events, {str(r.path) for r, h in zip(runs, has) if h}


def load_events(root, where=None, config=True) -> pd.DataFrame:
    """The jump events of all runs under `root` (<run>/events.parquet, written by the rank
    tracker): columns run, member, step, from_rank, to_rank, kind ("entered": first passage into
    a lower-rank set; "increase": a rank increase), rank_type ("layer" | "end_to_end"), any other
    columns present, then `status` and the config columns (config=False: none). No events: an
    empty DataFrame with those columns."""
    runs = scan_runs(find_runs(root), where)
    tables, _ = _read_events(runs)
    return _events_frame(runs, tables, config)


