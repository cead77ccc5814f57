"""Typed configuration: dataclass schemas registered with Hydra's ConfigStore.

Unknown keys and wrong types fail at compose time (OmegaConf); `validate` adds the semantic checks
(H >= 2, widths >= 1, lr > 0, lambda >= 0, tolerances in (0, 1), batch size within the data...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from omegaconf import MISSING

from dlnlab.losses import LOSSES
from dlnlab.model import INITS
from dlnlab.theory.square.classify import TRAINING_TOLERANCES
from dlnlab.theory.ridge.modes import LabelTolerances, RankTolerances


class ConfigError(ValueError):
    """An invalid option; the message names it and what is allowed."""


@dataclass
class InitConfig:
    kind: str = "small"  # gaussian | orthogonal | zero | small | balanced
    scale: float = 0.03  # entries N(0, scale^2): the saddle-to-saddle regime
    # balanced only: factorise `scale * T` where T is the task's least-squares map ("task")
    # or a matrix with these singular values and random singular vectors.
    target_spectrum: List[float] = field(default_factory=list)


@dataclass
class ModelConfig:
    depth: int = 4  # H, the number of weight matrices
    width: int = 6  # d_h of every hidden layer h = 1..H-1
    widths: List[int] = field(default_factory=list)  # explicit hidden widths (overrides width)
    ensemble: int = 1  # E independent networks trained together
    init: InitConfig = field(default_factory=InitConfig)


@dataclass
class TaskConfig:
    kind: str = MISSING  # regression | regression_file | matrix_completion (set by task=...)
    seed: int = 0  # seeds the data, independently of the training seed


@dataclass
class RegressionConfig(TaskConfig):
    kind: str = "regression"  # the task's kind (set by task=regression)
    m: int = 64  # samples (rows of X)
    d_x: int = 6  # d_0, input width
    d_y: int = 4  # d_H, output width
    # teacher singular values ([] : d_y..1); plateaus of the lab loss at sum_{i>r} s_i^2
    spectrum: List[float] = field(default_factory=lambda: [8.0, 4.0, 2.0, 1.0])
    noise: float = 0.0  # std of the Gaussian label noise added to the teacher's outputs
    whiten: bool = True  # whiten the inputs (Sigma_XX = I)
    eig_gap_rtol: float = 1e-6  # Assumption 1: distinct eigenvalues of Sigma within this relative gap
    targets: str = "real"  # real | classes (one-hot of argmax of the teacher output + noise: loss=cross_entropy)


@dataclass
class RegressionFileConfig(TaskConfig):
    kind: str = "regression_file"  # the task's kind (set by task=regression_file)
    path: Optional[str] = None  # .npz with arrays X and Y (samples as rows)
    x_path: Optional[str] = None  # or two CSV files
    y_path: Optional[str] = None  # the CSV file of Y (with x_path)
    eig_gap_rtol: float = 1e-6  # Assumption 1: distinct eigenvalues of Sigma within this relative gap


@dataclass
class CompletionConfig(TaskConfig):
    kind: str = "matrix_completion"  # the task's kind (set by task=matrix_completion)
    n1: int = 10  # rows of the target = d_H
    n2: int = 10  # columns of the target = d_0
    rank: int = 1  # rank of the target before noise
    singular_values: List[float] = field(default_factory=lambda: [10.0])  # the target's singular values
    noise: float = 0.35  # std of the Gaussian noise added to every entry
    observed_fraction: float = 1.0  # 1.0: the fully observed noisy variant (docs/theory.md §7)
    observed_count: Optional[int] = None  # overrides observed_fraction


TASK_KINDS = ("regression", "regression_file", "matrix_completion")


@dataclass
class OptimConfig:
    name: str = "gd"  # gd (full batch) | sgd (minibatch)
    lr: float = 0.008  # learning rate (constant unless lr_values is set)
    steps: int = 12000  # training steps
    ridge: float = 0.0  # lambda of the objective loss + lambda * sum_h ||W_h||_F^2
    batch_size: int = 1  # sgd only: samples (or observed entries) per step, with replacement
    # Piecewise-constant schedules: phase k covers [milestones[k-1], milestones[k]); lr_values and
    # ridge_values give one value per phase (len(milestones) + 1), or stay empty for constant lr/ridge.
    milestones: List[int] = field(default_factory=list)
    lr_values: List[float] = field(default_factory=list)  # lr of each phase of the schedule
    ridge_values: List[float] = field(default_factory=list)  # lambda of each phase of the schedule
    cycle: int = 0  # > 0: the schedule repeats with this period (periodic learning rates)
    fused: bool = True  # square-loss steps between records in one tight loop (same weights bit for bit); false: the general loop


OPTIMIZERS = ("gd", "sgd")
MAX_DEPTH = 10_000  # model.depth at most


@dataclass
class LossConfig:
    """The loss of the network output (dlnlab.losses, docs/losses.md); `square` is today's loss."""
    name: str = "square"  # square | cross_entropy | logistic | huber | pseudo_huber | lp | poisson | l1
    delta: float = 1.0  # huber, pseudo_huber: the transition scale (> 0)
    p: float = 1.5  # lp: the exponent, in (1, 2]
    product_ridge: float = 0.0  # mu of + mu ||W_H...W_1||_F^2 (inside the theorem; >= 0)


@dataclass
class RecordConfig:
    every: int = 100  # record every k steps (and always at step 0 and at the last step)
    log_spaced: int = 0  # > 0: also this many log-spaced records per decade of steps
    rank_rtol: float = 1e-3  # s_i counts towards the rank when s_i > rank_rtol * max(s_1, floor)
    # floor of that tolerance for a product of l layers: rank_floor^(l/H); null = the task's scale
    # (the top singular value of its least-squares map), so a tiny initialisation has rank 0.
    rank_floor: Optional[float] = None
    # in steps (a multiple of `every`): resumable step_*.pt files; null = 10 x every, so a kill -9
    # loses at most 10 records of work; 0 = none (only last.pt at the end: nothing to resume from)
    checkpoint_every: Optional[int] = None
    tensorboard: bool = True  # write TensorBoard events (tb/)
    tb_every: int = 1  # write every n-th record to TensorBoard (the table gets all)
    tb_members: int = 8  # ensemble members shown in TensorBoard
    tb_singular_values: int = 8  # end-to-end singular values shown in TensorBoard
    flush_every: int = 200  # records per table part (a part is also written every 10 s)
    # auto: a bar with ETA when stderr is a terminal, else a status line with ETA every
    # progress_seconds (log files, SLURM) | on: the bar, even without a terminal | off: nothing
    progress: str = "auto"
    progress_seconds: float = 10.0  # seconds between status lines when stderr is not a terminal (> 0)
    # records handed to the hooks together, as one stack of members (the same numbers, far fewer
    # calls for a small network); 0 = auto: up to 16 records and 2^18 parameters in all, none
    # waiting over about 1 s (records further apart do not wait); 1 = each record at its step
    batch: int = 0
    # the built-in hooks run on a thread of their own beside the training loop (the same numbers;
    # on two cores hooks and steps overlap) | auto: on the CPU, up to 2^22 parameters in all (a
    # record of about a second: an interrupted run waits for one or two) | on | off: between the steps
    thread: str = "auto"


@dataclass
class WarmupConfig:
    steps: int = 0  # GD steps from model.init before the main phase (0: members start from model.init)
    lr: float = 0.3  # learning rate of the warm-up
    ridge: Optional[float] = None  # null: the main phase's lambda at step 0
    every: int = 500  # record cadence of the warm-up run


@dataclass
class JumpsConfig:
    """Rank jumps (dlnlab.recording.jumps, docs/theory.md §7): phases and the rank tracker's tolerances."""
    # true: run the phases warm-up (GD) -> main (optim, every member from the warm-up end point)
    # -> GD reference, each a run folder under the output folder, plus jumps_summary.json
    enabled: bool = False
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    gd_reference: bool = True  # also continue from the warm-up end point with GD (one network)
    a_tol: float = 1.0e-2  # A-rank: #{s_i(A) > a_tol}
    layer_tol: float = 0.1  # layer rank: max_l #{s_i(W_l) > layer_tol} (the B_r test)
    tol_mode: str = "absolute"  # absolute | relative (tolerance times s_1 of the same matrix)
    # B_r: max_h ||W_{h+1}^T W_{h+1} - W_h W_h^T||_F <= bal_rtol ||theta||^2 / H (the ratio is <= H;
    # SGD members of R1 measure 0.13-1.51: see dlnlab.theory.ridge_modes.RankTolerances)
    bal_rtol: float = 2.0
    norm_bound: Optional[float] = None  # B_r: ||theta||^2 <= norm_bound (null: no bound)
    gd_every: Optional[int] = None  # record cadence of the GD reference phase (null: record.every)
    # Labels (dlnlab.theory.ridge_labels.classify) in the tracked tables (column ridge_label): every label_every-th
    # record (0: none) of every phase. A label costs ~1 ms per member off criticality, ~50 ms per
    # critical member (full Hessian, R1 size), so label_every = 1 on a GD phase adds ~50 ms a record.
    label_every: int = 0
    # label the last record of every phase (all members), and the warm-up and GD end points in
    # jumps_summary.json (with the A.3 mode table)
    label_final: bool = True
    # Label tolerances (dlnlab.theory.ridge_modes.LabelTolerances, same names and defaults; all plumbed by
    # dlnlab.experiments.config.label_tolerances), also for the classifier hook's ridge labels (`label`):
    grad_tol: float = 1.0e-7  # ||grad|| <= grad_tol is critical
    eig_rtol: float = 1.0e-6  # Hessian eigenvalues within max(eig_rtol * rho, eig_atol) of 0 count as 0
    eig_atol: float = 1.0e-12  # absolute floor of that tolerance
    orbit_rtol: float = 1.0e-7  # symmetry-orbit tangents: singular values > orbit_rtol * the largest
    identity_rtol: float = 1.0e-6  # ||theta||^2 = H sum s_i^(2/H) holds within this relative residual
    identity_roundoff: float = 1.0  # that sum skips s_i <= identity_roundoff * max(n1, n2) * eps * s_1
    state_rtol: float = 1.0e-3  # A.3 mode table: a mode is on / at the barrier within this of the closed form
    shallow_rtol: float = 0.2  # A.3: a shallow basin (could switch off): barrier height <= this * a y^2
    threshold_rtol: float = 1.0e-6  # A.3: a mode sits at its threshold y* within this relative distance
    rank_margin: float = 2.0  # near-boundary flag: a singular value within this factor of a rank threshold
    margin: float = 10.0  # near-boundary flag: ||grad|| or an eigenvalue within this factor of its tolerance
    full_max_params: int = 2000  # full Hessian up to this many parameters, Lanczos above
    polish_steps: int = 0  # > 0: GD-polish the main phase's end points this long, then label them
    polish_lr: Optional[float] = None  # null: warmup.lr
    polish_members: int = 16  # label at most this many members (the first ones; a label costs ~50 ms)
    phase: str = ""  # set by dlnlab.recording.jumps in each phase folder's config (warmup | sgd | gd)


@dataclass
class ConvexLossesConfig:
    """Table B.3 of Laurent & von Brecht's theorem (dlnlab.experiments.convex_losses, docs/theory.md §8)."""
    # true: `dlnlab.run` runs the grid below instead of one training run (experiment=convex_losses)
    enabled: bool = False
    losses: List[str] = field(default_factory=lambda: ["cross_entropy", "huber"])  # the losses of the grid
    depths: List[int] = field(default_factory=lambda: [3, 4])  # depths H of the grid
    widths: List[int] = field(default_factory=lambda: [6, 4, 2, 1])  # hidden widths (< min(d_in, d_out): bottleneck)
    inits: int = 12  # initialisations per cell (member k: std init_stds[k mod len], seed + k)
    init_stds: List[float] = field(default_factory=lambda: [0.05, 0.5, 1.5])  # entry std of the inits, cycled
    m: int = 300  # samples of the data
    d_in: int = 6  # input dimension d_0
    d_out: int = 4  # output dimension d_H (classes for cross_entropy)
    class_noise: float = 1.0  # cross_entropy: noise added to the teacher's outputs before the argmax
    noise: float = 0.3  # huber: Gaussian noise on the targets
    outliers: float = 0.05  # huber: fraction of targets shifted by outlier_size
    outlier_size: float = 10.0  # huber: the outliers' shift
    delta: float = 1.0  # huber: its delta
    lbfgs_maxiter: int = 3000  # scipy L-BFGS-B iterations on theta per init
    gd_steps: int = 2000  # full-batch GD steps (the 12 inits as one ensemble, factored step)
    gd_lr: float = 0.05  # GD learning rate (members that diverge are reported as such)
    reach_tol: float = 1.0e-8  # a run reaches ell* iff loss - ell* <= reach_tol


@dataclass
class ClassifyConfig:
    """Labels of every checkpoint (dlnlab.recording.classifier). Training iterates are only approximately
    critical, hence looser tolerances than dlnlab.theory.classify's defaults for exact points."""
    enabled: bool = True  # label the records (Theorem 7; ridge labels off the square loss)
    every_records: int = 1  # Theorem 7 labels every n-th record (about 1 ms per member)
    grad_rtol: float = TRAINING_TOLERANCES.grad_rtol  # critical iff ||grad L|| <= grad_rtol * tr(Syy) (paper loss)
    rank_rtol: float = TRAINING_TOLERANCES.rank_rtol  # relative numerical-rank threshold of products and pivot blocks
    rank_band: float = TRAINING_TOLERANCES.rank_band  # singular values within a factor rank_band of the threshold: "ambiguous"
    gamma_tol: float = TRAINING_TOLERANCES.gamma_tol  # S is read from Gamma when its entries are within this of 0 or 1
    ridge_every: int = 0  # lambda > 0 or partial completion: Hessian labels every n-th record (0: last only)
    ridge_members: int = 16  # ... of at most this many members (a Hessian label costs ~50 ms)
    # numbers near critical points (dlnlab.recording.trajectory, docs/columns.md), square loss only
    near: bool = True  # near_label, near_S, near_dist, tight_margin on every labelled record
    curvature_every: int = 10  # lam_min, lam_max every n-th labelled record and the last (0: never)
    full_max_params: int = 2000  # exact Hessian eigenvalues up to this many parameters, Lanczos above
    near_members: int = 16  # lam_min, lam_max for the first n members of an ensemble only (NaN for the others)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    jumps: JumpsConfig = field(default_factory=JumpsConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    convex_losses: ConvexLossesConfig = field(default_factory=ConvexLossesConfig)
    seed: int = 0  # member k of an ensemble uses seed + k (init and SGD samples)
    precision: str = "float64"  # float32 | float64
    threads: int = 1  # torch threads per process (small matmuls hate oversubscription)
    device: str = "cpu"  # cpu | cuda | auto (cuda when available): where the network and the task train
    name: str = "run"  # the run's name: the end of its folder name (default task kind + optimizer)
    # a run folder (or a sweep folder) to continue from its newest checkpoint, with its saved config
    # (dlnlab.experiments.resume); null: a new run
    resume: Optional[str] = None


def register() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="task", name="regression_schema", node=RegressionConfig)
    cs.store(group="task", name="regression_file_schema", node=RegressionFileConfig)
    cs.store(group="task", name="matrix_completion_schema", node=CompletionConfig)
    cs.store(group="optim", name="optim_schema", node=OptimConfig)
    cs.store(group="loss", name="loss_schema", node=LossConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="record", name="record_schema", node=RecordConfig)


def _need(ok: bool, option: str, allowed: str, value) -> None:
    if not ok:
        raise ConfigError(f"{option}={value!r} is invalid: allowed {allowed}")


DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str) -> str:
    """The torch device of the `device` option: auto is cuda when CUDA is available, else cpu."""
    _need(name in DEVICES, "device", " | ".join(DEVICES), name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is invalid: CUDA is not available on this machine "
                          "(torch.cuda.is_available() is False); use device=cpu or device=auto")
    return name


def validate(cfg) -> None:
    """Semantic checks that types cannot express; raise ConfigError naming the option."""
    resolve_device(getattr(cfg, "device", "cpu"))
    m, o, r, t = cfg.model, cfg.optim, cfg.record, cfg.task
    # an upper bound before any list of layers is built (the memory check comes after the widths)
    _need(2 <= m.depth <= MAX_DEPTH, "model.depth",
          f"an integer in 2..{MAX_DEPTH} (H, the number of weight matrices)", m.depth)
    _need(m.width >= 1, "model.width", "an integer >= 1", m.width)
    if len(m.widths):
        _need(len(m.widths) == m.depth - 1, "model.widths", f"a list of depth-1 = {m.depth - 1} hidden widths",
              list(m.widths))
        _need(min(m.widths) >= 1, "model.widths", "widths >= 1", list(m.widths))
    _need(m.ensemble >= 1, "model.ensemble", "an integer >= 1", m.ensemble)
    _need(m.init.kind in INITS, "model.init.kind", " | ".join(INITS), m.init.kind)
    _need(0 <= m.init.scale < math.inf, "model.init.scale", "a finite number >= 0", m.init.scale)
    _need(t.kind in TASK_KINDS, "task", " | ".join(TASK_KINDS), t.kind)
    _need(o.name in OPTIMIZERS, "optim", " | ".join(OPTIMIZERS), o.name)
    _need(0 < o.lr < math.inf, "optim.lr", "a finite number > 0", o.lr)
    _need(o.steps >= 0, "optim.steps", "an integer >= 0", o.steps)
    _need(0 <= o.ridge < math.inf, "optim.ridge", "a finite lambda >= 0", o.ridge)
    _need(o.batch_size >= 1, "optim.batch_size", "an integer >= 1", o.batch_size)
    ms = list(o.milestones)
    _need(all(b > a for a, b in zip([0] + ms, ms)), "optim.milestones", "strictly increasing steps > 0", ms)
    for key in ("lr_values", "ridge_values"):
        vals = list(getattr(o, key))
        _need(not vals or len(vals) == len(ms) + 1, f"optim.{key}",
              f"empty or len(milestones) + 1 = {len(ms) + 1} values", vals)
    _need(all(0 < v < math.inf for v in o.lr_values), "optim.lr_values", "finite values > 0", list(o.lr_values))
    _need(all(0 <= v < math.inf for v in o.ridge_values), "optim.ridge_values", "finite values >= 0",
          list(o.ridge_values))
    _need(o.cycle >= 0 and (o.cycle == 0 or not ms or ms[-1] < o.cycle), "optim.cycle",
          "0 (no repeat) or a period longer than the last milestone", o.cycle)
    lc = getattr(cfg, "loss", None)
    if lc is not None:
        _validate_loss(lc)
    _need(r.every >= 1, "record.every", "an integer >= 1", r.every)
    _need(r.log_spaced >= 0, "record.log_spaced", "an integer >= 0", r.log_spaced)
    _need(0 < r.rank_rtol < 1, "record.rank_rtol", "a tolerance in (0, 1)", r.rank_rtol)
    _need(r.rank_floor is None or r.rank_floor >= 0, "record.rank_floor", "null or a number >= 0", r.rank_floor)
    ce = r.checkpoint_every
    _need(ce is None or ce >= 0, "record.checkpoint_every", "null (10 x record.every) or an integer >= 0", ce)
    # checkpoints are taken at records: a period between records would silently never fire
    _need(ce is None or ce % r.every == 0, "record.checkpoint_every",
          f"null (10 x record.every), 0 (only the last) or a multiple of record.every = {r.every}", ce)
    _need(r.tb_members >= 0, "record.tb_members", "an integer >= 0", r.tb_members)
    _need(r.batch >= 0, "record.batch", "an integer >= 0 (0: auto)", r.batch)
    _need(r.thread in ("auto", "on", "off"), "record.thread", "auto | on | off", r.thread)
    _need(r.tb_singular_values >= 0, "record.tb_singular_values", "an integer >= 0", r.tb_singular_values)
    _need(r.tb_every >= 1, "record.tb_every", "an integer >= 1", r.tb_every)
    _need(r.flush_every >= 1, "record.flush_every", "an integer >= 1", r.flush_every)
    _need(r.progress in ("auto", "on", "off"), "record.progress", "auto | on | off", r.progress)
    _need(0 < r.progress_seconds < math.inf, "record.progress_seconds", "a number of seconds > 0",
          r.progress_seconds)
    c = cfg.classify
    _need(c.every_records >= 1, "classify.every_records", "an integer >= 1", c.every_records)
    _need(c.ridge_every >= 0, "classify.ridge_every", "an integer >= 0", c.ridge_every)
    _need(c.ridge_members >= 0, "classify.ridge_members", "an integer >= 0", c.ridge_members)
    _need(c.curvature_every >= 0, "classify.curvature_every", "an integer >= 0 (0: never)", c.curvature_every)
    _need(c.full_max_params >= 0, "classify.full_max_params", "an integer >= 0", c.full_max_params)
    _need(c.near_members >= 1, "classify.near_members", "an integer >= 1", c.near_members)
    _need(c.grad_rtol >= 0, "classify.grad_rtol", "a number >= 0", c.grad_rtol)
    _need(0 < c.rank_rtol < 1, "classify.rank_rtol", "a tolerance in (0, 1)", c.rank_rtol)
    _need(c.rank_band >= 1 and c.rank_rtol * c.rank_band < 1, "classify.rank_band",
          "a factor >= 1 with rank_rtol * rank_band < 1", c.rank_band)
    _need(0 < c.gamma_tol < 0.5, "classify.gamma_tol", "a tolerance in (0, 0.5)", c.gamma_tol)
    _need(cfg.precision in ("float32", "float64"), "precision", "float32 | float64", cfg.precision)
    _need(cfg.threads >= 0, "threads", "an integer >= 0 (0 = torch's default)", cfg.threads)
    _need(cfg.seed >= 0, "seed", "an integer >= 0 (member k of an ensemble uses seed + k)", cfg.seed)
    if t.kind == "regression":
        _need(t.targets in ("real", "classes"), "task.targets", "real | classes", t.targets)
    if t.kind in ("regression", "matrix_completion"):
        _need(0 <= t.noise < math.inf, "task.noise", "a finite number >= 0", t.noise)
    if t.kind == "matrix_completion":
        _need(0 < t.observed_fraction <= 1, "task.observed_fraction", "a fraction in (0, 1]", t.observed_fraction)
        _need(t.observed_count is None or t.observed_count >= 1, "task.observed_count",
              "null (use task.observed_fraction) or an integer >= 1", t.observed_count)
    j = getattr(cfg, "jumps", None)
    if j is not None:
        _validate_jumps(j)
        if j.enabled:
            check_options(cfg)
    if t.kind in ("regression", "regression_file"):
        _need(0 < t.eig_gap_rtol < 1, "task.eig_gap_rtol", "a tolerance in (0, 1)", t.eig_gap_rtol)


def checkpoint_every(r) -> int:
    """The checkpoint period of a `record` config in steps: record.checkpoint_every, or 10 x
    record.every when null (0: none)."""
    ce = getattr(r, "checkpoint_every", None)
    return 10 * int(r.every) if ce is None else int(ce)


def _validate_loss(lc) -> None:
    _need(lc.name in LOSSES, "loss", " | ".join(LOSSES), lc.name)
    _need(0 < lc.delta < math.inf, "loss.delta", "a finite number > 0", lc.delta)
    _need(1 < lc.p <= 2, "loss.p", "a number in (1, 2]", lc.p)
    _need(0 <= lc.product_ridge < math.inf, "loss.product_ridge", "a finite mu >= 0", lc.product_ridge)


def _validate_jumps(j) -> None:
    w = j.warmup
    _need(w.steps >= 0, "jumps.warmup.steps", "an integer >= 0", w.steps)
    _need(w.lr > 0, "jumps.warmup.lr", "a number > 0", w.lr)
    _need(w.ridge is None or w.ridge >= 0, "jumps.warmup.ridge", "null or lambda >= 0", w.ridge)
    _need(w.every >= 1, "jumps.warmup.every", "an integer >= 1", w.every)
    _need(j.tol_mode in ("absolute", "relative"), "jumps.tol_mode", "absolute | relative", j.tol_mode)
    for key in ("a_tol", "layer_tol"):
        v = getattr(j, key)
        _need(v > 0 and (j.tol_mode == "absolute" or v < 1), f"jumps.{key}",
              "a number > 0 (< 1 with tol_mode=relative)", v)
    _need(j.bal_rtol > 0, "jumps.bal_rtol", "a number > 0", j.bal_rtol)
    _need(j.norm_bound is None or j.norm_bound > 0, "jumps.norm_bound", "null or a number > 0", j.norm_bound)
    _need(j.grad_tol > 0, "jumps.grad_tol", "a number > 0", j.grad_tol)
    _need(0 < j.eig_rtol < 1, "jumps.eig_rtol", "a tolerance in (0, 1)", j.eig_rtol)
    _need(j.polish_steps >= 0, "jumps.polish_steps", "an integer >= 0", j.polish_steps)
    _need(j.polish_lr is None or j.polish_lr > 0, "jumps.polish_lr", "null or a number > 0", j.polish_lr)
    _need(j.polish_members >= 1, "jumps.polish_members", "an integer >= 1", j.polish_members)


def validate_against_task(cfg, task) -> None:
    """Checks that need the data: the batch size must fit in it."""
    o = cfg.optim
    if o.name == "sgd":
        _need(o.batch_size <= task.n_samples, "optim.batch_size",
              f"1..{task.n_samples} (the task's samples or observed entries)", o.batch_size)


def rank_tolerances(cfg) -> RankTolerances:
    j = cfg.jumps
    return RankTolerances(a_tol=j.a_tol, layer_tol=j.layer_tol, mode=j.tol_mode, bal_rtol=j.bal_rtol,
                            norm_bound=j.norm_bound)


def check_options(cfg) -> None:
    """The jumps.* options that dlnlab.experiments.config.validate does not check (ConfigError naming the option)."""
    j = cfg.jumps
    if not (isinstance(j.label_every, int) and j.label_every >= 0):
        raise ConfigError(f"jumps.label_every={j.label_every!r} is invalid: allowed an integer >= 0")
    if j.gd_every is not None and not (isinstance(j.gd_every, int) and j.gd_every >= 1):
        raise ConfigError(f"jumps.gd_every={j.gd_every!r} is invalid: allowed null or an integer >= 1")
    label_tolerances(cfg)


# Every LabelTolerances field but `ranks` has a jumps.* option of the same name (tests check it).
LABEL_TOL_FIELDS = ("grad_tol", "eig_rtol", "eig_atol", "orbit_rtol", "identity_rtol", "identity_roundoff",
                    "state_rtol", "shallow_rtol", "threshold_rtol", "rank_margin", "margin", "full_max_params")


def label_tolerances(cfg) -> LabelTolerances:
    """The jumps.* label tolerances as a LabelTolerances; a bad value raises ConfigError naming its
    option (dlnlab.experiments.config.validate does not know the newer ones)."""
    j = cfg.jumps
    values = {k: getattr(j, k) for k in LABEL_TOL_FIELDS}
    try:
        return LabelTolerances(**values, ranks=rank_tolerances(cfg))
    except ValueError as e:
        key = str(e).split("=", 1)[0]
        raise ConfigError(f"jumps.{str(e)}" if key in values else str(e)) from None
