"""The convex losses of dlnlab.losses, used as a user would: make_loss, check_targets once, value/grad_out."""
import pytest
import torch

from dlnlab.losses import LOSSES, LossError, make_loss, product_value_grad
from dlnlab.tasks import RegressionTask

F64 = torch.float64
PARAMS = {"huber": {"delta": 0.7}, "pseudo_huber": {"delta": 0.7}, "lp": {"p": 1.5}}


def _targets(name, m, d, g):
    if name == "cross_entropy":
        return torch.randint(0, d, (m,), generator=g)
    if name == "logistic":
        return torch.randint(0, 2, (m,), generator=g) * 2 - 1
    if name == "poisson":
        return torch.poisson(torch.full((m, d), 2.0), generator=g)
    return torch.randn(m, d, generator=g, dtype=F64)


@pytest.mark.parametrize("name", LOSSES)
def test_grad_out_matches_autograd_and_finite_differences(name):
    g = torch.Generator().manual_seed(1)
    d = 1 if name == "logistic" else 3
    loss = make_loss(name, **PARAMS.get(name, {}))
    T = loss.check_targets(_targets(name, 7, d, g), d_out=d)
    out = torch.randn(2, 7, d, generator=g, dtype=F64, requires_grad=True)  # ensemble E = 2
    # closed-form gradient == autograd (every member)
    auto = torch.autograd.grad(loss.value(out, T).sum(), out)[0]
    assert torch.allclose(loss.grad_out(out.detach(), T), auto, rtol=1e-12, atol=1e-14)
    # autograd == central finite differences (away from kinks: random outputs hit none)
    assert torch.autograd.gradcheck(lambda o: loss.value(o, T), (out,), eps=1e-6, atol=1e-7)


def test_square_is_todays_loss_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(20, 4, generator=g, dtype=F64), torch.randn(20, 3, generator=g, dtype=F64)
    ws = [torch.randn(3, 5, 4, generator=g, dtype=F64), torch.randn(3, 3, 5, generator=g, dtype=F64)]
    out = X @ ws[0].transpose(-1, -2) @ ws[1].transpose(-1, -2)
    sq = make_loss("square")
    assert torch.equal(sq.value(out, sq.check_targets(Y)), RegressionTask(X, Y).loss(ws))


def test_product_value_grad_is_the_gradient_in_A():
    g = torch.Generator().manual_seed(2)
    loss = make_loss("huber", delta=0.5)
    X, Y = torch.randn(30, 4, generator=g, dtype=F64), torch.randn(30, 2, generator=g, dtype=F64)
    A = torch.randn(2, 4, generator=g, dtype=F64, requires_grad=True)
    v, G = product_value_grad(loss, A.detach(), X, Y, product_ridge=0.3)
    auto = torch.autograd.grad(product_value_grad(loss, A, X, Y, product_ridge=0.3)[0], A)[0]
    assert torch.allclose(G, auto, rtol=1e-12)


def test_targets_are_canonicalised():
    ce = make_loss("cross_entropy")
    T = ce.check_targets(torch.tensor([0, 2, 1]), d_out=3)
    assert torch.equal(T, torch.eye(3, dtype=F64)[[0, 2, 1]])
    assert torch.equal(ce.check_targets(T), T)                     # idempotent: one-hot rows pass
    lg = make_loss("logistic")
    assert torch.equal(lg.check_targets(torch.tensor([0.0, 1.0])), torch.tensor([[-1.0], [1.0]]))
    assert torch.equal(lg.check_targets(torch.tensor([-1.0, 1.0])), torch.tensor([[-1.0], [1.0]]))


@pytest.mark.parametrize("call, field", [
    (lambda: make_loss("hinge"), "loss='hinge' is unknown; allowed: square"),
    (lambda: make_loss("huber", delta=0.0), "loss.delta"),
    (lambda: make_loss("pseudo_huber", delta=-1), "loss.delta"),
    (lambda: make_loss("lp", p=1.0), "loss.p"),
    (lambda: make_loss("lp", p=2.5), "loss.p"),
    (lambda: make_loss("huber", p=2), "no parameter 'p'"),
    (lambda: make_loss("cross_entropy").check_targets(torch.tensor([0, 3]), d_out=3), "class index 3"),
    (lambda: make_loss("cross_entropy").check_targets(torch.tensor([0.0, 1.5])), "non-integer values"),
    (lambda: make_loss("square").check_targets(torch.tensor([[0.0], [float("nan")]])), "NaN"),
    (lambda: make_loss("logistic").check_targets(torch.tensor([0.0, 2.0])), "binary targets"),
    (lambda: make_loss("poisson").check_targets(torch.tensor([1.0, -1.0])), "counts Y >= 0"),
    (lambda: make_loss("square").check_targets(torch.zeros(4, 2), d_out=3), "d_out is 3"),
])
def test_bad_input_is_a_one_line_error_naming_the_field(call, field):
    with pytest.raises(LossError) as e:
        call()
    assert field in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_l1_is_flagged_outside_the_theorem():
    assert not make_loss("l1").smooth
    assert all(make_loss(n, **PARAMS.get(n, {})).smooth for n in LOSSES if n != "l1")
