"""Laurent & von Brecht's theorem at work: width condition, the convex reference ell*, and labels."""
import pytest
import torch

from dlnlab.linalg import product
from dlnlab.losses import make_loss
from dlnlab.theory.convex.certificate import curvature
from dlnlab.theory.convex.labels import (
    ConvexLabeller,
    ConvexTolerances,
    convex_reference,
    label_convex,
    width_condition,
)
from dlnlab.theory.square.classify import classify
from dlnlab.theory.square.data import LandscapeData
from dlnlab.theory.square.points import random_global_min, saddle_family

F64 = torch.float64


def ce_data(m=60, d_in=4, C=3, noise=1.0, seed=0):
    """Cross-entropy data: labels = argmax of a noisy linear teacher (not separable for noise > 0)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, d_in, generator=g, dtype=F64)
    W = torch.randn(C, d_in, generator=g, dtype=F64)
    return X, (X @ W.T + noise * torch.randn(m, C, generator=g, dtype=F64)).argmax(1)


def factor(A, dims, seed=0):
    """Random invertible factors with product A: W_1 = D_1, W_h = D_h D_{h-1}^{-1}, W_H = A D_{H-1}^{-1}
    (hidden widths all d_0)."""
    g = torch.Generator().manual_seed(seed)
    Ds = [torch.randn(d, d, generator=g, dtype=F64) + 2 * torch.eye(d, dtype=F64) for d in dims[1:-1]]
    ws = [Ds[0]] + [Ds[h] @ torch.linalg.inv(Ds[h - 1]) for h in range(1, len(Ds))]
    return ws + [A @ torch.linalg.inv(Ds[-1])]


def test_width_condition_names_the_bottleneck():
    assert width_condition([6, 4, 4, 4]).holds
    w = width_condition([6, 4, 1, 4])
    assert not w.holds and w.bottlenecks == ((2, 1),) and w.r_max == 1 and "layer h=2" in w.message


@pytest.mark.parametrize("dims, ridge, applies, why", [
    ([6, 4, 4, 4], 0.0, True, None),
    ([6, 4, 4, 4], 0.01, False, "parameter ridge"),
    ([6, 4, 1, 4], 0.0, False, "bottleneck at layer h=2 (d_2=1)"),
    ([6, 1, 4], 1e-3, False, "bottleneck at layer h=1 (d_1=1)"),
])
def test_the_width_message_says_whether_the_theorem_applies(dims, ridge, applies, why):
    """Issue 20: "all local minima are global" only where Laurent & von Brecht's theorem applies: the
    width condition holds and there is no parameter ridge; otherwise one line saying why not."""
    w = width_condition(dims, ridge=ridge)
    assert w.applies is applies and w.holds is (min(dims[1:-1]) >= min(dims[0], dims[-1]))
    assert "\n" not in w.message
    if applies:
        assert "all local minima are global" in w.message
    else:
        assert "all local minima are global" not in w.message
        assert "theorem does not apply" in w.message and why in w.message
    assert ("parameter ridge" in w.message) is (ridge > 0)


def test_product_at_the_argmin_with_invertible_factors_is_a_global_min():
    X, y = ce_data()
    loss = make_loss("cross_entropy")
    ref = convex_reference(loss, X, y, d_out=3)
    assert ref.converged and not ref.no_minimiser and "Stiemke" in ref.evidence
    ws = factor(ref.A_star, [4, 4, 4, 4, 3])
    lab = label_convex(ws, loss, X, y, ref)
    assert lab.label == "global_min" and abs(lab.convex_gap) < 1e-12, lab


@pytest.mark.parametrize("name", ["cross_entropy", "huber", "logistic", "poisson"])
def test_two_zero_layers_are_a_strict_saddle_with_a_checked_certificate(name):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 4, generator=g, dtype=F64)
    d_out = 1 if name == "logistic" else 3
    Y = {"cross_entropy": torch.randint(0, 3, (40,), generator=g),
         "logistic": torch.randint(0, 2, (40,), generator=g),
         "poisson": torch.poisson(torch.full((40, 3), 1.5), generator=g),
         "huber": torch.randn(40, 3, generator=g, dtype=F64) + 1}[name]
    loss = make_loss(name)
    ws = [torch.randn(4, 4, generator=g, dtype=F64), torch.zeros(4, 4, dtype=F64), torch.zeros(d_out, 4, dtype=F64)]
    lab = label_convex(ws, loss, X, Y)
    assert lab.grad_theta_norm == 0 and lab.grad_l_norm > 1e-3     # critical, grad ell(A) != 0
    assert lab.label == "strict_saddle" and lab.hessian_min_eig < 0
    c = lab.certificate
    assert c.kind == "negative_curvature" and c.decrease < 0
    lab_ref = ConvexLabeller(convex_reference(loss, X, Y, d_out=d_out), [4, 4, 4, d_out])
    # the certificate's curvature against central finite differences of f along its direction
    f = lambda t: float(lab_ref.objective([w + t * u for w, u in zip(ws, c.direction)]))
    eps = 1e-4
    fd = (f(eps) + f(-eps) - 2 * f(0.0)) / eps ** 2
    assert c.curvature == pytest.approx(fd, rel=1e-4)
    assert curvature(lab_ref.objective, ws, c.direction) == pytest.approx(c.curvature, rel=1e-12)


def test_the_origin_at_depth_3_is_a_nonstrict_saddle():
    X, y = ce_data(seed=1)
    lab = label_convex([torch.zeros(4, 4, dtype=F64), torch.zeros(4, 4, dtype=F64), torch.zeros(3, 4, dtype=F64)],
                       make_loss("cross_entropy"), X, y)
    assert lab.label == "nonstrict_saddle" and abs(lab.hessian_min_eig) <= 1e-12 * lab.hessian_scale


def test_separable_data_have_no_minimiser_and_never_a_global_min():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(50, 3, generator=g, dtype=F64)
    y = torch.sign(X @ torch.tensor([1.0, -2.0, 0.5], dtype=F64))
    loss = make_loss("logistic")
    ref = convex_reference(loss, X, y)
    assert ref.no_minimiser and ref.A_star is None and "separable" in ref.evidence
    for t in (1.0, 1e2, 1e4):  # far out along the recession direction: grad ell(A) -> 0
        lab = label_convex(factor(t * ref.direction, [3, 3, 3, 1]), loss, X, y, ref)
        assert lab.label != "global_min"
    assert lab.label == "no_minimiser"
    # with a product ridge the same data have a unique minimiser
    assert not convex_reference(loss, X, y, product_ridge=1e-2).no_minimiser


def test_poisson_zero_column_with_an_intercept_has_no_minimiser():
    g = torch.Generator().manual_seed(5)
    X = torch.cat([torch.ones(30, 1, dtype=F64), torch.randn(30, 2, generator=g, dtype=F64)], 1)
    Y = torch.poisson(torch.full((30, 2), 2.0), generator=g)
    Y[:, 1] = 0
    ref = convex_reference(make_loss("poisson"), X, Y)
    assert ref.no_minimiser and "output 1" in ref.evidence


def test_square_loss_general_path_agrees_with_theorem_7():
    g = torch.Generator().manual_seed(6)
    X, Y = torch.randn(20, 4, generator=g, dtype=F64), torch.randn(20, 3, generator=g, dtype=F64)
    data = LandscapeData.from_xy(X, Y)
    dims = [4, 5, 4, 4, 3]
    lab = ConvexLabeller(convex_reference(make_loss("square"), X, Y), dims)
    points = [random_global_min(data, dims, generator=s) for s in range(3)]
    points += [saddle_family(data, dims, r, strict, generator=s) for s, (r, strict) in
               enumerate([(0, True), (1, True), (2, True), (1, False), (2, False)])]
    for p in points:
        theorem7 = classify(p.weights, X, Y).label
        general = lab.label(p.weights).label
        assert theorem7 == p.label and general == theorem7, (p.kind, p.r, theorem7, general)


def test_ensemble_labels_equal_member_labels():
    X, y = ce_data(seed=2)
    loss = make_loss("cross_entropy")
    ref = convex_reference(loss, X, y, d_out=3)
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(5, d1, d0, generator=g, dtype=F64) for d0, d1 in [(4, 6), (6, 6), (6, 3)]]
    lab = ConvexLabeller(ref, [4, 6, 6, 3])
    batch = lab.label(ws, hessian=False)
    for e in range(5):
        one = lab.label([w[e] for w in ws], hessian=False)
        assert one.label == batch[e].label == "not_critical"
        assert one.loss == pytest.approx(batch[e].loss, rel=1e-13)
        assert one.grad_theta_norm == pytest.approx(batch[e].grad_theta_norm, rel=1e-12)


def _train_lbfgs(loss, X, y, dims, std, seed, rounds=30):
    g = torch.Generator().manual_seed(seed)
    ws = [(std * torch.randn(b, a, generator=g, dtype=F64)).requires_grad_(True) for a, b in zip(dims, dims[1:])]
    T = loss.check_targets(y, d_out=dims[-1])
    opt = torch.optim.LBFGS(ws, max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-14,
                            tolerance_change=0.0, history_size=50)

    def closure():
        opt.zero_grad()
        v = loss.value(X @ product(ws).T, T)
        v.backward()
        return v

    for _ in range(rounds):
        opt.step(closure)
    return [w.detach() for w in ws]


@pytest.mark.parametrize("name, width, reaches", [("cross_entropy", 4, True), ("huber", 4, True),
                                                  ("cross_entropy", 1, False)])
def test_table_B3_pattern(name, width, reaches):
    """Spec table B.3 on a small scale: depth 3, m = 300, d_in = 6, d_out = 4, inits of std 0.05/0.5/1.5."""
    g = torch.Generator().manual_seed(7)
    X = torch.randn(300, 6, generator=g, dtype=F64)
    teacher = torch.randn(4, 6, generator=g, dtype=F64)
    if name == "cross_entropy":
        y = (X @ teacher.T + torch.randn(300, 4, generator=g, dtype=F64)).argmax(1)
    else:
        y = X @ teacher.T + 0.3 * torch.randn(300, 4, generator=g, dtype=F64)
        y[:15] += 10.0  # 5% outliers
    loss = make_loss(name, **({"delta": 1.0} if name == "huber" else {}))
    ref = convex_reference(loss, X, y, d_out=4)
    dims = [6, width, width, 4]
    for k, std in enumerate((0.05, 0.5, 1.5)):
        ws = _train_lbfgs(loss, X, y, dims, std, seed=k, rounds=30 if reaches else 3)
        lab = ConvexLabeller(ref, dims, ConvexTolerances(grad_rtol=1e-5)).label(ws, hessian=False)
        if reaches:
            assert lab.convex_gap <= 1e-8, (std, lab)
        else:
            assert lab.convex_gap > 1e-3 and lab.label != "global_min", (std, lab)


def test_exact_stiemke_certificate_and_newton_polish():
    """A minimiser exists iff some y > 0 has M^T y = 0 (M: the margin rows); convex_newton builds y from
    the probabilities at the optimum, M^T M in closed form, and Newton reaches rounding level."""
    import numpy as np

    from dlnlab.theory.convex import newton as cn

    X, y = ce_data(m=80, d_in=4, C=3, seed=5)
    Xn, T = X.numpy(), torch.nn.functional.one_hot(y, 3).double().numpy()
    c = y.numpy()
    M = np.array([np.outer(np.eye(3)[c[i]] - np.eye(3)[k], Xn[i]).ravel()
                  for i in range(80) for k in range(3) if k != c[i]])
    assert np.abs(M.T @ M - cn.margin_gram("cross_entropy", Xn, T)).max() < 1e-12
    A, steps = cn.newton_polish("cross_entropy", Xn, T, np.zeros((3, 4)), max_iter=30)
    g0 = np.linalg.norm(cn.value_grad("cross_entropy", Xn, T, np.zeros((3, 4)))[1])
    assert steps <= 12 and np.linalg.norm(cn.value_grad("cross_entropy", Xn, T, A)[1]) < 1e-14 * g0
    ok, ymin, resid = cn.stiemke_certificate("cross_entropy", Xn, T, A)
    assert ok and ymin > 0 and resid < 1e-12
    sep = torch.nn.functional.one_hot((X @ torch.randn(4, 3, dtype=F64)).argmax(1), 3).double().numpy()
    As, _ = cn.newton_polish("cross_entropy", Xn, sep, np.zeros((3, 4)), max_iter=30)
    assert not cn.stiemke_certificate("cross_entropy", Xn, sep, As)[0]     # separable: no y > 0 exists


@pytest.mark.parametrize("name", ["cross_entropy", "logistic"])
def test_reference_without_the_lp_agrees_with_the_lp(name, monkeypatch):
    """The exact Stiemke certificate decides existence; forcing the old path (recession LP) gives the
    same verdict and value."""
    import sys

    cr = sys.modules["dlnlab.theory.convex.reference"]
    X, y = ce_data(m=200, d_in=5, C=1 if name == "logistic" else 4, noise=1.0, seed=3)
    if name == "logistic":
        y = torch.sign(X[:, 0] + torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=F64))
    C = 1 if name == "logistic" else 4
    fast = convex_reference(make_loss(name), X, y, d_out=C)
    assert not fast.no_minimiser and "exact Stiemke certificate" in fast.evidence
    monkeypatch.setattr(cr, "stiemke_certificate", lambda *a: (False, 0.0, 1.0))
    monkeypatch.setattr(cr, "_stiemke", lambda *a: float("inf"))
    slow = convex_reference(make_loss(name), X, y, d_out=C)
    assert not slow.no_minimiser and "recession LP" in slow.evidence
    assert fast.value == pytest.approx(slow.value, rel=1e-13, abs=1e-14)


def ill_conditioned_logistic(seed=0, m=400, d=8):
    """Logistic regression with label noise on features of scales 1 .. 10^-2: a flat valley."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, d, generator=g, dtype=F64) * torch.logspace(0, -2, d, dtype=F64)
    y = torch.sign(X @ (3 * torch.randn(d, generator=g, dtype=F64)) + 0.8 * torch.randn(m, generator=g, dtype=F64))
    y[torch.rand(m, generator=g) < 0.1] *= -1
    return X, y


def test_a_small_gradient_with_a_large_gap_is_near_global_not_global_min():
    """Issue 20: grad_l_norm <= grad_l_rtol does not bound ell(A) - ell* on a flat valley. Along the
    Hessian's flattest direction at A*, a point with grad_l_norm < 1e-3 sits at a relative gap far above
    gap_rtol = 1e-4 (the training default); the exact minimiser is global_min."""
    X, y = ill_conditioned_logistic()
    loss = make_loss("logistic")
    ref = convex_reference(loss, X, y)
    T = loss.check_targets(y, 1).to(F64)
    ell = lambda a: loss.value(X @ a.view(1, -1).T, T)
    Hm = torch.autograd.functional.hessian(ell, ref.A_star.view(-1).clone())
    lam, V = torch.linalg.eigh(Hm)
    first = ConvexLabeller(ref, [8, 8, 1]).first_order
    at = lambda t: ref.A_star + t * V[:, 0].view(1, -1)
    lo, hi = 0.0, 1e-3 * ref.grad_scale / float(lam[0])     # grad ell(A* + tv) ~ t lam_min v
    for _ in range(40):   # the largest t with grad_l_norm <= 0.9e-3
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(first([torch.eye(8, dtype=F64), at(mid)])["grad_l"]) <= 0.9e-3 else (lo, mid)
    A = at(lo)
    tol = ConvexTolerances(grad_rtol=1e-2, grad_l_rtol=1e-3, gap_rtol=1e-4)
    ws = [torch.eye(8, dtype=F64), A]
    lab = label_convex(ws, loss, X, y, ref, tol)
    gap = float(ell(A.view(-1))) - ref.value                  # independently of the labeller
    scale = max(abs(ref.value), float(ell(torch.zeros(8, dtype=F64))) - ref.value)
    assert lab.grad_l_norm <= 1e-3 and lab.convex_gap == pytest.approx(gap, rel=1e-9)
    assert gap / scale > 10 * 1e-4                            # the relative gap, against gap_rtol
    assert lab.label == "near_global" and "gap" in lab.reason, lab
    # the same point with a gap tolerance above its gap, and the exact minimiser: global_min
    loose = ConvexTolerances(grad_rtol=1e-2, grad_l_rtol=1e-3, gap_rtol=2 * gap / scale)
    assert label_convex(ws, loss, X, y, ref, loose).label == "global_min"
    exact = label_convex([torch.eye(8, dtype=F64), ref.A_star], loss, X, y, ref, tol)
    assert exact.label == "global_min" and abs(exact.convex_gap) <= 1e-12
