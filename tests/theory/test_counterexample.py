"""The non-smooth counterexample (docs/theory.md §8): l1 gives a sub-optimal local minimum, the smoothed
loss (pseudo_huber, small delta) a saddle with a descent certificate."""
import pytest
import torch

from dlnlab.theory.convex.certificate import curvature
from dlnlab.theory.convex.counterexample import (
    counterexample_objective,
    nonsmooth_counterexample,
)


def test_l1_has_a_suboptimal_local_minimum():
    r = nonsmooth_counterexample("l1", n_perturb=20000)
    assert r.f0 == 0.0 and r.f0 > r.ell_star              # sub-optimal: inf ell = -1
    assert r.local_min and min(r.min_change.values()) >= 0.0, r.min_change
    assert set(r.min_change) == {1e-1, 1e-2, 1e-3}
    f, _ = counterexample_objective("l1")
    with torch.no_grad():   # the infimum is reached elsewhere: a = (0, 1)
        assert float(f([torch.ones(1, 1, dtype=torch.float64), torch.tensor([[0.0], [1.0]], dtype=torch.float64)])) == -1.0


@pytest.mark.parametrize("delta", [1e-1, 1e-2, 1e-3])
def test_pseudo_huber_turns_it_into_a_saddle_with_a_certificate(delta):
    r = nonsmooth_counterexample("pseudo_huber", delta=delta, n_perturb=2000)
    assert not r.local_min and r.min_change[0.1] < -1e-3, r.min_change
    assert r.hessian_min_eig == pytest.approx(1 - 2**0.5, rel=1e-6)  # strict: [[2, -1], [-1, 0]] in (w_1, W_2[1])
    c = r.certificate
    assert c is not None and c.kind == "negative_curvature" and c.curvature < 0 and c.decrease < 0
    f, _ = counterexample_objective("pseudo_huber", delta)
    ws = [torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[1.0], [0.0]], dtype=torch.float64)]
    assert curvature(f, ws, c.direction) == pytest.approx(c.curvature, rel=1e-10)
    # finite differences of f along the certificate's direction agree with its curvature
    t = min(1e-4, 1e-2 * delta)
    with torch.no_grad():
        fd = [float(f([w + s * u for w, u in zip(ws, c.direction)])) for s in (-t, 0.0, t)]
    assert (fd[0] - 2 * fd[1] + fd[2]) / t**2 == pytest.approx(c.curvature, rel=1e-3)
