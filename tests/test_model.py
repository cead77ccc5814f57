import pytest
import torch

from dlnlab.linalg import balancedness, partial_products
from dlnlab.model import DeepLinearNet


def naive_product(weights, j, i):
    """W_j ... W_i by a plain loop (1-based, j >= i)."""
    out = weights[i - 1]
    for h in range(i + 1, j + 1):
        out = weights[h - 1] @ out
    return out


def test_shapes_follow_the_papers():
    net = DeepLinearNet([5, 4, 3, 2], ensemble=3, init="gaussian", seed=1)
    assert [tuple(w.shape) for w in net.weights] == [(3, 4, 5), (3, 3, 4), (3, 2, 3)]
    assert net.H == 3 and net.r_max == 2
    assert net(torch.randn(7, 5, dtype=torch.float64)).shape == (3, 7, 2)


def test_partial_products_match_a_naive_loop():
    net = DeepLinearNet([4, 6, 5, 3, 2], ensemble=2, init="gaussian", seed=0)
    ws = [w.detach() for w in net.weights]
    prods = partial_products(ws)
    assert len(prods) == 4 * 5 // 2
    for (j, i), p in prods.items():
        torch.testing.assert_close(p, naive_product(ws, j, i), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(net.product(j, i).detach(), p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net.end_to_end().detach(), prods[(4, 1)])
    x = torch.randn(9, 4, dtype=torch.float64)
    torch.testing.assert_close(net(x).detach(), x @ prods[(4, 1)].transpose(-1, -2))


def test_empty_product_is_the_identity():
    net = DeepLinearNet([4, 6, 5, 3], seed=0)
    eye = net.product(2, 3)
    assert eye.shape == (1, 5, 5) and torch.equal(eye[0], torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="product"):
        net.product(1, 3)


@pytest.mark.parametrize("batch", [(), (2,)])
def test_partial_products_use_quadratically_many_matmuls(monkeypatch, batch):
    calls = []
    H = 8
    ws = [torch.randn(*batch, 3, 3, dtype=torch.float64) for _ in range(H)]
    for name in ("matmul", "bmm"):  # whichever kernel the products go through, each call counts
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda a, b, real=real: calls.append(1) or real(a, b))
    real_op = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: calls.append(1) or real_op(a, b))
    partial_products(ws)
    assert len(calls) == H * (H - 1) // 2


@pytest.mark.parametrize("kind", ["gaussian", "orthogonal", "zero", "small"])
def test_ensemble_member_k_is_the_network_seeded_k(kind):
    dims = [4, 5, 5, 3]
    ens = DeepLinearNet(dims, ensemble=4, init=kind, scale=0.5, seed=10)
    for k in range(4):
        single = DeepLinearNet(dims, init=kind, scale=0.5, seed=10 + k)
        for a, b in zip(ens.member(k), single.member(0)):
            assert torch.equal(a, b)


def test_orthogonal_init_has_unit_singular_values():
    net = DeepLinearNet([4, 6, 3], init="orthogonal", scale=2.0, seed=0)
    for w in net.member(0):
        torch.testing.assert_close(torch.linalg.svdvals(w), torch.full((min(w.shape),), 2.0, dtype=torch.float64))


def test_balanced_init_carries_the_root_of_the_spectrum():
    H, dims = 3, [5, 6, 4, 3]
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    net = DeepLinearNet(dims, init="balanced", scale=1.0, target=M, seed=2)
    ws = net.member(0)
    s = torch.linalg.svdvals(M)
    torch.testing.assert_close(net.end_to_end()[0].detach(), M)  # rank(M) = 3 = r_max: exact
    for w in ws:
        torch.testing.assert_close(torch.linalg.svdvals(w)[:3], s.pow(1 / H))
    for b in balancedness(ws):
        assert float(b) < 1e-12


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="H >= 2"):
        DeepLinearNet([3, 2])
    with pytest.raises(ValueError, match="width"):
        DeepLinearNet([3, 0, 2])
    with pytest.raises(ValueError, match="allowed: gaussian"):
        DeepLinearNet([3, 2, 2], init="xavier")
