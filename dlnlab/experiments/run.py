"""Run an experiment from its config: the library call behind `dlnlab-train`.

From a notebook:

    from dlnlab import compose, run
    cfg = compose(["optim.steps=500", "model.ensemble=4"])
    summary = run(cfg, out_dir="runs/notebook")
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from dlnlab.experiments.build import build_hooks, build_net, build_trainer, prepare
from dlnlab.experiments.convex_losses import ConvexLossesSummary, run_convex_losses
from dlnlab.experiments.guards import clean_run_dir, threads_for
from dlnlab.experiments.jumps import JumpsSummary, run_experiment
from dlnlab.experiments.resume import (
    clear_after,
    newest_checkpoint,
    resume_config,
    run_state,
)
from dlnlab.linalg import chain, numerical_rank
from dlnlab.recording.base import Hook
from dlnlab.recording.staircase import format_staircase
from dlnlab.recording.trajectory import TrajectoryHook
from dlnlab.runfolder import (
    atomic_write,
    read_status,
    remove_tmp_files,
    write_status,
)


@dataclass
class RunSummary:
    """What one run did: status, steps, time, and per member the final loss, rank, label and divergence."""
    out_dir: str | None
    status: str
    steps: int
    wall_time: float
    final_loss: list
    final_rank: list
    diverged_at: list
    labels: list = field(default_factory=list)
    width: str = ""  # the width condition (Laurent & von Brecht), one line
    staircase: pd.DataFrame | None = None  # square loss: one row per plateau visit per member

    def __str__(self) -> str:
        lines = [f"status      {self.status} after {self.steps} steps in {self.wall_time:.1f} s"]
        if len(self.final_loss) <= 1:
            lines += [f"final loss  {', '.join(f'{v:.6g}' for v in self.final_loss)}",
                      f"final rank  {', '.join(str(v) for v in self.final_rank)}"]
            if self.labels:
                lines.append(f"final label {', '.join(self.labels)}")
        else:
            lines += _ensemble_lines(self.final_loss, self.final_rank, self.labels)
        if self.width:
            lines.append(f"width       {self.width}")
        div = [k for k, d in enumerate(self.diverged_at) if d is not None]
        if div:
            shown = ", ".join(map(str, div[:10])) + (", ..." if len(div) > 10 else "")
            lines.append(f"diverged    {len(div)} of {len(self.diverged_at)} members ({shown})")
        if self.staircase is not None:
            lines.append(format_staircase(self.staircase))
        if self.out_dir:
            lines.append(f"outputs     {self.out_dir}  (tensorboard --logdir {self.out_dir}; "
                         f"figure: dlnlab-report {self.out_dir})")
        return "\n".join(lines)


def _quartiles(values) -> str:
    q1, q2, q3 = np.quantile(values, [0.25, 0.5, 0.75])
    return f"median {q2:.6g}  quartiles [{q1:.6g}, {q3:.6g}]  range [{min(values):.6g}, {max(values):.6g}]"


def _ensemble_lines(loss: list, rank: list, labels: list) -> list[str]:
    """An ensemble's final values: counts, median and quartiles, label counts (not every member)."""
    E = len(loss)
    ok = [float(v) for v in loss if v == v]  # NaN: diverged
    lines = [f"members     {E} ({E - len(ok)} diverged)" if len(ok) < E else f"members     {E}",
             f"final loss  {_quartiles(ok)}" if ok else "final loss  (every member diverged)"]
    ranks = [r for r in rank if r is not None]
    if ranks:
        counts = Counter(ranks)
        q1, q2, q3 = (int(q) for q in np.quantile(ranks, [0.25, 0.5, 0.75], method="lower"))
        lines.append(f"final rank  median {q2}  quartiles [{q1}, {q3}]  counts "
                     + ", ".join(f"{r}: {counts[r]}" for r in sorted(counts)))
    if labels:
        counts = Counter(str(x).split(" (")[0] for x in labels)
        lines.append("final label " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    return lines


class Summary(Protocol):
    """What `dlnlab-train` reads of any run or experiment: its folder, status and time, and its text."""
    out_dir: str | None
    status: str
    wall_time: float

    def __str__(self) -> str:
        """The lines the CLI prints."""


def run_jumps(cfg, task, out_dir=None, extra_hooks: Sequence[Hook] = (), resume: bool = False) -> JumpsSummary:
    """The rank-jump phases of a `jumps.enabled` config (dlnlab.experiments.jumps)."""
    return run_experiment(cfg, out_dir, extra_hooks, task, resume=resume)


def run_table_b3(cfg, task, out_dir=None, extra_hooks: Sequence[Hook] = (),
                 resume: bool = False) -> ConvexLossesSummary:
    """The table B.3 grid of a `convex_losses.enabled` config (dlnlab.experiments.convex_losses; it makes
    its own data, trains without hooks and does not resume)."""
    return run_convex_losses(cfg, out_dir)


# The experiments a config may enable instead of one run: `<key>.enabled` (checked in this order).
EXPERIMENTS: dict[str, Callable[..., Summary]] = {"convex_losses": run_table_b3, "jumps": run_jumps}


def experiment_of(cfg) -> str | None:
    """The experiment `cfg` enables (a key of EXPERIMENTS), None for one ordinary run."""
    for key in EXPERIMENTS:
        section = getattr(cfg, key, None)
        if section is not None and section.enabled:
            return key
    return None


def run(cfg=None, out_dir=None, extra_hooks: Sequence[Hook] = (), task=None, resume=None) -> Summary:
    """Validate `cfg`, build its task, then train one run (`run_one`, a RunSummary) or the experiment it
    enables (EXPERIMENTS: a JumpsSummary for `jumps.enabled`, a ConvexLossesSummary for
    `convex_losses.enabled`).

    `resume` (or `cfg.resume`): a run folder to continue from its newest checkpoint, with the config
    saved there (`cfg` may then be None; options of `cfg` that would change the trajectory raise
    ConfigError; pass the same `extra_hooks` as the first time). A run that ended is not run again;
    a rank-jump experiment resumes from its folder (phases that ended are not run again)."""
    if resume is None and cfg is not None:
        resume = getattr(cfg, "resume", None)
    if resume:
        cfg = resume_config(cfg, resume)
        out_dir = resume
    task = task or prepare(cfg)
    if threads_for(cfg):
        torch.set_num_threads(threads_for(cfg))
    key = experiment_of(cfg)
    if key is not None:
        return EXPERIMENTS[key](cfg, task, out_dir, extra_hooks, resume=bool(resume))
    return run_one(cfg, task, out_dir, extra_hooks, resume)


def run_one(cfg, task, out_dir=None, extra_hooks: Sequence[Hook] = (), resume=None) -> RunSummary:
    """Train one run of a validated `cfg` on `task` (`resume`: its folder, see `run`); a failure after the
    start marks the folder failed and raises RunFailed."""
    ck = None
    net = build_net(cfg, task)
    if resume:
        if run_state(resume) == "ended":
            return ended_summary(cfg, task, net, resume)
        ck = newest_checkpoint(resume)
        if ck is None:
            clean_run_dir(resume)  # no checkpoint yet: start over in the folder
        else:
            clear_after(resume, int(ck["step"]))
    t0 = time.perf_counter()
    try:
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            clean_run_dir(out_dir, resume=bool(resume))
        hooks = build_hooks(cfg, out_dir, extra_hooks)
        trainer = build_trainer(cfg, task, net, hooks, out_dir)
        if ck is not None:
            trainer.resume(ck)
        result = trainer.run()
    except Exception as e:  # disk full, a hook that failed...: the folder says so in one line
        reason = f"{type(e).__name__}: {_first_line(e)}"
        if out_dir is not None:
            try:
                mark_failed(out_dir, reason)
            except OSError:
                pass
        raise RunFailed(reason) from e
    finally:
        if out_dir is not None:
            remove_tmp_files(out_dir)
    width = trainer.info.get("width_message", "")
    loss, ranks = final_loss_and_rank(cfg, task, net, trainer.active)
    return RunSummary(str(out_dir) if out_dir else None, result.status, result.step,
                      time.perf_counter() - t0, loss, ranks,
                      result.diverged_at, next((h.latest for h in hooks if hasattr(h, "latest")), []), width,
                      write_staircase(hooks, out_dir))


def write_staircase(hooks: Sequence[Hook], out_dir) -> pd.DataFrame | None:
    """The staircase of a square-loss run, as the TrajectoryHook declared it at the end (its public
    `staircase`, LAB units), saved as `staircase.csv` in the run folder; None when no such hook
    labelled anything."""
    rows = next((h.staircase for h in hooks if isinstance(h, TrajectoryHook)), None)
    if rows is None:
        return None
    if out_dir is not None:
        atomic_write(Path(out_dir) / "staircase.csv", rows.to_csv(index=False))
    return rows


def ended_summary(cfg, task, net, run_dir) -> RunSummary:
    """The summary of a run that had ended already (resume of a finished run): from its last.pt."""
    status = read_status(run_dir)
    active = None
    try:
        ck = torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)
        with torch.no_grad():
            for p, w in zip(net.weights, ck["weights"]):
                p.copy_(w)
        active = ck["active"]
    except (OSError, RuntimeError, KeyError):
        pass
    loss, ranks = final_loss_and_rank(cfg, task, net, active)
    div = status.get("diverged_members") or {}
    return RunSummary(str(run_dir), status.get("status", "finished"), int(status.get("step", 0)), 0.0, loss, ranks,
                      [div.get(str(k)) for k in range(net.E)], [], "nothing to resume: the run had ended")


def final_loss_and_rank(cfg, task, net, active=None) -> tuple[list, list]:
    """Per member: the loss and end-to-end rank of the final weights; NaN and None for a member
    that diverged (frozen, or a non-finite product or loss), which the SVD must never see."""
    with torch.no_grad():
        weights = [w.detach().cpu() for w in net.weights]  # the CPU task (config `device`)
        loss = task.loss(weights).double()
        A = chain(weights, len(weights), 1).double()
    ok = torch.isfinite(A).flatten(1).all(1) & torch.isfinite(loss)
    if active is not None:
        ok &= active
    s = torch.linalg.svdvals(torch.where(ok.view(-1, 1, 1), A, 0.0))
    floor = cfg.record.rank_floor
    if floor is None:
        floor = float(torch.linalg.matrix_norm(task.target(), ord=2))
    ranks = numerical_rank(s, cfg.record.rank_rtol, floor).tolist()
    return ([float(v) if k else float("nan") for v, k in zip(loss.tolist(), ok.tolist())],
            [r if k else None for r, k in zip(ranks, ok.tolist())])


class RunFailed(RuntimeError):
    """A run that failed after it started (disk full, a failing hook); its status.json says
    `failed` with the same one-line message, and what it flushed stays readable."""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def mark_failed(out_dir, message: str) -> None:
    """Write status `failed` with this one-line message into the run folder."""
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_status(out_dir, status="failed", message=message, ended=time.time())
