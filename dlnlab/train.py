"""The training loop: GD or SGD on loss + lambda * sum_h ||W_h||_F^2, with schedules and hooks.

The loop knows no metric. After every optimizer step (through `Optimizer.register_step_post_hook`)
it hands a `Record` to the hooks that are due; they compute, store and show what they want.
Member k of an ensemble draws its SGD samples from its own generator seeded by `seed + k`, so it
trains exactly like a single network with that seed.
"""
from __future__ import annotations

import copy
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from dlnlab.model import DeepLinearNet
from dlnlab.recording.background import RecordThread, cpu_count
from dlnlab.recording.base import Cadence, Hook, Record
from dlnlab.steps import (
    IndexSampler,
    RidgeSGD,
    Schedule,
    dln_batch_factors,
    run_steps,
    sampler_generator,
)

__all__ = ["Schedule", "Trainer", "TrainResult", "Interrupted", "STATUSES", "log_steps",
           "IndexSampler", "RidgeSGD", "dln_batch_factors", "run_steps", "sampler_generator"]


STATUSES = ("running", "finished", "diverged", "interrupted", "failed")


# the automatic `record_batch`: at most this many records, and parameters in all (members x
# parameters per member x records); records wait at most this many seconds
RECORD_BATCH_RECORDS, RECORD_BATCH_PARAMS, RECORD_BATCH_SECONDS = 16, 2 ** 18, 1.0
RECORD_THREAD = ("auto", "on", "off")
RECORD_THREAD_PARAMS = 2 ** 22  # auto: a record thread up to this many parameters in all (a record ~1 s)


class Interrupted(Exception):
    """SIGTERM, turned into an exception so that the run ends like a Ctrl-C."""


@dataclass
class TrainResult:
    status: str
    step: int
    wall_time: float
    diverged_at: list  # per member: the step it diverged at, or None


class Trainer:
    """Runs `steps` optimizer steps of GD (`optim="gd"`) or SGD on `task` and drives `hooks`.

    Hooks see the trainer itself as their context: `net`, `task`, `optimizer`, `step`, `steps`,
    `lr`, `ridge`, `active` (members still training), `config`, `out_dir`, `info` (facts about the
    run that status.json and the hparams carry, e.g. the width condition). Records may reach them
    later than their step: in batches (`record_batch`) and, for hooks that declare `background`, on
    a record thread beside the loop (`record_thread`: auto | on | off; docs/architecture.md).
    """

    def __init__(self, net: DeepLinearNet, task, *, optim: str = "gd", lr: float = 0.05,
                 steps: int = 1000, ridge: float = 0.0, batch_size: int = 1,
                 lr_schedule: Schedule | None = None, ridge_schedule: Schedule | None = None,
                 seed: int = 0, hooks: Sequence[Hook] = (), cadence: Cadence | None = None,
                 config: dict | None = None, out_dir=None, info: dict | None = None,
                 device: str | torch.device = "cpu", checkpoint_every: int = 0, fused: bool = True,
                 record_batch: int = 0, record_thread: str = "auto"):
        if optim not in ("gd", "sgd"):
            raise ValueError(f"optim={optim!r}: allowed gd | sgd")
        # `device`: the network and the task's tensors train there; hooks see `task` and the weights
        # on the CPU (records copy them), so recording and theory checks stay CPU float64 code
        self.device = torch.device(device)
        self.net, self.task, self.optim_name = net, task, optim
        self._train_task = task
        if self.device.type != "cpu":
            net.to(self.device)
            self._train_task = task.to(net.weights[0].dtype, device=self.device)
        self.steps, self.seed = int(steps), int(seed)
        self.lr_at = lr_schedule or Schedule(lr)
        self.ridge_at = ridge_schedule or Schedule(ridge)
        self.hooks = list(hooks)
        self.cadence = cadence or Cadence(every=100)
        for h in self.hooks:
            if getattr(h, "cadence", None) is None:
                h.cadence = self.cadence
        self.config, self.out_dir = config or {}, out_dir
        self.info = dict(info or {})  # facts about the run (width condition...) for status.json and hparams
        self.sampler = IndexSampler(task.n_samples, batch_size, seed, net.E) if optim == "sgd" else None
        self.optimizer = RidgeSGD(net.parameters(), lr=self.lr_at(0), ridge=self.ridge_at(0))
        self.step = 0
        self.active = torch.ones(net.E, dtype=torch.bool)
        self.diverged_at: list = [None] * net.E
        self.status = "running"
        self._stop = False
        self._seen: dict[int, int] = {}  # id(hook) -> last step it recorded
        self._next_record = 0  # the next step at which some hook is due
        # records at multiples of checkpoint_every are flagged `rec.checkpoint` (0: none)
        self.checkpoint_every = int(checkpoint_every)
        self.resumed_from: int | None = None  # the step of the checkpoint this run resumed from
        self._hook_states: dict = {}
        self._signal = None  # a SIGINT/SIGTERM that arrived between steps: the loop stops at the next
        self._defer = False  # True between steps and while finishing: signals are noted, not raised
        self._finishing = False
        self.optimizer.register_step_post_hook(self._after_step)
        # the fast path between records (dlnlab.steps.run_steps): the square loss's factored step on
        # the CPU; the same weights bit for bit as the general loop
        self.fused = bool(fused) and self.device.type == "cpu" and _plain_square_batches(task)
        # records handed to the hooks together (0: auto): a small network's record costs per-call
        # dispatch, so its hooks take several records as one stack of members; a batch stays small
        # enough to finish quickly (after a Ctrl-C too) and no record waits long (the progress line)
        if int(record_batch) < 0:
            raise ValueError(f"record_batch={record_batch}: allowed an integer >= 0 (0: auto)")
        params = net.E * sum(w[0].numel() for w in net.weights)
        self.record_batch = int(record_batch) or max(1, min(RECORD_BATCH_RECORDS, RECORD_BATCH_PARAMS // params))
        # the hooks that declare `background` run on a record thread beside the loop (auto: on the CPU
        # with a core to spare, up to RECORD_THREAD_PARAMS, where an interrupted run waits at most a
        # record or two for it)
        if record_thread not in RECORD_THREAD:
            raise ValueError(f"record_thread={record_thread!r}: allowed {' | '.join(RECORD_THREAD)}")
        self.record_thread = record_thread == "on" or (
            record_thread == "auto" and self.device.type == "cpu" and params <= RECORD_THREAD_PARAMS
            and cpu_count() > torch.get_num_threads())
        self._worker: RecordThread | None = None
        self._pending: list = []  # (record, hooks due, dispatched alone, needs the live state) waiting
        self._pending_since = 0.0  # when the first of them was made
        self._last_record_at = 0.0  # when the last record was made (the start of `run` at first)

    # -- state seen by hooks -------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def ridge(self) -> float:
        return self.optimizer.param_groups[0]["ridge"]

    @property
    def weights(self) -> list[torch.Tensor]:
        if self.device.type != "cpu":
            return [w.detach().cpu() for w in self.net.weights]
        return [w.detach() for w in self.net.weights]

    def freeze(self, members: torch.Tensor) -> None:
        """Stop training the given members (a bool mask) and flag them diverged at this step."""
        new = members & self.active
        if not new.any():
            return
        for k in torch.nonzero(new).flatten().tolist():
            self.diverged_at[k] = self.step
        self.active &= ~new
        self._mask_frozen()
        if not self.active.any():
            self._stop = True

    def _mask_frozen(self) -> None:
        """The optimizer's (E, 1, 1) mask of members still training, on the weights' device."""
        w0 = self.net.weights[0]
        self.optimizer.active_mask = self.active.to(w0.device, w0.dtype).view(-1, 1, 1)

    # -- checkpoints and resume -------------------------------------------------------------------
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

    def state(self) -> dict:
        """The loop's own state at this step (the checkpoint adds weights, hooks and config)."""
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "sampler": self.sampler.state_dict() if self.sampler is not None else None,
                "seed": self.seed, "active": self.active.clone(),
                "diverged_at": [-1 if d is None else int(d) for d in self.diverged_at]}

    def resume(self, ck: dict) -> None:
        """Continue from a checkpoint (`step_*.pt`): weights, optimizer, sampler, member status and
        the hooks' states; the record at its step is not made again. Call before `run`."""
        with torch.no_grad():
            for p, w in zip(self.net.weights, ck["weights"]):
                p.copy_(w)
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.sampler is not None:
            self.sampler.load_state_dict(ck["sampler"])
        self.step = self.resumed_from = int(ck["step"])
        self.active = ck["active"].clone().bool()
        self.diverged_at = [None if d < 0 else int(d) for d in ck["diverged_at"]]
        if not bool(self.active.all()):
            self._mask_frozen()
        self._stop = not bool(self.active.any())
        self._hook_states = dict(ck.get("hooks") or {})

    # -- the loop ------------------------------------------------------------------------------
    def _record(self, final: bool = False) -> None:
        if final:  # every hook sees the last state once, whatever its cadence
            self._dispatch()  # the records still waiting first: `_seen` must know them
            due = [h for h in self.hooks if self._seen.get(id(h)) != self.step]
        else:
            due = [h for h in self.hooks if h.cadence.due(self.step)]
        if not due:
            return
        last = final or self.step == self.steps
        rec = Record(step=self.step, weights=self.weights, active=self.active.clone(),
                     lr=self.lr, ridge=self.ridge, final=last,
                     checkpoint=bool(not last and self.checkpoint_every
                                     and self.step % self.checkpoint_every == 0))
        now = time.monotonic()
        # records more than RECORD_BATCH_SECONDS apart gain nothing from waiting for each other
        wait = (self.record_batch > 1 and not last and not rec.checkpoint
                and now - self._last_record_at <= RECORD_BATCH_SECONDS
                and not any(h.immediate(rec) for h in due))
        self._last_record_at = now
        if wait or self._worker is not None:  # the live weights move on before the hooks see this record
            rec.weights = [w.clone() for w in rec.weights]
            if rec.checkpoint and self._worker is not None:  # written by the record thread later
                rec.loop_state = copy.deepcopy(self.state())
        # a record that a hook handles at its own step (a checkpoint) can close the batch of the
        # records before it, if that hook is the last one: then every other hook has seen the whole
        # batch, this record included, before it saves their states, as in a record-by-record run
        imm = [i for i, h in enumerate(self.hooks) if not wait and any(d is h for d in due) and h.immediate(rec)]
        alone = last or bool(imm and imm[0] < len(self.hooks) - 1)
        self._pending.append((rec, due, alone, bool(imm)))
        if len(self._pending) == 1:
            self._pending_since = now
        if not wait or len(self._pending) >= self.record_batch or now - self._pending_since > RECORD_BATCH_SECONDS:
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand the waiting records over, hook by hook in the hooks' order, each hook all of its
        records at once (`Hook.on_records`): a producer's columns are there before the sinks read.
        On the record thread when every hook due declares `background` and none needs the live
        state; else here, after the record thread has done what it holds."""
        if not self._pending:
            return
        if len(self._pending) > 1 and self._pending[-1][2]:
            # the records before the last record or a record handled at its own step by a hook that
            # others follow go through every hook first: the states a checkpoint saves are those of a
            # run that handed its records over one by one
            end = self._pending.pop()
            self._dispatch()
            self._pending = [end]
        pending, self._pending = self._pending, []
        work = []
        for h in self.hooks:
            recs = [rec for rec, due, *_ in pending if any(d is h for d in due)]
            if recs:
                self._seen[id(h)] = recs[-1].step
                work.append((h, recs))

        def run_hooks():
            with torch.no_grad():  # records read the weights; a hook that needs autograd enables it
                for h, recs in work:
                    h.on_records(self, recs)

        if (self._worker is not None and not self._finishing and all(h.background for h, _ in work)
                and not any(live for *_, live in pending)):
            self._worker.submit(run_hooks)   # the loop trains on meanwhile
            return
        # a signal during a record aborts it (no waiting: a large ensemble's record can take
        # minutes), except the final one while finishing; a batch of a small network's records is
        # quick by construction and finishes first, so that no record it holds is lost
        defer, self._defer = self._defer, self._finishing or self.record_batch > 1
        try:
            if self._worker is not None:  # the records before these first
                self._worker.drain()
            run_hooks()
        finally:
            self._defer = defer

    def _schedule_next(self) -> None:
        # asking every hook's cadence at every step costs more than a record at small widths
        nxt = [n for n in (h.cadence.next_due(self.step) for h in self.hooks) if n is not None]
        self._next_record = min(nxt) if nxt else math.inf

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.step += 1
        if self.step >= self._next_record:
            self._record()
            self._schedule_next()

    def _loss(self) -> torch.Tensor:
        """The per-member losses of this step's batch. With a task that hands out its batches as
        arrays (`batch_arrays`), the gradient comes in factored form for the optimizer (no autograd);
        otherwise autograd fills `p.grad` through the task's loss."""
        idx = None if self.sampler is None else self.sampler.next()
        task = self._train_task
        if idx is not None and self.device.type != "cpu":
            idx = idx.to(self.device)
        arrays = getattr(task, "batch_arrays", None)  # optional in Task
        batch = arrays(idx) if arrays is not None else None
        if batch is not None:
            with torch.no_grad():  # the optimizer's list of W_1..W_H: no ParameterList indexing per step
                losses, acts, deltas = dln_batch_factors(self.optimizer.param_groups[0]["params"], *batch)
            self.optimizer.factors = (acts, deltas)
            return losses
        ws = list(self.net.weights)
        losses = task.loss(ws) if idx is None else task.batch_loss(ws, idx)
        self.optimizer.factors = None
        return losses

    def _fused_segment(self) -> bool:
        """Steps up to the next record through `run_steps`; False when the next step is the general
        loop's (a member's loss is not finite there: it freezes the member)."""
        n = min(self._next_record, self.steps) - self.step
        if n <= 0:
            return False
        idx = None if self.sampler is None else self.sampler.take(n)
        if idx is not None:
            n = idx.shape[0]
        params = self.optimizer.param_groups[0]["params"]
        # with frozen members, the members still training as one smaller batch: each member's
        # batched arithmetic does not depend on the others, so this is still the general loop's step
        keep = None if self.optimizer.active_mask is None else self.active.nonzero().squeeze(1)
        ws = params if keep is None else [p.detach()[keep] for p in params]
        x, y, _ = self._train_task.batch_arrays(idx if idx is None or keep is None else idx[:, keep])
        s = self.step
        lrs, ridges = self.lr_at.span(s, n), self.ridge_at.span(s, n)
        taken = run_steps(ws, x, y, lrs, ridges, lambda: self._signal is not None)
        if keep is not None:
            with torch.no_grad():
                for p, w in zip(params, ws):
                    p.index_copy_(0, keep, w)
        if idx is not None:
            self.sampler.rewind(n - taken)
        if taken:
            g = self.optimizer.param_groups[0]
            g["lr"], g["ridge"] = lrs[taken - 1], ridges[taken - 1]
            self.step += taken
            if self.step >= self._next_record:
                self._record()
                self._schedule_next()
        return taken == n or self._signal is not None

    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        restore = self._install_signals()
        if self.record_thread:
            self._worker = RecordThread()
        try:
            for h in self.hooks:
                h.on_start(self)
            for h in self.hooks:
                h.cadence.last = self.steps
            self._last_record_at = time.monotonic()
            if self.resumed_from is None:
                self._record()
            else:  # the checkpoint's record is in the table already
                self._load_hook_states()
            self._schedule_next()
            while self.step < self.steps and not self._stop:
                self._defer = True
                if self._signal is not None:
                    raise Interrupted(f"signal {self._signal}")
                if self.fused and self._fused_segment():
                    continue
                g = self.optimizer.param_groups[0]
                g["lr"], g["ridge"] = self.lr_at(self.step), self.ridge_at(self.step)
                losses = self._loss()
                finite = torch.isfinite(losses)
                if not bool(finite.all()):
                    self.freeze(~finite.cpu())
                    if self._stop:
                        self.optimizer.factors = None  # this step is not taken
                        break
                    losses = torch.where(finite, losses, torch.zeros_like(losses))
                if self.optimizer.factors is None:  # autograd: torch.optim's step, with its hooks
                    self.optimizer.zero_grad(set_to_none=True)
                    losses.sum().backward()
                    self.optimizer.step()  # runs _after_step (a step post-hook)
                else:  # the factored step: no gradient tensors to clear, no wrapper to pay for
                    self.optimizer.factored_step()
                    self._after_step(self.optimizer, (), {})
            self._defer = False
            self.status = "diverged" if self._stop else "finished"
        except (KeyboardInterrupt, Interrupted):
            self.status = "interrupted"
        except BaseException:
            self.status = "failed"
            raise
        finally:
            # signals stay caught until the end is written: a second Ctrl-C must not cut it short
            self._defer = self._finishing = True
            try:
                self._finish()
            finally:
                if self._worker is not None:
                    self._worker.close()
                    self._worker = None
                restore()
        return TrainResult(self.status, self.step, time.perf_counter() - t0, list(self.diverged_at))

    def _load_hook_states(self) -> None:
        seen: dict = {}
        for h in self.hooks:
            name = type(h).__name__
            seen[name] = seen.get(name, 0) + 1
            key = name if seen[name] == 1 else f"{name}#{seen[name]}"
            if key in self._hook_states:
                h.load_state_dict(self._hook_states[key])

    def _finish(self) -> None:
        # The last state is recorded whatever ended the run, except an interrupt: a scheduler's
        # SIGTERM must not wait for a full record (minutes at large E); the run resumes from its last
        # checkpoint. One failing hook must not keep the others (table, checkpoint) from saving.
        errors = []
        try:  # at most `record_batch` records of a small network: quick, also after an interrupt
            if self._worker is not None:  # what the record thread holds first
                if self.status == "interrupted" and self.record_batch == 1:
                    self._worker.cancel()   # a large network's records that have not started: dropped
                self._worker.drain()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        try:
            self._dispatch()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        if self.status != "interrupted":
            try:
                self._record(final=True)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        for h in self.hooks:
            try:
                h.on_end(self, self.status)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors and self.status != "failed":
            self.status = "failed"
            raise errors[0]

    def _install_signals(self):
        """SIGINT and SIGTERM end the run as `interrupted`. Between steps the loop stops at the next
        step; during a record the record is abandoned at once; while the end is being written
        (table, last.pt) further signals are ignored, so a second Ctrl-C cannot leave a half-written
        run."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self._defer:
                self._signal = signum
                return
            raise Interrupted(f"signal {signum}") if signum != signal.SIGINT else KeyboardInterrupt

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore():
            for s, h in old.items():
                signal.signal(s, h)
        return restore


def _plain_square_batches(task) -> bool:
    """Whether the task hands out plain square-loss batches (x, y, None): those `run_steps` takes."""
    arrays = getattr(task, "batch_arrays", None)
    batch = arrays(None) if arrays is not None else None
    return batch is not None and len(batch) == 3 and batch[2] is None


def log_steps(last: int, per_decade: int) -> set[int]:
    """Log-spaced steps 1, ..., last with `per_decade` points per factor of 10."""
    if per_decade <= 0 or last < 1:
        return set()
    n = int(math.ceil(math.log10(last) * per_decade))
    return {min(last, int(round(10 ** (k / per_decade)))) for k in range(n + 1)}
