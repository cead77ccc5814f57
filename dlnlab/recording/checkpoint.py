"""Checkpoints: weights, optimiser, sampler and member status, written atomically.
"""
from __future__ import annotations

import copy
import os

import torch

from dlnlab.linalg import finite_members
from dlnlab.recording.base import Hook, Record
from dlnlab.runfolder import LAST_CHECKPOINT, save_torch, step_checkpoint


class CheckpointHook(Hook):
    """Saves weights, optimizer state, step, RNG state, member status and the resolved config at its
    cadence and at the end (`last.pt`), each file written atomically and loadable with
    `torch.load(path, weights_only=True)`.

    It sees every record (the trainer's cadence) and writes `step_*.pt` at the records the trainer
    flags `rec.checkpoint` (`RecordSettings.checkpoint_every`). A step file holds, besides the
    weights, the trainer's state and every hook's `state_dict()` (`hooks`, by class name): what
    `Trainer.resume` needs to go on bitwise. `last.pt` holds the last good state of every
    member: a member whose weights or loss stopped being finite (diverged) is saved as it was at
    its last record with finite weights and loss (`good_step`, per member), so a diverged run leaves
    loadable, meaningful weights behind."""
    background = True

    def __init__(self, directory):
        self.dir = str(directory)
        self._good: list | None = None  # per layer (E, d_h, d_{h-1}): each member's last good weights
        self._good_step: torch.Tensor | None = None  # (E,) the step of those weights, -1: none yet

    def state(self, trainer, step: int, weights, good_step=None, hooks: bool = False,
              loop_state: dict | None = None) -> dict:
        """What a checkpoint file holds; `loop_state`: the trainer's state copied at the record's step
        (a record thread writes the file later), else the trainer's live state."""
        state = dict(loop_state) if loop_state is not None else (trainer.state() if hasattr(trainer, "state") else {})
        state.update({
            "step": step,
            "dims": list(trainer.net.dims),
            "weights": [w.detach().clone() for w in weights],
            "good_step": (good_step if good_step is not None
                          else torch.full((trainer.net.E,), step, dtype=torch.long)),
            "config": copy.deepcopy(trainer.config),
        })
        if hooks:  # every hook's state (this one's included), so that `Trainer.resume` goes on exactly
            state["hooks"] = trainer.hook_states() if hasattr(trainer, "hook_states") else {}
        return state

    def state_dict(self) -> dict | None:
        """Each member's last good weights and their steps (None before the first record)."""
        if self._good is None:
            return None
        return {"good": [g.clone() for g in self._good], "good_step": self._good_step.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Take back what `state_dict` returned (a resumed run)."""
        self._good = [g.clone() for g in state["good"]]
        self._good_step = state["good_step"].clone()

    def on_start(self, trainer) -> None:
        """Create the checkpoint folder."""
        os.makedirs(self.dir, exist_ok=True)

    def _remember(self, rec: Record) -> None:
        if "loss" in rec.metrics:  # NaN/inf layers or an overflowing product: the loss tells
            ok = torch.isfinite(rec.metrics["loss"])
        else:
            ok = finite_members(rec.weights)
        self._ok = ok
        if self._good is None:
            self._good = [w.clone() for w in rec.weights]
            self._good_step = torch.where(ok, rec.step, -1)
        elif bool(ok.all()):  # the usual case: one plain copy per layer
            for g, w in zip(self._good, rec.weights):
                g.copy_(w)
            self._good_step.fill_(rec.step)
        elif bool(ok.any()):
            for g, w in zip(self._good, rec.weights):
                g[ok] = w[ok]
            self._good_step[ok] = rec.step

    def immediate(self, rec: Record) -> bool:
        """A checkpoint record without the trainer's state copied in: written at its own step."""
        return bool(rec.checkpoint and rec.loop_state is None)

    def on_record(self, trainer, rec: Record) -> None:
        """Remember the good members; at a checkpoint record, write `step_*.pt`."""
        self._remember(rec)
        if rec.checkpoint and not rec.final:
            good = torch.where(self._ok, rec.step, -1)  # -1: that member's weights here are not good
            save_torch(self.state(trainer, rec.step, rec.weights, good, hooks=True, loop_state=rec.loop_state),
                       os.path.join(self.dir, step_checkpoint(rec.step)))

    def on_end(self, trainer, status: str) -> None:
        """Write `last.pt`: every member's last good state."""
        if self._good is None:
            return
        if status == "interrupted" and int(self._good_step.max()) < trainer.step:
            # no final record after an interrupt: the weights at its step, where they are finite
            ws = trainer.weights
            ok = trainer.active & finite_members(ws)
            for g, w in zip(self._good, ws):
                g[ok] = w[ok]
            self._good_step[ok] = trainer.step
        have = self._good_step >= 0
        if not bool(have.any()):
            return
        weights = [torch.where(have.view(-1, 1, 1), g, w) for g, w in zip(self._good, trainer.weights)]
        step = int(self._good_step.max())
        save_torch(self.state(trainer, step, weights, self._good_step.clone()),
                   os.path.join(self.dir, LAST_CHECKPOINT))

