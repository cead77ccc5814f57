"""One-way rank jumps (Wang & Jacot 2024; spec: rank_jumps.md): track SGD from high to low rank.

Three pieces:

* `RankJumpHook`, a recording hook that follows every ensemble member: at each record its A-rank
  (end-to-end) and layer rank (`ridge.RankTolerances`), the set B_r it lies in, its second-order
  label (`ridge.classify`, every `jumps.label_every` records and at the last one), and the events
  "member k entered B_r' from B_r at step t" (first passage; `in_B` says whether the point also
  meets B's balance and norm conditions) and "rank increase" (for H >= 3 under GD/SGD there must be
  none: an increase is logged as a warning, kept as an event and listed as a FINDING in the run
  summary, never hidden). Events go to `<run_dir>/events.parquet` (read with
  `dlnlab.runs.load_events`), curves to TensorBoard.
* `run_experiment(cfg, out_dir)`, the phases of recipe R1 (rank_jumps.md): a GD warm-up from
  `model.init` to a (rank-overestimating) minimum, then the main phase (`cfg.optim`, every member
  starting from the warm-up end point) and a GD reference from the same point, each a regular run
  folder, each tracked: `<out>/warmup`, `<out>/sgd` (named after optim.name), `<out>/gd`;
  `<out>/jumps_summary.json`. The output folder itself holds no status.json, so
  `dlnlab.runs.load_runs(out)` / `load_events(out)` read the phases as three runs. Optionally
  (`jumps.polish_steps`) the main phase's end points are GD-polished and labelled by
  `dlnlab.ridge.classify` (at most `jumps.polish_members` of them).
  It runs when `jumps.enabled=true` (the conf/experiment files one_way_jumps, rank_staircase,
  annealed, depth2_control, no_ridge_control); `dlnlab.experiment.run` dispatches to it.
* `report_table`, `report_figure` (scripts/jumps_report.py) and the benchmarks `bench_r1`,
  `bench_tracker` (scripts/bench.py).

From a notebook:

    from dlnlab.experiment import compose
    from dlnlab.jumps import run_experiment
    s = run_experiment(compose(["experiment=one_way_jumps"]), out_dir="runs/r1")
    print(s); s.headline["fraction_jumped"]
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from dlnlab import ridge as R
from dlnlab.hooks import Hook, Record
from dlnlab.runs import EVENT_COLUMNS, EVENTS_FILE  # the events format lives with the run folder's

log = logging.getLogger(__name__)

EVENT_KINDS = ("entered", "increase")
RANK_TYPES = ("layer", "end_to_end")
SUMMARY_FILE = "jumps_summary.json"
REPORT_PNG = "jumps_report.png"
# TensorBoard folder of the report figure, inside the report's RUN folder: replaced on every
# report, so re-running jumps_report.py leaves exactly one `jumps/report` image.
REPORT_TB_DIR = "jumps_report_tb"


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _atomic_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def events_frame(rows: Sequence[tuple]) -> pd.DataFrame:
    """Rows (member, step, from_rank, to_rank, kind, rank_type, in_B) as the events table."""
    cols = list(EVENT_COLUMNS)
    data = list(zip(*rows)) if rows else [[] for _ in cols]
    return pd.DataFrame({c: pd.Series(list(v), dtype=EVENT_COLUMNS[c]) for c, v in zip(cols, data)})


def _quartiles(values: Sequence[float]) -> dict:
    if not len(values):
        return {"count": 0, "min": None, "q1": None, "median": None, "q3": None, "max": None}
    v = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"count": int(v.size), "min": float(v.min()), "q1": float(q1), "median": float(med),
            "q3": float(q3), "max": float(v.max())}


# ---------------------------------------------------------------------------------------------
# The tracker

class RankJumpHook(Hook):
    """Follows every ensemble member's A-rank and layer rank; records first passages and increases.

    Per record it adds the columns `e2e_rank_jump` (A-rank: #{s_i(A) > a_tol}), `layer_rank`
    (max_l #{s_i(W_l) > layer_tol}) and `jump_label` ("B<r>": the point lies in B_r, r its layer rank,
    i.e. it is balanced within bal_rtol and norm-bounded; "outside" otherwise), and with labels on
    (every `label_every`-th record, and the last record with `label_final`) `ridge_label`
    (dlnlab.ridge.classify: not_critical, strict_saddle, local_min or degenerate; "" on records
    without a label).

    Cost of labels: a point that is not critical costs one gradient (~1 ms); a critical one a full
    Hessian and its eigen-decomposition (~50 ms for the 300 parameters of the R1 network, more with
    the Lanczos path above LabelTolerances.full_max_params), per member. Raw SGD iterates are never
    critical at grad_tol, so labels there are cheap but say little (polish first, jumps.polish_steps);
    on a GD phase, label_every = 1 costs ~50 ms per record. Hence the default: only the last record.

    Events, per rank type ("layer", "end_to_end") and member, with `in_B` (the point at the event
    record meets the balance and norm conditions of B, RankState.in_B):
      entered   the rank fell below every value it had before: first passage into the rank-<=to_rank
                stratum (B_{to_rank} itself when in_B; from_rank = its rank at the previous record);
                a fall by two ranks at once is one event
      increase  the rank rose from one record to the next. For the layer rank at H >= 3 this is a
                finding (the sets B_r are absorbing): logged as a WARNING and listed by `findings()`
                (run_experiment prints them as FINDING lines). End-to-end increases are logged at
                INFO level: the A-rank reads a product, whose small singular values can dip below the
                threshold and come back (rank_jumps.md, "Reading them").
    Ranks are read at records only (the trainer's cadence); first-passage steps are the first record
    at the lower rank. Diverged (frozen or non-finite) members are skipped from then on.

    Events are written to `<out_dir>/events.parquet` atomically at the start (empty: the run is
    tracked), whenever new events occur, and at the end. TensorBoard: per-member `jumps/layer_rank`,
    `jumps/e2e_rank` through the TensorBoardHook's `extra` columns, for its first record.tb_members
    members only (TensorBoard gets slow with hundreds of curves; the run table has every member),
    the number of members at each layer rank, cumulative increases, the fraction of members that
    jumped (all members), and at the end the histograms of the first jumps (first passage below the
    start rank, all members).
    """

    def __init__(self, tol: R.RankTolerances | None = None, out_dir=None, *, label_every: int = 0,
                 label_final: bool = False, label_tol: R.LabelTolerances | None = None,
                 cadence=None):
        self.tol = tol or R.RankTolerances()
        self.out_dir = out_dir
        if int(label_every) < 0:
            raise ValueError(f"label_every={label_every}: allowed an integer >= 0 (0: no periodic labels)")
        self.label_every, self.label_final = int(label_every), bool(label_final)
        self.label_tol = label_tol or R.LabelTolerances(ranks=self.tol)
        self.cadence = cadence
        self.rows: list[tuple] = []
        self.row_ridge: list[float] = []  # lambda at each event (parallel to rows), for findings
        self._written = -1

    # -- state -----------------------------------------------------------------------------------
    def on_start(self, trainer) -> None:
        net = trainer.net
        self.E, self.H = net.E, net.H
        self.optim = getattr(trainer, "optim_name", "")
        self.max_rank = max(net.dims)
        self.prev = {t: torch.full((self.E,), -1, dtype=torch.long) for t in RANK_TYPES}
        self.low = {t: torch.full((self.E,), -1, dtype=torch.long) for t in RANK_TYPES}
        self.start = {t: torch.full((self.E,), -1, dtype=torch.long) for t in RANK_TYPES}
        self.steps_at = torch.zeros(self.E, self.max_rank + 1, dtype=torch.long)  # layer rank
        self.prev_step: int | None = None
        self.last_step = 0
        self.dead = torch.zeros(self.E, dtype=torch.bool)
        self.rows, self.row_ridge, self._written, self._n = [], [], -1, 0
        self.seconds = 0.0
        if self.out_dir is None:
            self.out_dir = getattr(trainer, "out_dir", None)
        tb = self._tb_hook(trainer)
        if tb is not None:
            tb.extra.setdefault("layer_rank", "jumps/layer_rank")
            tb.extra.setdefault("e2e_rank_jump", "jumps/e2e_rank")
        self.write_events()

    @staticmethod
    def _tb_hook(trainer):
        from dlnlab.hooks import TensorBoardHook
        return next((h for h in getattr(trainer, "hooks", []) if isinstance(h, TensorBoardHook)), None)

    def _ranks(self, rec: Record, alive: torch.Tensor) -> R.RankState:
        m, H = rec.metrics, len(rec.weights)
        ws = [w.detach().double() for w in rec.weights]
        keys = [f"sv_{h}_{h}" for h in range(1, H + 1)] + [f"sv_{H}_1", "theta_sq"] + \
               [f"balance_{h}" for h in range(1, H)]
        if all(k in m for k in keys):  # MetricsHook ran first: reuse its spectra
            fix = lambda t: torch.nan_to_num(t.double(), nan=0.0)
            return R.rank_state(ws, self.tol, sv_layers=[fix(m[f"sv_{h}_{h}"]) for h in range(1, H + 1)],
                                sv_e2e=fix(m[f"sv_{H}_1"]), theta_sq=fix(m["theta_sq"]),
                                balances=[fix(m[f"balance_{h}"]) for h in range(1, H)])
        if not bool(alive.all()):
            ws = [torch.where(alive.view(-1, 1, 1), torch.nan_to_num(w), 0.0) for w in ws]
        return R.rank_state(ws, self.tol)

    def on_record(self, trainer, rec: Record) -> None:
        t0 = time.perf_counter()
        finite = torch.stack([torch.isfinite(w).flatten(1).all(1) for w in rec.weights]).all(0)
        if "rank" in rec.metrics:  # finite layers whose product overflowed: the metrics say NaN
            finite &= torch.isfinite(rec.metrics["rank"])
        self.dead |= ~(rec.active & finite)
        alive = ~self.dead
        st = self._ranks(rec, alive)
        ranks = {"layer": st.layer_rank.long(), "end_to_end": st.e2e_rank.long()}
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        m = rec.metrics
        m["e2e_rank_jump"] = torch.where(alive, ranks["end_to_end"].double(), nan)
        m["layer_rank"] = torch.where(alive, ranks["layer"].double(), nan)
        m["jump_label"] = [("B%d" % r if b else "outside") if a else "diverged"
                           for r, b, a in zip(ranks["layer"].tolist(), st.in_B.tolist(), alive.tolist())]
        # steps spent at each layer rank, attributed to the rank of the previous record
        if self.prev_step is not None:
            dt = rec.step - self.prev_step
            idx = torch.nonzero(alive & (self.prev["layer"] >= 0)).flatten()
            if dt > 0 and len(idx):
                self.steps_at.index_put_((idx, self.prev["layer"][idx]), torch.full_like(idx, dt),
                                         accumulate=True)
        new = 0
        for t in RANK_TYPES:
            new += self._update(t, ranks[t], alive, rec.step, st.in_B)
        self.row_ridge += [float(rec.ridge)] * (len(self.rows) - len(self.row_ridge))
        self.prev_step, self.last_step = rec.step, rec.step
        self._n += 1
        if self.label_every or self.label_final:
            due = bool(self.label_every and (self._n - 1) % self.label_every == 0) or (self.label_final and rec.final)
            m["ridge_label"] = self._labels(trainer, rec, alive) if due else [""] * self.E
        self._tensorboard(trainer, rec, ranks, alive)
        if new:
            self.write_events()
        self.seconds += time.perf_counter() - t0

    def _update(self, t: str, r: torch.Tensor, alive: torch.Tensor, step: int, in_B: torch.Tensor) -> int:
        prev, low = self.prev[t], self.low[t]
        first = alive & (prev < 0)
        seen = alive & (prev >= 0)
        dec = seen & (r < low)
        inc = seen & (r > prev)
        n = 0
        for k in torch.nonzero(dec).flatten().tolist():
            self.rows.append((k, step, int(prev[k]), int(r[k]), "entered", t, bool(in_B[k])))
            n += 1
        for k in torch.nonzero(inc).flatten().tolist():
            self.rows.append((k, step, int(prev[k]), int(r[k]), "increase", t, bool(in_B[k])))
            n += 1
            msg = (f"rank increase: member {k}, {t} rank {int(prev[k])} -> {int(r[k])} at step {step} "
                   f"(H = {self.H}, {self.optim or 'optimizer'}; "
                   f"{'in' if bool(in_B[k]) else 'outside'} B there)")
            if t == "layer" and self.H >= 3:
                log.warning("FINDING: %s; the sets B_r should be absorbing for H >= 3 under GD/SGD", msg)
            else:
                log.info("%s", msg)
        self.start[t] = torch.where(first, r, self.start[t])
        self.low[t] = torch.where(first, r, torch.where(seen, torch.minimum(low, r), low))
        self.prev[t] = torch.where(alive, r, prev)
        return n

    def _labels(self, trainer, rec: Record, alive: torch.Tensor) -> list[str]:
        out = []
        for k in range(self.E):
            if not bool(alive[k]):
                out.append("diverged")
                continue
            pt = R.classify([w[k] for w in rec.weights], trainer.task, rec.ridge, tol=self.label_tol,
                            modes=False)
            out.append(pt.label)
        return out

    def _tensorboard(self, trainer, rec: Record, ranks: dict, alive: torch.Tensor) -> None:
        tb = self._tb_hook(trainer)
        if tb is None or tb.writer is None:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        lay = ranks["layer"][alive]
        counts = torch.bincount(lay, minlength=self.max_rank + 1) if len(lay) else torch.zeros(1)
        values = [(f"jumps/members_at_layer_rank/{r}", float(c)) for r, c in enumerate(counts.tolist())
                  if c or r <= int(self.start["layer"].max())]
        values.append(("jumps/increases_layer", float(len(self.increases("layer")))))
        jumped = (self.low["layer"] < self.start["layer"]) & (self.start["layer"] >= 0)
        values.append(("jumps/fraction_jumped", float(jumped.double().mean())))
        summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values])
        tb.writer._get_file_writer().add_summary(summary, rec.step)

    def on_end(self, trainer, status: str) -> None:
        self.write_events()
        tb = self._tb_hook(trainer)
        if tb is not None and tb.writer is not None:
            for t in RANK_TYPES:  # first jump of each member: first passage below its start rank
                vals = [s for s in self.first_jumps(t) if s is not None]
                if vals:
                    tb.writer.add_histogram(f"jumps/first_passage_{t}", np.asarray(vals, dtype=float),
                                            self.last_step)
            tb.writer.flush()

    # -- outputs ---------------------------------------------------------------------------------
    @property
    def events(self) -> pd.DataFrame:
        return events_frame(self.rows)

    def write_events(self) -> None:
        if self.out_dir is None or self._written == len(self.rows):
            return
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        _atomic_parquet(self.events, Path(self.out_dir) / EVENTS_FILE)
        self._written = len(self.rows)

    def first_passages(self, rank_type: str = "layer") -> dict[int, list]:
        """{r: [step or None per member]}: the first record at rank <= r, for every r below the
        highest start rank (None: never; members that started at rank <= r are left out as None)."""
        start = self.start[rank_type].tolist()
        top = max(start) if start else -1
        out = {}
        for r in range(max(top, 0)):
            steps: list = [None] * self.E
            for (k, step, _, to, kind, t, _) in self.rows:
                if t == rank_type and kind == "entered" and to <= r and start[k] > r:
                    steps[k] = step if steps[k] is None else min(steps[k], step)
            out[r] = steps
        return out

    def first_jumps(self, rank_type: str = "layer") -> list:
        """Per member: the step of its first passage below its start rank, or None."""
        out: list = [None] * self.E
        for (k, step, _, _, kind, t, _) in self.rows:
            if t == rank_type and kind == "entered":
                out[k] = step if out[k] is None else min(out[k], step)
        return out

    def increases(self, rank_type: str = "layer") -> list[tuple]:
        """The increase events (member, step, from_rank, to_rank, kind, rank_type, in_B) of a rank type."""
        return [e for e in self.rows if e[4] == "increase" and e[5] == rank_type]

    def findings(self) -> list[str]:
        """Layer-rank increases at H >= 3, one line each per run (empty list: none). rank_jumps.md
        A.2: under GD/SGD the sets B_r are absorbing, so each is a result that contradicts the spec
        (or shows that its conditions, small lambda and lr, do not hold), to be reported, not hidden."""
        inc = self.increases("layer")
        if getattr(self, "H", 0) < 3 or not inc:  # H unset: the run never started
            return []
        members = sorted({e[0] for e in inc})
        first = min(inc, key=lambda e: e[1])
        lams = sorted({lam for e, lam in zip(self.rows, self.row_ridge) if e[4] == "increase" and e[5] == "layer"})
        return [f"{len(inc)} layer-rank increase(s) at H = {self.H} under {self.optim or 'the optimizer'}, "
                f"lambda {', '.join(f'{v:g}' for v in lams)}: members {members}, the first at step {first[1]} "
                f"(member {first[0]}, {first[2]} -> {first[3]}); {sum(e[6] for e in inc)}/{len(inc)} of the "
                "points were in B (balance, norm) after the increase; rank_jumps.md A.2: B_r is absorbing "
                "for GD/SGD at small enough lambda > 0 and lr"]

    def summary(self) -> dict:
        """What the run did, as plain JSON-able values (see run_experiment's jumps_summary.json)."""
        out = {"members": self.E, "depth": self.H, "optim": self.optim, "last_step": self.last_step,
               "tolerances": asdict(self.tol), "tracker_seconds": self.seconds,
               "diverged": [k for k in range(self.E) if bool(self.dead[k])], "findings": self.findings()}
        for t in RANK_TYPES:
            start, final = self.start[t].tolist(), self.prev[t].tolist()
            fp = self.first_passages(t)
            first_jump = [s for s in self.first_jumps(t) if s is not None]
            jumped = [k for k, s in enumerate(self.first_jumps(t)) if s is not None]
            out[t] = {
                "start_rank": start, "final_rank": final, "lowest_rank": self.low[t].tolist(),
                "jumped": len(jumped), "fraction_jumped": len(jumped) / max(self.E, 1),
                "first_jump": _quartiles(first_jump),
                "first_passage": {str(r): {**_quartiles([s for s in v if s is not None]),
                                           "fraction": sum(s is not None for s in v) / max(self.E, 1),
                                           "steps": v}
                                  for r, v in fp.items()},
                "increases": len(self.increases(t)),
                "entered_outside_B": sum(1 for e in self.rows if e[4] == "entered" and e[5] == t and not e[6]),
            }
        sa = self.steps_at
        out["layer"]["steps_at_rank"] = {str(r): int(sa[:, r].sum()) for r in range(sa.shape[1]) if sa[:, r].any()}
        out["layer"]["steps_at_rank_per_member"] = [{str(r): int(v) for r, v in enumerate(row.tolist()) if v}
                                                    for row in sa]
        return out


# ---------------------------------------------------------------------------------------------
# Configs of the phases

def rank_tolerances(cfg) -> R.RankTolerances:
    j = cfg.jumps
    return R.RankTolerances(a_tol=j.a_tol, layer_tol=j.layer_tol, mode=j.tol_mode, bal_rtol=j.bal_rtol,
                            norm_bound=j.norm_bound)


def check_options(cfg) -> None:
    """The jumps.* options that dlnlab.config.validate does not check (ConfigError naming the option)."""
    from dlnlab.config import ConfigError
    j = cfg.jumps
    if not (isinstance(j.label_every, int) and j.label_every >= 0):
        raise ConfigError(f"jumps.label_every={j.label_every!r} is invalid: allowed an integer >= 0")
    if j.gd_every is not None and not (isinstance(j.gd_every, int) and j.gd_every >= 1):
        raise ConfigError(f"jumps.gd_every={j.gd_every!r} is invalid: allowed null or an integer >= 1")
    label_tolerances(cfg)


# Every LabelTolerances field but `ranks` has a jumps.* option of the same name (tests check it).
LABEL_TOL_FIELDS = ("grad_tol", "eig_rtol", "eig_atol", "orbit_rtol", "identity_rtol", "identity_roundoff",
                    "state_rtol", "shallow_rtol", "threshold_rtol", "rank_margin", "margin", "full_max_params")


def label_tolerances(cfg) -> R.LabelTolerances:
    """The jumps.* label tolerances as a LabelTolerances; a bad value raises ConfigError naming its
    option (dlnlab.config.validate does not know the newer ones)."""
    from dlnlab.config import ConfigError
    j = cfg.jumps
    values = {k: getattr(j, k) for k in LABEL_TOL_FIELDS}
    try:
        return R.LabelTolerances(**values, ranks=rank_tolerances(cfg))
    except ValueError as e:
        key = str(e).split("=", 1)[0]
        raise ConfigError(f"jumps.{str(e)}" if key in values else str(e)) from None


def _container(cfg) -> dict:
    from omegaconf import OmegaConf
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else copy.deepcopy(dict(cfg))


def phase_config(cfg, phase: str, **changes):
    """A copy of `cfg` (a DictConfig) with dotted `changes` ({"optim.name": "gd"}) and jumps.phase set."""
    from omegaconf import OmegaConf
    d = _container(cfg)
    for key, v in {**changes, "jumps.phase": phase}.items():
        node = d
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return OmegaConf.create(d)


def _ridge_at(cfg, step: int) -> float:
    from dlnlab.train import Schedule
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
            lines.append(f"outputs     {self.out_dir}  (python scripts/jumps_report.py {self.out_dir}; "
                         f"tensorboard --logdir {self.out_dir})")
        return "\n".join(lines)


def _copy_overrides(out_dir: Path, phase_dir: Path) -> None:
    src = out_dir / ".hydra" / "overrides.yaml"
    if src.exists():
        (phase_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, phase_dir / ".hydra" / "overrides.yaml")


def _run_phase(cfg, task, net, out_dir, hooks_extra=()):
    from dlnlab.experiment import build_hooks, build_trainer
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, task, net, build_hooks(cfg, out_dir, hooks_extra), out_dir)
    result = trainer.run()
    return trainer, result


def _label_dict(pt: R.RidgePoint) -> dict:
    d = pt.to_dict()
    d.pop("tolerances", None)
    return d


def run_experiment(cfg, out_dir=None, extra_hooks: Sequence[Hook] = (), task=None) -> JumpsSummary:
    """Run the phases of a `jumps.enabled` config (see the module docstring); returns a JumpsSummary
    and, with out_dir, writes the phase folders and `<out_dir>/jumps_summary.json`."""
    from dlnlab.experiment import build_net, prepare

    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
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
                        "threshold_y_star": R.mode_threshold(lam0, a, H),
                        "tie_y": R.tie_value(lam0, a, H) if lam0 > 0 else None}

    trackers: dict[str, RankJumpHook] = {}

    def tracker_for(name):
        return RankJumpHook(rank_tolerances(cfg), sub(name), label_every=j.label_every,
                            label_final=j.label_final, label_tol=ltol)

    def finish(status):
        summary.status = status
        summary.wall_time = time.perf_counter() - t_start
        summary.findings = [f"{n}: {f}" for n, t in trackers.items() for f in t.findings()]
        for f in summary.findings:
            log.warning("FINDING: %s", f)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            _atomic_json(summary.to_dict(), out / SUMMARY_FILE)
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
        net = build_net(cw, task)
        if out is not None:
            _copy_overrides(out, sub("warmup"))
        # tracked like the other phases: an increase of the layer rank under GD counts here too
        trackers["warmup"] = tracker = tracker_for("warmup")
        tr, res = _run_phase(cw, task, net, sub("warmup"), [tracker])
        start = net.member(0)
        pt = R.classify(start, task, ridge_w, tol=ltol) if j.label_final else None
        summary.phases["warmup"] = {"dir": str(sub("warmup")) if out else None, "status": res.status,
                                    "steps": res.step, "wall_time": res.wall_time, "lr": j.warmup.lr,
                                    "ridge": ridge_w, "label": _label_dict(pt) if pt else None,
                                    "tracker": tracker.summary()}
        if res.status not in ("finished",):
            return finish(res.status)

    # 2. main phase (cfg.optim, all members from the warm-up end point) and 3. the GD reference
    phases = [(main_name, phase_config(cfg, main_name), list(extra_hooks))]
    if j.gd_reference and main_name != "gd":
        gd_changes = {"optim.name": "gd", "model.ensemble": 1}
        if j.gd_every is not None:  # GD follows one deterministic path: sparse records lose little
            gd_changes.update({"record.every": j.gd_every, "record.log_spaced": 0})
        phases.append(("gd", phase_config(cfg, "gd", **gd_changes), []))
    status = "finished"
    for name, pc, extra in phases:
        net = build_net(pc, task)
        if start is not None:
            with torch.no_grad():
                for p, w in zip(net.weights, start):
                    p.copy_(w.to(p.dtype).expand_as(p))
        trackers[name] = tracker = tracker_for(name)
        if out is not None:
            _copy_overrides(out, sub(name))
        tr, res = _run_phase(pc, task, net, sub(name), [tracker, *extra])
        ridge_end = _ridge_at(pc, max(res.step - 1, 0))
        info = {"dir": str(sub(name)) if out else None, "status": res.status, "steps": res.step,
                "wall_time": res.wall_time, "members": net.E, "lr": pc.optim.lr, "ridge_end": ridge_end,
                "tracker": tracker.summary()}
        if j.label_final and net.E == 1:
            info["label"] = _label_dict(R.classify(net.member(0), task, ridge_end, tol=ltol))
        if name == main_name and j.polish_steps > 0 and res.status in ("finished", "diverged"):
            info["polish"] = polish(net, task, ridge_end, j.polish_steps,
                                    j.polish_lr if j.polish_lr is not None else j.warmup.lr, ltol,
                                    tr.active, j.polish_members)
        summary.phases[name] = info
        if res.status == "interrupted":
            status = "interrupted"
            break
        if res.status == "failed":
            status = "failed"
    summary.headline = _headline(summary, main_name)
    return finish(status)


def polish(net, task, ridge: float, steps: int, lr: float, tol: R.LabelTolerances,
           active: torch.Tensor | None = None, max_members: int | None = None) -> dict:
    """GD on copies of the members' end points (no recording), then `ridge.classify` each of the first
    `max_members` (all: None): raw SGD iterates are noisy, their labels only mean something after a
    short GD polish (rank_jumps.md R1)."""
    from dlnlab.model import DeepLinearNet
    from dlnlab.train import Trainer

    E = net.E
    pn = DeepLinearNet(net.dims, ensemble=E, init="zero", dtype=net.weights[0].dtype)
    with torch.no_grad():
        for p, w in zip(pn.weights, net.weights):
            p.copy_(torch.nan_to_num(w.detach()))
    t0 = time.perf_counter()
    Trainer(pn, task, optim="gd", lr=lr, steps=steps, ridge=ridge).run()
    members = [k for k in range(E) if active is None or bool(active[k])][:max_members]
    pts = {k: R.classify(pn.member(k), task, ridge, tol=tol, modes=False) for k in members}
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


# ---------------------------------------------------------------------------------------------
# Reading and reporting

def read_summary(path) -> dict | None:
    p = Path(path) / SUMMARY_FILE
    return json.loads(p.read_text()) if p.exists() else None


def phase_dirs(path) -> dict[str, Path]:
    """{phase name: run folder} of an experiment folder (jumps_summary.json), or {name: path} for a
    single tracked run folder."""
    path = Path(path)
    s = read_summary(path)
    if s:
        return {n: Path(p["dir"]) if p.get("dir") and Path(p["dir"]).exists() else path / n
                for n, p in s["phases"].items()}
    from dlnlab.runs import find_runs
    return {(p.name if p != path else path.name): p for p in find_runs(path)}


def rank_curves(path) -> pd.DataFrame:
    """step, member, layer_rank, e2e_rank_jump and `phase` of every tracked phase under `path`."""
    from dlnlab.runs import load_run
    frames = []
    for name, d in phase_dirs(path).items():
        try:
            df = load_run(d, config=False)
        except Exception:  # noqa: BLE001 - a phase without a table
            continue
        if "layer_rank" not in df.columns:
            continue
        frames.append(df[["step", "member", "layer_rank", "e2e_rank_jump"]].assign(phase=name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["step", "member", "layer_rank", "e2e_rank_jump", "phase"])


def report_table(path) -> pd.DataFrame:
    """One row per tracked phase: members, start/final layer ranks, members jumped, first-passage
    quartiles (layer and A-rank), rank increases, computed from the run tables and events files."""
    curves = rank_curves(path)
    rows = []
    for name, d in phase_dirs(path).items():
        c = curves[curves["phase"] == name]
        if c.empty:
            continue
        ev = pd.read_parquet(Path(d) / EVENTS_FILE) if (Path(d) / EVENTS_FILE).exists() else events_frame([])
        first = c[c["step"] == c["step"].min()].set_index("member")["layer_rank"]
        last = c[c["step"] == c["step"].max()].set_index("member")["layer_rank"]
        row = {"phase": name, "members": int(c["member"].nunique()),
               "start_layer_rank": int(first.mode().iloc[0]),
               "final_layer_ranks": dict(sorted((int(k), int(v)) for k, v in last.value_counts().items()))}
        for t, col in (("layer", "layer"), ("end_to_end", "e2e")):
            ent = ev[(ev["kind"] == "entered") & (ev["rank_type"] == t)].groupby("member")["step"].min()
            q = _quartiles(ent.tolist())
            if t == "layer":
                row["jumped"] = int(len(ent))
            row[f"first_passage_{col}_median"] = q["median"]
            row[f"first_passage_{col}_q1"] = q["q1"]
            row[f"first_passage_{col}_q3"] = q["q3"]
            row[f"increases_{col}"] = int(((ev["kind"] == "increase") & (ev["rank_type"] == t)).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def report_figure(path, png: str | Path | None = None, tensorboard: bool = True):
    """Layer rank and A-rank against step for GD and every member of the other phases (the warm-up,
    in grey, at negative steps: it ends where the other phases start), and the first-passage
    histogram; saved as PNG (default `<path>/jumps_report.png`) and, with tensorboard, written as the
    image `jumps/report` to `<path>/jumps_report_tb/` (REPORT_TB_DIR; `tensorboard --logdir <path>`
    shows it as the run "jumps_report_tb"). That folder is deleted and rewritten on every call, so
    re-running the report replaces the image instead of adding a second one (appending to the phase's
    own event file could not be undone). Returns (figure, png path)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    curves = rank_curves(path)
    dirs = phase_dirs(path)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {"gd": "black", "warmup": "tab:grey"}
    for ax, col, title in ((axes[0], "layer_rank", "layer rank  max_l #{s_i(W_l) > tol}"),
                           (axes[1], "e2e_rank_jump", "A-rank  #{s_i(A) > tol}")):
        for name, c in curves.groupby("phase", sort=False):
            if name == "warmup":
                c = c.assign(step=c["step"] - c["step"].max())
            members = sorted(c["member"].unique())
            for k in members:
                ck = c[c["member"] == k]
                gd = name == "gd"
                jitter = 0 if gd else (k - (len(members) - 1) / 2) * 0.25 / max(len(members), 1)
                ax.step(ck["step"], ck[col] + jitter, where="post", lw=2.5 if gd else 0.8,
                        color=colours.get(name), alpha=1.0 if gd else 0.6,
                        label=(name if k == members[0] else None), zorder=3 if gd else 2)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper right")
    ax = axes[2]
    main = next((n for n in dirs if n not in ("gd", "warmup")), None)
    if main is not None and (dirs[main] / EVENTS_FILE).exists():
        ev = pd.read_parquet(dirs[main] / EVENTS_FILE)
        for t, colr in (("layer", "tab:blue"), ("end_to_end", "tab:orange")):
            fp = ev[(ev["kind"] == "entered") & (ev["rank_type"] == t)].groupby("member")["step"].min()
            if len(fp):
                ax.hist(fp.to_numpy(), bins=min(30, max(5, len(fp) // 2)), alpha=0.6, color=colr,
                        label=f"{t} ({len(fp)} members)")
        if ax.get_legend_handles_labels()[0]:  # no first passage: no legend (matplotlib would warn)
            ax.legend()
    ax.set_title(f"first passage below the start rank ({main})")
    ax.set_xlabel("step")
    fig.tight_layout()
    png = Path(png) if png else path / REPORT_PNG
    fig.savefig(png, dpi=110)
    if tensorboard and main is not None:
        from torch.utils.tensorboard import SummaryWriter
        tb_dir = path / REPORT_TB_DIR
        if tb_dir.exists():
            shutil.rmtree(tb_dir)
        w = SummaryWriter(log_dir=str(tb_dir))
        try:
            w.add_figure("jumps/report", fig, global_step=int(curves["step"].max()) if len(curves) else 0,
                         close=False)
        finally:
            w.close()
    return fig, png


# ---------------------------------------------------------------------------------------------
# Benchmarks (scripts/bench.py)

def bench_r1(members: int = 256, threads: int = 2, overrides: Sequence[str] = (), out_dir=None) -> dict:
    """Recipe R1 (experiment one_way_jumps) with `members` SGD members on `threads` threads, default
    recording, in a temporary folder: wall time in total and per phase, members jumped, first passage."""
    import tempfile

    from dlnlab.experiment import compose

    cfg = compose(["experiment=one_way_jumps", f"model.ensemble={members}", f"threads={threads}",
                   "record.progress=off", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = run_experiment(cfg, out_dir=out_dir or tmp)
        wall = time.perf_counter() - t0
    h = s.headline
    return {"members": members, "threads": threads, "wall_time": wall,
            "phases": {n: p["wall_time"] for n, p in s.phases.items()},
            "jumped": h.get("jumped"), "fraction_jumped": h.get("fraction_jumped"),
            "first_jump_layer": h.get("first_jump_layer"), "increases_layer": h.get("increases_layer"),
            "gd_final_layer_rank": h.get("gd_final_layer_rank"), "status": s.status}


def bench_tracker(members: int = 256, dims: Sequence[int] = (10, 10, 10, 10), records: int = 100,
                  with_metrics: bool = True, threads: int = 1) -> dict:
    """Seconds per `RankJumpHook.on_record` on an ensemble (torch on `threads` threads), reusing the
    MetricsHook spectra (with_metrics) or computing its own SVDs; also the MetricsHook's own cost."""
    from types import SimpleNamespace

    from dlnlab.hooks import MetricsHook
    from dlnlab.model import DeepLinearNet
    from dlnlab.tasks import make_completion

    torch.set_num_threads(threads)
    task = make_completion(dims[-1], dims[0], 1, [10.0], 0.35, seed=0)
    net = DeepLinearNet(list(dims), ensemble=members, init="gaussian", seed=0)
    trainer = SimpleNamespace(net=net, task=task, hooks=[], out_dir=None, optim_name="sgd")
    hook = RankJumpHook()
    hook.on_start(trainer)
    mh = MetricsHook()
    mh.on_start(trainer)
    recs = []
    t0 = time.perf_counter()
    for i in range(records):
        rec = Record(step=i, weights=[w.detach() for w in net.weights], active=torch.ones(members, dtype=torch.bool),
                     lr=0.1, ridge=0.01)
        if with_metrics:
            mh.on_record(trainer, rec)
        recs.append(rec)
    dt_metrics = (time.perf_counter() - t0) / records
    t0 = time.perf_counter()
    for rec in recs:
        hook.on_record(trainer, rec)
    dt = (time.perf_counter() - t0) / records
    return {"members": members, "dims": list(dims), "records": records, "with_metrics": with_metrics,
            "threads": threads, "seconds_per_record": dt, "us_per_member_record": dt / members * 1e6,
            "metrics_hook_seconds_per_record": dt_metrics if with_metrics else None}
