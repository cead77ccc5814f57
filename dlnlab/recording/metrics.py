"""The metrics hook: losses, gradient norm and the spectra of every partial product (docs/columns.md).
"""
from __future__ import annotations

import torch

from dlnlab.linalg import (
    balancedness,
    finite_members,
    grouped_singular_values,
    numerical_rank,
    partial_products,
)
from dlnlab.recording.base import (
    Hook,
    Record,
    Spectra,
    product_key,
    record_rows,
    split_columns,
    stack_weights,
)


class MetricsHook(Hook):
    """Per member: loss, regularised loss, gradient norm, ||theta||^2, and for every partial product
    W_j...W_i its singular values (`sv_j_i`) and numerical rank (`rank_j_i`), plus the
    balancedness `balance_h` = ||W_{h+1}^T W_{h+1} - W_h W_h^T||_F. `rank` is the end-to-end rank.

    A singular value counts towards a rank when s > rank_rtol * max(s_1, floor^(l/H)) for a product
    of l layers; `rank_floor` defaults to the task's scale (top singular value of its target).
    """
    background = True

    def __init__(self, rank_rtol: float = 1e-3, rank_floor: float | None = None):
        if not 0 < rank_rtol < 1:
            raise ValueError(f"rank_rtol={rank_rtol}: allowed a tolerance in (0, 1)")
        self.rank_rtol, self.rank_floor = rank_rtol, rank_floor

    def on_start(self, trainer) -> None:
        if self.rank_floor is None:
            self.rank_floor = float(torch.linalg.matrix_norm(trainer.task.target(), ord=2))

    def on_record(self, trainer, rec: Record) -> None:
        self.on_records(trainer, [rec])

    def on_records(self, trainer, recs: list) -> None:
        # records of one lambda as one stack of members: the same numbers, a fraction of the calls
        start = 0
        for n in range(1, len(recs) + 1):
            if n == len(recs) or recs[n].ridge != recs[start].ridge:
                self._measure(trainer, recs[start:n])
                start = n

    def _measure(self, trainer, recs: list) -> None:
        E = recs[0].active.shape[0]
        weights = stack_weights(recs) if len(recs) > 1 else [w.detach() for w in recs[0].weights]
        ridge = recs[0].ridge
        H = len(weights)
        prods = partial_products([w.double() for w in weights])
        loss, grad_sq = _loss_and_grad_sq(trainer.task, weights, prods, ridge)
        theta_sq = torch.cat([w.flatten(1) for w in weights], 1).double().pow(2).sum(1)
        m = {}
        m["loss"] = loss
        m["reg_loss"] = loss + ridge * theta_sq.to(loss.dtype)
        m["paper_loss"] = loss * trainer.task.paper_scale
        m["grad_norm"] = torch.sqrt(grad_sq).to(loss.dtype)
        m["theta_sq"] = theta_sq.to(loss.dtype)
        m["lr"] = torch.tensor([r.lr for r in recs], dtype=loss.dtype).repeat_interleave(E)
        m["ridge"] = torch.full_like(m["loss"], ridge)
        # Finite layers can still overflow in a long product (a member about to diverge): its
        # spectra are NaN like a diverged member's, and the SVD never sees it.
        finite = finite_members(prods.values())
        all_finite = bool(finite.all())
        weights = [w.double() for w in weights]
        if not all_finite:
            weights = [torch.where(finite.view(-1, 1, 1), w, 0.0) for w in weights]
            prods = partial_products(weights)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        svs, rks = {}, {}
        # one batched svdvals and one rank comparison per shape of product, not per product
        for keys, s in grouped_singular_values(prods):
            floors = torch.tensor([self.rank_floor ** ((j - i + 1) / H) for j, i in keys], dtype=s.dtype)
            ranks = numerical_rank(s, self.rank_rtol, floors.view(-1, *[1] * (s.dim() - 1))).double()
            if not all_finite:
                ranks = torch.where(finite, ranks, nan)
                s = torch.where(finite.unsqueeze(-1), s, nan)
            for (j, i), rank, sv in zip(keys, ranks.unbind(0), s.unbind(0)):
                m[f"rank_{product_key(j, i)}"] = rks[(j, i)] = rank
                m[f"sv_{product_key(j, i)}"] = svs[(j, i)] = sv
        m["rank"] = m[f"rank_{product_key(H, 1)}"]
        balances = [b if all_finite else torch.where(finite, b, nan) for b in balancedness(weights)]
        for h, b in enumerate(balances, start=1):
            m[f"balance_{h}"] = b
        spectra = Spectra(products=prods, singular_values=svs, ranks=rks, theta_sq=theta_sq,
                          balances=balances, finite=finite)
        if len(recs) == 1:
            recs[0].metrics.update(m)
            recs[0].spectra = spectra
            return
        split_columns(m, recs)
        for n, rec in enumerate(recs):
            rec.spectra = spectra.rows(record_rows(n, E))


def _loss_and_grad_sq(task, weights: list, prods: dict, ridge: float):
    """Per member: the task's loss and ||grad (loss + ridge ||theta||^2)||^2 over all layers.

    A task whose loss is a function of the end-to-end product P alone (`loss_of_product`, as the
    built-in ones) needs autograd only on the one-layer "network" [P]; the chain rule through the
    partial products, at hand for the spectra, gives dL/dW_h = P_{H..h+1}^T G P_{h-1..1}^T; a task
    with `product_loss_grad` (the square loss) gives G = dL/dP in closed form, with no autograd at
    all. Any other task gets autograd through the layers."""
    H = len(weights)
    if not getattr(task, "loss_of_product", False):  # optional in Task
        ws = [w.clone().requires_grad_(True) for w in weights]
        with torch.enable_grad():
            loss = task.loss(ws)
            grads = torch.autograd.grad(loss.sum(), ws)
        return loss.detach(), sum((g + 2 * ridge * w).double().pow(2).sum((-1, -2))
                                  for g, w in zip(grads, weights))
    closed = getattr(task, "product_loss_grad", None)  # optional: the square loss in closed form
    got = None if closed is None else closed(prods[(H, 1)].to(weights[0].dtype))
    if got is not None:
        loss, G = got
    else:
        P = prods[(H, 1)].to(weights[0].dtype, copy=True).requires_grad_(True)  # not prods itself
        with torch.enable_grad():
            loss = task.loss([P])
            (G,) = torch.autograd.grad(loss.sum(), [P])
        G = G.double()
    grad_sq = 0.0
    for h in range(1, H + 1):
        g = G if h == H else prods[(H, h + 1)].transpose(-1, -2) @ G
        if h > 1:
            g = g @ prods[(h - 1, 1)].transpose(-1, -2)
        if ridge:
            g = g + 2 * ridge * weights[h - 1].double()
        grad_sq = grad_sq + g.pow(2).sum((-1, -2))
    return loss.detach(), grad_sq


