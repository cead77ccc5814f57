"""Theory functions that differentiate enable autograd themselves: called under `torch.no_grad()`
(every record runs under one) they give the same answers as outside it (issue 20, item 3)."""
import pytest
import torch

from dlnlab.linalg import generator_of
from dlnlab.losses import make_loss
from dlnlab.theory.convex.certificate import (
    curvature,
    descent_certificate,
    perturb_and_retrain,
)
from dlnlab.theory.convex.counterexample import nonsmooth_counterexample
from dlnlab.theory.convex.labels import (
    ConvexLabeller,
    ConvexTolerances,
    convex_reference,
    label_convex,
)
from dlnlab.theory.ridge.labels import classify as ridge_classify
from dlnlab.theory.square.hessian import (
    full_hessian,
    hvp,
    min_eigenvalue,
    square_loss_fn,
)

F64 = torch.float64


def ce_problem(seed=3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 4, generator=g, dtype=F64)
    y = torch.randint(0, 3, (40,), generator=g)
    loss = make_loss("cross_entropy")
    return loss, X, y, convex_reference(loss, X, y, d_out=3)


def both_modes(fn):
    """fn() with autograd on and under torch.no_grad()."""
    free = fn()
    with torch.no_grad():
        return free, fn()


def zero_layers(seed=0, width=4):
    """W_1 random, W_2 = W_3 = 0: theta-critical with grad ell(A) != 0 (a saddle by the theorem)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(width, 4, generator=g, dtype=F64), torch.zeros(width, width, dtype=F64),
            torch.zeros(3, width, dtype=F64)]


def test_curvature_and_certificates_work_under_no_grad():
    loss, X, y, ref = ce_problem()
    lab = ConvexLabeller(ref, [4, 4, 4, 3])
    ws = zero_layers()
    us = [torch.randn(w.shape, generator=torch.Generator().manual_seed(1), dtype=F64) for w in ws]
    free, quiet = both_modes(lambda: curvature(lab.objective, ws, us))
    assert quiet == free and free != 0.0
    tol = ConvexTolerances()
    free, quiet = both_modes(lambda: descent_certificate(lab.objective, ws, ref, tol))
    assert free.kind == quiet.kind == "negative_curvature" and quiet.curvature == free.curvature < 0
    # the origin has no negative curvature along the pair directions: the fibre move, then a gradient
    origin = [torch.zeros_like(w) for w in ws]
    free, quiet = both_modes(lambda: descent_certificate(lab.objective, origin, ref, tol))
    assert (free is None) == (quiet is None)
    if free is not None:
        assert quiet.kind == free.kind and quiet.decrease == free.decrease
    tol = ConvexTolerances(n_perturb=2, retrain_steps=5)
    free, quiet = both_modes(lambda: perturb_and_retrain(lab.objective, ws, tol, generator_of(0)))
    assert quiet == free and free < 0   # a saddle: retraining from nearby goes lower


def test_a_bottleneck_critical_point_with_nonzero_grad_is_labelled_under_no_grad():
    """The failing case of issue 20: a bottleneck iterate theta-critical with grad ell(A) != 0 (the
    local_min rule: certificate, then perturb-and-retrain)."""
    loss, X, y, ref = ce_problem()
    ws = zero_layers(width=1)
    tol = ConvexTolerances(n_perturb=2, retrain_steps=5)
    free, quiet = both_modes(lambda: label_convex(ws, loss, X, y, ref, tol))
    assert not free.width_ok and free.critical and free.grad_l_norm > 1e-3
    assert quiet.label == free.label and quiet.hessian_min_eig == free.hessian_min_eig
    free, quiet = both_modes(lambda: label_convex(ws, loss, X, y, ref, tol, hessian=False))
    assert quiet.label == free.label and quiet.reason == free.reason


@pytest.mark.parametrize("method", ["full", "lanczos"])
def test_hessians_work_under_no_grad(method):
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(30, 4, generator=g, dtype=F64), torch.randn(30, 3, generator=g, dtype=F64)
    f = square_loss_fn(X, Y)
    ws = [torch.randn(5, 4, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)]
    free, quiet = both_modes(lambda: min_eigenvalue(f, ws, method=method, seed=0))
    assert quiet.value == pytest.approx(free.value, rel=1e-10, abs=1e-12)
    free, quiet = both_modes(lambda: full_hessian(f, ws))
    assert torch.equal(free, quiet)
    free, quiet = both_modes(lambda: hvp(f, ws, ws))
    assert all(torch.equal(a, b) for a, b in zip(free, quiet))


def test_ridge_labels_and_the_counterexample_work_under_no_grad():
    g = torch.Generator().manual_seed(2)
    X, Y = torch.randn(20, 3, generator=g, dtype=F64), torch.randn(20, 3, generator=g, dtype=F64)
    f = square_loss_fn(X, Y)
    ws = [torch.randn(3, 3, generator=g, dtype=F64) for _ in range(3)]
    free, quiet = both_modes(lambda: ridge_classify(ws, loss_fn=lambda w: f(w) + 0.1 * sum(x.pow(2).sum() for x in w),
                                                    ridge=0.1, modes=False))
    assert quiet.label == free.label and quiet.grad_norm == free.grad_norm > 0
    free, quiet = both_modes(lambda: nonsmooth_counterexample("pseudo_huber", delta=1e-1, n_perturb=200))
    assert quiet.local_min == free.local_min is False
    assert quiet.certificate.curvature == free.certificate.curvature < 0
