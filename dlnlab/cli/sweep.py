"""The end of a sweep (`dlnlab-train -m ...`): a short per-job table and the command that compares
the jobs. A Hydra callback, registered in conf/config.yaml under hydra.callbacks."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback

from dlnlab.analysis.summary import sweep_table


def sweep_report(root, max_rows: int = 40) -> str:
    """The text printed at the end of a sweep under `root`."""
    table = sweep_table(root)
    if table.empty:
        return f"sweep {root}: no run folders"
    counts = table["status"].value_counts()
    head = f"sweep {root}: {len(table)} jobs (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"
    shown = table if len(table) <= max_rows else table.head(max_rows)
    body = _format(shown)
    more = [f"... {len(table) - max_rows} more jobs"] if len(table) > max_rows else []
    return "\n".join([head, body, *more, f"compare     dlnlab-compare {root}"])


def _format(table: pd.DataFrame) -> str:
    """Text columns left-aligned, numbers right-aligned, losses to 6 significant digits."""
    cells = {c: [f"{v:.6g}" if isinstance(v, float) else str(v) for v in table[c]] for c in table.columns}
    width = {c: max([len(c), *map(len, cells[c])]) for c in table.columns}
    num = {c: pd.api.types.is_numeric_dtype(table[c]) for c in table.columns}

    def row(vals):
        return "  ".join(v.rjust(width[c]) if num[c] else v.ljust(width[c]) for c, v in zip(table.columns, vals))

    return "\n".join([row(list(table.columns)).rstrip(), *(row([cells[c][k] for c in table.columns]).rstrip()
                                                            for k in range(len(table)))])


SWEEP_MARK = ".dlnlab-sweep"  # made (exclusively) in a sweep folder when its sweep starts


class SweepFolderInUse(ValueError):
    """A sweep folder that another sweep already writes into."""


def claim_sweep_dir(sweep_dir, resume: bool = False) -> None:
    """Claim `sweep_dir` for this sweep: a second sweep into the same folder (the same name in the
    same microsecond, or the same explicit hydra.sweep.dir) would mix its jobs with the first's, so
    it is refused; a sweep that resumes (a config field `resume`) may reuse its folder."""
    path = Path(sweep_dir)
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path / SWEEP_MARK, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if resume:
            return
        raise SweepFolderInUse(f"hydra.sweep.dir={path} is the folder of another sweep: choose a new "
                               "hydra.sweep.dir (or let the default, which is unique, name it)") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()} {socket.gethostname()}\n")


class SweepSummary(Callback):
    """Claims the sweep folder when a multirun starts; prints `sweep_report` when it ends."""

    def on_multirun_start(self, config, **kwargs) -> None:
        """Claim the sweep folder (Hydra calls this before the first job)."""
        try:
            claim_sweep_dir(config.hydra.sweep.dir, resume=bool(config.get("resume", None)))
        except SweepFolderInUse as e:  # Hydra turns a callback's exception into a warning
            print(f"dlnlab-train: error: {e}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_end(self, config, **kwargs) -> None:
        """Print the end-of-sweep table (Hydra calls this after the last job)."""
        try:
            print(sweep_report(config.hydra.sweep.dir), flush=True)
        except Exception as e:  # noqa: BLE001 - a report must never fail the sweep
            print(f"dlnlab-train: note: no sweep summary ({e})", file=sys.stderr)
