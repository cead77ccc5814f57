"""How the trainer's records reach its hooks: record batches, the record thread, hook dispatch.

    RecordSettings      record.batch, record.thread and the checkpoint period, checked
    PendingRecord       a record made and not yet handed over, with the hooks due at it
    RecordDispatcher    makes the records at the hooks' cadences and hands them over, owned by the trainer

A small network's record costs per-call dispatch, so its hooks take several records at once; the
hooks that declare `background` may run on a record thread beside the loop. Either way every hook
sees the same records in the same order as in a record-by-record run, so the numbers are the same
bit for bit (docs/architecture.md, "Record batches" and "The record thread").
"""
from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from dlnlab.recording.background import RecordThread, cpu_count
from dlnlab.recording.base import Cadence, Hook, Record
from dlnlab.recording.signals import Interrupted, SignalGuard

__all__ = ["RecordSettings", "PendingRecord", "RecordDispatcher",
           "RECORD_BATCH_RECORDS", "RECORD_BATCH_PARAMS", "RECORD_BATCH_SECONDS", "RECORD_THREAD",
           "RECORD_THREAD_PARAMS"]

# the automatic `record_batch`: at most this many records, and parameters in all (members x
# parameters per member x records); records wait at most this many seconds
RECORD_BATCH_RECORDS, RECORD_BATCH_PARAMS, RECORD_BATCH_SECONDS = 16, 2 ** 18, 1.0
RECORD_THREAD = ("auto", "on", "off")
RECORD_THREAD_PARAMS = 2 ** 22  # auto: a record thread up to this many parameters in all (a record ~1 s)


@dataclass(frozen=True)
class RecordSettings:
    """How records reach the hooks.

    Args:
        batch: records handed to the hooks together (0: auto, from the network's size).
        thread: the record thread for hooks that declare `background`: auto | on | off.
        checkpoint_every: records at multiples of this step are flagged `rec.checkpoint` (0: none).
    """
    batch: int = 0
    thread: str = "auto"
    checkpoint_every: int = 0

    def __post_init__(self):
        if int(self.batch) < 0:
            raise ValueError(f"record_batch={self.batch}: allowed an integer >= 0 (0: auto)")
        if self.thread not in RECORD_THREAD:
            raise ValueError(f"record_thread={self.thread!r}: allowed {' | '.join(RECORD_THREAD)}")


@dataclass
class PendingRecord:
    """A record made and not yet handed to its hooks."""
    record: Record
    hooks: list  # the hooks due at it
    alone: bool  # ends a batch of its own: the records before it go through every hook first
    needs_live_state: bool  # some hook handles it at its own step (reads the live state): not on the thread


class RecordDispatcher:
    """Makes the trainer's records at its hooks' cadences and hands them over.

    Args:
        trainer: the hooks' context (`step`, `steps`, `weights`, `active`, `lr`, `ridge`, `state()`).
        hooks: run in this order; a hook without a cadence gets `cadence`.
        settings: record batches, the record thread and the checkpoint period.
        params: parameters in all (members x parameters per member): sizes the automatic batch.
        cpu: whether the network trains on the CPU (a record thread only there, under auto).
        guard: the run's signals, deferred while a batch of records runs on this thread.
    """

    def __init__(self, trainer, hooks: Sequence[Hook], cadence: Cadence, settings: RecordSettings,
                 params: int, cpu: bool, guard: SignalGuard):
        self.trainer, self.hooks, self.guard = trainer, list(hooks), guard
        for h in self.hooks:
            if getattr(h, "cadence", None) is None:
                h.cadence = cadence
        self.checkpoint_every = int(settings.checkpoint_every)
        # a batch stays small enough to finish quickly (after a Ctrl-C too) and no record waits long
        self.batch = int(settings.batch) or max(1, min(RECORD_BATCH_RECORDS, RECORD_BATCH_PARAMS // params))
        # auto: on the CPU with a core to spare, up to RECORD_THREAD_PARAMS, where an interrupted
        # run waits at most a record or two for the thread
        self.uses_thread = settings.thread == "on" or (
            settings.thread == "auto" and cpu and params <= RECORD_THREAD_PARAMS
            and cpu_count() > torch.get_num_threads())
        self.next_due: float = 0  # the next step at which some hook is due
        self.states: dict = {}  # hook states of a checkpoint, loaded at `start`
        self.finishing = False
        self.broken: set[int] = set()  # id() of the hooks that raised: they see no more records
        self._seen: dict[int, int] = {}  # id(hook) -> last step it recorded
        self._worker: RecordThread | None = None
        self._pending: list[PendingRecord] = []
        self._pending_since = 0.0  # when the first of them was made
        self._last_record_at = 0.0  # when the last record was made (the start of the run at first)

    # -- the hooks' states, for checkpoints ---------------------------------------------------------
    def hook_states(self) -> dict:
        """{class name: state_dict()} of every hook that holds state (a second hook of one class gets
        `Name#2`), for the checkpoint."""
        out: dict = {}
        for h in self.hooks:
            state = h.state_dict()
            if state is None:
                continue
            name = type(h).__name__
            key, n = name, 1
            while key in out:
                n += 1
                key = f"{name}#{n}"
            out[key] = state
        return out

    def _load_hook_states(self) -> None:
        seen: dict = {}
        for h in self.hooks:
            name = type(h).__name__
            seen[name] = seen.get(name, 0) + 1
            key = name if seen[name] == 1 else f"{name}#{seen[name]}"
            if key in self.states:
                h.load_state_dict(self.states[key])

    # -- the run --------------------------------------------------------------------------------
    def start(self, resumed: bool) -> None:
        """The hooks' `on_start`, then the first record (a resumed run: the checkpoint's hook states
        instead, its record is in the table already)."""
        if self.uses_thread:
            self._worker = RecordThread()
        for h in self.hooks:
            h.on_start(self.trainer)
        for h in self.hooks:
            h.cadence.last = self.trainer.steps
        self._last_record_at = time.monotonic()
        if resumed:
            self._load_hook_states()
        else:
            self.record()
        self.schedule_next()

    def schedule_next(self) -> None:
        """The next step at which some hook is due (`next_due`), after the trainer's step."""
        # asking every hook's cadence at every step costs more than a record at small widths
        step = self.trainer.step
        nxt = [n for n in (h.cadence.next_due(step) for h in self.hooks) if n is not None]
        self.next_due = min(nxt) if nxt else math.inf

    def record_due(self) -> None:
        """The record at the trainer's step, which `next_due` says some hook is due at."""
        self.record()
        self.schedule_next()

    def record(self, final: bool = False) -> None:
        """Make the record of the trainer's step for the hooks due there (`final`: every hook that
        has not seen this step, whatever its cadence) and hand it over now or with a later batch."""
        t = self.trainer
        if final:
            self.dispatch()  # the records still waiting first: `_seen` must know them
            due = [h for h in self.hooks if self._seen.get(id(h)) != t.step]
        else:
            due = [h for h in self.hooks if h.cadence.due(t.step)]
        if not due:
            return
        last = final or t.step == t.steps
        ce = self.checkpoint_every
        rec = Record(step=t.step, weights=t.weights, active=t.active.clone(), lr=t.lr, ridge=t.ridge,
                     final=last, checkpoint=bool(not last and ce and t.step % ce == 0))
        now = time.monotonic()
        # records more than RECORD_BATCH_SECONDS apart gain nothing from waiting for each other
        wait = (self.batch > 1 and not last and not rec.checkpoint
                and now - self._last_record_at <= RECORD_BATCH_SECONDS
                and not any(h.immediate(rec) for h in due))
        self._last_record_at = now
        if wait or self._worker is not None:  # the live weights move on before the hooks see this record
            rec.weights = [w.clone() for w in rec.weights]
            if rec.checkpoint and self._worker is not None:  # written by the record thread later
                rec.loop_state = copy.deepcopy(t.state())
        # a record that a hook handles at its own step (a checkpoint) can close the batch of the
        # records before it, if that hook is the last one: then every other hook has seen the whole
        # batch, this record included, before it saves their states, as in a record-by-record run
        imm = [i for i, h in enumerate(self.hooks) if not wait and any(d is h for d in due) and h.immediate(rec)]
        alone = last or bool(imm and imm[0] < len(self.hooks) - 1)
        self._pending.append(PendingRecord(rec, due, alone, needs_live_state=bool(imm)))
        if len(self._pending) == 1:
            self._pending_since = now
        if not wait or len(self._pending) >= self.batch or now - self._pending_since > RECORD_BATCH_SECONDS:
            self.dispatch()

    def dispatch(self) -> None:
        """Hand the waiting records over, hook by hook in the hooks' order, each hook all of its
        records at once (`Hook.on_records`): a producer's columns are there before the sinks read.
        On the record thread when every hook due declares `background` and none needs the live
        state; else here, after the record thread has done what it holds."""
        if not self._pending:
            return
        if len(self._pending) > 1 and self._pending[-1].alone:
            # the records before the last record or a record handled at its own step by a hook that
            # others follow go through every hook first: the states a checkpoint saves are those of a
            # run that handed its records over one by one
            end = self._pending.pop()
            self.dispatch()
            self._pending = [end]
        pending, self._pending = self._pending, []
        work = []
        for h in self.hooks:
            recs = [p.record for p in pending if any(d is h for d in p.hooks)]
            if recs:
                self._seen[id(h)] = recs[-1].step
                work.append((h, recs))
        if (self._worker is not None and not self.finishing and all(h.background for h, _ in work)
                and not any(p.needs_live_state for p in pending)):
            self._worker.submit(functools.partial(self._run_hooks, work))  # the loop trains on meanwhile
            return
        # a signal during a record aborts it (no waiting: a large ensemble's record can take
        # minutes), except the final one while finishing; a batch of a small network's records is
        # quick by construction and finishes first, so that no record it holds is lost
        with self.guard.deferring(self.finishing or self.batch > 1):
            if self._worker is not None:  # the records before these first
                self._worker.drain()
            self._run_hooks(work)

    def _run_hooks(self, work: list) -> None:
        """Each hook its records, in order. A hook that raises is dropped for the rest of the run, and the
        hooks after it still get these records and the later ones (the sinks write the rows, with the
        columns computed so far), but no step checkpoint is taken from then on: a resume must not start
        from a state some hook failed in, so the last one stays the last good one. Then the first
        error is raised: the run fails with everything recorded before it kept."""
        error = None
        with torch.no_grad():  # records read the weights; a hook that needs autograd enables it
            for h, recs in work:
                if id(h) in self.broken:
                    continue
                if self.broken:
                    for r in recs:
                        r.checkpoint = False
                try:
                    h.on_records(self.trainer, recs)
                except Interrupted:  # a signal abandons the record at once (`finish`)
                    raise
                except Exception as e:  # noqa: BLE001 - raised below, once the others are done
                    self.broken.add(id(h))
                    error = error or e
        if error is not None:
            raise error

    def finish(self, status: str) -> list[Exception]:
        """The end of the run: what the record thread holds, the waiting records, the last record
        (not after an interrupt: a scheduler's SIGTERM must not wait for a full record, minutes at
        large E; the run resumes from its last checkpoint) and every hook's `on_end`. One failing
        hook must not keep the others (table, checkpoint) from saving: returns the errors."""
        self.finishing = True
        errors = []
        try:  # at most `batch` records of a small network: quick, also after an interrupt
            if self._worker is not None:
                if status == "interrupted" and self.batch == 1:
                    self._worker.cancel()  # a large network's records that have not started: dropped
                self._worker.drain()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        jobs = [self.dispatch] + ([] if status == "interrupted" else [functools.partial(self.record, final=True)])
        for job in jobs:
            try:
                job()
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if any(not isinstance(e, Interrupted) for e in errors):  # a hook failed on the last records:
            status = "failed"                                       # the folder must not say finished
        for h in self.hooks:
            try:
                h.on_end(self.trainer, status)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        return errors

    def close(self) -> None:
        """End the record thread (after `finish`)."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None
