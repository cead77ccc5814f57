"""The trainer's factored step under every smooth non-square loss: deltas = the loss's closed-form
grad_out, the same step as autograd on the task's loss to 1e-12 in float64 (docs/losses.md)."""
import dataclasses

import pytest
import torch

from dlnlab.losses import LOSSES, make_loss
from dlnlab.model import DeepLinearNet
from dlnlab.tasks import RegressionTask, make_completion, with_loss
from dlnlab.train import RidgeSGD, Trainer, dln_batch_factors

F64 = torch.float64
SMOOTH = [n for n in LOSSES if n != "square" and make_loss(n).smooth]


def regression_for(name: str, m: int = 20, d_in: int = 5, seed: int = 0) -> RegressionTask:
    """Data whose targets fit `name` (classes, +-1, counts with zeros, or real values)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, d_in, generator=g, dtype=F64)
    C = 1 if name == "logistic" else 3
    Z = X @ torch.randn(d_in, C, generator=g, dtype=F64) + torch.randn(m, C, generator=g, dtype=F64)
    Y = {"cross_entropy": lambda: torch.nn.functional.one_hot(Z.argmax(1), C).to(F64),
         "logistic": lambda: torch.sign(Z),
         "poisson": lambda: torch.poisson(torch.exp(0.3 * Z), generator=g)}.get(name, lambda: Z)()
    params = {"huber": {"delta": 0.7}, "pseudo_huber": {"delta": 0.4}, "lp": {"p": 1.5}}.get(name, {})
    return with_loss(RegressionTask(X, Y), make_loss(name, **params))


def test_every_smooth_loss_is_covered():
    assert set(SMOOTH) == {"cross_entropy", "logistic", "huber", "pseudo_huber", "lp", "poisson"}


@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("optim", ["gd", "sgd"])
def test_factored_step_equals_the_autograd_step(name, optim):
    task = regression_for(name)
    dims = [task.d_in, 4, 6, task.d_out]
    net = DeepLinearNet(dims, ensemble=3, init="gaussian", scale=0.5, seed=1)
    ws0 = [w.detach().clone() for w in net.weights]
    idx = None if optim == "gd" else torch.randint(task.n_samples, (3, 7), generator=torch.Generator().manual_seed(2))
    batch = task.batch_arrays(idx)
    assert batch is not None and batch[-1] is task.objective
    losses, acts, deltas = dln_batch_factors(ws0, *batch)
    ws = [w.clone().requires_grad_(True) for w in ws0]
    want = task.loss(ws) if idx is None else task.batch_loss(ws, idx)
    torch.testing.assert_close(losses, want.detach(), rtol=1e-12, atol=0.0)
    lr, ridge = 0.05, 0.1
    grads = torch.autograd.grad((want + ridge * sum(w.pow(2).sum((-1, -2)) for w in ws)).sum(), ws)
    opt = RidgeSGD(net.parameters(), lr=lr, ridge=ridge)
    opt.factors = (acts, deltas)
    opt.step()
    for w, w0, g in zip(net.weights, ws0, grads):
        torch.testing.assert_close(w.detach(), w0 - lr * g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["huber", "poisson"])
def test_factored_completion_step_equals_the_autograd_step(name):
    task = make_completion(3, 4, 1, [2.0], 0.1, observed_fraction=0.75, seed=0)
    if name == "poisson":
        task = dataclasses.replace(task, values=task.values.abs().round())
    task = with_loss(task, make_loss(name))
    net = DeepLinearNet([4, 5, 5, 3], ensemble=2, init="gaussian", scale=0.5, seed=0)
    ws0 = [w.detach().clone() for w in net.weights]
    idx = torch.randint(task.n_samples, (2, 4), generator=torch.Generator().manual_seed(0))
    losses, acts, deltas = dln_batch_factors(ws0, *task.batch_arrays(idx))
    ws = [w.clone().requires_grad_(True) for w in ws0]
    want = task.batch_loss(ws, idx)
    torch.testing.assert_close(losses, want.detach(), rtol=1e-12, atol=0.0)
    grads = torch.autograd.grad(want.sum(), ws)
    for d, a, g in zip(deltas, acts, grads):
        torch.testing.assert_close(d.transpose(-1, -2) @ a.expand(2, *a.shape[-2:]), g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["cross_entropy", "huber"])
def test_trainer_runs_match_with_and_without_the_factored_step(name):
    """100 GD steps of the Trainer: factored (the task's batch_arrays) and autograd (batch_arrays hidden)."""
    task = regression_for(name, m=40)
    runs = []
    for factored in (True, False):
        t = task if factored else dataclasses.replace(task)
        if not factored:
            t.batch_arrays = lambda idx: None
        net = DeepLinearNet([task.d_in, 4, 4, task.d_out], ensemble=2, init="gaussian", scale=0.5, seed=3)
        Trainer(net, t, optim="gd", lr=0.1, steps=100).run()
        runs.append([w.detach() for w in net.weights])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_l1_and_product_ridge_keep_autograd():
    task = regression_for("huber")
    assert with_loss(RegressionTask(task.X, task.Y), make_loss("l1")).batch_arrays(None) is None
    assert with_loss(RegressionTask(task.X, task.Y), make_loss("huber"), 0.1).batch_arrays(None) is None
