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

from dlnlab.experiments.config import (
    TASK_KINDS,
    ConfigError,
    checkpoint_every,
    label_tolerances,
    register,
    resolve_device,
    validate,
    validate_against_task,
)
from dlnlab.experiments.guards import (
    check_keys,
    check_memory,
    check_name,
    task_dims,
    threads_for,
)
from dlnlab.experiments.options import check_overrides
from dlnlab.losses import LossError, make_loss
from dlnlab.model import DeepLinearNet
from dlnlab.recording.base import Cadence, Hook
from dlnlab.recording.checkpoint import CheckpointHook
from dlnlab.recording.classifier import ClassifierHook, tolerances_from_config
from dlnlab.recording.convex import ConvexHook
from dlnlab.recording.metrics import MetricsHook
from dlnlab.recording.progress import ProgressHook
from dlnlab.recording.table import TableHook
from dlnlab.recording.tensorboard import TensorBoardHook
from dlnlab.recording.trajectory import TrajectoryHook
from dlnlab.tasks import load_regression, make_completion, make_regression, with_loss
from dlnlab.theory.convex.reference import WidthReport, width_condition
from dlnlab.train import Schedule, Trainer


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
    """The task of a task config (see conf/task/)."""
    if tc.kind == "regression":
        return make_regression(tc.m, tc.d_x, tc.d_y, list(tc.spectrum), tc.noise, tc.whiten,
                                     tc.seed, tc.eig_gap_rtol, getattr(tc, "targets", "real"))
    if tc.kind == "regression_file":
        return load_regression(tc.path, tc.x_path, tc.y_path, tc.eig_gap_rtol)
    if tc.kind == "matrix_completion":
        return make_completion(tc.n1, tc.n2, tc.rank, list(tc.singular_values), tc.noise,
                                     tc.observed_fraction, tc.observed_count, tc.seed)
    raise ConfigError(f"task={tc.kind!r} is invalid: allowed {' | '.join(TASK_KINDS)}")


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
    return _dims(cfg, task.d_in, task.d_out)


def _dims(cfg, d_in: int, d_out: int) -> list[int]:
    hidden = list(cfg.model.widths) or [cfg.model.width] * (cfg.model.depth - 1)
    return [int(d_in), *map(int, hidden), int(d_out)]


def width_report(cfg, task) -> WidthReport:
    """Laurent & von Brecht's width condition for this network (docs/theory.md §8)."""
    return width_condition(layer_dims(cfg, task))


def run_info(cfg, task) -> dict:
    """Facts about the run for status.json and the hparams: the loss and the width condition
    (`bottlenecks`: [[h, d_h], ...] hidden layers narrower than min(d_0, d_H))."""
    w = width_report(cfg, task)
    return {"loss": getattr(task, "loss_name", "square"), "width_condition": w.holds,
            "bottlenecks": [list(b) for b in w.bottlenecks], "width_message": w.message}


def build_net(cfg, task) -> DeepLinearNet:
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
        hooks.append(ConvexHook(every_records=c.every_records, text_members=r.tb_members))
    elif c is not None and c.enabled:
        hooks.append(ClassifierHook(tolerances_from_config(c), c.every_records, c.ridge_every, c.ridge_members,
                                    text_members=r.tb_members,
                                    ridge_tolerances=label_tolerances(cfg) if hasattr(cfg, "jumps") else None))
        if c.near or c.curvature_every:
            hooks.append(TrajectoryHook(c.every_records, c.curvature_every, c.full_max_params, c.near,
                                        text_members=r.tb_members, members=c.near_members))
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
    o = cfg.optim
    return Trainer(net, task, optim=o.name, lr=o.lr, steps=o.steps, ridge=o.ridge,
                   batch_size=o.batch_size,
                   lr_schedule=Schedule(o.lr, o.milestones, o.lr_values, o.cycle),
                   ridge_schedule=Schedule(o.ridge, o.milestones, o.ridge_values, o.cycle),
                   seed=cfg.seed, hooks=hooks,
                   cadence=Cadence(cfg.record.every, cfg.record.log_spaced),
                   config=OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg),
                   out_dir=out_dir, info=run_info(cfg, task),
                   device=resolve_device(getattr(cfg, "device", "cpu")),
                   checkpoint_every=checkpoint_every(cfg.record) if out_dir is not None else 0,
                   fused=o.fused, record_batch=cfg.record.batch, record_thread=getattr(cfg.record, "thread", "auto"))


def prepare(cfg):
    """Validate a config and build its task (errors name the option, before any training or any
    large allocation: a run that would not fit in memory is refused with its estimate)."""
    check_keys(cfg)
    validate(cfg)
    check_name(cfg.name)
    threads_for(cfg, warn=True)
    known = task_dims(cfg)
    if known is not None:  # before the task's data is made
        check_memory(cfg, _dims(cfg, known[0], known[1]), known[2])
    task = build_task(cfg.task).to(getattr(torch, cfg.precision))
    if known is None:
        check_memory(cfg, layer_dims(cfg, task), task.n_samples)
    lc = getattr(cfg, "loss", None)
    task = with_loss(task, build_loss(lc), lc.product_ridge if lc is not None else 0.0)
    validate_against_task(cfg, task)
    return task
