"""Numbers near critical points on every checkpoint (docs/theory.md §6, §9; columns: docs/columns.md).

A checkpoint on a plateau is near a critical point, never at one, so Theorem 7's exact `label` is
often `ambiguous` there. This hook projects each member onto an exactly critical point of the
nearest plateau S = {1..r} (`dlnlab.theory.square.trajectory.project_to_critical`) and labels that point
(`near_label`), and measures how far the checkpoint is from it and how curved the loss is there.

Only in the square-loss Theorem-7 mode (the task has landscape data and lambda = 0 throughout): the
same condition as the ClassifierHook. Otherwise it writes nothing.

Columns (per member), on every record it labels (every `every_records` records and the last):
near_label, near_S (strings), near_dist (||theta - theta_proj|| / ||theta||, unit-free),
tight_margin (unit-free, in [0, 1]); every `curvature_every` labelled records (and the last):
lam_min, lam_max (LAB units: the paper Hessian / task.paper_scale) and lam_converged (1: within the
Lanczos bound, 0: its last Ritz values after lanczos_restarts cycles), NaN on the other records.
`rows` keeps (step, member, loss, near_label, near_dist, lam_min, lam_max) for the staircase, which
`on_end` turns into `staircase` (one row per plateau visit per member, LAB units;
dlnlab.recording.staircase) and declares as the TensorBoard text `staircase` (`tb_end_texts`, a
markdown table). Every visit gets lam_min, lam_max at (or next to) its midpoint record, computed when
the visit ends from the weights kept near its running midpoint (dlnlab.recording.midpoints), unless
a curvature record is as near: in `rows` only, the run table keeps its curvature records as they are.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import pandas as pd
import torch

from dlnlab.linalg import finite_members
from dlnlab.recording.base import (
    Hook,
    Record,
    Spectra,
    nth_due,
    split_columns,
    stack_weights,
)
from dlnlab.recording.midpoints import PlateauVisits
from dlnlab.recording.staircase import plateau_table, staircase, staircase_markdown
from dlnlab.theory.square.classify import Classifier
from dlnlab.theory.square.critical import plateau_values
from dlnlab.theory.square.trajectory import (
    CurvatureState,
    curvature,
    project_to_critical,
    tight_margin,
)

log = logging.getLogger(__name__)

TB_TAGS = {"near_dist": "near/dist", "tight_margin": "near/tight_margin",
           "lam_min": "curvature/lam_min", "lam_max": "curvature/lam_max"}


class TrajectoryHook(Hook):
    """Where a record stands near the plateau's critical point: `near_label`, `near_dist`,
    `tight_margin`, and the Hessian's extreme eigenvalues `lam_min`/`lam_max` (docs/theory.md §6)."""

    background = True
    tb_tags = TB_TAGS

    def __init__(self, every_records: int = 1, curvature_every: int = 10, full_max_params: int = 2000,
                 near: bool = True, text_members: int = 8, members: int = 16, midpoint_window: float = 0.1):
        self.every, self.curv_every = every_records, curvature_every
        # curvature for the first `members` members only: a Lanczos run per member and record costs
        # too much for a large ensemble (the others get NaN, as diverged members do); the projection,
        # its label and the tight margin are batched and cheap, so every member gets them
        self.members = members
        self.full_max_params, self.near = full_max_params, near
        self.clf: Classifier | None = None
        self.n = 0          # records seen
        self.labelled = 0   # records labelled
        self.warm: CurvatureState | None = None
        self._warm_idx: torch.Tensor | None = None   # the members self.warm belongs to
        self.rows: list[dict] = []
        self.staircase: pd.DataFrame | None = None   # set by on_end
        self.paper_scale = 1.0
        self.text_members = text_members   # members listed in the TensorBoard text (record.tb_members)
        # each plateau visit's midpoint weights, for a lam_min there when no curvature record is
        # within midpoint_window x its records of the midpoint (docs/theory.md §6)
        self.visits: PlateauVisits | None = None
        self.midpoint_window = float(midpoint_window)

    def state_dict(self) -> dict:
        """Counters, the staircase rows and the warm start: a resumed run labels, measures and starts
        its Lanczos runs exactly where this one would."""
        warm = None if self.warm is None else dataclasses.asdict(self.warm)
        return {"n": self.n, "labelled": self.labelled, "rows": list(self.rows), "warm": warm,
                "warm_idx": self._warm_idx, "visits": None if self.visits is None else self.visits.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.labelled, self.rows = int(state["n"]), int(state["labelled"]), list(state["rows"])
        self.warm = None if state["warm"] is None else CurvatureState(**state["warm"])
        self._warm_idx = state["warm_idx"]
        if self.visits is not None and state.get("visits") is not None:
            self.visits.load_state_dict(state["visits"])

    def on_start(self, trainer) -> None:
        self.paper_scale = float(trainer.task.paper_scale)
        data = trainer.task.landscape_data()
        if data is not None and not any(trainer.ridge_at.values):
            self.clf = Classifier(*data)   # exact tolerances: projected points are critical to 1e-10
            if self.curv_every:
                values = plateau_table(plateau_values(self.clf.data), self.paper_scale)["value"]
                self.visits = PlateauVisits(values, self.members)

    def on_record(self, trainer, rec: Record) -> None:
        self.on_records(trainer, [rec])

    def on_records(self, trainer, recs: list) -> None:
        due = []
        for rec in recs:
            self.n += 1
            if self.clf is not None and nth_due(rec, self.n, self.every):
                due.append(rec)
        if not due:
            return
        if self.near:
            try:  # the records' members as one stack: one projection and one margin for all
                self._near(due)
            except (RuntimeError, torch.linalg.LinAlgError):   # then record by record, as alone
                for rec in due:
                    try:
                        self._near([rec])
                    except (RuntimeError, torch.linalg.LinAlgError) as e:   # misses 1e-10
                        log.warning("trajectory: no projection at step %d: %s", rec.step, e)
                        self._near_columns([rec], None, None)
        for rec in due:
            self.labelled += 1
            self._curvature(trainer, rec)
            self._rows(rec)

    def _near(self, recs: list) -> None:
        """near_label, near_S, near_dist, tight_margin of every finite member of the records."""
        data = self.clf.data
        ws = [w.to(torch.float64) for w in (stack_weights(recs) if len(recs) > 1 else recs[0].weights)]
        # members that diverged (inactive or non-finite) get NaN / empty text, never an SVD
        ok = torch.cat([r.active for r in recs]) & finite_members(ws)
        every = ok.nonzero().squeeze(1)
        if not every.numel():
            self._near_columns(recs, None, None)
            return
        allw = [w[every] for w in ws]
        p = project_to_critical(allw, data, classifier=self.clf)
        # the checkpoint's partial products and spectra, as the metrics hook published them
        spectra = [r.spectra for r in recs]
        sp = None if any(x is None for x in spectra) else (spectra[0] if len(recs) == 1 else Spectra.stack(spectra))
        shared = {} if sp is None or sp.products[(len(ws), 1)].dtype != torch.float64 else dict(
            products={k: v[every] for k, v in sp.products.items()},
            singular_values={k: v[every] for k, v in sp.singular_values.items()})
        self._near_columns(recs, every, (p, tight_margin(allw, p.r, data, **shared)))

    @staticmethod
    def _near_columns(recs: list, every, got) -> None:
        n = len(recs) * recs[0].active.shape[0]
        nan = torch.full((n,), float("nan"), dtype=torch.float64)
        near_label, near_S, near_dist, margin = [""] * n, [""] * n, nan.clone(), nan.clone()
        if got is not None:
            p, margin[every] = got
            near_dist[every] = p.near_dist
            for k, lab, S in zip(every.tolist(), p.near_label, p.S_str):
                near_label[k], near_S[k] = lab, S
        split_columns({"near_label": near_label, "near_S": near_S, "near_dist": near_dist,
                       "tight_margin": margin}, recs)

    def _curvature(self, trainer, rec: Record) -> None:
        """lam_min, lam_max of the first `members` finite members, every `curv_every` labelled records."""
        E = rec.active.shape[0]
        nan = torch.full((E,), float("nan"), dtype=torch.float64)
        lam_min, lam_max, conv = nan.clone(), nan.clone(), nan.clone()
        if self.curv_every and nth_due(rec, self.labelled, self.curv_every):
            ws = [w.detach().to(torch.float64) for w in rec.weights]
            ok = rec.active & finite_members(ws)
            ok[self.members:] = False
            idx = ok.nonzero().squeeze(1)
            if idx.numel():
                warm = self.warm if self._warm_idx is not None and torch.equal(self._warm_idx, idx) else None
                try:
                    lo, hi, self.warm = curvature([w[idx] for w in ws], self.clf.data,
                                                  full_max_params=self.full_max_params, warm=warm)
                    self._warm_idx = idx
                    scale = trainer.task.paper_scale
                    lam_min[idx], lam_max[idx] = lo / scale, hi / scale
                    c = self.warm.converged
                    done = torch.ones_like(lo) if c is None else c.to(torch.float64)
                    conv[idx] = torch.where(lo.isnan(), float("nan"), done)   # NaN: overflowed, not computed
                except (RuntimeError, torch.linalg.LinAlgError) as e:
                    log.warning("trajectory: no curvature at step %d: %s", rec.step, e)
        rec.metrics["lam_min"], rec.metrics["lam_max"], rec.metrics["lam_converged"] = lam_min, lam_max, conv

    def _rows(self, rec: Record) -> None:
        m = rec.metrics
        E = rec.active.shape[0]
        loss = m.get("loss")
        loss = [float("nan")] * E if loss is None else loss.tolist()
        near_label = m.get("near_label") or [""] * E
        nan = [float("nan")] * E
        near_dist = m["near_dist"].tolist() if "near_dist" in m else nan
        base = len(self.rows)
        for k, (lo, lab, dist, lam, lam_hi) in enumerate(zip(loss, near_label, near_dist, m["lam_min"].tolist(),
                                                            m["lam_max"].tolist())):
            self.rows.append({"step": rec.step, "member": k, "loss": lo, "near_label": lab or None,
                              "near_dist": dist, "lam_min": lam, "lam_max": lam_hi})
        if self.visits is not None:
            self._midpoints(self.visits.observe(list(range(base, base + E)), loss, rec.weights))

    def _midpoints(self, ended: list) -> None:
        """lam_min, lam_max at the kept record nearest each ended visit's midpoint, into the staircase
        rows (not the run table: that record has passed), unless a curvature record is within
        midpoint_window x the visit's records of the midpoint, or as near as the kept one. Cold
        Lanczos starts: the warm start of the curvature records, hence their numbers, stay as they were."""
        todo = []
        for k, v in ended:
            mid = (len(v.rows) - 1) // 2
            pos, ws = v.nearest()
            have = [(abs(p - mid), p) for p, r in enumerate(v.rows) if math.isfinite(self.rows[r]["lam_min"])]
            near = min(have) if have else None
            if near is None or (near[0] > self.midpoint_window * len(v.rows) and near > (abs(pos - mid), pos)):
                todo.append((v.rows[pos], ws))
        if not todo:
            return
        stacked = [torch.stack([ws[h] for _, ws in todo]).to(torch.float64) for h in range(len(todo[0][1]))]
        try:
            lo, hi, _ = curvature(stacked, self.clf.data, full_max_params=self.full_max_params)
        except (RuntimeError, torch.linalg.LinAlgError) as e:
            log.warning("trajectory: no curvature at a plateau's midpoint: %s", e)
            return
        for (row, _), a, b in zip(todo, (lo / self.paper_scale).tolist(), (hi / self.paper_scale).tolist()):
            self.rows[row]["lam_min"], self.rows[row]["lam_max"] = a, b

    def on_end(self, trainer, status: str) -> None:
        """The staircase of the rows recorded so far (also after a divergence or an interrupt)."""
        if self.clf is None or not self.rows:
            return
        if self.visits is not None:   # the visits the end of the run cut short
            self._midpoints(self.visits.end_all())
        try:
            self.staircase = staircase(pd.DataFrame(self.rows), plateau_values(self.clf.data),
                                       paper_scale=self.paper_scale)
        except (ValueError, KeyError, RuntimeError) as e:
            log.warning("trajectory: no staircase: %s", e)

    def tb_end_texts(self) -> dict:
        if self.staircase is None:
            return {}
        return {"staircase": staircase_markdown(self.staircase, self.text_members)}
