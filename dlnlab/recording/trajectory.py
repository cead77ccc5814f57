"""Numbers near critical points on every checkpoint (docs/theory.md §6, §9; columns: docs/columns.md).

A checkpoint on a plateau is near a critical point, never at one, so Theorem 7's exact `label` is
often `ambiguous` there. This hook projects each member onto an exactly critical point of the
nearest plateau S = {1..r} (`dlnlab.theory.trajectory.project_to_critical`) and labels that point
(`near_label`), and measures how far the checkpoint is from it and how curved the loss is there.

Only in the square-loss Theorem-7 mode (the task has landscape data and lambda = 0 throughout): the
same condition as the ClassifierHook. Otherwise it writes nothing.

Columns (per member), on every record it labels (every `every_records` records and the last):
near_label, near_S (strings), near_dist (||theta - theta_proj|| / ||theta||, unit-free),
tight_margin (unit-free, in [0, 1]); every `curvature_every` labelled records (and the last):
lam_min, lam_max (LAB units: the paper Hessian / task.paper_scale), NaN on the other records.
`rows` keeps (step, member, loss, near_label, near_dist, lam_min) for the staircase at the end.
"""
from __future__ import annotations

import logging

import torch

from dlnlab.recording.base import Hook, Record
from dlnlab.theory.classify import Classifier
from dlnlab.theory.trajectory import CurvatureState, curvature, project_to_critical, tight_margin

log = logging.getLogger(__name__)

TB_TAGS = {"near_dist": "near/dist", "tight_margin": "near/tight_margin",
           "lam_min": "curvature/lam_min", "lam_max": "curvature/lam_max"}


class TrajectoryHook(Hook):
    tb_tags = TB_TAGS

    def __init__(self, every_records: int = 1, curvature_every: int = 10, full_max_params: int = 2000,
                 near: bool = True):
        self.every, self.curv_every = every_records, curvature_every
        self.full_max_params, self.near = full_max_params, near
        self.clf: Classifier | None = None
        self.n = 0          # records seen
        self.labelled = 0   # records labelled
        self.warm: CurvatureState | None = None
        self.rows: list[dict] = []

    def on_start(self, trainer) -> None:
        data = trainer.task.landscape_data()
        if data is not None and not any(trainer.ridge_at.values):
            self.clf = Classifier(*data)   # exact tolerances: projected points are critical to 1e-10

    def on_record(self, trainer, rec: Record) -> None:
        self.n += 1
        if self.clf is None or not (rec.final or (self.n - 1) % self.every == 0):
            return
        self.labelled += 1
        data, scale = self.clf.data, trainer.task.paper_scale
        ws = [w.detach().to(torch.float64) for w in rec.weights]
        E = ws[0].shape[0]
        m = rec.metrics
        nan = torch.full((E,), float("nan"), dtype=torch.float64)
        near_label, near_dist = [""] * E, nan.clone()
        if self.near:
            p = project_to_critical(ws, data, classifier=self.clf)
            near_label, near_dist = list(p.near_label), p.near_dist
            m["near_label"], m["near_S"], m["near_dist"] = near_label, list(p.S_str), near_dist
            m["tight_margin"] = tight_margin(ws, p.r, data)
        lam_min = nan.clone()
        if self.curv_every and (rec.final or (self.labelled - 1) % self.curv_every == 0):
            lo, hi, self.warm = curvature(ws, data, full_max_params=self.full_max_params, warm=self.warm)
            lam_min = lo / scale
            m["lam_min"], m["lam_max"] = lam_min, hi / scale
        else:
            m["lam_min"], m["lam_max"] = lam_min, nan.clone()
        loss = m.get("loss")
        for k in range(E):
            self.rows.append({"step": rec.step, "member": k,
                              "loss": float(loss[k]) if loss is not None else float("nan"),
                              "near_label": near_label[k] or None, "near_dist": float(near_dist[k]),
                              "lam_min": float(lam_min[k])})
