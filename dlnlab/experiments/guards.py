"""Guards that run before anything is allocated or written: the config's keys against the typed
schema, the run name, the thread count, a memory estimate, and a reused output folder.

    from dlnlab.experiments.guards import estimate_memory
    estimate_memory(cfg, [6, 1000, 1000, 1000, 4]).total   # bytes the run needs, about
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path

from dlnlab.experiments import config as _config
from dlnlab.experiments.config import ConfigError
from dlnlab.experiments.task_kinds import TASKS
from dlnlab.recording.background import cpu_count
from dlnlab.runfolder import (
    EVENTS_FILE,
    METRICS_DIR,
    STATUS_FILE,
    remove_tmp_files,
)

NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_name(name) -> None:
    """The run name ends the run's folder name: letters, digits and `._-` only (no path)."""
    name = str(name)
    if not NAME.fullmatch(name) or set(name) == {"."}:
        raise ConfigError(f"name={name!r} is invalid: allowed letters, digits and ._- "
                          "(the end of the run folder's name, not a path)")


def _schema_of(tp):
    """The dataclass a field of type `tp` holds (Optional[...] unwrapped), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def unknown_keys(node, schema, prefix: str = "") -> list[str]:
    """Dotted keys of the config mapping `node` that the dataclass `schema` does not declare
    (`+device=cuda` adds one: Hydra lets `+key` past the typed schema)."""
    hints = typing.get_type_hints(schema)
    out = []
    for key in node.keys():
        name = f"{prefix}{key}"
        if key not in hints:
            out.append(name)
            continue
        sub = _schema_of(hints[key])
        if key == "task" and schema is _config.Config:
            kind = TASKS.get(getattr(node[key], "kind", None))
            sub = kind.schema if kind is not None else None
        child = node[key]
        if sub is not None and hasattr(child, "keys"):
            out += unknown_keys(child, sub, name + ".")
    return out


def check_keys(cfg) -> None:
    """Refuse keys outside the typed schema (ConfigError naming the first one)."""
    bad = unknown_keys(cfg, _config.Config)
    if bad:
        parent = bad[0].rpartition(".")[0]
        raise ConfigError(f"{bad[0]} is not an option{' of ' + parent if parent else ''}: the typed "
                          "schema has no such key (see dlnlab-train --help for the options)")


def threads_for(cfg, warn: bool = False) -> int:
    """cfg.threads, clamped to this machine's CPUs (0: torch's default); `warn`: say so."""
    n, cpus = int(cfg.threads), cpu_count()
    if n > cpus:
        if warn:
            warnings.warn(f"threads={n} is more than the {cpus} CPUs of this machine: using threads={cpus}",
                          stacklevel=2)
        return cpus
    return n


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable of /proc/meminfo), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


@dataclass
class MemoryEstimate:
    """About how many bytes a run needs at its peak, by what holds them."""
    parameters: int  # the weights and what training keeps beside them (update, last good copy)
    activations: int  # the factored step's activations and errors (or autograd's), per member
    recording: int  # every partial product W_j...W_i in float64 and its SVD workspace
    data: int  # the task's arrays

    @property
    def total(self) -> int:
        """All the bytes."""
        return self.parameters + self.activations + self.recording + self.data

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {_gb(getattr(self, k))}" for k in ("parameters", "activations", "recording", "data"))
        return f"{_gb(self.total)} ({parts})"


def _gb(n: int) -> str:
    if n >= 1e11:
        return f"{n / 1e9:,.0f} GB"
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"


def task_dims(cfg) -> tuple[int, int, int] | None:
    """(d_in, d_out, samples) read from the task config (its kind's `dims` in
    dlnlab.experiments.task_kinds.TASKS), None when only the data knows them."""
    return TASKS[cfg.task.kind].dims(cfg.task)


def layer_widths(cfg, d_in: int, d_out: int) -> list[int]:
    """[d_0, ..., d_H] of a task with inputs d_in and outputs d_out: the model gives the hidden widths."""
    hidden = list(cfg.model.widths) or [cfg.model.width] * (cfg.model.depth - 1)
    return [int(d_in), *map(int, hidden), int(d_out)]


def estimate_memory(cfg, dims: list[int], samples: int) -> MemoryEstimate:
    """About how many bytes a run with layer widths `dims` = [d_0, ..., d_H] needs at its peak."""
    E = int(cfg.model.ensemble)
    item = 4 if cfg.precision == "float32" else 8
    H = len(dims) - 1
    P = E * sum(dims[h + 1] * dims[h] for h in range(H))
    batch = int(cfg.optim.batch_size) if cfg.optim.name == "sgd" else samples
    acts = E * batch * sum(dims) * 2 * item
    # partial products W_j...W_i (j >= i): (E, d_j, d_{i-1}), float64, and the SVD's workspace
    products = E * sum(dims[j] * dims[i - 1] for j in range(1, H + 1) for i in range(1, j + 1)) * 8 * 2
    return MemoryEstimate(parameters=4 * P * item, activations=acts, recording=products,
                          data=samples * (dims[0] + dims[-1]) * 8 * 2)


def check_memory(cfg, dims: list[int], samples: int, available: int | None = None) -> MemoryEstimate:
    """Refuse (ConfigError) a run whose estimate exceeds the available memory, naming the
    estimate and the overrides that shrink it."""
    est = estimate_memory(cfg, dims, samples)
    available = available_memory() if available is None else available
    if available is not None and est.total > available:
        m = cfg.model
        shape = f"model.width={m.width}" if not len(m.widths) else f"model.widths={list(m.widths)}"
        raise ConfigError(f"{shape} model.depth={m.depth} model.ensemble={m.ensemble} needs about {est}, more than "
                          f"the {_gb(available)} of memory available: lower model.width (or model.widths), "
                          "model.ensemble or model.depth")
    return est


# What a run writes into its folder; a new run (not a resumed one) removes an earlier run's copies,
# so that TensorBoard and the checkpoints show this run only.
_STALE = ("checkpoints/step_*.pt", "checkpoints/last.pt", "events.out.tfevents.*", EVENTS_FILE,
          f"{METRICS_DIR}/*.parquet", f"{METRICS_DIR}/*.arrow", STATUS_FILE)


def clean_run_dir(out_dir, resume: bool = False) -> list[Path]:
    """Before a new run in `out_dir`: remove what an earlier run left there (checkpoints,
    TensorBoard events, tables, status, `*.tmp`); a resumed run keeps everything. The removed paths."""
    out = Path(out_dir)
    if resume or not out.is_dir():
        return []
    removed = remove_tmp_files(out)
    for pattern in _STALE:
        for p in out.glob(pattern):
            if p.is_file():
                p.unlink()
                removed.append(p)
    return removed
