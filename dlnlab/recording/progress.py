"""A one-line progress display.
"""
from __future__ import annotations

import sys

import numpy as np

from dlnlab.recording.base import Hook, Record


class ProgressHook(Hook):
    """A one-line progress bar with loss and end-to-end rank on a terminal; silent otherwise."""

    def __init__(self, stream=None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled

    def on_record(self, trainer, rec: Record) -> None:
        if not self.enabled or "loss" not in rec.metrics:
            return
        frac = rec.step / max(trainer.steps, 1)
        bar = "#" * int(30 * frac)
        rank = rec.metrics["rank"].double().numpy()
        loss = rec.metrics["loss"].double().numpy()
        rank, loss = rank[np.isfinite(rank)], loss[np.isfinite(loss)]  # diverged members: NaN
        if rank.size:
            line = f"loss {np.median(loss):.4g}  rank {int(np.median(rank))}" if loss.size else \
                f"loss inf  rank {int(np.median(rank))}"
        else:
            line = "every member diverged"
        self.stream.write(f"\r[{bar:<30}] step {rec.step}/{trainer.steps}  {line}   ")
        self.stream.flush()

    def on_end(self, trainer, status: str) -> None:
        if self.enabled:
            self.stream.write(f"\n{status}\n")
            self.stream.flush()
