"""The record thread: hooks run beside the training loop instead of between its steps.

A small network's step loop spends its time in TorchScript (`dlnlab.steps.run_steps`), which lets go
of Python's lock, and its hooks spend theirs in Python and small kernels: on two cores the two
overlap. The trainer hands each batch of records to one worker thread, which runs the hooks in
order, one batch after the other, exactly as the trainer would have; only hooks that declare
`background = True` go there (a user's hook may hold a GUI or other thread-bound resource).
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Callable

__all__ = ["RecordThread", "cpu_count"]


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class RecordThread:
    """One worker thread running jobs in the order they were submitted.

    The first exception a job raises is re-raised in the submitting thread at its next `submit` or
    `drain`. The jobs after it still run: they hold records already made, which a failed run keeps
    (the dispatcher's jobs skip the hook that raised).

    Args:
        depth: jobs waiting at most; `submit` blocks beyond (the loop cannot run away from its hooks).
    """

    def __init__(self, depth: int = 2):
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="dlnlab-records", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                job()
            except BaseException as e:  # noqa: BLE001 - handed to the submitting thread
                self._error = self._error or e
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job()` after the jobs before it, then raise an earlier job's exception if there was one
        (the job still runs: its records are kept)."""
        self._jobs.put(job)
        self._raise()

    def drain(self) -> None:
        """Wait until every submitted job has run; raise the first exception one of them raised."""
        self._jobs.join()
        self._raise()

    def cancel(self) -> None:
        """Drop the jobs that have not started (the one running finishes)."""
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                return
            self._jobs.task_done()

    def close(self) -> None:
        """Wait for the jobs, then end the thread (an exception left is dropped: call drain first)."""
        self._jobs.put(None)
        self._thread.join()
