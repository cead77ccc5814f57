"""Typed configuration: dataclass schemas registered with Hydra's ConfigStore.

Every leaf option is declared with `option(default, help)`: the help text is the field's metadata, which
`dlnlab-train --help` prints (dlnlab.experiments.options). Unknown keys and wrong types fail at compose time
(OmegaConf); dlnlab.experiments.checks.validate adds the semantic checks. The task schemas are those of the
registry of task kinds, dlnlab.experiments.task_kinds.TASKS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from omegaconf import MISSING

from dlnlab.experiments.fields import ConfigError, need, option
from dlnlab.experiments.task_kinds import TASKS
from dlnlab.losses import LOSSES
from dlnlab.recording.convex import TRAINING_CONVEX_TOLERANCES
from dlnlab.theory.square.classify import TRAINING_TOLERANCES

__all__ = [
    # schemas (the task schemas: dlnlab.experiments.task_kinds)
    "InitConfig", "ModelConfig", "OptimConfig", "LossConfig", "RecordConfig", "WarmupConfig", "JumpsConfig",
    "ConvexLossesConfig", "ClassifyConfig", "Config", "register",
    # values read by several modules
    "OPTIMIZERS", "MAX_DEPTH", "DEVICES", "resolve_device", "checkpoint_every",
    # the error of an invalid option (dlnlab.experiments.fields)
    "ConfigError",
]


@dataclass
class InitConfig:
    """The initialisation of the weights (dlnlab.model.INITS)."""
    kind: str = option("small", "gaussian | orthogonal | zero | small | balanced")
    scale: float = option(0.03, "entries N(0, scale^2): the saddle-to-saddle regime")
    target_spectrum: List[float] = option(
        [],
        "balanced only: factorise `scale * T` where T is the task's least-squares map (\"task\") or a matrix with "
        "these singular values and random singular vectors.")


@dataclass
class ModelConfig:
    """The network: depth H, hidden widths d_h, ensemble size E and initialisation."""
    depth: int = option(4, "H, the number of weight matrices")
    width: int = option(6, "d_h of every hidden layer h = 1..H-1")
    widths: List[int] = option([], "explicit hidden widths (overrides width)")
    ensemble: int = option(1, "E independent networks trained together")
    init: InitConfig = field(default_factory=InitConfig)


@dataclass
class OptimConfig:
    """The optimizer and its piecewise-constant lr and lambda schedules."""
    name: str = option("gd", "gd (full batch) | sgd (minibatch)")
    lr: float = option(0.008, "learning rate (constant unless lr_values is set)")
    steps: int = option(12000, "training steps")
    ridge: float = option(0.0, "lambda of the objective loss + lambda * sum_h ||W_h||_F^2")
    batch_size: int = option(1, "sgd only: samples (or observed entries) per step, with replacement")
    milestones: List[int] = option(
        [],
        "Piecewise-constant schedules: phase k covers [milestones[k-1], milestones[k]); lr_values and "
        "ridge_values give one value per phase (len(milestones) + 1), or stay empty for constant lr/ridge.")
    lr_values: List[float] = option([], "lr of each phase of the schedule")
    ridge_values: List[float] = option([], "lambda of each phase of the schedule")
    cycle: int = option(0, "> 0: the schedule repeats with this period (periodic learning rates)")
    fused: bool = option(
        True,
        "square-loss steps between records in one tight loop (same weights bit for bit); false: the general loop")


OPTIMIZERS = ("gd", "sgd")
MAX_DEPTH = 10_000  # model.depth at most


@dataclass
class LossConfig:
    """The loss of the network output (dlnlab.losses, docs/losses.md); `square` is today's loss."""
    name: str = option("square", " | ".join(LOSSES))
    delta: float = option(1.0, "huber, pseudo_huber: the transition scale (> 0)")
    p: float = option(1.5, "lp: the exponent, in (1, 2]")
    product_ridge: float = option(0.0, "mu of + mu ||W_H...W_1||_F^2 (inside the theorem; >= 0)")


@dataclass
class RecordConfig:
    """What is recorded, how often, and where it goes (table, TensorBoard, checkpoints, progress)."""
    every: int = option(100, "record every k steps (and always at step 0 and at the last step)")
    log_spaced: int = option(0, "> 0: also this many log-spaced records per decade of steps")
    rank_rtol: float = option(1e-3, "s_i counts towards the rank when s_i > rank_rtol * max(s_1, floor)")
    rank_floor: Optional[float] = option(
        None,
        "floor of that tolerance for a product of l layers: rank_floor^(l/H); null = the task's scale (the top "
        "singular value of its least-squares map), so a tiny initialisation has rank 0.")
    checkpoint_every: Optional[int] = option(
        None,
        "in steps (a multiple of `every`): resumable step_*.pt files; null = 10 x every, so a kill -9 loses at "
        "most 10 records of work; 0 = none (only last.pt at the end: nothing to resume from)")
    tensorboard: bool = option(True, "write TensorBoard events (tb/)")
    tb_every: int = option(1, "write every n-th record to TensorBoard (the table gets all)")
    tb_members: int = option(8, "ensemble members shown in TensorBoard")
    tb_singular_values: int = option(8, "end-to-end singular values shown in TensorBoard")
    flush_every: int = option(200, "records per table part (a part is also written every 10 s)")
    progress: str = option(
        "auto",
        "auto: a bar with ETA when stderr is a terminal, else a status line with ETA every progress_seconds (log "
        "files, SLURM) | on: the bar, even without a terminal | off: nothing")
    progress_seconds: float = option(10.0, "seconds between status lines when stderr is not a terminal (> 0)")
    batch: int = option(
        0,
        "records handed to the hooks together, as one stack of members (the same numbers, far fewer calls for a "
        "small network); 0 = auto: up to 16 records and 2^18 parameters in all, none waiting over about 1 s "
        "(records further apart do not wait); 1 = each record at its step")
    thread: str = option(
        "auto",
        "the built-in hooks run on a thread of their own beside the training loop (the same numbers; on two cores"
        " hooks and steps overlap) | auto: on the CPU, up to 2^22 parameters in all (a record of about a second: "
        "an interrupted run waits for one or two) | on | off: between the steps")


@dataclass
class WarmupConfig:
    """The GD warm-up phase of a rank-jump experiment."""
    steps: int = option(0, "GD steps from model.init before the main phase (0: members start from model.init)")
    lr: float = option(0.3, "learning rate of the warm-up")
    ridge: Optional[float] = option(None, "null: the main phase's lambda at step 0")
    every: int = option(500, "record cadence of the warm-up run")


@dataclass
class JumpsConfig:
    """Rank jumps (dlnlab.recording.jumps, docs/theory.md §7): phases and the rank tracker's tolerances."""
    enabled: bool = option(
        False,
        "true: run the phases warm-up (GD) -> main (optim, every member from the warm-up end point) -> GD "
        "reference, each a run folder under the output folder, plus jumps_summary.json")
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    gd_reference: bool = option(True, "also continue from the warm-up end point with GD (one network)")
    a_tol: float = option(1.0e-2, "A-rank: #{s_i(A) > a_tol}")
    layer_tol: float = option(0.1, "layer rank: max_l #{s_i(W_l) > layer_tol} (the B_r test)")
    tol_mode: str = option("absolute", "absolute | relative (tolerance times s_1 of the same matrix)")
    bal_rtol: float = option(
        2.0,
        "B_r: max_h ||W_{h+1}^T W_{h+1} - W_h W_h^T||_F <= bal_rtol ||theta||^2 / H (the ratio is <= H; SGD "
        "members of R1 measure 0.13-1.51: see dlnlab.theory.ridge.modes.RankTolerances)")
    norm_bound: Optional[float] = option(None, "B_r: ||theta||^2 <= norm_bound (null: no bound)")
    gd_every: Optional[int] = option(None, "record cadence of the GD reference phase (null: record.every)")
    label_every: int = option(
        0,
        "Labels (dlnlab.theory.ridge.labels.classify) in the tracked tables (column ridge_label): every "
        "label_every-th record (0: none) of every phase. A label costs ~1 ms per member off criticality, ~50 ms "
        "per critical member (full Hessian, R1 size), so label_every = 1 on a GD phase adds ~50 ms a record.")
    label_final: bool = option(
        True,
        "label the last record of every phase (all members), and the warm-up and GD end points in "
        "jumps_summary.json (with the A.3 mode table)")
    # Label tolerances (dlnlab.theory.ridge.modes.LabelTolerances, same names and defaults; all plumbed by
    # dlnlab.experiments.checks.label_tolerances), also for the classifier hook's ridge labels (`label`):
    grad_tol: float = option(1.0e-7, "||grad|| <= grad_tol is critical")
    eig_rtol: float = option(1.0e-6, "Hessian eigenvalues within max(eig_rtol * rho, eig_atol) of 0 count as 0")
    eig_atol: float = option(1.0e-12, "absolute floor of that tolerance")
    orbit_rtol: float = option(1.0e-7, "symmetry-orbit tangents: singular values > orbit_rtol * the largest")
    identity_rtol: float = option(1.0e-6, "||theta||^2 = H sum s_i^(2/H) holds within this relative residual")
    identity_roundoff: float = option(1.0, "that sum skips s_i <= identity_roundoff * max(n1, n2) * eps * s_1")
    state_rtol: float = option(1.0e-3, "A.3 mode table: a mode is on / at the barrier within this of the closed form")
    shallow_rtol: float = option(0.2, "A.3: a shallow basin (could switch off): barrier height <= this * a y^2")
    threshold_rtol: float = option(1.0e-6, "A.3: a mode sits at its threshold y* within this relative distance")
    rank_margin: float = option(2.0, "near-boundary flag: a singular value within this factor of a rank threshold")
    margin: float = option(10.0, "near-boundary flag: ||grad|| or an eigenvalue within this factor of its tolerance")
    full_max_params: int = option(2000, "full Hessian up to this many parameters, Lanczos above")
    polish_steps: int = option(0, "> 0: GD-polish the main phase's end points this long, then label them")
    polish_lr: Optional[float] = option(None, "null: warmup.lr")
    polish_members: int = option(16, "label at most this many members (the first ones; a label costs ~50 ms)")
    phase: str = option("", "set by dlnlab.recording.jumps in each phase folder's config (warmup | sgd | gd)")


@dataclass
class ConvexLossesConfig:
    """Table B.3 of Laurent & von Brecht's theorem (dlnlab.experiments.convex_losses, docs/theory.md §8)."""
    enabled: bool = option(
        False,
        "true: `dlnlab.run` runs the grid below instead of one training run (experiment=convex_losses)")
    losses: List[str] = option(["cross_entropy", "huber"], "the losses of the grid")
    depths: List[int] = option([3, 4], "depths H of the grid")
    widths: List[int] = option([6, 4, 2, 1], "hidden widths (< min(d_in, d_out): bottleneck)")
    inits: int = option(12, "initialisations per cell (member k: std init_stds[k mod len], seed + k)")
    init_stds: List[float] = option([0.05, 0.5, 1.5], "entry std of the inits, cycled")
    m: int = option(300, "samples of the data")
    d_in: int = option(6, "input dimension d_0")
    d_out: int = option(4, "output dimension d_H (classes for cross_entropy)")
    class_noise: float = option(1.0, "cross_entropy: noise added to the teacher's outputs before the argmax")
    noise: float = option(0.3, "huber: Gaussian noise on the targets")
    outliers: float = option(0.05, "huber: fraction of targets shifted by outlier_size")
    outlier_size: float = option(10.0, "huber: the outliers' shift")
    delta: float = option(1.0, "huber: its delta")
    lbfgs_maxiter: int = option(3000, "scipy L-BFGS-B iterations on theta per init")
    gd_steps: int = option(2000, "full-batch GD steps (the 12 inits as one ensemble, factored step)")
    gd_lr: float = option(0.05, "GD learning rate (members that diverge are reported as such)")
    reach_tol: float = option(1.0e-8, "a run reaches ell* iff loss - ell* <= reach_tol")


@dataclass
class ClassifyConfig:
    """Labels of every checkpoint (dlnlab.recording.classifier). Training iterates are only approximately
    critical, hence looser tolerances than dlnlab.theory.square.classify's defaults for exact points."""
    enabled: bool = option(True, "label the records (Theorem 7; ridge labels off the square loss)")
    every_records: int = option(1, "Theorem 7 labels every n-th record (about 1 ms per member)")
    grad_rtol: float = option(
        TRAINING_TOLERANCES.grad_rtol,
        "critical iff ||grad L|| <= grad_rtol * tr(Syy) (paper loss)")
    exact_grad_rtol: float = option(
        TRAINING_TOLERANCES.exact_grad_rtol,
        "exactly critical iff ||grad L|| <= exact_grad_rtol * the size of its terms; a point critical only to "
        "grad_rtol gets the pivots of its plateau's critical point (docs/theory.md §5)")
    rank_rtol: float = option(
        TRAINING_TOLERANCES.rank_rtol,
        "relative numerical-rank threshold of products (times sqrt(lam_k)) and pivot blocks (times s_1)")
    rank_band: float = option(
        TRAINING_TOLERANCES.rank_band,
        "singular values within a factor rank_band of the threshold: \"ambiguous\"")
    gamma_tol: float = option(
        TRAINING_TOLERANCES.gamma_tol,
        "S is read from Gamma when its entries are within this of 0 or 1")
    convex_gap_rtol: float = option(
        TRAINING_CONVEX_TOLERANCES.gap_rtol,
        "convex losses (convex_label): global_min needs convex_gap <= convex_gap_rtol * max(|ell*|, ell(0) - ell*) "
        "besides grad ell(A) ~ 0; a small gradient with a larger gap is near_global")
    ridge_every: int = option(0, "lambda > 0 or partial completion: Hessian labels every n-th record (0: last only)")
    ridge_members: int = option(16, "... of at most this many members (a Hessian label costs ~50 ms)")
    # numbers near critical points (dlnlab.recording.trajectory, docs/columns.md), square loss only
    near: bool = option(True, "near_label, near_S, near_dist, tight_margin on every labelled record")
    curvature_every: int = option(10, "lam_min, lam_max every n-th labelled record and the last (0: never)")
    full_max_params: int = option(2000, "exact Hessian eigenvalues up to this many parameters, Lanczos above")
    near_members: int = option(
        16,
        "lam_min, lam_max for the first n members of an ensemble only (NaN for the others)")
    midpoint_window: float = option(
        0.1,
        "a plateau visit's curvature record counts as its midpoint's within this fraction of the visit's "
        "records; else lam_min, lam_max are computed at the midpoint (0: always, unless one is there)")


@dataclass
class Config:
    """The whole run: what `compose` returns and `validate` checks."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = MISSING  # one of the TASKS schemas, chosen by task=...
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    jumps: JumpsConfig = field(default_factory=JumpsConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    convex_losses: ConvexLossesConfig = field(default_factory=ConvexLossesConfig)
    seed: int = option(0, "member k of an ensemble uses seed + k (init and SGD samples)")
    precision: str = option("float64", "float32 | float64")
    threads: int = option(1, "torch threads per process (small matmuls hate oversubscription)")
    device: str = option("cpu", "cpu | cuda | auto (cuda when available): where the network and the task train")
    name: str = option("run", "the run's name: the end of its folder name (default task kind + optimizer)")
    resume: Optional[str] = option(
        None,
        "a run folder (or a sweep folder) to continue from its newest checkpoint, with its saved config "
        "(dlnlab.experiments.resume); null: a new run")


def register() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for kind, spec in TASKS.items():
        cs.store(group="task", name=f"{kind}_schema", node=spec.schema)
    cs.store(group="optim", name="optim_schema", node=OptimConfig)
    cs.store(group="loss", name="loss_schema", node=LossConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="record", name="record_schema", node=RecordConfig)


DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str) -> str:
    """The torch device of the `device` option: auto is cuda when CUDA is available, else cpu."""
    need(name in DEVICES, "device", " | ".join(DEVICES), name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is invalid: CUDA is not available on this machine "
                          "(torch.cuda.is_available() is False); use device=cpu or device=auto")
    return name


def checkpoint_every(r) -> int:
    """The checkpoint period of a `record` config in steps: record.checkpoint_every, or 10 x
    record.every when null (0: none)."""
    ce = getattr(r, "checkpoint_every", None)
    return 10 * int(r.every) if ce is None else int(ce)
