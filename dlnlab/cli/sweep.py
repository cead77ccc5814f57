"""The end of a sweep (`dlnlab-train -m ...`): a short per-job table and the command that compares
the jobs. A Hydra callback, registered in conf/config.yaml under hydra.callbacks."""
from __future__ import annotations

import sys

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


class SweepSummary(Callback):
    """Prints `sweep_report` when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            print(sweep_report(config.hydra.sweep.dir), flush=True)
        except Exception as e:  # noqa: BLE001 - a report must never fail the sweep
            print(f"dlnlab-train: note: no sweep summary ({e})", file=sys.stderr)
