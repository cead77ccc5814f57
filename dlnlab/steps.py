"""What one training step is made of: its batch, its gradient in factored form, its update.

    Schedule            the learning rate or lambda of each step: piecewise constant, optionally periodic
    IndexSampler        minibatch indices, one generator per member (member k trains like seed + k)
    dln_batch_factors   loss and the factored gradient dL/dW_h = deltas_h^T acts_h, no autograd
    RidgeSGD            theta <- theta - lr (grad + 2 lambda theta), from p.grad or from the factors
    run_steps           the plain square-loss step in a tight loop: the trainer's fast path

A small network's step is bound by per-call dispatch, not arithmetic: the general loop pays for the
sampler, the task's batch, the schedule and the optimizer once per step. Between two records
nothing of that changes shape, so `run_steps` takes the whole segment's batches at once and runs
only the step's own tensor operations, with the arithmetic of `dln_batch_factors` followed by
`RidgeSGD`'s factored update bit for bit (tests/test_train.py): torch.bmm called directly is the
kernel `@` reaches for these shapes, without `@`'s broadcasting logic on every call (half the cost
of a one-network step). torch.mm would be as fast but rounds differently at small shapes, and member
k of an ensemble must train exactly like the network seeded k. On the CPU the loop is compiled by
TorchScript, which calls the same kernels in the same order without Python's cost per call (the
other half); the plain Python loop is the same function, run where TorchScript is not available.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, List, Sequence

import numpy as np
import torch

__all__ = ["Schedule", "sampler_generator", "IndexSampler", "dln_batch_factors", "RidgeSGD", "run_steps"]


class Schedule:
    """Piecewise-constant value: `values[k]` on [milestones[k-1], milestones[k]), optionally periodic."""

    def __init__(self, base: float, milestones: Sequence[int] = (), values: Sequence[float] = (),
                 cycle: int = 0):
        self.milestones = [int(m) for m in milestones]
        self.values = [float(v) for v in values] or [float(base)] * (len(self.milestones) + 1)
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError(f"a schedule needs len(milestones) + 1 values, got {len(self.values)} "
                             f"for milestones {self.milestones}")
        self.cycle = int(cycle)

    def __call__(self, step: int) -> float:
        if self.cycle:
            step %= self.cycle
        k = 0
        while k < len(self.milestones) and step >= self.milestones[k]:
            k += 1
        return self.values[k]

    def span(self, start: int, n: int) -> list[float]:
        """[self(t) for t in range(start, start + n)], a constant piece at a time (the fused loop
        takes a segment's values at once: one call per step costs a few percent of a small step)."""
        out: list[float] = []
        t, end = start, start + n
        while t < end:
            local = t % self.cycle if self.cycle else t
            nxt = next((m for m in self.milestones if m > local), self.cycle or end - t + local)
            stop = min(end, t - local + nxt)
            out += [self(t)] * (stop - t)
            t = stop
        return out


def sampler_generator(seed: int, member: int) -> torch.Generator:
    """SGD's sample stream of member k, independent of its initialisation stream."""
    state = np.random.SeedSequence([int(seed) + int(member), 0x5D6]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class IndexSampler:
    """Minibatch indices drawn uniformly with replacement, one generator per member.

    Draws come in chunks of `chunk` steps per member, so the per-step cost does not grow with E
    and member k's stream does not depend on E.
    """

    def __init__(self, n: int, batch_size: int, seed: int, ensemble: int, chunk: int = 1024):
        self.n, self.batch, self.chunk = int(n), int(batch_size), int(chunk)
        self.gens = [sampler_generator(seed, k) for k in range(ensemble)]
        self.buf = None
        self.pos = chunk

    def next(self) -> torch.Tensor:
        """The next minibatch of every member: (E, batch_size) sample indices."""
        return self.take(1)[0]

    def take(self, n: int) -> torch.Tensor:
        """The next k draws at once, (k, E, B) with 1 <= k <= n: the stream of k calls of `next`
        (k falls short of n at the end of a chunk)."""
        if self.pos == self.chunk:
            self.buf = torch.stack([torch.randint(self.n, (self.chunk, self.batch), generator=g)
                                    for g in self.gens], dim=1)  # (chunk, E, B)
            self.pos = 0
        k = min(int(n), self.chunk - self.pos)
        idx = self.buf[self.pos:self.pos + k]
        self.pos += k
        return idx

    def rewind(self, k: int) -> None:
        """Give back the last k draws of the last `take` (they come again next)."""
        self.pos -= int(k)

    def state_dict(self) -> dict:
        """The generators' states and the unread rest of the drawn buffer, for a checkpoint."""
        return {"gens": [g.get_state() for g in self.gens], "buf": self.buf, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        """Take back what `state_dict` returned: the next draws are those of the run it came from."""
        for g, s in zip(self.gens, state["gens"]):
            g.set_state(s)
        self.buf, self.pos = state["buf"], int(state["pos"])


def dln_batch_factors(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      rows: torch.Tensor | None = None, loss=None):
    """Loss and the gradient of a deep linear network on a batch, in factored form.

    weights: [W_1..W_H], each (E, d_h, d_{h-1}); x: (E, B, d_0) inputs, or (B, d_0) shared by every
    member (full batch); y: (E, B, d_H) or (B, d_H) targets likewise, or with `rows` (E, B) the
    target value (E, B) of output coordinate rows[e, b] only
    (matrix completion: x one-hot columns, rows the observed rows). The loss per member is the mean
    over the batch of the squared error (the tasks' convention), or with `loss` (a dlnlab.losses.Loss
    with a closed-form `grad_out`; y its canonical targets, (E, B, 1) with `rows`) `loss.value` of the
    outputs, whose per-sample gradient `loss.grad_out` replaces the square residual 2 (out - y) / B.
    Returns (losses (E,), acts, deltas)
    with dL/dW_h = deltas[h]^T @ acts[h] (0-based h): the activations a_{h-1} entering layer h and the
    back-propagated errors at its output. A gradient of rank <= B never has to be formed."""
    acts = [x]
    for w in weights[:-1]:
        acts.append(acts[-1] @ w.transpose(-1, -2))
    out = acts[-1] @ weights[-1].transpose(-1, -2)
    B = out.shape[-2]
    if loss is not None:
        o = out if rows is None else out.gather(-1, rows.unsqueeze(-1))
        losses = loss.value(o, y)
        g = loss.grad_out(o, y)
        delta = g if rows is None else torch.zeros_like(out).scatter_(-1, rows.unsqueeze(-1), g)
    elif rows is None:
        resid = out - y
        losses = resid.pow(2).sum(-1).mean(-1)
        delta = resid * (2.0 / B)
    else:
        resid = out.gather(-1, rows.unsqueeze(-1)).squeeze(-1) - y
        losses = resid.pow(2).mean(-1)
        delta = torch.zeros_like(out).scatter_(-1, rows.unsqueeze(-1), (resid * (2.0 / B)).unsqueeze(-1))
    deltas = [delta]
    for w in weights[:0:-1]:  # W_H .. W_2: the error at each hidden layer, from the old weights
        deltas.append(deltas[-1] @ w)
    return losses, acts, deltas[::-1]


class RidgeSGD(torch.optim.Optimizer):
    """theta <- theta - lr * (grad + 2 * ridge * theta), skipping frozen (diverged) members.

    Ridge is applied here rather than in the loss so a step costs no extra autograd work; it is
    the exact gradient of lambda * sum_h ||W_h||_F^2.

    Two ways to give it the gradient: `p.grad` (autograd, any loss), or `factors` = (acts, deltas)
    from `dln_batch_factors`: then W_h <- (1 - 2 lr lambda) W_h - lr deltas[h]^T acts[h] is one
    in-place baddbmm per layer, with no gradient tensor at all (several times faster for ensembles,
    whose steps are bound by memory traffic).
    """

    def __init__(self, params, lr: float, ridge: float = 0.0):
        super().__init__(params, {"lr": lr, "ridge": ridge})
        self.active_mask: torch.Tensor | None = None  # (E, 1, 1), None while every member trains
        self.factors: tuple | None = None  # (acts, deltas) for the next step, consumed by it

    @torch.no_grad()
    def step(self, closure=None):
        self._update()

    @torch.no_grad()
    def factored_step(self) -> None:
        """The step of `factors` without torch.optim's per-call wrapper (profiler records, step
        hooks): the same in-place updates, bit for bit; the trainer's loop then does its post-step
        work itself. A one-network step is bound by per-call dispatch, not arithmetic."""
        self._update()

    def _update(self) -> None:
        factors, self.factors = self.factors, None
        if factors is not None and len(self.param_groups) != 1:
            raise ValueError("RidgeSGD: factored steps need the layers W_1..W_H as one parameter group")
        for group in self.param_groups:
            lr, ridge = group["lr"], group["ridge"]
            for h, p in enumerate(group["params"]):
                if factors is not None:
                    self._factored_update(p, factors[1][h], factors[0][h], lr, ridge)
                    continue
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=2 * ridge) if ridge else p.grad
                if self.active_mask is not None:  # where, not a product: NaN * 0 would be NaN
                    d = torch.where(self.active_mask.bool(), d, 0.0)
                p.sub_(d, alpha=lr)

    def _factored_update(self, p, delta, act, lr: float, ridge: float) -> None:
        act = act.expand(p.shape[0], *act.shape[-2:])  # full batch: the same x for every member
        beta = 1.0 - 2.0 * lr * ridge
        if self.active_mask is None:
            p.baddbmm_(delta.transpose(-1, -2), act, beta=beta, alpha=-lr)
        else:  # frozen members keep their weights, even NaN ones that would poison the product
            new = torch.baddbmm(p, delta.transpose(-1, -2), act, beta=beta, alpha=-lr)
            p.copy_(torch.where(self.active_mask.bool(), new, p))


def _loop(ws: List[torch.Tensor], x: torch.Tensor, y: torch.Tensor, lrs: List[float], ridges: List[float],
          per_step: bool) -> int:
    """`run_steps`' steps (TorchScript-compatible, and plain Python where TorchScript is not there)."""
    H = len(ws)
    wts = [w.transpose(-1, -2) for w in ws]
    for t in range(len(lrs)):
        xt, yt = x, y
        if per_step:
            xt, yt = x[t], y[t]
        acts = [xt]
        for h in range(H - 1):
            acts.append(torch.bmm(acts[-1], wts[h]))
        resid = torch.bmm(acts[-1], wts[H - 1]) - yt
        # one sum for the divergence test: a member's loss is finite iff this sum is (up to an
        # overflow of the sum itself, which only sends the step to the general loop)
        if not math.isfinite(float(resid.pow(2).sum())):
            return t
        deltas = [resid * (2.0 / resid.shape[-2])]
        for h in range(H - 1, 0, -1):
            deltas.append(torch.bmm(deltas[-1], ws[h]))
        lr = lrs[t]
        beta = 1.0 - 2.0 * lr * ridges[t]
        for h in range(H):
            ws[h].baddbmm_(deltas[H - 1 - h].transpose(-1, -2), acts[h], beta=beta, alpha=-lr)
    return len(lrs)


@functools.cache
def _scripted():
    """`_loop` compiled by TorchScript, or None where that fails (no TorchScript in this torch, or
    no source files). TorchScript runs the same ATen kernels in the same order without Python's
    per-call cost (about half of a one-network step), and on the CPU it fuses nothing, so the
    weights are bit for bit those of the Python loop (tests/test_train.py). It is deprecated in
    favour of torch.compile, whose fused kernels round differently."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(_loop)
    except Exception:  # noqa: BLE001
        return None


STEPS_PER_CALL = 64  # steps between two checks of `interrupted`


@torch.no_grad()
def run_steps(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              lrs: Sequence[float], ridges: Sequence[float],
              interrupted: Callable[[], bool] | None = None, script: bool = True) -> int:
    """Take len(lrs) square-loss steps in place, stopping early where the general loop must decide.

    Args:
        weights: [W_1..W_H], each (E, d_h, d_{h-1}); updated in place.
        x, y: the steps' batches (n, E, B, d_0) and (n, E, B, d_H), or one full batch (m, d_0),
            (m, d_H) shared by every member and step (gradient descent).
        lrs, ridges: the learning rate and lambda of each step.
        interrupted: asked every STEPS_PER_CALL steps; True stops the loop there.
        script: the TorchScript loop on the CPU where there is one (the same numbers, faster).

    Returns:
        The number of steps taken. It is short of len(lrs) when `interrupted` said so, or before a
        step whose batch loss is not finite for some member: the caller's general step freezes the
        diverged members there.
    """
    per_step = x.ndim == 4
    ws = list(weights)
    if not per_step:  # the full batch, as the batched ops' broadcasting would expand it
        x = x.expand(ws[0].shape[0], *x.shape)
    loop = (_scripted() if script and x.device.type == "cpu" else None) or _loop
    lrs, ridges = [float(v) for v in lrs], [float(v) for v in ridges]
    done = 0
    while done < len(lrs) and not (interrupted is not None and interrupted()):
        end = min(done + STEPS_PER_CALL, len(lrs))
        xs, ys = (x[done:end], y[done:end]) if per_step else (x, y)
        done += loop(ws, xs, ys, lrs[done:end], ridges[done:end], per_step)
        if done < end:  # the next step's loss is not finite for some member: the general loop's
            break
    return done
