"""The classifier in training runs: a hook that labels every checkpoint of every member.

Square loss with lambda = 0 (regression, or fully observed completion): Theorem 7 through
`dlnlab.classify.Classifier`, with the tolerances of `classify.*` (training iterates are only
approximately critical, hence looser defaults than for exact points), plus the nearest plateau
("on the plateau of S = {1,2}") read from the product even where the gradient is not small.
Ridge lambda > 0 or a partially observed completion: Theorem 7 does not apply, so the point is
labelled by first and second order (`dlnlab.ridge.classify`: Hessian-vector products, costly), at
the last record and every `ridge_every` records.

Columns (per member): label, label_code (for step charts), label_reason, S, r, critical_value and
nearest_value (lab loss units: paper value / task.paper_scale), nearest_S, classify_grad_norm.
"""
from __future__ import annotations

import logging

import torch

from dlnlab.classify import Classifier, Tolerances
from dlnlab.hooks import Hook, Record, TensorBoardHook

log = logging.getLogger(__name__)

LABEL_CODES = {"ambiguous": -1, "not_critical": 0, "strict_saddle": 1, "nonstrict_saddle": 2,
               "global_min": 3, "degenerate": 4, "local_min": 5}


class ClassifierHook(Hook):
    def __init__(self, tolerances: Tolerances | None = None, every_records: int = 1,
                 ridge_every: int = 0, ridge_members: int = 16):
        self.tol = tolerances or Tolerances(grad_rtol=1e-2, rank_rtol=1e-2)
        self.every, self.ridge_every, self.ridge_members = every_records, ridge_every, ridge_members
        self.clf, self.n, self.mode = None, 0, None
        self.writer = None
        self._last_labels: list = []
        self.latest: list = []  # per member: "label" or "label, S = {..}" at the latest labelled record

    def on_start(self, trainer) -> None:
        data = trainer.task.landscape_data()
        if data is not None and not any(trainer.ridge_at.values):
            self.clf = Classifier(*data, tolerances=self.tol)
            self.mode = "theorem7"
            if not self.clf.data.assumptions.ok:
                log.warning("classifier: Assumption 1 fails (%s); labels are reported but Theorem 7 "
                            "does not apply", "; ".join(self.clf.data.assumptions.failures))
        else:
            self.mode = "ridge"
        for h in trainer.hooks:
            if isinstance(h, TensorBoardHook):
                self.writer = h
                # predicted critical value on the loss chart; labels as a step chart
                h.extra.update({"critical_value": "loss/critical_value",
                                "nearest_value": "loss/nearest_plateau", "label_code": "label_code"})

    def on_record(self, trainer, rec: Record) -> None:
        self.n += 1
        if self.mode == "theorem7":
            if rec.final or (self.n - 1) % self.every == 0:
                self._theorem7(trainer, rec)
        elif rec.final or (self.ridge_every and (self.n - 1) % self.ridge_every == 0):
            self._ridge(trainer, rec)

    def _theorem7(self, trainer, rec: Record) -> None:
        scale = trainer.task.paper_scale
        results = self.clf.classify([w.double() for w in rec.weights])
        nan = float("nan")
        m = rec.metrics
        m["label"] = [c.label for c in results]
        m["label_code"] = torch.tensor([float(LABEL_CODES[c.label]) for c in results], dtype=torch.float64)
        m["label_reason"] = [c.reason for c in results]
        m["S"] = ["" if c.S is None else "{" + ",".join(map(str, c.S)) + "}" for c in results]
        m["r"] = torch.tensor([float(c.r) for c in results], dtype=torch.float64)
        m["critical_value"] = torch.tensor([nan if c.critical_value is None else c.critical_value / scale
                                            for c in results], dtype=torch.float64)
        m["nearest_S"] = ["{" + ",".join(map(str, c.nearest_S)) + "}" for c in results]
        m["nearest_value"] = torch.tensor([c.nearest_value / scale for c in results], dtype=torch.float64)
        m["classify_grad_norm"] = torch.tensor([c.grad_norm for c in results], dtype=torch.float64)
        self.latest = [f"{lab} (S = {S or nS})" for lab, S, nS in zip(m["label"], m["S"], m["nearest_S"])]
        self._text(rec, m["label"], m["nearest_S"])

    def _ridge(self, trainer, rec: Record) -> None:
        from dlnlab.ridge import classify as ridge_classify

        E = rec.active.shape[0]
        k_max = min(E, self.ridge_members)
        labels, reasons = [""] * E, [""] * E
        codes = torch.full((E,), float("nan"), dtype=torch.float64)
        for k in range(k_max):
            if not bool(rec.active[k]):
                continue
            p = ridge_classify([w[k] for w in rec.weights], trainer.task, rec.ridge)
            labels[k], reasons[k], codes[k] = p.label, p.reason, float(LABEL_CODES.get(p.label, -1))
        rec.metrics["label"], rec.metrics["label_reason"], rec.metrics["label_code"] = labels, reasons, codes
        self.latest = labels[:k_max]
        self._text(rec, labels, None)

    def _text(self, rec: Record, labels, nearest) -> None:
        """Labels as TensorBoard text, written when they change."""
        if self.writer is None or self.writer.writer is None or labels == self._last_labels:
            return
        self._last_labels = list(labels)
        rows = [f"member {k}: **{lab}**" + (f" (plateau S = {nearest[k]})" if nearest else "")
                for k, lab in enumerate(labels[: self.writer.members])]
        self.writer.writer.add_text("label", "  \n".join(rows), rec.step)
