"""The run-table sink: one row per (step, member), written in parts as the run goes (Arrow IPC files),
compacted into one parquet table at the end.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from dlnlab.recording.base import Hook, Record
from dlnlab.runfolder import (
    CONFIG_FILE,
    METRICS_DIR,
    STATUS_FILE,
    TABLE_FILE,
    TMP_SUFFIX,
    atomic_write,
    part_files,
    part_path,
    read_table_file,
    write_part,
    write_status,
)

KEEP_PARTS_BYTES = 64 * 2**20  # parts kept in memory for the end's compaction, at most


class TableHook(Hook):
    """Writes `rec.metrics` as rows (step, member, member_status, ...) to metrics/part-NNNNN.arrow,
    plus status.json and config.yaml. A part is written every `flush_every` records or
    `flush_seconds` seconds, whichever comes first (a part costs tens of ms, so not every record);
    at the end the parts are compacted into metrics/table.parquet."""
    background = True

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
        # the parts written by this process, kept for `compact` while they are small: reading them
        # back costs more than the whole end of a short run (None: read the parts from disk)
        self.written: list | None = []
        self.written_bytes = 0

    def on_start(self, trainer) -> None:
        """Write config.yaml and the first status.json; on resume, cut the table back to the
        checkpoint's step; else remove an earlier run's table from a reused folder."""
        (self.dir / METRICS_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / CONFIG_FILE, yaml.safe_dump(trainer.config, sort_keys=False))
        resumed = getattr(trainer, "resumed_from", None)
        if resumed is not None:  # the rows up to the checkpoint stay, later ones go
            self.part = truncate_table(self.dir / METRICS_DIR, resumed)
            self.written = None
        else:  # a reused folder must not show an earlier run's table, message or end time as this one's
            for old in [*part_files(self.dir / METRICS_DIR), self.dir / METRICS_DIR / TABLE_FILE]:
                old.unlink(missing_ok=True)
        info = getattr(trainer.task, "info", {}) or {}  # optional in Task
        status = dict(status="running", step=0, steps=trainer.steps, started=self.t0, updated=self.t0,
                      ensemble=trainer.net.E, pid=os.getpid(), host=socket.gethostname(),
                      assumption1_failures=list(info.get("assumption1_failures", [])))
        status.update(getattr(trainer, "info", {}) or {})
        if resumed is not None:
            status.update(step=resumed, resumed_from=resumed)
        atomic_write(self.dir / STATUS_FILE, json.dumps(status, indent=1))

    def on_record(self, trainer, rec: Record) -> None:
        """Buffer the record's metrics as rows; write a part when one is due."""
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
        if (len(self.blocks) >= self.flush_every or rec.final or rec.checkpoint
                or time.monotonic() - self.last_flush > self.flush_seconds):
            self.flush(trainer)

    def flush(self, trainer=None) -> None:
        """Write the buffered rows as the next part (and, given the trainer, a status heartbeat)."""
        import pyarrow as pa

        if not self.blocks:
            return
        # straight to arrow: a pandas DataFrame of ~400 columns costs more than the write itself
        block = np.concatenate(self.blocks)
        n = block.shape[0]
        cols = [pa.array(block[:, 0].astype(np.int64)), pa.array(block[:, 1].astype(np.int64))]
        # one arrow array of all the float columns, column after column, sliced (no copy per column)
        flat = pa.array(block[:, 2:].ravel(order="F"))
        cols += [flat.slice(k * n, n) for k in range(block.shape[1] - 2)]
        cols += [pa.array([None if v is None else str(v) for o in self.objects for v in o[k]], type=pa.string())
                 for k in self.object_names]
        table = pa.Table.from_arrays(cols, names=self.names + self.object_names)
        # an Arrow IPC file: a parquet part of a few rows and hundreds of columns costs ten times as
        # much (the compacted table at the end is parquet)
        atomic_write(part_path(self.dir / METRICS_DIR, self.part), lambda tmp: write_part(table, tmp))
        self.part += 1
        if self.written is not None:
            self.written.append(table)
            self.written_bytes += table.nbytes
            if self.written_bytes > KEEP_PARTS_BYTES:
                self.written = None
        self.blocks, self.objects = [], []
        self.last_flush = time.monotonic()
        if trainer is not None:
            # a heartbeat: a run killed with no chance to write its status (kill -9, power loss)
            # still tells how far it got and for how long it ran
            now = time.time()
            write_status(self.dir, fsync=False, status="running", step=trainer.step, updated=now,
                         wall_time=now - self.t0)

    def compact(self) -> None:
        """One file per run reads much faster than many parts (load_runs over big sweeps)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = part_files(self.dir / METRICS_DIR)
        if not parts:
            return
        if len(parts) == 1 and parts[0].suffix == ".parquet":
            os.replace(parts[0], self.dir / METRICS_DIR / TABLE_FILE)
            return
        kept = self.written if self.written is not None and len(self.written) == len(parts) else None
        tables = kept or [read_table_file(p) for p in parts]
        # parts written before and after a hook added a column differ: permissive fills the gaps
        table = pa.concat_tables(tables, promote_options="permissive")
        atomic_write(self.dir / METRICS_DIR / TABLE_FILE, lambda tmp: pq.write_table(table, tmp))
        for p in parts:
            p.unlink()

    def on_end(self, trainer, status: str) -> None:
        """Write the last part, compact the parts into table.parquet and write the final status."""
        try:
            self.flush(trainer)
            self.compact()
        finally:
            write_status(self.dir, status=status, step=trainer.step, ended=time.time(),
                         wall_time=time.time() - self.t0,
                         diverged_members={str(k): d for k, d in enumerate(trainer.diverged_at)
                                           if d is not None})




def truncate_table(metrics_dir: Path, step: int) -> int:
    """Keep the rows with step <= `step` of a run table (parts and a compacted table.parquet) as one
    part, part-00000.arrow, and return the next part number. Used when a run resumes from the
    checkpoint at `step`: rows written after it are dropped. Every part is filtered on its own, so
    the columns keep the order of their first appearance; rows present twice (a resume stopped
    half-way through this) are kept once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    files = part_files(metrics_dir)
    if (metrics_dir / TABLE_FILE).exists():  # a compacted table holds the oldest rows
        files.insert(0, metrics_dir / TABLE_FILE)
    for tmp in metrics_dir.glob("*" + TMP_SUFFIX):
        tmp.unlink()
    tables = [t for t in (read_table_file(f) for f in files) if t.num_rows]
    tables = [t.filter(pc.less_equal(t["step"], step)) for t in tables]
    tables = [t for t in tables if t.num_rows]
    seen: set = set()
    kept = []
    for t in tables:
        keys = list(zip(t["step"].to_pylist(), t["member"].to_pylist()))
        mask = [k not in seen for k in keys]
        seen.update(keys)
        if not all(mask):
            t = t.filter(pa.array(mask))
        if t.num_rows:
            kept.append(t)
    first = part_path(metrics_dir, 0)
    if kept:
        table = pa.concat_tables(kept, promote_options="permissive")
        atomic_write(first, lambda tmp: write_part(table, tmp))
    for f in files:
        if f != first or not kept:
            f.unlink(missing_ok=True)
    return 1 if kept else 0
