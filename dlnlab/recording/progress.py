"""Progress: a one-line bar with an ETA on a terminal, a status line every few seconds otherwise.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from dlnlab.recording.base import Hook, Record


def _duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressHook(Hook):
    """Median loss and end-to-end rank of the members, the step and an ETA.

    mode "bar": a bar redrawn in place (`\\r`), for a terminal; mode "lines": one status line at most
    every `every_seconds` (and at the end), for a log file or a SLURM job. mode None (auto): "bar" when
    the stream is a terminal, else "lines". `clock` is the time source (seconds)."""
    background = True

    def __init__(self, stream=None, mode: str | None = None, every_seconds: float = 10.0, clock=time.monotonic):
        self.stream = stream or sys.stderr
        if mode is None:
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        if mode not in ("bar", "lines"):
            raise ValueError(f"progress mode={mode!r}: allowed 'bar' | 'lines'")
        self.mode, self.every_seconds, self.clock = mode, float(every_seconds), clock
        self._t0 = self._s0 = self._last = None

    def _eta(self, step: int, total: int, now: float) -> str:
        done = step - self._s0
        if done <= 0 or now <= self._t0:
            return "ETA ?"
        return f"ETA {_duration((now - self._t0) / done * max(total - step, 0))}"

    def on_record(self, trainer, rec: Record) -> None:
        if "loss" not in rec.metrics:
            return
        now = self.clock()
        if self._t0 is None:
            self._t0, self._s0 = now, rec.step
        rank = rec.metrics["rank"].double().numpy()
        loss = rec.metrics["loss"].double().numpy()
        rank, loss = rank[np.isfinite(rank)], loss[np.isfinite(loss)]  # diverged members: NaN
        if rank.size:
            line = f"loss {np.median(loss):.4g}  rank {int(np.median(rank))}" if loss.size else \
                f"loss inf  rank {int(np.median(rank))}"
        else:
            line = "every member diverged"
        total = trainer.steps
        eta = self._eta(rec.step, total, now)
        if self.mode == "bar":
            bar = "#" * int(30 * rec.step / max(total, 1))
            self.stream.write(f"\r[{bar:<30}] step {rec.step}/{total}  {line}  {eta}   ")
            self.stream.flush()
            return
        if self._last is not None and now - self._last < self.every_seconds and not rec.final:
            return
        self._last = now
        pct = 100.0 * rec.step / max(total, 1)
        self.stream.write(f"progress: step {rec.step}/{total} ({pct:.0f}%)  {line}  "
                          f"elapsed {_duration(now - self._t0)}  {eta}\n")
        self.stream.flush()

    def on_end(self, trainer, status: str) -> None:
        if self.mode == "bar":
            self.stream.write(f"\n{status}\n")
        else:
            self.stream.write(f"progress: {status}\n")
        self.stream.flush()
