"""Labels of deep linear network points under an arbitrary convex loss (Laurent & von Brecht 2018;
docs/theory.md §8).

    from dlnlab.losses import make_loss
    from dlnlab.theory.convex.labels import convex_reference, label_convex, width_condition, ConvexLabeller
    loss = make_loss("cross_entropy")
    ref = convex_reference(loss, X, Y)                  # ell* once per run
    label_convex([W_1, ..., W_H], loss, X, Y, ref)       # one network -> ConvexLabel
    ConvexLabeller(ref, dims).label(ws)                  # per checkpoint; ws (E, d_h, d_{h-1}) -> list

f(theta) = ell(A) with A = W_H...W_1, ell(A) = loss(X A^T, Y) + mu ||A||_F^2 (convex in A). Rules:
  ||grad_theta f|| > tol                        -> not_critical
  critical, grad ell(A) = 0, gap to ell* small  -> global_min (no_minimiser when ell has none)
  critical, grad ell(A) = 0, gap too large      -> near_global (the gradient alone does not bound the gap)
  critical, grad ell(A) != 0, width condition   -> a saddle by the theorem, with a descent certificate;
                                                   strict iff lambda_min(Hessian) < 0 (else nonstrict)
  critical, grad ell(A) != 0, bottleneck        -> strict_saddle if negative curvature is found, else
                                                   local_min only if perturb-and-retrain finds nothing
                                                   lower, otherwise undetermined
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from dlnlab.linalg import generator_of, product
from dlnlab.losses import Loss, product_value_grad
from dlnlab.theory.convex.certificate import (
    Certificate,
    descent_certificate,
    perturb_and_retrain,
)
from dlnlab.theory.convex.reference import (
    ConvexReference,
    ConvexTolerances,
    WidthReport,
    convex_reference,
    width_condition,
)
from dlnlab.theory.square.hessian import min_eigenvalue

F64 = torch.float64
LABELS = ("not_critical", "global_min", "near_global", "strict_saddle", "nonstrict_saddle", "local_min",
          "undetermined", "no_minimiser")
__all__ = ["ConvexTolerances", "WidthReport", "width_condition", "ConvexReference", "convex_reference",
           "Certificate", "ConvexLabel", "ConvexLabeller", "label_convex", "LABELS"]


@dataclass
class ConvexLabel:
    """The verdict on one point and its evidence.

    label: one of LABELS. loss: f(theta) = ell(A) (+ mu ||A||^2). convex_gap: loss - ell* (>= 0 up to
    solver accuracy; with a bottleneck ell* is only a lower bound). grad_l_norm: ||grad ell(A)||_F / g0,
    g0 = ||grad ell(0)||_F (unit-free: 1 at A = 0). grad_theta_norm: ||grad_theta f|| / (g0 max(1,
    ||A||_F)^((H-1)/H)) (unit-free, compared with grad_rtol). width_ok: the width condition holds.
    hessian_min_eig, hessian_scale: lambda_min and spectral radius of the Hessian in theta (None if not
    computed). certificate: the descent certificate (saddles). retrain_drop: the perturb-and-retrain
    test's best decrease (<= 0 means nothing lower). reason: which rule decided.
    """
    label: str
    loss: float
    convex_gap: float
    grad_l_norm: float
    grad_theta_norm: float
    critical: bool
    width_ok: bool
    reason: str
    hessian_min_eig: float | None = None
    hessian_scale: float | None = None
    certificate: Certificate | None = None
    retrain_drop: float | None = None

    def to_dict(self) -> dict:
        """One table row: scalars and strings (the certificate as its kind and curvature/decrease)."""
        d = {k: v for k, v in asdict(self).items() if k != "certificate"}
        c = self.certificate
        d.update(certificate=None if c is None else c.kind,
                 certificate_curvature=None if c is None else c.curvature,
                 certificate_decrease=None if c is None else c.decrease)
        return d


class ConvexLabeller:
    """Labels checkpoints of one run: the reference, data and tolerances are fixed once.

    Args:
        ref: the run's ConvexReference (carries the loss, X, canonical targets and mu).
        dims: [d_0, ..., d_H] of the network.
        tolerances: ConvexTolerances (default ones otherwise).
    """

    def __init__(self, ref: ConvexReference, dims: Sequence[int], tolerances: ConvexTolerances | None = None):
        self.ref, self.tol = ref, tolerances or ConvexTolerances()
        self.width = width_condition(dims)
        self.dims = list(self.width.dims)
        if self.dims[0] != ref.X.shape[1] or self.dims[-1] != ref.targets.shape[1]:
            raise ValueError(f"dims {self.dims} do not match the data: d_0 = {ref.X.shape[1]}, "
                             f"d_H = {ref.targets.shape[1]}")

    def objective(self, ws: Sequence[torch.Tensor]) -> torch.Tensor:
        """f(theta) = ell(W_H...W_1), differentiable (for Hessians, certificates and retraining)."""
        return product_value_grad(self.ref.loss, product(ws), self.ref.X, self.ref.targets,
                                  self.ref.product_ridge)[0]

    def first_order(self, weights: Sequence[torch.Tensor]) -> dict:
        """Batched first-order quantities, no Python loop over members.

        Args:
            weights: [W_1..W_H], each (E, d_h, d_{h-1}) or (d_h, d_{h-1}).

        Returns:
            dict of (E,) tensors: loss, gap, grad_l (unit-free), grad_theta (unit-free).
        """
        ws = [w.to(F64) for w in weights]
        H, g0 = len(ws), self.ref.grad_scale
        # prefixes R_h = W_{h-1}..W_1 and suffixes L_h = W_H..W_{h+1}: 2(H-1) matmuls for all H gradients
        pre = [None]
        for h in range(1, H):
            pre.append(ws[0] if h == 1 else ws[h - 1] @ pre[-1])
        A = ws[-1] @ pre[-1] if H > 1 else ws[0]
        v, G = product_value_grad(self.ref.loss, A, self.ref.X, self.ref.targets, self.ref.product_ridge)
        gsq, left = torch.zeros_like(v), G                          # left = L_h^T G, built from the top
        for h in range(H, 0, -1):
            gh = left if pre[h - 1] is None else left @ pre[h - 1].transpose(-1, -2)
            gsq = gsq + gh.pow(2).sum((-1, -2))
            if h > 1:
                left = ws[h - 1].transpose(-1, -2) @ left
        scale = g0 * torch.linalg.matrix_norm(A).clamp(min=1.0) ** ((H - 1) / H)
        return dict(loss=v, gap=v - self.ref.value, grad_l=torch.linalg.matrix_norm(G) / g0,
                    grad_theta=gsq.sqrt() / scale)

    def label(self, weights: Sequence[torch.Tensor], hessian: bool = True):
        """Label one network (weights (d_h, d_{h-1})) or an ensemble ((E, d_h, d_{h-1}): a list).

        Args:
            hessian: compute lambda_min of the Hessian at critical points with grad ell(A) != 0 (splits
                strict / non-strict). Without it such points get strict_saddle when a certificate has
                negative curvature, else undetermined.

        Returns:
            ConvexLabel, or a list of them (one per member).
        """
        ws = [torch.as_tensor(w).to(F64) for w in weights]
        if [ws[0].shape[-1]] + [w.shape[-2] for w in ws] != self.dims:
            raise ValueError(f"weights have dims {[ws[0].shape[-1]] + [w.shape[-2] for w in ws]}, "
                             f"the labeller was built for {self.dims}")
        batched = ws[0].ndim == 3
        fo = self.first_order(ws)
        rows = [{k: float(v) for k, v in fo.items()}] if not batched else \
            [dict(zip(fo, vals)) for vals in zip(*(fo[k].tolist() for k in fo))]
        out = [self._decide([w[e] for w in ws] if batched else ws, r, hessian) for e, r in enumerate(rows)]
        return out if batched else out[0]

    def _at_argmin(self, fo: dict, base: dict) -> ConvexLabel:
        """grad ell(A) ~ 0: global_min when the gap to ell* is within gap_rtol * gap_scale as well,
        else near_global (docs/theory.md §8, "Labels")."""
        gap, tol = fo["gap"], self.tol.gap_rtol * self.ref.gap_scale
        if gap <= tol:
            return ConvexLabel("global_min", critical=True, reason=f"critical with grad ell(A) = 0 and gap to "
                               f"ell* {gap:.3g} <= {tol:.3g}: A minimises the convex ell", **base)
        return ConvexLabel("near_global", critical=True, reason=f"grad ell(A) ~ 0 (grad_l_norm {fo['grad_l']:.3g}"
                           f" <= grad_l_rtol) but the gap to ell* {gap:.3g} > gap_rtol * gap_scale = {tol:.3g}: "
                           "close to the minimum value, not at it", **base)

    def _decide(self, ws: list[torch.Tensor], fo: dict, hessian: bool) -> ConvexLabel:
        t, ref = self.tol, self.ref
        base = dict(loss=fo["loss"], convex_gap=fo["gap"], grad_l_norm=fo["grad_l"],
                    grad_theta_norm=fo["grad_theta"], width_ok=self.width.holds)
        if fo["grad_theta"] > t.grad_rtol:
            return ConvexLabel("not_critical", critical=False, reason=f"||grad_theta f|| = {fo['grad_theta']:.3g}"
                               f" > grad_rtol", **base)
        if fo["grad_l"] <= t.grad_l_rtol:
            if ref.no_minimiser:
                return ConvexLabel("no_minimiser", critical=True, reason="grad ell(A) ~ 0 but ell has no "
                                   f"minimiser ({ref.evidence})", **base)
            return self._at_argmin(fo, base)
        lam = rho = None
        vec = None
        if hessian:
            me = min_eigenvalue(self.objective, ws, method="auto", full_max_params=t.hessian_full_max_params,
                                seed=t.seed, return_vector=True)
            lam, rho, vec = me.value, me.scale, me.vector
        cert = descent_certificate(self.objective, ws, ref, t, hessian_vector=vec, hessian_scale=rho)
        base.update(hessian_min_eig=lam, hessian_scale=rho, certificate=cert)
        strict = lam is not None and lam < -t.eig_rtol * rho
        neg = cert is not None and cert.kind == "negative_curvature"
        split = "strict_saddle" if (strict or neg) else ("nonstrict_saddle" if lam is not None else "undetermined")
        if self.width.holds:
            why = "critical with grad ell(A) != 0 and the width condition: a saddle (Laurent & von Brecht)"
            if split == "undetermined":
                why += "; strict or not needs the Hessian"
            return ConvexLabel(split, critical=True, reason=why, **base)
        if strict or neg or cert is not None:
            return ConvexLabel(split, critical=True, reason="bottleneck, but a descent certificate exists", **base)
        drop = perturb_and_retrain(self.objective, ws, t, generator_of(t.seed))
        base.update(retrain_drop=drop)
        lower = drop < -t.descent_rtol * (abs(fo["loss"]) + ref.grad_scale)
        if lower:
            return ConvexLabel("undetermined", critical=True, reason=f"bottleneck: perturb-and-retrain went lower "
                               f"by {-drop:.3g}, not a local minimum; no certificate", **base)
        return ConvexLabel("local_min", critical=True, reason=f"bottleneck {self.width.bottlenecks}: gradient "
                           f"below tolerance and {t.n_perturb} perturb-and-retrain runs found nothing lower", **base)


def label_convex(weights: Sequence[torch.Tensor], loss: Loss, X, Y, ref: ConvexReference | None = None,
                 tolerances: ConvexTolerances | None = None, *, product_ridge: float = 0.0,
                 hessian: bool = True):
    """Label one network [W_1..W_H] (or an ensemble: weights (E, d_h, d_{h-1}) give a list).

    Args:
        weights: [W_1, ..., W_H]. loss, X, Y: the loss and data (Y in any format the loss accepts).
        ref: the convex reference (computed here when None, with `product_ridge`; reuse it across
            checkpoints, or build a ConvexLabeller once).
        tolerances: ConvexTolerances. hessian: see ConvexLabeller.label.

    Returns:
        ConvexLabel (or a list).
    """
    tol = tolerances or ConvexTolerances()
    ws = [torch.as_tensor(w) for w in weights]
    dims = [ws[0].shape[-1]] + [w.shape[-2] for w in ws]
    if ref is None:
        ref = convex_reference(loss, X, Y, product_ridge, d_out=dims[-1], tolerances=tol)
    elif ref.loss.name != loss.name:
        raise ValueError(f"ref was computed for loss={ref.loss.name}, not loss={loss.name}")
    return ConvexLabeller(ref, dims, tol).label(ws, hessian=hessian)
