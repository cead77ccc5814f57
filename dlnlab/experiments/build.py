"""From a config to objects: the composed config, its task, network, hooks and trainer.

    from dlnlab import compose, prepare, build_net
    cfg = compose(["model.depth=3"])
    task = prepare(cfg)               # validated config -> task (errors name the option)
    net = build_net(cfg, task)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from omegaconf import OmegaConf

from dlnlab.experiments.checks import label_tolerances, validate
from dlnlab.experiments.config import (
    ConfigError,
    checkpoint_every,
    register,
    resolve_device,
)
from dlnlab.experiments.guards import layer_widths, threads_for
from dlnlab.experiments.options import check_overrides
from dlnlab.experiments.task_kinds import TASK_KINDS, TASKS
from dlnlab.losses import LossError, make_loss
from dlnlab.model import DeepLinearNet
from dlnlab.recording.base import Cadence, Hook
from dlnlab.recording.checkpoint import CheckpointHook
from dlnlab.recording.classifier import ClassifierHook, tolerances_from_config
from dlnlab.recording.convex import ConvexHook, convex_tolerances
from dlnlab.recording.metrics import MetricsHook
from dlnlab.recording.progress import ProgressHook
from dlnlab.recording.table import TableHook
from dlnlab.recording.tensorboard import TensorBoardHook
from dlnlab.recording.trajectory import TrajectoryHook
from dlnlab.tasks import with_loss
from dlnlab.theory.convex.reference import WidthReport, width_condition
from dlnlab.train import RecordSettings, Schedule, Trainer


def conf_dir() -> str:
    """The folder of Hydra configs, shipped inside the package as `dlnlab.conf` (the top-level
    conf/ folder of a source checkout when the package is imported from there uninstalled)."""
    from importlib.resources import files

    try:
        return str(files("dlnlab.conf"))
    except ModuleNotFoundError:
        return str(Path(__file__).resolve().parents[2] / "conf")


def compose(overrides: Sequence[str] = (), config_name: str = "config"):
    """The composed, typed config for `overrides` (what `dlnlab-train OVERRIDES` would run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    check_overrides(overrides, conf_dir())
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def build_task(tc):
    """The task of a task config (see conf/task/), built by its kind's entry in TASKS."""
    kind = TASKS.get(tc.kind)
    if kind is None:
        raise ConfigError(f"task={tc.kind!r} is invalid: allowed {' | '.join(TASK_KINDS)}")
    return kind.build(tc)


def build_loss(lc):
    """The Loss of a `loss` config (None: the square loss of today, also for configs without `loss`)."""
    if lc is None or (lc.name == "square" and not lc.product_ridge):
        return None
    try:
        probe = make_loss(lc.name)
        return make_loss(lc.name, **{k: getattr(lc, k) for k in probe.params})
    except LossError as e:
        raise ConfigError(str(e)) from None


def layer_dims(cfg, task) -> list[int]:
    """[d_0, ..., d_H]: the task fixes d_0 and d_H, the model the hidden widths."""
    return layer_widths(cfg, task.d_in, task.d_out)


def largest_ridge(cfg) -> float:
    """The largest parameter ridge lambda the config trains with: optim.ridge, or every value of
    optim.ridge_values when a schedule is given, and a rank-jump experiment's warm-up ridge."""
    o = cfg.optim
    values = [float(v) for v in o.ridge_values] or [float(o.ridge)]
    j = getattr(cfg, "jumps", None)
    if j is not None and j.enabled and j.warmup.steps > 0 and j.warmup.ridge is not None:
        values.append(float(j.warmup.ridge))
    return max(values)


def width_report(cfg, task) -> WidthReport:
    """Laurent & von Brecht's width condition for this network, and whether their theorem applies
    (not with a bottleneck or a parameter ridge; docs/theory.md §8)."""
    return width_condition(layer_dims(cfg, task), ridge=largest_ridge(cfg))


def run_info(cfg, task) -> dict:
    """Facts about the run for status.json and the hparams: the loss, the width condition
    (`bottlenecks`: [[h, d_h], ...] hidden layers narrower than min(d_0, d_H)) and whether the
    theorem applies (`theorem_applies`: the condition holds and lambda = 0)."""
    w = width_report(cfg, task)
    return {"loss": getattr(task, "loss_name", "square"), "width_condition": w.holds,
            "theorem_applies": w.applies, "bottlenecks": [list(b) for b in w.bottlenecks],
            "width_message": w.message}


def build_net(cfg, task) -> DeepLinearNet:
    """The ensemble of networks of `cfg.model` for `task` (a balanced init factorises the task's map or
    a matrix of `model.init.target_spectrum`)."""
    dtype = getattr(torch, cfg.precision)
    dims = layer_dims(cfg, task)
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
    """Producers first (metrics, then the classifier (Theorem 7 for the square loss, ConvexHook for any
    other loss) and `extra`), so that their columns reach the
    sinks (table, TensorBoard, progress, checkpoints). The TensorBoard sink is handed the producers
    whose declared `tb_tags` and histograms it writes."""
    r = cfg.record
    hooks: list[Hook] = [MetricsHook(r.rank_rtol, r.rank_floor)]
    c = getattr(cfg, "classify", None)
    if c is not None and c.enabled and build_loss(getattr(cfg, "loss", None)) is not None:
        hooks.append(ConvexHook(convex_tolerances(getattr(c, "convex_gap_rtol", None)),
                                every_records=c.every_records, text_members=r.tb_members))
    elif c is not None and c.enabled:
        hooks.append(ClassifierHook(tolerances_from_config(c), c.every_records, c.ridge_every, c.ridge_members,
                                    text_members=r.tb_members,
                                    ridge_tolerances=label_tolerances(cfg) if hasattr(cfg, "jumps") else None))
        if c.near or c.curvature_every:
            hooks.append(TrajectoryHook(c.every_records, c.curvature_every, c.full_max_params, c.near,
                                        text_members=r.tb_members, members=c.near_members,
                                        midpoint_window=c.midpoint_window))
    hooks += list(extra)
    producers = list(hooks)
    if out_dir is not None:
        hooks.append(TableHook(out_dir, r.flush_every))
        if r.tensorboard:
            hooks.append(TensorBoardHook(out_dir, r.tb_members, r.tb_singular_values, r.tb_every,
                                         sources=producers))
    if r.progress != "off":
        hooks.append(ProgressHook(mode="bar" if r.progress == "on" else None, every_seconds=r.progress_seconds))
    if out_dir is not None:
        # its period is the trainer's (rec.checkpoint), so that the sinks flush before it saves
        hooks.append(CheckpointHook(Path(out_dir) / "checkpoints"))
    return hooks


def build_trainer(cfg, task, net, hooks, out_dir=None) -> Trainer:
    """The `Trainer` of `cfg`: its optimiser, schedules (the one source of lr and lambda), seed,
    record cadence and settings, driving `hooks` on `net` and `task`."""
    o = cfg.optim
    return Trainer(net, task, optim=o.name, steps=o.steps, batch_size=o.batch_size,
                   lr=Schedule(o.lr, o.milestones, o.lr_values, o.cycle),
                   ridge=Schedule(o.ridge, o.milestones, o.ridge_values, o.cycle),
                   seed=cfg.seed, hooks=hooks,
                   cadence=Cadence(cfg.record.every, cfg.record.log_spaced),
                   config=OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg),
                   out_dir=out_dir, info=run_info(cfg, task),
                   device=resolve_device(getattr(cfg, "device", "cpu")), fused=o.fused,
                   recording=RecordSettings(cfg.record.batch, getattr(cfg.record, "thread", "auto"),
                                            checkpoint_every(cfg.record) if out_dir is not None else 0))


def prepare(cfg):
    """Validate a config and build its task (errors name the option, before any training or any
    large allocation: a run that would not fit in memory is refused with its estimate)."""
    validate(cfg)
    threads_for(cfg, warn=True)
    task = build_task(cfg.task).to(getattr(torch, cfg.precision))
    validate(cfg, task)  # the checks that need the data (its size: the memory, the batch)
    lc = getattr(cfg, "loss", None)
    return with_loss(task, build_loss(lc), lc.product_ridge if lc is not None else 0.0)
