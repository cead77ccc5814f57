"""SIGINT and SIGTERM during a run: noted between steps, raised during a record, ignored at the end.

A run ends as `interrupted` on either signal. Between steps the loop stops at the next step (the
signal is noted and `check` raises it there); during a record the record is abandoned at once (a
large ensemble's record can take minutes); while the end is written (table, last.pt) further
signals are only noted, so a second Ctrl-C cannot leave a half-written run folder.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["Interrupted", "SignalGuard"]


class Interrupted(Exception):
    """SIGTERM, turned into an exception so that the run ends like a Ctrl-C."""


class SignalGuard:
    """Catches SIGINT and SIGTERM while it is entered (on the main thread only; elsewhere it does
    nothing). `defer`: True while a signal must only be noted (`signal`), False while it raises."""

    def __init__(self):
        self.signal: int | None = None  # a signal noted while deferring: the loop stops at the next step
        self.defer = False
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.defer:
            self.signal = signum
            return
        raise Interrupted(f"signal {signum}") if signum != signal.SIGINT else KeyboardInterrupt

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        old, self._old = self._old, {}
        for s, h in old.items():
            signal.signal(s, h)

    def check(self) -> None:
        """Raise the signal noted since the last step, if any (as `Interrupted`)."""
        if self.signal is not None:
            raise Interrupted(f"signal {self.signal}")

    @contextmanager
    def deferring(self, defer: bool) -> Iterator[None]:
        """`defer` set to the given value inside the block, restored after it."""
        old, self.defer = self.defer, defer
        try:
            yield
        finally:
            self.defer = old
