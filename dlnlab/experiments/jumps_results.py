"""Typed results of a rank-jump experiment (dlnlab.experiments.jumps): what `jumps_summary.json` holds.

`to_dict()` gives that file's JSON, with the keys and their order as before (the report, old folders and
a resume read it); `from_dict` reads a phase back for a resume. The tracker and label entries stay the
plain dicts their producers declare (dlnlab.recording.jumps.RankJumpHook.summary,
dlnlab.theory.ridge.labels.RidgePoint.to_dict).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dlnlab.recording.jumps import RANK_TYPES

__all__ = ["PolishedMember", "PolishResult", "PolishCounts", "WarmupResult", "PhaseResult", "TaskFacts",
           "Headline", "JumpsSummary", "make_headline"]


@dataclass
class PolishedMember:
    """The ridge label of one member after the GD polish."""
    member: int
    label: str
    layer_rank: int
    e2e_rank: int
    grad_norm: float
    min_eig_normal: float
    identity_residual: float
    loss: float


@dataclass
class PolishResult:
    """The GD polish of the main phase's end points: its settings and the labels of the polished members."""
    steps: int
    lr: float
    ridge: float
    seconds: float
    labels: dict  # label -> members
    layer_ranks: dict  # str(layer rank) -> members
    per_member: list  # PolishedMember, the first jumps.polish_members active members
    max_identity_residual_at_minima: float | None

    def to_dict(self) -> dict:
        """The JSON of `jumps_summary.json`'s `polish`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PolishResult:
        """A polish read back from `jumps_summary.json`."""
        return cls(**{**d, "per_member": [PolishedMember(**m) for m in d["per_member"]]})


@dataclass
class WarmupResult:
    """The GD warm-up phase: where it ran, how it ended, its label and tracker summary."""
    dir: str | None
    status: str
    steps: int
    wall_time: float
    lr: float
    ridge: float
    label: dict | None  # RidgePoint.to_dict() of the end point (None: jumps.label_final=false)
    tracker: dict  # RankJumpHook.summary()

    def to_dict(self) -> dict:
        """The JSON of the phase in `jumps_summary.json`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WarmupResult:
        """A warm-up read back from `jumps_summary.json`."""
        return cls(**d)


@dataclass
class PhaseResult:
    """The main phase or the GD reference: where it ran, how it ended, its tracker summary, the label of
    a one-network phase and the polish of the main phase."""
    dir: str | None
    status: str
    steps: int
    wall_time: float
    members: int
    lr: float
    ridge_end: float  # lambda at the last step
    tracker: dict  # RankJumpHook.summary()
    label: dict | None = None  # RidgePoint.to_dict() of member 0 (one network, jumps.label_final)
    polish: PolishResult | None = None

    def to_dict(self) -> dict:
        """The JSON of the phase in `jumps_summary.json` (label and polish only when present)."""
        d = {k: getattr(self, k) for k in ("dir", "status", "steps", "wall_time", "members", "lr", "ridge_end",
                                           "tracker")}
        if self.label is not None:
            d["label"] = self.label
        if self.polish is not None:
            d["polish"] = self.polish.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PhaseResult:
        """A phase read back from `jumps_summary.json`."""
        polish = d.get("polish")
        return cls(**{**d, "polish": PolishResult.from_dict(polish) if polish is not None else None})


@dataclass
class TaskFacts:
    """A matrix-completion task's facts in the summary: its spectrum and the A.3 thresholds at lambda."""
    kind: str
    singular_values: list
    a: float
    fully_observed: bool
    ridge: float
    threshold_y_star: float
    tie_y: float | None


@dataclass
class PolishCounts:
    """The headline's polish: label and layer-rank counts, the largest identity residual at a minimum."""
    labels: dict
    layer_ranks: dict
    max_identity_residual_at_minima: float | None


GD_KEYS = ("gd_final_layer_rank", "gd_final_e2e_rank", "gd_increases")
MAIN_KEYS = ("members", "jumped", "fraction_jumped", "start_layer_rank", "lowest_layer_rank", "final_layer_ranks",
             "first_jump_layer", "first_jump_e2e", "increases_layer", "increases_e2e")


@dataclass
class Headline:
    """The numbers the CLI prints: the GD reference's final ranks (when it ran), the main phase's jumps
    (when it ran; first jumps are the tracker's quartile dicts) and the polish counts."""
    main_optim: str
    gd_final_layer_rank: int | None = None
    gd_final_e2e_rank: int | None = None
    gd_increases: int | None = None
    members: int | None = None
    jumped: int | None = None
    fraction_jumped: float | None = None
    start_layer_rank: int | None = None
    lowest_layer_rank: int | None = None
    final_layer_ranks: dict | None = None  # str(rank) -> members
    first_jump_layer: dict | None = None
    first_jump_e2e: dict | None = None
    increases_layer: int | None = None
    increases_e2e: int | None = None
    polish: PolishCounts | None = None

    def to_dict(self) -> dict:
        """The JSON of `jumps_summary.json`'s `headline` (the keys of the phases that ran)."""
        d: dict = {"main_optim": self.main_optim}
        if self.gd_increases is not None:
            d.update({k: getattr(self, k) for k in GD_KEYS})
        if self.members is not None:
            d.update({k: getattr(self, k) for k in MAIN_KEYS})
        if self.polish is not None:
            d["polish"] = asdict(self.polish)
        return d


def make_headline(phases: dict, main_name: str) -> Headline:
    """The headline of the phases that ran (`main_name`: the main phase's optimizer)."""
    h = Headline(main_optim=main_name)
    gd = phases.get("gd")
    if gd:
        t = gd.tracker
        h.gd_final_layer_rank = t["layer"]["final_rank"][0]
        h.gd_final_e2e_rank = t["end_to_end"]["final_rank"][0]
        h.gd_increases = t["layer"]["increases"] + t["end_to_end"]["increases"]
    main = phases.get(main_name)
    if main:
        t = main.tracker["layer"]
        start = [r for r in t["start_rank"] if r >= 0]
        h.members, h.jumped, h.fraction_jumped = main.members, t["jumped"], t["fraction_jumped"]
        h.start_layer_rank = max(set(start), key=start.count) if start else None
        h.lowest_layer_rank = min(t["lowest_rank"]) if t["lowest_rank"] else None
        h.final_layer_ranks = {str(r): t["final_rank"].count(r) for r in sorted(set(t["final_rank"]))}
        h.first_jump_layer, h.first_jump_e2e = t["first_jump"], main.tracker["end_to_end"]["first_jump"]
        h.increases_layer, h.increases_e2e = t["increases"], main.tracker["end_to_end"]["increases"]
        if main.polish is not None:
            p = main.polish
            h.polish = PolishCounts(p.labels, p.layer_ranks, p.max_identity_residual_at_minima)
    return h


@dataclass
class JumpsSummary:
    """What `run_experiment` did: status and time, every phase's result, the headline, the task's facts
    (matrix completion) and the findings ("<phase>: <RankJumpHook.findings() line>": layer-rank
    increases at H >= 3)."""
    out_dir: str | None
    status: str
    wall_time: float
    phases: dict = field(default_factory=dict)  # name -> WarmupResult | PhaseResult
    headline: Headline | None = None  # None until the main phases ended
    task: TaskFacts | None = None
    findings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON of `jumps_summary.json`."""
        return {"out_dir": self.out_dir, "status": self.status, "wall_time": self.wall_time,
                "phases": {n: p.to_dict() for n, p in self.phases.items()},
                "headline": self.headline.to_dict() if self.headline is not None else {},
                "task": asdict(self.task) if self.task is not None else {},
                "findings": list(self.findings)}

    def __str__(self) -> str:
        times = ", ".join(f"{n} {p.wall_time:.1f} s" for n, p in self.phases.items())
        lines = [f"status      {self.status} in {self.wall_time:.1f} s ({times})"]
        lines += [f"FINDING: {f}" for f in self.findings]
        w = self.phases.get("warmup")
        if w:
            lines.append(_warmup_line(w))
        h = self.headline or Headline("")
        if h.gd_increases is not None:
            lines.append(f"gd          final layer rank {h.gd_final_layer_rank}, A-rank "
                         f"{h.gd_final_e2e_rank}, rank increases {h.gd_increases}")
        if h.members is not None:
            fj = h.first_jump_layer
            q = (f"first passage below the start: median step {fj['median']:.0f} "
                 f"[q1 {fj['q1']:.0f}, q3 {fj['q3']:.0f}]" if fj["count"] else "no first passage")
            lines.append(f"{h.main_optim:<11} {h.members} members: {h.jumped}/{h.members} jumped "
                         f"(layer rank {h.start_layer_rank} -> lowest {h.lowest_layer_rank}), {q}; "
                         f"rank increases: layer {h.increases_layer}, A-rank {h.increases_e2e}")
        if h.polish is not None:
            lines.append(f"polished    labels {h.polish.labels}, layer ranks {h.polish.layer_ranks}")
        if self.out_dir:
            lines.append(f"outputs     {self.out_dir}  (dlnlab-report {self.out_dir}; "
                         f"tensorboard --logdir {self.out_dir})")
        return "\n".join(lines)


def _warmup_line(w: WarmupResult) -> str:
    """The summary's warm-up line: steps, lr, lambda, final ranks (and the label of its end point)."""
    lab = w.label or {}
    t = w.tracker or {}
    sv = ", ".join(f"{v:.4g}" for v in (lab.get("singular_values") or [])[:4])
    if lab:
        ranks = (lab.get("layer_rank"), lab.get("e2e_rank"))
    else:  # no label (jumps.label_final=false): the tracker's last record
        ranks = tuple((t.get(k) or {}).get("final_rank", [None])[0] for k in RANK_TYPES)
    return (f"warm-up     GD {w.steps} steps at lr {w.lr:g}, lambda {w.ridge:g}: "
            f"layer rank {ranks[0]}, A-rank {ranks[1]}" + (f", {lab['label']}; s(A) = {sv}" if lab else ""))
