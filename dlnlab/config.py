"""Typed configuration: dataclass schemas registered with Hydra's ConfigStore.

Unknown keys and wrong types fail at compose time (OmegaConf); `validate` adds the semantic checks
(H >= 2, widths >= 1, lr > 0, lambda >= 0, tolerances in (0, 1), batch size within the data...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from dlnlab.model import INITS


class ConfigError(ValueError):
    """An invalid option; the message names it and what is allowed."""


@dataclass
class InitConfig:
    kind: str = "gaussian"  # gaussian | orthogonal | zero | small | balanced
    scale: float = 1.0
    # balanced only: factorise `scale * T` where T is the task's least-squares map ("task")
    # or a matrix with these singular values and random singular vectors.
    target_spectrum: List[float] = field(default_factory=list)


@dataclass
class ModelConfig:
    depth: int = 4  # H, the number of weight matrices
    width: int = 8  # d_h of every hidden layer h = 1..H-1
    widths: List[int] = field(default_factory=list)  # explicit hidden widths (overrides width)
    ensemble: int = 1  # E independent networks trained together
    init: InitConfig = field(default_factory=InitConfig)


@dataclass
class TaskConfig:
    kind: str = MISSING
    seed: int = 0  # seeds the data, independently of the training seed


@dataclass
class RegressionConfig(TaskConfig):
    kind: str = "regression"
    m: int = 64
    d_x: int = 8
    d_y: int = 5
    spectrum: List[float] = field(default_factory=list)  # teacher singular values (default d_y..1)
    noise: float = 0.0
    whiten: bool = True
    eig_gap_rtol: float = 1e-6


@dataclass
class RegressionFileConfig(TaskConfig):
    kind: str = "regression_file"
    path: Optional[str] = None  # .npz with arrays X and Y (samples as rows)
    x_path: Optional[str] = None  # or two CSV files
    y_path: Optional[str] = None
    eig_gap_rtol: float = 1e-6


@dataclass
class CompletionConfig(TaskConfig):
    kind: str = "matrix_completion"
    n1: int = 10
    n2: int = 10
    rank: int = 1
    singular_values: List[float] = field(default_factory=list)
    noise: float = 0.0
    observed_fraction: float = 1.0
    observed_count: Optional[int] = None


TASK_KINDS = ("regression", "regression_file", "matrix_completion")


@dataclass
class OptimConfig:
    name: str = "gd"  # gd (full batch) | sgd (minibatch)
    lr: float = 0.05
    steps: int = 3000
    ridge: float = 0.0  # lambda of the objective loss + lambda * sum_h ||W_h||_F^2
    batch_size: int = 1  # sgd only: samples (or observed entries) per step, with replacement
    # Piecewise-constant schedules: phase k covers [milestones[k-1], milestones[k]); lr_values and
    # ridge_values give one value per phase (len(milestones) + 1), or stay empty for constant lr/ridge.
    milestones: List[int] = field(default_factory=list)
    lr_values: List[float] = field(default_factory=list)
    ridge_values: List[float] = field(default_factory=list)
    cycle: int = 0  # > 0: the schedule repeats with this period (periodic learning rates)


OPTIMIZERS = ("gd", "sgd")


@dataclass
class RecordConfig:
    every: int = 100  # record every k steps (and always at step 0 and at the last step)
    log_spaced: int = 0  # > 0: also this many log-spaced records per decade of steps
    rank_rtol: float = 1e-3  # s_i counts towards the rank when s_i > rank_rtol * max(s_1, floor)
    # floor of that tolerance for a product of l layers: rank_floor^(l/H); null = the task's scale
    # (the top singular value of its least-squares map), so a tiny initialisation has rank 0.
    rank_floor: Optional[float] = None
    checkpoint_every: int = 0  # in steps; 0 = only at the end (and on interrupt)
    tensorboard: bool = True
    tb_every: int = 1  # write every n-th record to TensorBoard (the table gets all)
    tb_members: int = 8  # ensemble members shown in TensorBoard
    tb_singular_values: int = 8  # end-to-end singular values shown in TensorBoard
    flush_every: int = 200  # records per table part (a part is also written every 10 s)
    progress: str = "auto"  # auto (a bar when stderr is a terminal) | on | off


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    seed: int = 0  # member k of an ensemble uses seed + k (init and SGD samples)
    precision: str = "float64"  # float32 | float64
    threads: int = 1  # torch threads per process (small matmuls hate oversubscription)
    name: str = "run"
    out_dir: Optional[str] = None  # set by the Hydra app to its output folder


def register() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="task", name="regression_schema", node=RegressionConfig)
    cs.store(group="task", name="regression_file_schema", node=RegressionFileConfig)
    cs.store(group="task", name="matrix_completion_schema", node=CompletionConfig)
    cs.store(group="optim", name="optim_schema", node=OptimConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="record", name="record_schema", node=RecordConfig)


def _need(ok: bool, option: str, allowed: str, value) -> None:
    if not ok:
        raise ConfigError(f"{option}={value!r} is invalid: allowed {allowed}")


def validate(cfg) -> None:
    """Semantic checks that types cannot express; raise ConfigError naming the option."""
    m, o, r, t = cfg.model, cfg.optim, cfg.record, cfg.task
    _need(m.depth >= 2, "model.depth", "an integer >= 2 (H, the number of weight matrices)", m.depth)
    _need(m.width >= 1, "model.width", "an integer >= 1", m.width)
    if len(m.widths):
        _need(len(m.widths) == m.depth - 1, "model.widths", f"a list of depth-1 = {m.depth - 1} hidden widths",
              list(m.widths))
        _need(min(m.widths) >= 1, "model.widths", "widths >= 1", list(m.widths))
    _need(m.ensemble >= 1, "model.ensemble", "an integer >= 1", m.ensemble)
    _need(m.init.kind in INITS, "model.init.kind", " | ".join(INITS), m.init.kind)
    _need(m.init.scale >= 0, "model.init.scale", "a number >= 0", m.init.scale)
    _need(t.kind in TASK_KINDS, "task", " | ".join(TASK_KINDS), t.kind)
    _need(o.name in OPTIMIZERS, "optim", " | ".join(OPTIMIZERS), o.name)
    _need(o.lr > 0, "optim.lr", "a number > 0", o.lr)
    _need(o.steps >= 0, "optim.steps", "an integer >= 0", o.steps)
    _need(o.ridge >= 0, "optim.ridge", "lambda >= 0", o.ridge)
    _need(o.batch_size >= 1, "optim.batch_size", "an integer >= 1", o.batch_size)
    ms = list(o.milestones)
    _need(all(b > a for a, b in zip([0] + ms, ms)), "optim.milestones", "strictly increasing steps > 0", ms)
    for key in ("lr_values", "ridge_values"):
        vals = list(getattr(o, key))
        _need(not vals or len(vals) == len(ms) + 1, f"optim.{key}",
              f"empty or len(milestones) + 1 = {len(ms) + 1} values", vals)
    _need(all(v > 0 for v in o.lr_values), "optim.lr_values", "values > 0", list(o.lr_values))
    _need(all(v >= 0 for v in o.ridge_values), "optim.ridge_values", "values >= 0", list(o.ridge_values))
    _need(o.cycle >= 0 and (o.cycle == 0 or not ms or ms[-1] < o.cycle), "optim.cycle",
          "0 (no repeat) or a period longer than the last milestone", o.cycle)
    _need(r.every >= 1, "record.every", "an integer >= 1", r.every)
    _need(r.log_spaced >= 0, "record.log_spaced", "an integer >= 0", r.log_spaced)
    _need(0 < r.rank_rtol < 1, "record.rank_rtol", "a tolerance in (0, 1)", r.rank_rtol)
    _need(r.rank_floor is None or r.rank_floor >= 0, "record.rank_floor", "null or a number >= 0", r.rank_floor)
    _need(r.checkpoint_every >= 0, "record.checkpoint_every", "an integer >= 0", r.checkpoint_every)
    _need(r.tb_every >= 1, "record.tb_every", "an integer >= 1", r.tb_every)
    _need(r.flush_every >= 1, "record.flush_every", "an integer >= 1", r.flush_every)
    _need(r.progress in ("auto", "on", "off"), "record.progress", "auto | on | off", r.progress)
    _need(cfg.precision in ("float32", "float64"), "precision", "float32 | float64", cfg.precision)
    _need(cfg.threads >= 0, "threads", "an integer >= 0 (0 = torch's default)", cfg.threads)
    if t.kind == "matrix_completion":
        _need(0 < t.observed_fraction <= 1, "task.observed_fraction", "a fraction in (0, 1]", t.observed_fraction)
    if t.kind in ("regression", "regression_file"):
        _need(0 < t.eig_gap_rtol < 1, "task.eig_gap_rtol", "a tolerance in (0, 1)", t.eig_gap_rtol)


def validate_against_task(cfg, task) -> None:
    """Checks that need the data: the batch size must fit in it."""
    o = cfg.optim
    if o.name == "sgd":
        _need(o.batch_size <= task.n_samples, "optim.batch_size",
              f"1..{task.n_samples} (the task's samples or observed entries)", o.batch_size)
