"""Every check of a config behind one entry point, `validate(cfg)`: keys against the typed schema, the
semantic checks that types cannot express (H >= 2, widths >= 1, lr > 0, lambda >= 0, tolerances in (0, 1)...),
the task kind's own checks (dlnlab.experiments.task_kinds.TASKS), the loss's parameters, the jumps.* label
tolerances, the run name and the memory estimate; with the task, the checks that need its data.

Each failure is a ConfigError naming the option and what is allowed. The command-line overrides are checked
before composing by dlnlab.experiments.options.check_overrides (they are strings, not a config).
"""
from __future__ import annotations

import math

from dlnlab.experiments.config import MAX_DEPTH, OPTIMIZERS, resolve_device
from dlnlab.experiments.fields import ConfigError, need
from dlnlab.experiments.guards import (
    check_keys,
    check_memory,
    check_name,
    layer_widths,
    task_dims,
)
from dlnlab.experiments.task_kinds import TASK_KINDS, TASKS
from dlnlab.losses import LOSSES, LossError, make_loss
from dlnlab.model import INITS
from dlnlab.theory.ridge.modes import LabelTolerances, RankTolerances

__all__ = ["validate", "check_model", "check_optim", "check_loss", "check_record", "check_classify",
           "check_run", "check_jumps", "check_options", "check_fit", "label_tolerances", "rank_tolerances",
           "LABEL_TOL_FIELDS"]


def validate(cfg, task=None) -> None:
    """Run every check of `cfg` (a composed config); with `task`, also those that need its data (the
    memory of a task only the data sizes, the SGD batch size). Raises ConfigError naming the option."""
    check_keys(cfg)
    resolve_device(getattr(cfg, "device", "cpu"))
    check_model(cfg.model)
    need(cfg.task.kind in TASK_KINDS, "task", " | ".join(TASK_KINDS), cfg.task.kind)
    check_optim(cfg.optim)
    lc = getattr(cfg, "loss", None)
    if lc is not None:
        check_loss(lc)
    check_record(cfg.record)
    check_classify(cfg.classify)
    check_run(cfg)
    TASKS[cfg.task.kind].check(cfg.task)
    j = getattr(cfg, "jumps", None)
    if j is not None:
        check_jumps(j)
        if j.enabled:
            check_options(cfg)
    check_name(cfg.name)
    known = task_dims(cfg)
    if task is None and known is not None:  # before the task's data is made
        check_memory(cfg, layer_widths(cfg, known[0], known[1]), known[2])
    if task is not None:
        check_fit(cfg, task)


def check_model(m) -> None:
    """model.*: depth, widths, ensemble and initialisation."""
    # an upper bound before any list of layers is built (the memory check comes after the widths)
    need(2 <= m.depth <= MAX_DEPTH, "model.depth",
         f"an integer in 2..{MAX_DEPTH} (H, the number of weight matrices)", m.depth)
    need(m.width >= 1, "model.width", "an integer >= 1", m.width)
    if len(m.widths):
        need(len(m.widths) == m.depth - 1, "model.widths", f"a list of depth-1 = {m.depth - 1} hidden widths",
             list(m.widths))
        need(min(m.widths) >= 1, "model.widths", "widths >= 1", list(m.widths))
    need(m.ensemble >= 1, "model.ensemble", "an integer >= 1", m.ensemble)
    need(m.init.kind in INITS, "model.init.kind", " | ".join(INITS), m.init.kind)
    need(0 <= m.init.scale < math.inf, "model.init.scale", "a finite number >= 0", m.init.scale)


def check_optim(o) -> None:
    """optim.*: the optimizer, lr, steps, lambda, batch size and the schedules."""
    need(o.name in OPTIMIZERS, "optim", " | ".join(OPTIMIZERS), o.name)
    need(0 < o.lr < math.inf, "optim.lr", "a finite number > 0", o.lr)
    need(o.steps >= 0, "optim.steps", "an integer >= 0", o.steps)
    need(0 <= o.ridge < math.inf, "optim.ridge", "a finite lambda >= 0", o.ridge)
    need(o.batch_size >= 1, "optim.batch_size", "an integer >= 1", o.batch_size)
    ms = list(o.milestones)
    need(all(b > a for a, b in zip([0] + ms, ms)), "optim.milestones", "strictly increasing steps > 0", ms)
    for key in ("lr_values", "ridge_values"):
        vals = list(getattr(o, key))
        need(not vals or len(vals) == len(ms) + 1, f"optim.{key}",
             f"empty or len(milestones) + 1 = {len(ms) + 1} values", vals)
    need(all(0 < v < math.inf for v in o.lr_values), "optim.lr_values", "finite values > 0", list(o.lr_values))
    need(all(0 <= v < math.inf for v in o.ridge_values), "optim.ridge_values", "finite values >= 0",
         list(o.ridge_values))
    need(o.cycle >= 0 and (o.cycle == 0 or not ms or ms[-1] < o.cycle), "optim.cycle",
         "0 (no repeat) or a period longer than the last milestone", o.cycle)


def check_loss(lc) -> None:
    """loss.*: a known loss and its parameters (then dlnlab.losses' own checks of them)."""
    need(lc.name in LOSSES, "loss", " | ".join(LOSSES), lc.name)
    need(0 < lc.delta < math.inf, "loss.delta", "a finite number > 0", lc.delta)
    need(1 < lc.p <= 2, "loss.p", "a number in (1, 2]", lc.p)
    need(0 <= lc.product_ridge < math.inf, "loss.product_ridge", "a finite mu >= 0", lc.product_ridge)
    try:
        make_loss(lc.name, **{k: getattr(lc, k) for k in make_loss(lc.name).params})
    except LossError as e:
        raise ConfigError(str(e)) from None


def check_record(r) -> None:
    """record.*: cadence, rank tolerances, checkpoints, TensorBoard, tables, progress, batching."""
    need(r.every >= 1, "record.every", "an integer >= 1", r.every)
    need(r.log_spaced >= 0, "record.log_spaced", "an integer >= 0", r.log_spaced)
    need(0 < r.rank_rtol < 1, "record.rank_rtol", "a tolerance in (0, 1)", r.rank_rtol)
    need(r.rank_floor is None or r.rank_floor >= 0, "record.rank_floor", "null or a number >= 0", r.rank_floor)
    ce = r.checkpoint_every
    need(ce is None or ce >= 0, "record.checkpoint_every", "null (10 x record.every) or an integer >= 0", ce)
    # checkpoints are taken at records: a period between records would silently never fire
    need(ce is None or ce % r.every == 0, "record.checkpoint_every",
         f"null (10 x record.every), 0 (only the last) or a multiple of record.every = {r.every}", ce)
    need(r.tb_members >= 0, "record.tb_members", "an integer >= 0", r.tb_members)
    need(r.batch >= 0, "record.batch", "an integer >= 0 (0: auto)", r.batch)
    need(r.thread in ("auto", "on", "off"), "record.thread", "auto | on | off", r.thread)
    need(r.tb_singular_values >= 0, "record.tb_singular_values", "an integer >= 0", r.tb_singular_values)
    need(r.tb_every >= 1, "record.tb_every", "an integer >= 1", r.tb_every)
    need(r.flush_every >= 1, "record.flush_every", "an integer >= 1", r.flush_every)
    need(r.progress in ("auto", "on", "off"), "record.progress", "auto | on | off", r.progress)
    need(0 < r.progress_seconds < math.inf, "record.progress_seconds", "a number of seconds > 0",
         r.progress_seconds)


def check_classify(c) -> None:
    """classify.*: label cadences, member counts and the Theorem 7 tolerances."""
    need(c.every_records >= 1, "classify.every_records", "an integer >= 1", c.every_records)
    need(c.ridge_every >= 0, "classify.ridge_every", "an integer >= 0", c.ridge_every)
    need(c.ridge_members >= 0, "classify.ridge_members", "an integer >= 0", c.ridge_members)
    need(c.curvature_every >= 0, "classify.curvature_every", "an integer >= 0 (0: never)", c.curvature_every)
    need(c.full_max_params >= 0, "classify.full_max_params", "an integer >= 0", c.full_max_params)
    need(c.near_members >= 1, "classify.near_members", "an integer >= 1", c.near_members)
    need(0 <= c.midpoint_window <= 0.5, "classify.midpoint_window", "a fraction in [0, 0.5]", c.midpoint_window)
    need(c.grad_rtol >= 0, "classify.grad_rtol", "a number >= 0", c.grad_rtol)
    need(c.exact_grad_rtol >= 0, "classify.exact_grad_rtol", "a number >= 0", c.exact_grad_rtol)
    need(0 < c.convex_gap_rtol < math.inf, "classify.convex_gap_rtol", "a finite number > 0", c.convex_gap_rtol)
    need(0 < c.rank_rtol < 1, "classify.rank_rtol", "a tolerance in (0, 1)", c.rank_rtol)
    need(c.rank_band >= 1 and c.rank_rtol * c.rank_band < 1, "classify.rank_band",
         "a factor >= 1 with rank_rtol * rank_band < 1", c.rank_band)
    need(0 < c.gamma_tol < 0.5, "classify.gamma_tol", "a tolerance in (0, 0.5)", c.gamma_tol)


def check_run(cfg) -> None:
    """The top-level options: precision, threads, seed."""
    need(cfg.precision in ("float32", "float64"), "precision", "float32 | float64", cfg.precision)
    need(cfg.threads >= 0, "threads", "an integer >= 0 (0 = torch's default)", cfg.threads)
    need(cfg.seed >= 0, "seed", "an integer >= 0 (member k of an ensemble uses seed + k)", cfg.seed)


def check_jumps(j) -> None:
    """jumps.*: the warm-up, the rank tracker's tolerances and the polish."""
    w = j.warmup
    need(w.steps >= 0, "jumps.warmup.steps", "an integer >= 0", w.steps)
    need(w.lr > 0, "jumps.warmup.lr", "a number > 0", w.lr)
    need(w.ridge is None or w.ridge >= 0, "jumps.warmup.ridge", "null or lambda >= 0", w.ridge)
    need(w.every >= 1, "jumps.warmup.every", "an integer >= 1", w.every)
    need(j.tol_mode in ("absolute", "relative"), "jumps.tol_mode", "absolute | relative", j.tol_mode)
    for key in ("a_tol", "layer_tol"):
        v = getattr(j, key)
        need(v > 0 and (j.tol_mode == "absolute" or v < 1), f"jumps.{key}",
             "a number > 0 (< 1 with tol_mode=relative)", v)
    need(j.bal_rtol > 0, "jumps.bal_rtol", "a number > 0", j.bal_rtol)
    need(j.norm_bound is None or j.norm_bound > 0, "jumps.norm_bound", "null or a number > 0", j.norm_bound)
    need(j.grad_tol > 0, "jumps.grad_tol", "a number > 0", j.grad_tol)
    need(0 < j.eig_rtol < 1, "jumps.eig_rtol", "a tolerance in (0, 1)", j.eig_rtol)
    need(j.polish_steps >= 0, "jumps.polish_steps", "an integer >= 0", j.polish_steps)
    need(j.polish_lr is None or j.polish_lr > 0, "jumps.polish_lr", "null or a number > 0", j.polish_lr)
    need(j.polish_members >= 1, "jumps.polish_members", "an integer >= 1", j.polish_members)


def check_options(cfg) -> None:
    """The jumps.* options of an enabled rank-jump experiment: record cadences and label tolerances."""
    j = cfg.jumps
    if not (isinstance(j.label_every, int) and j.label_every >= 0):
        raise ConfigError(f"jumps.label_every={j.label_every!r} is invalid: allowed an integer >= 0")
    if j.gd_every is not None and not (isinstance(j.gd_every, int) and j.gd_every >= 1):
        raise ConfigError(f"jumps.gd_every={j.gd_every!r} is invalid: allowed null or an integer >= 1")
    label_tolerances(cfg)


def check_fit(cfg, task) -> None:
    """The checks that need the data: its memory (when only the data knows its size) and the batch size."""
    if task_dims(cfg) is None:
        check_memory(cfg, layer_widths(cfg, task.d_in, task.d_out), task.n_samples)
    o = cfg.optim
    if o.name == "sgd":
        need(o.batch_size <= task.n_samples, "optim.batch_size",
             f"1..{task.n_samples} (the task's samples or observed entries)", o.batch_size)


def rank_tolerances(cfg) -> RankTolerances:
    """The rank tracker's tolerances of the jumps.* options."""
    j = cfg.jumps
    return RankTolerances(a_tol=j.a_tol, layer_tol=j.layer_tol, mode=j.tol_mode, bal_rtol=j.bal_rtol,
                          norm_bound=j.norm_bound)


# Every LabelTolerances field but `ranks` has a jumps.* option of the same name (tests check it).
LABEL_TOL_FIELDS = ("grad_tol", "eig_rtol", "eig_atol", "orbit_rtol", "identity_rtol", "identity_roundoff",
                    "state_rtol", "shallow_rtol", "threshold_rtol", "rank_margin", "margin", "full_max_params")


def label_tolerances(cfg) -> LabelTolerances:
    """The jumps.* label tolerances as a LabelTolerances; a bad value raises ConfigError naming its option
    (LabelTolerances checks its own fields)."""
    j = cfg.jumps
    values = {k: getattr(j, k) for k in LABEL_TOL_FIELDS}
    try:
        return LabelTolerances(**values, ranks=rank_tolerances(cfg))
    except ValueError as e:
        key = str(e).split("=", 1)[0]
        raise ConfigError(f"jumps.{str(e)}" if key in values else str(e)) from None
