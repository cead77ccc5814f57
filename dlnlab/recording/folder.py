"""The run folder's format, and reading runs into pandas.

A run folder holds:
  config.yaml             the resolved config
  status.json             status (running, finished, diverged, interrupted, failed), step, wall time
  metrics/part-*.arrow    the run table: one row per (step, member), written in parts as the run
                          goes, each part atomically, so an unfinished or killed run stays readable
                          (Arrow IPC files: a part costs a tenth of a parquet one; runs of earlier
                          versions left part-*.parquet, read the same way);
  metrics/table.parquet   the same parts compacted into one file when the run ends
  events.out.tfevents.*   TensorBoard (`tensorboard --logdir runs`)
  checkpoints/            step_*.pt and last.pt
  .hydra/                 Hydra's own record of the job (overrides.yaml) when launched by the CLI

`load_run(path)` and `load_runs(root)` are the one way to read run tables.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import yaml

STATUS_FILE, CONFIG_FILE, METRICS_DIR = "status.json", "config.yaml", "metrics"
TABLE_FILE = "table.parquet"  # the compacted table of a run that ended


TMP_SUFFIX = ".tmp"  # a file being written; `atomic_write` never leaves one behind
PART_SUFFIXES = (".arrow", ".parquet")  # run-table parts: this version's, and earlier versions'


def part_path(metrics_dir, n: int) -> Path:
    """The path of part n of a run table."""
    return Path(metrics_dir) / f"part-{n:05d}.arrow"


def part_files(metrics_dir) -> list[Path]:
    """The parts of a run table, in order (never a file still being written)."""
    return sorted(p for p in Path(metrics_dir).glob("part-*") if p.suffix in PART_SUFFIXES)


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
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}

# threads, only the columns asked for (`columns=`), and concatenated once; per-run values (run,
# status, overrides, string config values) become categorical columns built from codes, numbers
# plain numeric columns, all added in one concat.

EVENTS_FILE = "events.parquet"
# The rank tracker's jump events (dlnlab.recording.jumps), one row per event; load_events reads these
# columns first. in_B: the point at the event record also meets B's balance and norm conditions
# (ridge.RankTolerances.bal_rtol, norm_bound), so "entered" means it entered B_{to_rank} itself,
# not just the layer-rank stratum.
EVENT_COLUMNS = {"member": "int64", "step": "int64", "from_rank": "int64", "to_rank": "int64",
                 "kind": "str", "rank_type": "str", "in_B": "bool"}
RUN_COLUMNS = ("status", "wall_time", "overrides")  # per-run columns added after the metrics

try:  # libyaml parses a config ~10x faster than the pure-Python loader
    YAML_LOADER = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    YAML_LOADER = yaml.SafeLoader



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


