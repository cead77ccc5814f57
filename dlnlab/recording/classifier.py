"""The classifier in training runs: a hook that labels every checkpoint of every member.

Square loss with lambda = 0 (regression, or fully observed completion): Theorem 7 through
`dlnlab.theory.square.classify.Classifier`, with the tolerances of `classify.*` (training iterates are only
approximately critical, hence looser defaults than for exact points), plus the nearest plateau
("on the plateau of S = {1,2}") read from the product even where the gradient is not small.
Ridge lambda > 0 or a partially observed completion: Theorem 7 does not apply, so the point is
labelled by first and second order (`dlnlab.theory.ridge.labels.classify`: Hessian-vector products, costly), at
the last record and every `ridge_every` records.

Units: the classifier works in the landscape paper's units (loss = SUM over samples, or over the N
observed entries of a completion); paper value = task.paper_scale * lab loss (m, or N).

Columns (per member): label, label_code (for step charts), label_reason, S, r, critical_value and
nearest_value (LAB loss units: paper value / task.paper_scale, on the same scale as `loss`),
nearest_S, classify_grad_norm (PAPER units: the gradient of the summed loss that the classifier's
grad_rtol * tr(Syy) threshold is compared with).

TensorBoard (declared in tb_tags): loss/critical_value and loss/nearest_plateau on the loss
chart, label_code as a step chart, classify/r and classify/grad_norm; the labels as text whenever a
member's (label, S) changes (S: the Theorem-7 S, else the nearest plateau's).
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from dlnlab.recording.base import (
    Hook,
    Record,
    Spectra,
    nth_due,
    split_columns,
    stack_weights,
)
from dlnlab.theory.ridge.labels import classify as ridge_classify
from dlnlab.theory.ridge.modes import LabelTolerances
from dlnlab.theory.square.classify import TRAINING_TOLERANCES, Classifier, Tolerances
from dlnlab.theory.square.verdicts import LABELS

log = logging.getLogger(__name__)

LABEL_CODES = {"ambiguous": -1, "not_critical": 0, "strict_saddle": 1, "nonstrict_saddle": 2,
               "global_min": 3, "degenerate": 4, "local_min": 5}

# metric column -> TensorBoard tag (declared as tb_tags)
TB_TAGS = {"critical_value": "loss/critical_value", "nearest_value": "loss/nearest_plateau",
           "label_code": "label_code", "r": "classify/r", "classify_grad_norm": "classify/grad_norm"}
LABEL_LEGEND = ", ".join(f"{code} {label}" for label, code in sorted(LABEL_CODES.items(), key=lambda kv: kv[1]))
# metric column -> description of its TensorBoard tag (tb_descriptions)
TB_DESCRIPTIONS = {"label_code": LABEL_LEGEND,
                   "critical_value": "critical value of the point's S (lab units); empty off criticality",
                   "nearest_value": "plateau value of the S read from the product (lab units)",
                   "r": "numerical rank of the product (Theorem 7 classifier)",
                   "classify_grad_norm": "gradient norm of the paper's loss (sum over samples)"}


def tolerances_from_config(c) -> Tolerances:
    """Tolerances from a run's `classify` config section: every key that is also a Tolerances field
    (grad_rtol, rank_rtol, rank_band, gamma_tol in ClassifyConfig); missing keys (configs of older
    runs) fall back to TRAINING_TOLERANCES."""

    names = {f.name for f in dataclasses.fields(Tolerances)}
    defaults = {n: getattr(TRAINING_TOLERANCES, n) for n in names}
    given = {} if c is None else {k: c.get(k) for k in names if c.get(k) is not None}
    return Tolerances(**{**defaults, **given})


def _fmt_S(S) -> str:
    return "{" + ",".join(map(str, S)) + "}"


class ClassifierHook(Hook):
    """Labels each record by Theorem 7 (square loss) or, under ridge, by the ridge labels, batched over
    members on the metrics hook's spectra (docs/theory.md §5, §7; columns in docs/columns.md)."""

    background = True
    tb_tags = TB_TAGS
    tb_descriptions = TB_DESCRIPTIONS

    def __init__(self, tolerances: Tolerances | None = None, every_records: int = 1,
                 ridge_every: int = 0, ridge_members: int = 16, text_members: int = 8,
                 ridge_tolerances: LabelTolerances | None = None):
        self.tol = tolerances or tolerances_from_config(None)
        # the ridge labels' tolerances: the run's jumps.* options, so that this hook's `label` and
        # the rank-jump tracker's `ridge_label` of one point agree
        self.ridge_tol = ridge_tolerances
        self.every, self.ridge_every, self.ridge_members = every_records, ridge_every, ridge_members
        self.clf, self.n, self.mode = None, 0, None
        self.text_members = text_members  # members whose labels go into the TensorBoard text
        self._last_text: list = []   # per member (label, S) at the last text written
        self.latest: list = []  # per member: "label" or "label, S = {..}" at the latest labelled record
        # per member: the ridge labels' whole result (layer ranks, balance, modes...) at the latest
        # ridge-labelled record (None: not labelled), for `dlnlab-classify`'s details
        self.ridge_points: list = []

    def on_start(self, trainer) -> None:
        data = trainer.task.landscape_data()
        if data is not None and not any(trainer.ridge_at.values):
            self.clf = Classifier(*data, tolerances=self.tol)
            self.mode = "theorem7"
            if not self.clf.data.assumptions.ok:
                log.warning("classifier: Assumption 1 fails (%s); critical points are labelled "
                            "ambiguous (Theorem 7 does not apply)", "; ".join(self.clf.data.assumptions.failures))
        else:
            self.mode = "ridge"

    def state_dict(self) -> dict:
        return {"n": self.n, "last_text": list(self._last_text), "latest": list(self.latest)}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.latest = int(state["n"]), list(state["latest"])
        self._last_text = [tuple(k) for k in state["last_text"]]

    def on_record(self, trainer, rec: Record) -> None:
        self.on_records(trainer, [rec])

    def on_records(self, trainer, recs: list) -> None:
        due = []
        for rec in recs:
            self.n += 1
            if self.mode == "theorem7":
                if nth_due(rec, self.n, self.every):
                    due.append(rec)
            elif nth_due(rec, self.n, self.ridge_every):
                self._ridge(trainer, rec)
        if due:
            self._theorem7(trainer, due)

    def _theorem7(self, trainer, recs: list) -> None:
        """Theorem 7 for the records' members at once (one stack of members)."""
        scale = trainer.task.paper_scale
        # on the products and spectra the metrics hook published (float64); the weights in their
        # training dtype: the classifier's noise floors follow the input precision
        spectra = [r.spectra for r in recs]
        sp = None if any(p is None for p in spectra) else (spectra[0] if len(recs) == 1 else Spectra.stack(spectra))
        shared = {} if sp is None else dict(products=sp.products, singular_values=sp.singular_values,
                                             finite=sp.finite)
        weights = [w.detach() for w in recs[0].weights] if len(recs) == 1 else stack_weights(recs)
        b = self.clf.classify_ensemble(weights, **shared)
        m = {}
        m["label"] = b.label
        codes = torch.tensor([float(LABEL_CODES[lab]) for lab in LABELS], dtype=torch.float64)
        m["label_code"] = codes[b.code]
        m["label_reason"] = b.reason
        fmt = {S: _fmt_S(S) for S in set(b.nearest_S) | {S for S in b.S if S is not None}}
        m["S"] = ["" if S is None else fmt[S] for S in b.S]
        m["r"] = b.r.double()
        m["critical_value"] = b.critical_value / scale
        m["nearest_S"] = [fmt[S] for S in b.nearest_S]
        m["nearest_value"] = b.nearest_value / scale
        m["classify_grad_norm"] = b.grad_norm.clone()
        split_columns(m, recs)
        for rec in recs:
            c = rec.metrics
            self.latest = [f"{lab} (S = {S or nS})" for lab, S, nS in zip(c["label"], c["S"], c["nearest_S"])]
            self._text(rec, c["label"], [f"S = {S}" if S else f"nearest plateau S = {nS}"
                                         for S, nS in zip(c["S"], c["nearest_S"])])

    def _ridge(self, trainer, rec: Record) -> None:

        E = rec.active.shape[0]
        k_max = min(E, self.ridge_members)
        labels, reasons = [""] * E, [""] * E
        codes = torch.full((E,), float("nan"), dtype=torch.float64)
        self.ridge_points = [None] * k_max
        for k in range(k_max):
            if not bool(rec.active[k]):
                continue
            p = ridge_classify([w[k] for w in rec.weights], trainer.task, rec.ridge, tol=self.ridge_tol)
            labels[k], reasons[k], codes[k] = p.label, p.reason, float(LABEL_CODES.get(p.label, -1))
            self.ridge_points[k] = p
        rec.metrics["label"], rec.metrics["label_reason"], rec.metrics["label_code"] = labels, reasons, codes
        self.latest = labels[:k_max]
        self._text(rec, labels, None)

    def _text(self, rec: Record, labels, sets) -> None:
        """Labels as TensorBoard text, written when some shown member's (label, S) changes: a move from
        a strict saddle on {1} to one on {1,2} is news even though the label stays the same."""
        shown = self.text_members
        key = [(lab, sets[k] if sets else None) for k, lab in enumerate(labels[:shown])]
        if key == self._last_text:
            return
        self._last_text = key
        rows = [f"member {k}: **{lab}**" + (f" ({S})" if S is not None else "") for k, (lab, S) in enumerate(key)]
        rec.texts["label"] = "  \n".join(rows)
