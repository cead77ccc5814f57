"""Labels under a convex loss other than the square loss (Laurent & von Brecht; docs/theory.md §8).

Used instead of the Theorem 7 classifier when `loss` is not the square loss (or has a product ridge).
At the start: the convex reference ell* = inf_A ell(A) (+ mu ||A||_F^2), once per run
(`dlnlab.theory.convex.reference.convex_reference`), with the no-minimiser test; it goes into
`trainer.info`, hence status.json and the hparams: `convex_reference`, `convex_reference_converged`,
`no_minimiser`, `no_minimiser_evidence`.

Columns (per member, docs/columns.md): `convex_gap` = ell(A) - ell* (lab loss units; with a
bottleneck ell* is only a lower bound), `grad_l_norm` = ||grad ell(A)||_F / ||grad ell(0)||_F
(unit-free), `convex_label` (dlnlab.theory.convex.labels.LABELS), `convex_label_code` (for step charts),
`convex_reason`. The Hessian (strict / non-strict split) is computed at the last record only; earlier
critical points with grad ell(A) != 0 are `strict_saddle` when a certificate shows negative curvature,
else `undetermined`.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from dlnlab.linalg import finite_members
from dlnlab.losses import make_loss
from dlnlab.recording.base import Hook, Record, nth_due
from dlnlab.theory.convex.labels import ConvexLabeller
from dlnlab.theory.convex.reference import ConvexTolerances, convex_reference

log = logging.getLogger(__name__)

CONVEX_LABEL_CODES = {"undetermined": -1, "not_critical": 0, "strict_saddle": 1, "nonstrict_saddle": 2,
                      "global_min": 3, "near_global": 4, "local_min": 5, "no_minimiser": 6}
TB_TAGS = {"convex_gap": "convex/gap", "grad_l_norm": "convex/grad_l_norm",
           "convex_label_code": "convex/label_code"}
CONVEX_LEGEND = ", ".join(f"{code} {label}" for label, code in sorted(CONVEX_LABEL_CODES.items(),
                                                                     key=lambda kv: kv[1]))
TB_DESCRIPTIONS = {"convex_label_code": CONVEX_LEGEND,
                   "convex_gap": "loss - ell* (lab units; a lower bound's gap with a bottleneck)",
                   "grad_l_norm": "||grad ell(A)||_F / ||grad ell(0)||_F"}
# training iterates are only approximately critical (the defaults are for exact float64 points);
# gap_rtol: classify.convex_gap_rtol's default (docs/theory.md §8, "Labels")
TRAINING_CONVEX_TOLERANCES = ConvexTolerances(grad_rtol=1e-4, grad_l_rtol=1e-3, gap_rtol=1e-4)


def convex_tolerances(gap_rtol: float | None = None) -> ConvexTolerances:
    """The training tolerances with `classify.convex_gap_rtol` (None: its default)."""
    if gap_rtol is None:
        return TRAINING_CONVEX_TOLERANCES
    return dataclasses.replace(TRAINING_CONVEX_TOLERANCES, gap_rtol=float(gap_rtol))


class ConvexHook(Hook):
    """Labels records under a convex loss other than the square loss against the convex reference
    ℓ*, computed once per run: `convex_gap`, `grad_l_norm`, `convex_label` (docs/theory.md §8)."""

    background = True
    tb_tags = TB_TAGS
    tb_descriptions = TB_DESCRIPTIONS

    def __init__(self, tolerances: ConvexTolerances | None = None, every_records: int = 1,
                 text_members: int = 8):
        self.tol = tolerances or TRAINING_CONVEX_TOLERANCES
        self.every, self.text_members = int(every_records), int(text_members)
        self.ref, self.labeller, self.n = None, None, 0
        self.latest: list = []
        self._last_text: list = []

    def on_start(self, trainer) -> None:
        task = trainer.task
        data = task.convex_data() if hasattr(task, "convex_data") else None
        if data is None:
            log.warning("convex labels: task=%s has no (X, Y) regression data; no convex reference",
                        getattr(task, "name", "?"))
            trainer.info.update(convex_reference=None, no_minimiser=None)
            return
        X, T = data
        loss = getattr(task, "objective", None) or make_loss("square")
        self.ref = convex_reference(loss, X.double(), T.double(), getattr(task, "product_ridge", 0.0),
                                    d_out=task.d_out, tolerances=self.tol)
        self.labeller = ConvexLabeller(self.ref, trainer.net.dims, self.tol)
        r = self.ref
        trainer.info.update(convex_reference=r.value, convex_reference_converged=bool(r.converged),
                            convex_reference_seconds=r.seconds, no_minimiser=bool(r.no_minimiser),
                            no_minimiser_evidence=r.evidence)
        if r.no_minimiser:
            log.warning("convex reference: ell has no minimiser (%s); ell* = %.6g is an infimum", r.evidence, r.value)

    def state_dict(self) -> dict:
        return {"n": self.n, "last_text": list(self._last_text), "latest": list(self.latest)}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.latest, self._last_text = int(state["n"]), list(state["latest"]), list(state["last_text"])

    def on_record(self, trainer, rec: Record) -> None:
        self.n += 1
        if self.labeller is None or not nth_due(rec, self.n, self.every):
            return
        ws = [w.detach().double() for w in rec.weights]
        ok = rec.active & finite_members(ws)
        if not bool(ok.all()):  # diverged members: label zeros, report nothing
            ws = [torch.where(ok.view(-1, 1, 1), w, 0.0) for w in ws]
        labels = self.labeller.label(ws, hessian=rec.final)
        nan = float("nan")
        E = len(labels)
        m = rec.metrics
        m["convex_gap"] = torch.tensor([c.convex_gap if k else nan for c, k in zip(labels, ok.tolist())],
                                       dtype=torch.float64)
        m["grad_l_norm"] = torch.tensor([c.grad_l_norm if k else nan for c, k in zip(labels, ok.tolist())],
                                        dtype=torch.float64)
        names = [c.label if k else "" for c, k in zip(labels, ok.tolist())]
        m["convex_label"] = names
        m["convex_label_code"] = torch.tensor([float(CONVEX_LABEL_CODES[n]) if n else nan for n in names],
                                              dtype=torch.float64)
        m["convex_reason"] = [c.reason if k else "diverged" for c, k in zip(labels, ok.tolist())]
        self.latest = names[:E]
        key = names[: self.text_members]
        if key != self._last_text:
            self._last_text = key
            rec.texts["convex_label"] = "  \n".join(f"member {k}: **{n}**" for k, n in enumerate(key))
