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
    print(s); s.headline["fraction_jumped"]
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import yaml
from omegaconf import OmegaConf

from dlnlab.experiments.build import build_hooks, build_net, build_trainer, prepare
from dlnlab.experiments.config import check_options, label_tolerances, rank_tolerances
from dlnlab.experiments.guards import clean_run_dir, threads_for
from dlnlab.experiments.resume import (
    ENDED,
    EXPERIMENT_CONFIG,
    clear_after,
    newest_checkpoint,
    run_state,
)
from dlnlab.model import DeepLinearNet
from dlnlab.recording.base import Hook
from dlnlab.recording.folder import atomic_write, remove_tmp_files
from dlnlab.recording.jumps import RANK_TYPES, SUMMARY_FILE, RankJumpHook, _atomic_json
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


# ---------------------------------------------------------------------------------------------
# The phases

@dataclass
class JumpsSummary:
    """What `run_experiment` did; `headline` holds the numbers the CLI prints."""
    out_dir: str | None
    status: str
    wall_time: float
    phases: dict = field(default_factory=dict)
    headline: dict = field(default_factory=dict)
    task: dict = field(default_factory=dict)
    # "<phase>: <RankJumpHook.findings() line>" for every phase: layer-rank increases at H >= 3
    findings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        h = self.headline
        times = ", ".join(f"{n} {p.get('wall_time', 0):.1f} s" for n, p in self.phases.items())
        lines = [f"status      {self.status} in {self.wall_time:.1f} s ({times})"]
        lines += [f"FINDING: {f}" for f in self.findings]
        w = self.phases.get("warmup")
        if w:
            lab = w.get("label") or {}
            t = w.get("tracker") or {}
            sv = ", ".join(f"{v:.4g}" for v in (lab.get("singular_values") or [])[:4])
            if lab:
                ranks = (lab.get("layer_rank"), lab.get("e2e_rank"))
            else:  # no label (jumps.label_final=false): the tracker's last record
                ranks = tuple((t.get(k) or {}).get("final_rank", [None])[0] for k in RANK_TYPES)
            lines.append(f"warm-up     GD {w['steps']} steps at lr {w['lr']:g}, lambda {w['ridge']:g}: "
                         f"layer rank {ranks[0]}, A-rank {ranks[1]}"
                         + (f", {lab['label']}; s(A) = {sv}" if lab else ""))
        if "gd_final_layer_rank" in h:
            lines.append(f"gd          final layer rank {h['gd_final_layer_rank']}, A-rank "
                         f"{h['gd_final_e2e_rank']}, rank increases {h['gd_increases']}")
        if "members" in h:
            fj = h["first_jump_layer"]
            q = (f"first passage below the start: median step {fj['median']:.0f} "
                 f"[q1 {fj['q1']:.0f}, q3 {fj['q3']:.0f}]" if fj["count"] else "no first passage")
            lines.append(f"{h['main_optim']:<11} {h['members']} members: {h['jumped']}/{h['members']} jumped "
                         f"(layer rank {h['start_layer_rank']} -> lowest {h['lowest_layer_rank']}), {q}; "
                         f"rank increases: layer {h['increases_layer']}, A-rank {h['increases_e2e']}")
        if h.get("polish"):
            p = h["polish"]
            lines.append(f"polished    labels {p['labels']}, layer ranks {p['layer_ranks']}")
        if self.out_dir:
            lines.append(f"outputs     {self.out_dir}  (dlnlab-report {self.out_dir}; "
                         f"tensorboard --logdir {self.out_dir})")
        return "\n".join(lines)


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


def run_experiment(cfg, out_dir=None, extra_hooks: Sequence[Hook] = (), task=None,
                   resume: bool = False) -> JumpsSummary:
    """Run the phases of a `jumps.enabled` config (see the module docstring); returns a JumpsSummary
    and, with out_dir, writes the phase folders and `<out_dir>/jumps_summary.json`. `resume`: go on
    with the experiment in `out_dir` (phases that ended are read back, not run again)."""

    t_start = time.perf_counter()
    if threads_for(cfg):
        torch.set_num_threads(threads_for(cfg))
    if task is None:
        task = prepare(cfg)  # validates, jumps.* included
    else:
        check_options(cfg)
    j = cfg.jumps
    out = Path(out_dir) if out_dir is not None else None
    sub = (lambda name: out / name) if out is not None else (lambda name: None)
    ltol = label_tolerances(cfg)
    main_name = cfg.optim.name
    summary = JumpsSummary(str(out) if out else None, "running", 0.0)
    if hasattr(task, "observed_matrix"):
        y = torch.linalg.svdvals(task.observed_matrix().double()).tolist()
        a = 1.0 / task.n_samples
        H = cfg.model.depth
        lam0 = _ridge_at(cfg, 0)
        summary.task = {"kind": "matrix_completion", "singular_values": y[:6], "a": a,
                        "fully_observed": bool(task.fully_observed), "ridge": lam0,
                        "threshold_y_star": mode_threshold(lam0, a, H),
                        "tie_y": tie_value(lam0, a, H) if lam0 > 0 else None}

    old: dict = {}
    if out is not None and resume:
        try:
            old = json.loads((out / SUMMARY_FILE).read_text())
        except (OSError, ValueError):
            old = {}
    elif out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / EXPERIMENT_CONFIG, yaml.safe_dump(_container(cfg), sort_keys=False))
    # per phase: its tracker, or the findings of a phase read back ("<phase>: ..." lines)
    trackers: dict[str, RankJumpHook | list] = {}

    def read_back(name):
        info = _read_back(out, resume, old, name)
        if info is not None:
            trackers[name] = [f for f in old.get("findings") or [] if f.startswith(f"{name}: ")]
        return info

    def tracker_for(name):
        return RankJumpHook(rank_tolerances(cfg), sub(name), label_every=j.label_every,
                            label_final=j.label_final, label_tol=ltol)

    def save():  # after each phase (status running) and at the end: what a resume reads back
        summary.wall_time = time.perf_counter() - t_start
        summary.findings = [f if isinstance(t, list) else f"{n}: {f}"
                            for n, t in trackers.items() for f in (t if isinstance(t, list) else t.findings())]
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            _atomic_json(summary.to_dict(), out / SUMMARY_FILE)

    def finish(status):
        summary.status = status
        save()
        for f in summary.findings:
            log.warning("FINDING: %s", f)
        return summary

    # 1. warm-up: GD, one network, from model.init
    start = None
    if j.warmup.steps > 0:
        ridge_w = j.warmup.ridge if j.warmup.ridge is not None else _ridge_at(cfg, 0)
        cw = phase_config(cfg, "warmup", **{"optim.name": "gd", "optim.lr": j.warmup.lr,
                                            "optim.steps": j.warmup.steps, "optim.ridge": ridge_w,
                                            "optim.milestones": [], "optim.lr_values": [],
                                            "optim.ridge_values": [], "optim.cycle": 0,
                                            "model.ensemble": 1, "record.every": j.warmup.every,
                                            "record.log_spaced": 0})
        info = read_back("warmup")
        if info is not None:  # ended before a resume: its end point as the run had it in memory
            summary.phases["warmup"] = info
            if info["status"] != "finished":
                return finish(info["status"])
            start = _end_point(sub("warmup"))
        else:
            net = build_net(cw, task)
            if out is not None:
                _copy_overrides(out, sub("warmup"))
            # tracked like the other phases: an increase of the layer rank under GD counts here too
            trackers["warmup"] = tracker = tracker_for("warmup")
            tr, res = _run_phase(cw, task, net, sub("warmup"), [tracker], resume)
            start = net.member(0)
            pt = ridge_classify(start, task, ridge_w, tol=ltol) if j.label_final else None
            summary.phases["warmup"] = {"dir": str(sub("warmup")) if out else None, "status": res.status,
                                        "steps": res.step, "wall_time": res.wall_time, "lr": j.warmup.lr,
                                        "ridge": ridge_w, "label": _label_dict(pt) if pt else None,
                                        "tracker": tracker.summary()}
            if res.status not in ("finished",):
                return finish(res.status)
            save()

    # 2. main phase (cfg.optim, all members from the warm-up end point) and 3. the GD reference
    phases = [(main_name, phase_config(cfg, main_name), list(extra_hooks))]
    if j.gd_reference and main_name != "gd":
        gd_changes = {"optim.name": "gd", "model.ensemble": 1}
        if j.gd_every is not None:  # GD follows one deterministic path: sparse records lose little
            gd_changes.update({"record.every": j.gd_every, "record.log_spaced": 0})
        phases.append(("gd", phase_config(cfg, "gd", **gd_changes), []))
    status = "finished"
    for name, pc, extra in phases:
        info = read_back(name)
        if info is not None:  # ended before a resume (status finished or diverged)
            summary.phases[name] = info
            continue
        net = build_net(pc, task)
        if start is not None:
            with torch.no_grad():
                for p, w in zip(net.weights, start):
                    p.copy_(w.to(p.dtype).expand_as(p))
        trackers[name] = tracker = tracker_for(name)
        if out is not None:
            _copy_overrides(out, sub(name))
        tr, res = _run_phase(pc, task, net, sub(name), [tracker, *extra], resume)
        ridge_end = _ridge_at(pc, max(res.step - 1, 0))
        info = {"dir": str(sub(name)) if out else None, "status": res.status, "steps": res.step,
                "wall_time": res.wall_time, "members": net.E, "lr": pc.optim.lr, "ridge_end": ridge_end,
                "tracker": tracker.summary()}
        if j.label_final and net.E == 1:
            info["label"] = _label_dict(ridge_classify(net.member(0), task, ridge_end, tol=ltol))
        if name == main_name and j.polish_steps > 0 and res.status in ("finished", "diverged"):
            info["polish"] = polish(net, task, ridge_end, j.polish_steps,
                                    j.polish_lr if j.polish_lr is not None else j.warmup.lr, ltol,
                                    tr.active, j.polish_members)
        summary.phases[name] = info
        save()
        if res.status == "interrupted":
            status = "interrupted"
            break
        if res.status == "failed":
            status = "failed"
    summary.headline = _headline(summary, main_name)
    return finish(status)


def polish(net, task, ridge: float, steps: int, lr: float, tol: LabelTolerances,
           active: torch.Tensor | None = None, max_members: int | None = None) -> dict:
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
    return {"steps": steps, "lr": lr, "ridge": ridge, "seconds": time.perf_counter() - t0,
            "labels": labels, "layer_ranks": ranks,
            "per_member": [{"member": k, "label": p.label, "layer_rank": p.layer_rank, "e2e_rank": p.e2e_rank,
                            "grad_norm": p.grad_norm, "min_eig_normal": p.min_eig_normal,
                            "identity_residual": p.identity_residual, "loss": p.loss}
                           for k, p in pts.items()],
            "max_identity_residual_at_minima": max((abs(p.identity_residual) for p in mins), default=None)}


def _headline(summary: JumpsSummary, main_name: str) -> dict:
    h: dict = {"main_optim": main_name}
    gd = summary.phases.get("gd")
    if gd:
        t = gd["tracker"]
        h.update(gd_final_layer_rank=t["layer"]["final_rank"][0], gd_final_e2e_rank=t["end_to_end"]["final_rank"][0],
                 gd_increases=t["layer"]["increases"] + t["end_to_end"]["increases"])
    main = summary.phases.get(main_name)
    if main:
        t = main["tracker"]["layer"]
        start = [r for r in t["start_rank"] if r >= 0]
        h.update(members=main["members"], jumped=t["jumped"], fraction_jumped=t["fraction_jumped"],
                 start_layer_rank=max(set(start), key=start.count) if start else None,
                 lowest_layer_rank=min(t["lowest_rank"]) if t["lowest_rank"] else None,
                 final_layer_ranks={str(r): t["final_rank"].count(r) for r in sorted(set(t["final_rank"]))},
                 first_jump_layer=t["first_jump"],
                 first_jump_e2e=main["tracker"]["end_to_end"]["first_jump"],
                 increases_layer=t["increases"], increases_e2e=main["tracker"]["end_to_end"]["increases"])
        if "polish" in main:
            h["polish"] = {k: main["polish"][k] for k in ("labels", "layer_ranks", "max_identity_residual_at_minima")}
    return h


