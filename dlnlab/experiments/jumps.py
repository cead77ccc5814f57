"""The rank-jump experiments (docs/theory.md §7, recipes R1-R4 and the controls).

`run_experiment(cfg, out_dir)`: a GD warm-up from `model.init` to a (rank-overestimating) minimum,
then the main phase (`cfg.optim`, every member starting from the warm-up end point) and a GD
reference from the same point, each a regular run folder tracked by `RankJumpHook`:
`<out>/warmup`, `<out>/sgd` (named after optim.name), `<out>/gd`, and `<out>/jumps_summary.json`.
The output folder itself holds no status.json, so `load_runs(out)` / `load_events(out)` read the
phases as three runs. Optionally (`jumps.polish_steps`) the main phase's end points are GD-polished
and labelled (at most `jumps.polish_members` of them). `dlnlab.run` dispatches here when
`jumps.enabled=true` (conf/experiment: one_way_jumps, rank_staircase, annealed, depth2_control,
no_ridge_control). The experiment's config is saved as `<out>/jumps_config.yaml`, and
`jumps_summary.json` is rewritten after each phase ends, so that `run_experiment(..., resume=True)`
(`dlnlab-train resume=<out>`) goes on after a stop: phases that ended are read back (the warm-up's end
point from its last.pt), the stopped one resumes from its newest checkpoint, the others run.

    from dlnlab import compose
    from dlnlab.experiments.jumps import run_experiment
    s = run_experiment(compose(["experiment=one_way_jumps"]), out_dir="runs/r1")
    print(s); s.headline.fraction_jumped
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from omegaconf import OmegaConf

from dlnlab.experiments.build import build_hooks, build_net, build_trainer, prepare
from dlnlab.experiments.checks import label_tolerances, rank_tolerances, validate
from dlnlab.experiments.guards import clean_run_dir, threads_for
from dlnlab.experiments.jumps_results import (
    JumpsSummary,
    PhaseResult,
    PolishedMember,
    PolishResult,
    TaskFacts,
    WarmupResult,
    make_headline,
)
from dlnlab.experiments.resume import (
    ENDED,
    EXPERIMENT_CONFIG,
    clear_after,
    newest_checkpoint,
    run_state,
)
from dlnlab.model import DeepLinearNet
from dlnlab.recording.base import Hook
from dlnlab.recording.jumps import RankJumpHook
from dlnlab.runfolder import SUMMARY_FILE, atomic_write, remove_tmp_files, write_json
from dlnlab.theory.ridge.labels import RidgePoint
from dlnlab.theory.ridge.labels import classify as ridge_classify
from dlnlab.theory.ridge.modes import LabelTolerances, mode_threshold, tie_value
from dlnlab.train import Schedule, Trainer

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Configs of the phases

def _container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else copy.deepcopy(dict(cfg))


def phase_config(cfg, phase: str, **changes):
    """A copy of `cfg` (a DictConfig) with dotted `changes` ({"optim.name": "gd"}) and jumps.phase set."""
    d = _container(cfg)
    for key, v in {**changes, "jumps.phase": phase}.items():
        node = d
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return OmegaConf.create(d)


def _ridge_at(cfg, step: int) -> float:
    o = cfg.optim
    return Schedule(o.ridge, o.milestones, o.ridge_values, o.cycle)(step)


def _copy_overrides(out_dir: Path, phase_dir: Path) -> None:
    src = out_dir / ".hydra" / "overrides.yaml"
    if src.exists():
        (phase_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, phase_dir / ".hydra" / "overrides.yaml")


def _run_phase(cfg, task, net, out_dir, hooks_extra=(), resume: bool = False):
    """Train one phase; `resume`: go on from the newest checkpoint in `out_dir` (none: start over there)."""
    ck = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if resume:
            ck = newest_checkpoint(out_dir)
            if ck is None:
                clean_run_dir(out_dir)
            else:
                clear_after(out_dir, int(ck["step"]))
    trainer = build_trainer(cfg, task, net, build_hooks(cfg, out_dir, hooks_extra), out_dir)
    if ck is not None:
        trainer.resume(ck)
    try:
        result = trainer.run()
    finally:
        if out_dir is not None:
            remove_tmp_files(out_dir)
    return trainer, result


def _read_back(out: Path | None, resume: bool, old: dict, name: str) -> dict | None:
    """The summary entry of a phase that ended before a resume (None: run or resume it)."""
    if not resume or out is None:
        return None
    info = (old.get("phases") or {}).get(name)
    if info and info.get("status") in ENDED and run_state(out / name) == "ended":
        return info
    return None


def _end_point(phase_dir: Path) -> list[torch.Tensor]:
    """Member 0 of a phase's last.pt: the weights the phase ended with (the warm-up's hand-off)."""
    ck = torch.load(phase_dir / "checkpoints" / "last.pt", weights_only=True)
    return [w[0] for w in ck["weights"]]


def _label_dict(pt: RidgePoint) -> dict:
    d = pt.to_dict()
    d.pop("tolerances", None)
    return d


@dataclass
class Experiment:
    """What the phases of one rank-jump experiment share: its config and task, its folder, the summary
    so far and (on a resume) the summary read back."""
    cfg: Any
    task: Any
    out: Path | None
    resume: bool
    summary: JumpsSummary
    ltol: LabelTolerances
    t_start: float
    old: dict = field(default_factory=dict)  # jumps_summary.json of the experiment resumed
    # per phase: its tracker, or the findings of a phase read back ("<phase>: ..." lines)
    trackers: dict = field(default_factory=dict)

    def sub(self, name: str) -> Path | None:
        """The folder of phase `name` (None without an output folder)."""
        return self.out / name if self.out is not None else None

    def read_back(self, name: str, kind):
        """The result (a `kind`) of a phase that ended before a resume, with its findings; None: run it."""
        info = _read_back(self.out, self.resume, self.old, name)
        if info is None:
            return None
        self.trackers[name] = [f for f in self.old.get("findings") or [] if f.startswith(f"{name}: ")]
        return kind.from_dict(info)

    def tracker_for(self, name: str) -> RankJumpHook:
        """The rank tracker of phase `name` (its events and tables go to the phase folder)."""
        j = self.cfg.jumps
        return RankJumpHook(rank_tolerances(self.cfg), self.sub(name), label_every=j.label_every,
                            label_final=j.label_final, label_tol=self.ltol)

    def save(self) -> None:
        """Write jumps_summary.json: after each phase (status running) and at the end; a resume reads it."""
        summary, out = self.summary, self.out
        summary.wall_time = time.perf_counter() - self.t_start
        summary.findings = [f if isinstance(t, list) else f"{n}: {f}"
                            for n, t in self.trackers.items() for f in (t if isinstance(t, list) else t.findings())]
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_json(summary.to_dict(), out / SUMMARY_FILE)

    def finish(self, status: str) -> JumpsSummary:
        """End with `status`: save the summary, log the findings, return it."""
        self.summary.status = status
        self.save()
        for f in self.summary.findings:
            log.warning("FINDING: %s", f)
        return self.summary


def run_experiment(cfg, out_dir=None, extra_hooks: Sequence[Hook] = (), task=None,
                   resume: bool = False) -> JumpsSummary:
    """Run the phases of a `jumps.enabled` config (see the module docstring); returns a JumpsSummary
    and, with out_dir, writes the phase folders and `<out_dir>/jumps_summary.json`. `resume`: go on
    with the experiment in `out_dir` (phases that ended are read back, not run again)."""
    ex = start_experiment(cfg, out_dir, task, resume)
    start = None
    if cfg.jumps.warmup.steps > 0:
        start, status = warmup_phase(ex)
        if status != "finished":
            return ex.finish(status)
    main = main_phase(ex, start, extra_hooks)
    reference = gd_reference_phase(ex, start) if main != "interrupted" else None
    ended = (main, reference)
    status = "interrupted" if "interrupted" in ended else "failed" if "failed" in ended else "finished"
    ex.summary.headline = make_headline(ex.summary.phases, cfg.optim.name)
    return ex.finish(status)


def start_experiment(cfg, out_dir, task, resume: bool) -> Experiment:
    """Validate, prepare the task, and open the experiment's folder: its config saved (a new experiment),
    or its summary read back (a resume)."""
    t_start = time.perf_counter()
    if threads_for(cfg):
        torch.set_num_threads(threads_for(cfg))
    if task is None:
        task = prepare(cfg)  # validates, jumps.* included
    else:
        validate(cfg, task)
    out = Path(out_dir) if out_dir is not None else None
    ltol = label_tolerances(cfg)
    summary = JumpsSummary(str(out) if out else None, "running", 0.0)
    if hasattr(task, "observed_matrix"):
        y = torch.linalg.svdvals(task.observed_matrix().double()).tolist()
        a = 1.0 / task.n_samples
        H = cfg.model.depth
        lam0 = _ridge_at(cfg, 0)
        summary.task = TaskFacts(kind="matrix_completion", singular_values=y[:6], a=a,
                                 fully_observed=bool(task.fully_observed), ridge=lam0,
                                 threshold_y_star=mode_threshold(lam0, a, H),
                                 tie_y=tie_value(lam0, a, H) if lam0 > 0 else None)
    old: dict = {}
    if out is not None and resume:
        try:
            old = json.loads((out / SUMMARY_FILE).read_text())
        except (OSError, ValueError):
            old = {}
    elif out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / EXPERIMENT_CONFIG, yaml.safe_dump(_container(cfg), sort_keys=False))
    return Experiment(cfg, task, out, resume, summary, ltol, t_start, old)


def warmup_phase(ex: Experiment) -> tuple[list[torch.Tensor] | None, str]:
    """1. The warm-up: GD, one network, from model.init (or its result read back on a resume). Returns
    its end point (the later phases' start) and its status."""
    cfg, task, j = ex.cfg, ex.task, ex.cfg.jumps
    ridge_w = j.warmup.ridge if j.warmup.ridge is not None else _ridge_at(cfg, 0)
    cw = phase_config(cfg, "warmup", **{"optim.name": "gd", "optim.lr": j.warmup.lr,
                                        "optim.steps": j.warmup.steps, "optim.ridge": ridge_w,
                                        "optim.milestones": [], "optim.lr_values": [],
                                        "optim.ridge_values": [], "optim.cycle": 0,
                                        "model.ensemble": 1, "record.every": j.warmup.every,
                                        "record.log_spaced": 0})
    info = ex.read_back("warmup", WarmupResult)
    if info is not None:  # ended before a resume: its end point as the run had it in memory
        ex.summary.phases["warmup"] = info
        if info.status != "finished":
            return None, info.status
        return _end_point(ex.sub("warmup")), info.status
    net = build_net(cw, task)
    if ex.out is not None:
        _copy_overrides(ex.out, ex.sub("warmup"))
    # tracked like the other phases: an increase of the layer rank under GD counts here too
    ex.trackers["warmup"] = tracker = ex.tracker_for("warmup")
    tr, res = _run_phase(cw, task, net, ex.sub("warmup"), [tracker], ex.resume)
    start = net.member(0)
    pt = ridge_classify(start, task, ridge_w, tol=ex.ltol) if j.label_final else None
    ex.summary.phases["warmup"] = WarmupResult(dir=str(ex.sub("warmup")) if ex.out else None, status=res.status,
                                               steps=res.step, wall_time=res.wall_time, lr=j.warmup.lr,
                                               ridge=ridge_w, label=_label_dict(pt) if pt else None,
                                               tracker=tracker.summary())
    if res.status == "finished":
        ex.save()
    return start, res.status


def main_phase(ex: Experiment, start, extra_hooks: Sequence[Hook] = ()) -> str | None:
    """2. The main phase: cfg.optim, every member from the warm-up end point `start` (None: from
    model.init), then the polish. Its status (None: read back on a resume)."""
    name = ex.cfg.optim.name
    return train_phase(ex, name, phase_config(ex.cfg, name), list(extra_hooks), start)


def gd_reference_phase(ex: Experiment, start) -> str | None:
    """3. The GD reference: one network by GD from the same start. Its status (None: not run, or read
    back on a resume)."""
    j = ex.cfg.jumps
    if not j.gd_reference or ex.cfg.optim.name == "gd":
        return None
    gd_changes = {"optim.name": "gd", "model.ensemble": 1}
    if j.gd_every is not None:  # GD follows one deterministic path: sparse records lose little
        gd_changes.update({"record.every": j.gd_every, "record.log_spaced": 0})
    return train_phase(ex, "gd", phase_config(ex.cfg, "gd", **gd_changes), [], start)


def train_phase(ex: Experiment, name: str, pc, extra: list, start) -> str | None:
    """Train phase `name` of config `pc` from `start`, tracked; label a one-network phase's end point and
    polish the main phase's. Its status (None: it had ended before a resume, and is read back)."""
    task, j = ex.task, ex.cfg.jumps
    info = ex.read_back(name, PhaseResult)
    if info is not None:  # ended before a resume (status finished or diverged)
        ex.summary.phases[name] = info
        return None
    net = build_net(pc, task)
    if start is not None:
        with torch.no_grad():
            for p, w in zip(net.weights, start):
                p.copy_(w.to(p.dtype).expand_as(p))
    ex.trackers[name] = tracker = ex.tracker_for(name)
    if ex.out is not None:
        _copy_overrides(ex.out, ex.sub(name))
    tr, res = _run_phase(pc, task, net, ex.sub(name), [tracker, *extra], ex.resume)
    ridge_end = _ridge_at(pc, max(res.step - 1, 0))
    info = PhaseResult(dir=str(ex.sub(name)) if ex.out else None, status=res.status, steps=res.step,
                       wall_time=res.wall_time, members=net.E, lr=pc.optim.lr, ridge_end=ridge_end,
                       tracker=tracker.summary())
    if j.label_final and net.E == 1:
        info.label = _label_dict(ridge_classify(net.member(0), task, ridge_end, tol=ex.ltol))
    if name == ex.cfg.optim.name and j.polish_steps > 0 and res.status in ("finished", "diverged"):
        info.polish = polish(net, task, ridge_end, j.polish_steps,
                             j.polish_lr if j.polish_lr is not None else j.warmup.lr, ex.ltol,
                             tr.active, j.polish_members)
    ex.summary.phases[name] = info
    ex.save()
    return res.status


def polish(net, task, ridge: float, steps: int, lr: float, tol: LabelTolerances,
           active: torch.Tensor | None = None, max_members: int | None = None) -> PolishResult:
    """GD on copies of the members' end points (no recording), then `ridge.classify` each of the first
    `max_members` (all: None): raw SGD iterates are noisy, their labels only mean something after a
    short GD polish (docs/theory.md §7, recipe R1)."""

    E = net.E
    pn = DeepLinearNet(net.dims, ensemble=E, init="zero", dtype=net.weights[0].dtype)
    with torch.no_grad():
        for p, w in zip(pn.weights, net.weights):
            p.copy_(torch.nan_to_num(w.detach()))
    t0 = time.perf_counter()
    Trainer(pn, task, optim="gd", lr=lr, steps=steps, ridge=ridge).run()
    members = [k for k in range(E) if active is None or bool(active[k])][:max_members]
    pts = {k: ridge_classify(pn.member(k), task, ridge, tol=tol, modes=False) for k in members}
    labels = {}
    for p in pts.values():
        labels[p.label] = labels.get(p.label, 0) + 1
    ranks = {}
    for p in pts.values():
        ranks[str(p.layer_rank)] = ranks.get(str(p.layer_rank), 0) + 1
    mins = [p for p in pts.values() if p.label == "local_min"]
    return PolishResult(steps=steps, lr=lr, ridge=ridge, seconds=time.perf_counter() - t0,
                        labels=labels, layer_ranks=ranks,
                        per_member=[PolishedMember(member=k, label=p.label, layer_rank=p.layer_rank,
                                                   e2e_rank=p.e2e_rank, grad_norm=p.grad_norm,
                                                   min_eig_normal=p.min_eig_normal,
                                                   identity_residual=p.identity_residual, loss=p.loss)
                                    for k, p in pts.items()],
                        max_identity_residual_at_minima=max((abs(p.identity_residual) for p in mins),
                                                            default=None))
