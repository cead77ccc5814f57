"""The training loop: GD or SGD on loss + lambda * sum_h ||W_h||_F^2, with schedules and hooks.

The loop knows no metric. After every optimizer step its `RecordDispatcher`
(dlnlab/recording/dispatch.py) makes the records due and hands them to the hooks; they compute,
store and show what they want. The schedules are the one source of each step's learning rate and
lambda. Member k of an ensemble draws its SGD samples from its own generator seeded by `seed + k`,
so it trains exactly like a single network with that seed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from dlnlab.model import DeepLinearNet
from dlnlab.recording.base import Cadence, Hook
from dlnlab.recording.dispatch import RecordDispatcher, RecordSettings
from dlnlab.recording.signals import Interrupted, SignalGuard
from dlnlab.steps import (
    IndexSampler,
    RidgeSGD,
    Schedule,
    dln_batch_factors,
    run_steps,
    sampler_generator,
)

__all__ = [
    # the loop
    "Trainer", "TrainResult", "STATUSES", "Interrupted", "RecordSettings", "as_schedule",
    # the step's parts (dlnlab.steps), for callers that import them from here
    "Schedule", "IndexSampler", "RidgeSGD", "dln_batch_factors", "run_steps", "sampler_generator",
]


STATUSES = ("running", "finished", "diverged", "interrupted", "failed")


@dataclass
class TrainResult:
    """How a run ended: its status (one of STATUSES), last step, seconds, and per member the step
    it diverged at (None: it did not)."""
    status: str
    step: int
    wall_time: float
    diverged_at: list


def as_schedule(value: float | Schedule) -> Schedule:
    """A schedule as given, or a number as a constant schedule."""
    return value if isinstance(value, Schedule) else Schedule(value)


class Trainer:
    """Runs `steps` optimizer steps of GD (`optim="gd"`) or SGD on `task` and drives `hooks`.

    `lr` and `ridge` (lambda) are numbers or `Schedule`s, the only source of each step's values.
    Hooks see the trainer itself as their context: `net`, `task`, `optimizer`, `step`, `steps`,
    `lr`, `ridge`, `active` (members still training), `config`, `out_dir`, `info` (facts about the
    run that status.json and the hparams carry, e.g. the width condition). Records may reach them
    later than their step: in batches and, for hooks that declare `background`, on a record thread
    beside the loop (`recording`: a `RecordSettings`; docs/architecture.md).
    """

    def __init__(self, net: DeepLinearNet, task, *, lr: float | Schedule, steps: int = 1000,
                 ridge: float | Schedule = 0.0, optim: str = "gd", batch_size: int = 1, seed: int = 0,
                 hooks: Sequence[Hook] = (), cadence: Cadence | None = None,
                 recording: RecordSettings | None = None, config: dict | None = None, out_dir=None,
                 info: dict | None = None, device: str | torch.device = "cpu", fused: bool = True):
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
        self.lr_at, self.ridge_at = as_schedule(lr), as_schedule(ridge)
        self.config, self.out_dir = config or {}, out_dir
        self.info = dict(info or {})  # facts about the run (width condition...) for status.json and hparams
        self.sampler = IndexSampler(task.n_samples, batch_size, seed, net.E) if optim == "sgd" else None
        # torch.optim wants values in its param group: each step sets them from the schedules
        self.optimizer = RidgeSGD(net.parameters(), lr=self.lr_at(0), ridge=self.ridge_at(0))
        self.optimizer.register_step_post_hook(self._after_step)
        self.step = 0
        self._at = 0  # the step whose lr and lambda the last update used (or was about to use)
        self.active = torch.ones(net.E, dtype=torch.bool)
        self.diverged_at: list = [None] * net.E
        self.status = "running"
        self.resumed_from: int | None = None  # the step of the checkpoint this run resumed from
        self._stop = False
        # the fast path between records (dlnlab.steps.run_steps): the square loss's factored step on
        # the CPU; the same weights bit for bit as the general loop
        self.fused = bool(fused) and self.device.type == "cpu" and _plain_square_batches(task)
        self.signals = SignalGuard()
        params = net.E * sum(w[0].numel() for w in net.weights)
        self.records = RecordDispatcher(self, hooks, cadence or Cadence(every=100),
                                        recording or RecordSettings(), params,
                                        self.device.type == "cpu", self.signals)
        self.hooks = self.records.hooks

    # -- state seen by hooks -------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate of the last step (step 0's before the first), from the schedule."""
        return self.lr_at(self._at)

    @property
    def ridge(self) -> float:
        """Lambda of the last step (step 0's before the first), from the schedule."""
        return self.ridge_at(self._at)

    @property
    def weights(self) -> list[torch.Tensor]:
        """W_1..W_H, each (E, d_h, d_{h-1}), detached and on the CPU."""
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
        """{class name: state_dict()} of every hook that holds state, for the checkpoint."""
        return self.records.hook_states()

    def state(self) -> dict:
        """The loop's own state at this step (the checkpoint adds weights, hooks and config)."""
        return {"step": self.step,
                "sampler": self.sampler.state_dict() if self.sampler is not None else None,
                "seed": self.seed, "active": self.active.clone(),
                "diverged_at": [-1 if d is None else int(d) for d in self.diverged_at]}

    def resume(self, ck: dict) -> None:
        """Continue from a checkpoint (`step_*.pt`): weights, sampler, member status and the hooks'
        states; the record at its step is not made again. Call before `run`. A checkpoint's
        `optimizer` entry (written before the schedules were the one source) holds nothing else."""
        with torch.no_grad():
            for p, w in zip(self.net.weights, ck["weights"]):
                p.copy_(w)
        if self.sampler is not None:
            self.sampler.load_state_dict(ck["sampler"])
        self.step = self.resumed_from = int(ck["step"])
        self._at = max(self.step - 1, 0)
        self.active = ck["active"].clone().bool()
        self.diverged_at = [None if d < 0 else int(d) for d in ck["diverged_at"]]
        if not bool(self.active.all()):
            self._mask_frozen()
        self._stop = not bool(self.active.any())
        self.records.states = dict(ck.get("hooks") or {})

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to `steps`, to the divergence of every member or to a signal, driving the hooks."""
        t0 = time.perf_counter()
        with self.signals:
            try:
                self.records.start(resumed=self.resumed_from is not None)
                while self.step < self.steps and not self._stop:
                    self.signals.defer = True  # between steps a signal stops the loop at the next one
                    self.signals.check()
                    if not (self.fused and self._fused_segment()):
                        self._general_step()
                self.signals.defer = False
                self.status = "diverged" if self._stop else "finished"
            except (KeyboardInterrupt, Interrupted):
                self.status = "interrupted"
            except BaseException:
                self.status = "failed"
                raise
            finally:
                self._finish()
        return TrainResult(self.status, self.step, time.perf_counter() - t0, list(self.diverged_at))

    def _finish(self) -> None:
        # signals stay caught until the end is written: a second Ctrl-C must not cut it short
        self.signals.defer = True
        try:
            errors = self.records.finish(self.status)
            if errors and self.status != "failed":
                self.status = "failed"
                raise errors[0]
        finally:
            self.records.close()

    def _after_step(self, *_) -> None:
        self.step += 1
        if self.step >= self.records.next_due:
            self.records.record_due()

    def _general_step(self) -> None:
        """One step of any task and loss; a member whose loss is not finite is frozen first."""
        self._at = s = self.step
        g = self.optimizer.param_groups[0]
        g["lr"], g["ridge"] = self.lr_at(s), self.ridge_at(s)
        losses = self._loss()
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            self.freeze(~finite.cpu())
            if self._stop:
                self.optimizer.factors = None  # this step is not taken
                return
            losses = torch.where(finite, losses, torch.zeros_like(losses))
        if self.optimizer.factors is None:  # autograd: torch.optim's step, with its hooks
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            self.optimizer.step()  # runs _after_step (a step post-hook)
        else:  # the factored step: no gradient tensors to clear, no wrapper to pay for
            self.optimizer.factored_step()
            self._after_step()

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
        n = min(self.records.next_due, self.steps) - self.step
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
        taken = run_steps(ws, x, y, self.lr_at.span(s, n), self.ridge_at.span(s, n),
                          lambda: self.signals.signal is not None)
        if keep is not None:
            with torch.no_grad():
                for p, w in zip(params, ws):
                    p.index_copy_(0, keep, w)
        if idx is not None:
            self.sampler.rewind(n - taken)
        if taken:
            self._at, self.step = s + taken - 1, s + taken
            if self.step >= self.records.next_due:
                self.records.record_due()
        return taken == n or self.signals.signal is not None


def _plain_square_batches(task) -> bool:
    """Whether the task hands out plain square-loss batches (x, y, None): those `run_steps` takes."""
    arrays = getattr(task, "batch_arrays", None)
    batch = arrays(None) if arrays is not None else None
    return batch is not None and len(batch) == 3 and batch[2] is None
