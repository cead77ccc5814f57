"""The rank-jump tracker (Wang & Jacot 2024; docs/theory.md §7): follow SGD from high to low rank.

`RankJumpHook` follows every ensemble member: at each record its A-rank (end-to-end) and layer rank
(`RankTolerances`), the set B_r it lies in, its second-order label (`ridge_labels.classify`, every
`jumps.label_every` records and at the last one), and the events "member k entered B_r' from B_r at
step t" (first passage; `in_B` says whether the point also meets B's balance and norm conditions)
and "rank increase" (for H >= 3 under GD/SGD there must be none: an increase is logged as a
warning, kept as an event and listed as a FINDING in the run summary, never hidden). Events go to
`<run_dir>/events.parquet` (read with `dlnlab.load_events`); curves to TensorBoard through the
record's declared scalars and `tb_tags`. The phases of the jump experiments live in
`dlnlab.experiments.jumps`, the report in `dlnlab.analysis.jumps_report`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dlnlab.linalg import finite_members
from dlnlab.recording.base import Hook, Record
from dlnlab.runfolder import (
    EVENTS_FILE,
    atomic_write,
    events_frame,
    quartiles,
)
from dlnlab.theory.ridge.labels import classify as ridge_classify
from dlnlab.theory.ridge.modes import (
    LabelTolerances,
    RankState,
    RankTolerances,
    rank_state,
)

log = logging.getLogger(__name__)

EVENT_KINDS = ("entered", "increase")
RANK_TYPES = ("layer", "end_to_end")


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


# ---------------------------------------------------------------------------------------------
# The tracker

class RankJumpHook(Hook):
    """Follows every ensemble member's A-rank and layer rank; records first passages and increases.

    Per record it adds the columns `e2e_rank_jump` (A-rank: #{s_i(A) > a_tol}), `layer_rank`
    (max_l #{s_i(W_l) > layer_tol}) and `jump_label` ("B<r>": the point lies in B_r, r its layer rank,
    i.e. it is balanced within bal_rtol and norm-bounded; "outside" otherwise), and with labels on
    (every `label_every`-th record, and the last record with `label_final`) `ridge_label`
    (dlnlab.theory.ridge.labels.classify: not_critical, strict_saddle, local_min or degenerate; "" on records
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
                threshold and come back (docs/theory.md §7, "Reading them").
    Ranks are read at records only (the trainer's cadence); first-passage steps are the first record
    at the lower rank. Diverged (frozen or non-finite) members are skipped from then on.

    Events are written to `<out_dir>/events.parquet` atomically at the start (empty: the run is
    tracked), whenever new events occur, and at the end. TensorBoard: per-member `jumps/layer_rank`,
    `jumps/e2e_rank` (declared in `tb_tags`), for its first record.tb_members
    members only (TensorBoard gets slow with hundreds of curves; the run table has every member),
    the number of members at each layer rank, cumulative increases, the fraction of members that
    jumped (all members), and at the end the histograms of the first jumps (first passage below the
    start rank, all members).
    """
    background = True

    tb_tags = {"layer_rank": "jumps/layer_rank", "e2e_rank_jump": "jumps/e2e_rank"}

    def __init__(self, tol: RankTolerances | None = None, out_dir=None, *, label_every: int = 0,
                 label_final: bool = False, label_tol: LabelTolerances | None = None,
                 cadence=None):
        self.tol = tol or RankTolerances()
        self.out_dir = out_dir
        if int(label_every) < 0:
            raise ValueError(f"label_every={label_every}: allowed an integer >= 0 (0: no periodic labels)")
        self.label_every, self.label_final = int(label_every), bool(label_final)
        self.label_tol = label_tol or LabelTolerances(ranks=self.tol)
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
        self.write_events()

    def state_dict(self) -> dict:
        """Ranks seen so far, first passages and events: what a resumed run needs (`seconds`, a
        wall-clock time, starts again from 0)."""
        return {"prev": dict(self.prev), "low": dict(self.low), "start": dict(self.start),
                "steps_at": self.steps_at.clone(), "prev_step": self.prev_step, "last_step": self.last_step,
                "dead": self.dead.clone(), "rows": list(self.rows), "row_ridge": list(self.row_ridge),
                "n": self._n}

    def load_state_dict(self, state: dict) -> None:
        self.prev, self.low, self.start = dict(state["prev"]), dict(state["low"]), dict(state["start"])
        self.steps_at, self.dead = state["steps_at"].clone(), state["dead"].clone()
        self.prev_step, self.last_step, self._n = state["prev_step"], int(state["last_step"]), int(state["n"])
        self.rows = [tuple(r) for r in state["rows"]]
        self.row_ridge = [float(v) for v in state["row_ridge"]]
        self._written = -1
        self.write_events()  # the events up to the checkpoint; later ones are dropped

    def _ranks(self, rec: Record, alive: torch.Tensor) -> RankState:
        ws = [w.detach().double() for w in rec.weights]
        sp, H = rec.spectra, len(ws)
        if sp is not None:  # the metrics hook ran first: reuse its spectra
            fix = lambda t: torch.nan_to_num(t.double(), nan=0.0)
            return rank_state(ws, self.tol, sv_layers=[fix(sp.singular_values[(h, h)]) for h in range(1, H + 1)],
                              sv_e2e=fix(sp.singular_values[(H, 1)]), theta_sq=fix(sp.theta_sq),
                              balances=[fix(b) for b in sp.balances])
        if not bool(alive.all()):
            ws = [torch.where(alive.view(-1, 1, 1), torch.nan_to_num(w), 0.0) for w in ws]
        return rank_state(ws, self.tol)

    def on_record(self, trainer, rec: Record) -> None:
        t0 = time.perf_counter()
        finite = finite_members(rec.weights)
        if rec.spectra is not None:  # finite layers whose product overflowed
            finite &= rec.spectra.finite
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
        self._tensorboard(rec, ranks, alive)
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
            pt = ridge_classify([w[k] for w in rec.weights], trainer.task, rec.ridge, tol=self.label_tol,
                            modes=False)
            out.append(pt.label)
        return out

    def _tensorboard(self, rec: Record, ranks: dict, alive: torch.Tensor) -> None:
        """Run-level curves (all members) as declared scalars of the record."""
        lay = ranks["layer"][alive]
        counts = torch.bincount(lay, minlength=self.max_rank + 1) if len(lay) else torch.zeros(1)
        for r, c in enumerate(counts.tolist()):
            if c or r <= int(self.start["layer"].max()):
                rec.scalars[f"jumps/members_at_layer_rank/{r}"] = float(c)
        rec.scalars["jumps/increases_layer"] = float(len(self.increases("layer")))
        jumped = (self.low["layer"] < self.start["layer"]) & (self.start["layer"] >= 0)
        rec.scalars["jumps/fraction_jumped"] = float(jumped.double().mean())

    def on_end(self, trainer, status: str) -> None:
        self.write_events()

    def tb_histograms(self) -> dict:
        """The first jump of each member (first passage below its start rank), per rank type."""
        out = {}
        for t in RANK_TYPES:
            vals = [s for s in self.first_jumps(t) if s is not None]
            if vals:
                out[f"jumps/first_passage_{t}"] = np.asarray(vals, dtype=float)
        return out

    # -- outputs ---------------------------------------------------------------------------------
    @property
    def events(self) -> pd.DataFrame:
        """The jump events recorded so far, one row per event (docs/columns.md, `events.parquet`)."""
        return events_frame(self.rows)

    def write_events(self) -> None:
        """Write the events not yet on disk to the run folder's events file, atomically."""
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
        """Layer-rank increases at H >= 3, one line each per run (empty list: none). docs/theory.md §7
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
                "points were in B (balance, norm) after the increase; docs/theory.md §7: B_r is absorbing "
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
                "first_jump": quartiles(first_jump),
                "first_passage": {str(r): {**quartiles([s for s in v if s is not None]),
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


