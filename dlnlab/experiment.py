"""Build a run from a config and run it: the library code behind `dlnlab-train`.

From a notebook:

    from dlnlab.experiment import compose, run
    cfg = compose(["optim.steps=500", "model.ensemble=4"])
    summary = run(cfg, out_dir="runs/notebook")
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import OmegaConf

from dlnlab import config as C
from dlnlab import spectra, tasks
from dlnlab.hooks import Cadence, CheckpointHook, Hook, MetricsHook, ProgressHook, TensorBoardHook
from dlnlab.model import DeepLinearNet
from dlnlab.runs import TableHook, write_status
from dlnlab.train import Schedule, Trainer


def conf_dir() -> str:
    """The folder of Hydra configs, shipped inside the package as `dlnlab.conf` (the top-level
    conf/ folder of a source checkout when the package is imported from there uninstalled)."""
    from importlib.resources import files

    try:
        return str(files("dlnlab.conf"))
    except ModuleNotFoundError:
        return str(Path(__file__).resolve().parent.parent / "conf")


def compose(overrides: Sequence[str] = (), config_name: str = "config"):
    """The composed, typed config for `overrides` (what `dlnlab-train OVERRIDES` would run)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    C.register()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def build_task(tc):
    """The task of a task config (see conf/task/)."""
    if tc.kind == "regression":
        return tasks.make_regression(tc.m, tc.d_x, tc.d_y, list(tc.spectrum), tc.noise, tc.whiten,
                                     tc.seed, tc.eig_gap_rtol)
    if tc.kind == "regression_file":
        return tasks.load_regression(tc.path, tc.x_path, tc.y_path, tc.eig_gap_rtol)
    if tc.kind == "matrix_completion":
        return tasks.make_completion(tc.n1, tc.n2, tc.rank, list(tc.singular_values), tc.noise,
                                     tc.observed_fraction, tc.observed_count, tc.seed)
    raise C.ConfigError(f"task={tc.kind!r} is invalid: allowed {' | '.join(C.TASK_KINDS)}")


def dims_of(cfg, task) -> list[int]:
    """[d_0, ..., d_H]: the task fixes d_0 and d_H, the model the hidden widths."""
    hidden = list(cfg.model.widths) or [cfg.model.width] * (cfg.model.depth - 1)
    return [task.d_in, *hidden, task.d_out]


def build_net(cfg, task) -> DeepLinearNet:
    dtype = getattr(torch, cfg.precision)
    dims = dims_of(cfg, task)
    init = cfg.model.init
    target = None
    if init.kind == "balanced":
        if len(init.target_spectrum):
            gen = torch.Generator().manual_seed(cfg.seed + 10**6)
            U, _ = torch.linalg.qr(torch.randn(dims[-1], dims[-1], generator=gen, dtype=torch.float64))
            V, _ = torch.linalg.qr(torch.randn(dims[0], dims[0], generator=gen, dtype=torch.float64))
            s = torch.zeros(min(dims[0], dims[-1]), dtype=torch.float64)
            vals = torch.tensor(list(init.target_spectrum), dtype=torch.float64)[: s.numel()]
            s[: vals.numel()] = vals
            target = U[:, : s.numel()] @ torch.diag(s) @ V[:, : s.numel()].T
        else:
            target = task.target()
    return DeepLinearNet(dims, ensemble=cfg.model.ensemble, init=init.kind, scale=init.scale,
                         seed=cfg.seed, dtype=dtype, target=target)


def build_hooks(cfg, out_dir, extra: Sequence[Hook] = ()) -> list[Hook]:
    """Metrics first, then the classifier and `extra` (their columns reach the sinks), then table,
    TensorBoard, progress and checkpoints."""
    r = cfg.record
    hooks: list[Hook] = [MetricsHook(r.rank_rtol, r.rank_floor)]
    c = getattr(cfg, "classify", None)
    if c is not None and c.enabled:
        from dlnlab.classify import Tolerances
        from dlnlab.classify_hook import ClassifierHook

        tol = Tolerances(grad_rtol=c.grad_rtol, rank_rtol=c.rank_rtol, rank_band=c.rank_band,
                         gamma_tol=c.gamma_tol)
        hooks.append(ClassifierHook(tol, c.every_records, c.ridge_every, c.ridge_members))
    hooks += list(extra)
    if out_dir is not None:
        hooks.append(TableHook(out_dir, r.flush_every))
        if r.tensorboard:
            hooks.append(TensorBoardHook(out_dir, r.tb_members, r.tb_singular_values, r.tb_every))
    if r.progress != "off":
        hooks.append(ProgressHook(enabled=True if r.progress == "on" else None))
    if out_dir is not None:
        hooks.append(CheckpointHook(Path(out_dir) / "checkpoints", r.checkpoint_every))
    return hooks


def build_trainer(cfg, task, net, hooks, out_dir=None) -> Trainer:
    o = cfg.optim
    return Trainer(net, task, optim=o.name, lr=o.lr, steps=o.steps, ridge=o.ridge,
                   batch_size=o.batch_size,
                   lr_schedule=Schedule(o.lr, o.milestones, o.lr_values, o.cycle),
                   ridge_schedule=Schedule(o.ridge, o.milestones, o.ridge_values, o.cycle),
                   seed=cfg.seed, hooks=hooks,
                   cadence=Cadence(cfg.record.every, cfg.record.log_spaced),
                   config=OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg),
                   out_dir=out_dir)


@dataclass
class RunSummary:
    out_dir: str | None
    status: str
    steps: int
    wall_time: float
    final_loss: list
    final_rank: list
    diverged_at: list
    labels: list = field(default_factory=list)

    def __str__(self) -> str:
        loss = ", ".join(f"{v:.6g}" for v in self.final_loss[:8])
        rank = ", ".join(str(v) for v in self.final_rank[:8])
        more = " ..." if len(self.final_loss) > 8 else ""
        lines = [f"status      {self.status} after {self.steps} steps in {self.wall_time:.1f} s",
                 f"final loss  {loss}{more}", f"final rank  {rank}{more}"]
        if self.labels:
            lines.append(f"final label {', '.join(self.labels[:8])}{more}")
        div = [k for k, d in enumerate(self.diverged_at) if d is not None]
        if div:
            lines.append(f"diverged    members {div}")
        if self.out_dir:
            lines.append(f"outputs     {self.out_dir}  (tensorboard --logdir {self.out_dir})")
        return "\n".join(lines)


def prepare(cfg):
    """Validate a config and build its task (errors name the option, before any training)."""
    C.validate(cfg)
    task = build_task(cfg.task).to(getattr(torch, cfg.precision))
    C.validate_against_task(cfg, task)
    return task


def run(cfg, out_dir=None, extra_hooks: Sequence[Hook] = (), task=None) -> RunSummary:
    """Validate `cfg`, build task, network and hooks, train, and return a summary.

    With `jumps.enabled` the run is the rank-jump phases (warm-up, main, GD reference) of
    `dlnlab.jumps.run_experiment`, which returns a `JumpsSummary` instead."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = task or prepare(cfg)
    jumps = getattr(cfg, "jumps", None)
    if jumps is not None and jumps.enabled:
        from dlnlab.jumps import run_experiment

        return run_experiment(cfg, out_dir, extra_hooks, task)
    net = build_net(cfg, task)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    hooks = build_hooks(cfg, out_dir, extra_hooks)
    trainer = build_trainer(cfg, task, net, hooks, out_dir)
    t0 = time.perf_counter()
    result = trainer.run()
    loss, ranks = final_loss_and_rank(cfg, task, net, trainer.active)
    return RunSummary(str(out_dir) if out_dir else None, result.status, result.step,
                      time.perf_counter() - t0, loss, ranks,
                      result.diverged_at, next((h.latest for h in hooks if hasattr(h, "latest")), []))


def final_loss_and_rank(cfg, task, net, active=None) -> tuple[list, list]:
    """Per member: the loss and end-to-end rank of the final weights; NaN and None for a member
    that diverged (frozen, or a non-finite product or loss), which the SVD must never see."""
    with torch.no_grad():
        loss = task.loss(list(net.weights)).double()
        A = net.end_to_end().double()
    ok = torch.isfinite(A).flatten(1).all(1) & torch.isfinite(loss)
    if active is not None:
        ok &= active
    s = torch.linalg.svdvals(torch.where(ok.view(-1, 1, 1), A, 0.0))
    floor = cfg.record.rank_floor
    if floor is None:
        floor = float(torch.linalg.matrix_norm(task.target(), ord=2))
    ranks = spectra.numerical_rank(s, cfg.record.rank_rtol, floor).tolist()
    return ([float(v) if k else float("nan") for v, k in zip(loss.tolist(), ok.tolist())],
            [r if k else None for r, k in zip(ranks, ok.tolist())])


def mark_failed(out_dir, message: str) -> None:
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_status(out_dir, status="failed", message=message, ended=time.time())
