"""dlnlab.theory.square.theorem7: classifying an ensemble gives, member for member, exactly the
Classification of each member classified on its own (a batch of one, Classifier.classify): every field, on the oracles of
docs/theory.md §4 stacked by shape, on random ensembles mixing every label kind and every branch
(non-finite and overflowing members included), on data outside Assumption 1, with float32 input,
and with the products and singular values of the metrics hook passed in."""

import math

import numpy as np
import pytest
import torch
from landscape_data import clean_data, gaussian_data
from test_classify import ORACLES, _mirror_O7

from dlnlab.linalg import partial_products, singular_values
from dlnlab.theory.square.classify import Classifier
from dlnlab.theory.square.points import (
    random_global_min,
    random_normal_form_point,
    saddle_family,
)
from dlnlab.theory.square.verdicts import LABELS

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")


def per_member(clf, stacked):
    return [clf.classify([w[e] for w in stacked]) for e in range(stacked[0].shape[0])]


FLOATS = ("loss", "grad_norm", "gamma_diag")  # sums over small matrices: bmm and mm may round differently
# (so may the singular values of small pivot blocks, which ambiguous_values reports)


def assert_same(clf, stacked, **shared):
    """Batched == per member: every field; the three float sums to rounding (1e-12 relative), the
    rest (labels, S, ranks, critical values, reasons, warnings) exactly."""
    b = clf.classify_ensemble(stacked, **shared)
    ref = per_member(clf, stacked)
    for e, (got, want) in enumerate(zip(b.members(), ref)):
        for f in want.__dataclass_fields__:
            x, y = getattr(got, f), getattr(want, f)
            if f == "ambiguous_values":   # singular values of bmm vs mm blocks: to rounding
                assert [w for w, _, _ in x] == [w for w, _, _ in y], (e, x, y)
                np.testing.assert_allclose([v for _, v, _ in x], [v for _, v, _ in y], rtol=1e-12)
                np.testing.assert_allclose([t for _, _, t in x], [t for _, _, t in y], rtol=1e-12)
            elif f in FLOATS:
                np.testing.assert_allclose(np.array(x, dtype=float), np.array(y, dtype=float),
                                           rtol=1e-12, atol=1e-12 * (1 + clf.data.tr_syy), err_msg=f"{e} {f}")
            else:
                assert repr(x) == repr(y), (e, f, x, y)
    assert b.label == [c.label for c in ref] and b.S == [c.S for c in ref]
    assert b.r.tolist() == [c.r for c in ref] and b.reason == [c.reason for c in ref]
    assert b.nearest_S == [c.nearest_S for c in ref]
    cv = [math.nan if c.critical_value is None else c.critical_value for c in ref]
    np.testing.assert_array_equal(b.critical_value.numpy(), np.array(cv))
    np.testing.assert_array_equal(b.nearest_value.numpy(), np.array([c.nearest_value for c in ref]))
    return [c.label for c in ref]


@pytest.fixture(scope="module")
def clean_classifier():
    return Classifier(*clean_data())


def test_oracles_stacked_by_shape(clean_classifier):
    groups = {}
    for oid, (ws, *_rest) in ORACLES.items():
        groups.setdefault(tuple(tuple(w.shape) for w in ws), []).append(oid)
    labels = set()
    for ids in groups.values():
        stacked = [torch.stack([ORACLES[i][0][h] for i in ids]) for h in range(len(ORACLES[ids[0]][0]))]
        got = assert_same(clean_classifier, stacked)
        assert got == [ORACLES[i][1] for i in ids]
        labels |= set(got)
        assert_same(clean_classifier, [w.float() for w in stacked])
    assert labels == {"global_min", "strict_saddle", "nonstrict_saddle"}


def _ensemble(clf, dims, seed):
    """Members of every kind: Gaussian (moving), normal-form points (critical or not, top or not),
    saddle families (the pivot test), global minima, perturbed points (Gamma not 0/1: ambiguous),
    zero layers, a non-finite member and one whose loss overflows."""
    g = torch.Generator().manual_seed(seed)
    H = len(dims) - 1
    pts = [[torch.randn(dims[h + 1], dims[h], generator=g, dtype=F64) for h in range(H)] for _ in range(3)]
    rng = np.random.default_rng(seed)
    for t in range(6):
        r = int(rng.integers(0, min(min(dims), clf.data.k) + 1))
        S = tuple(range(1, r + 1))
        if t % 2:
            S = tuple(sorted(rng.choice(np.arange(1, clf.data.k + 1), size=r, replace=False).tolist()))
        pts.append(random_normal_form_point(clf.data, dims, S, generator=seed * 10 + t,
                                            critical_only=t < 4).weights)
    r = min(2, min(dims) - 1)
    if H >= 3:
        pts += [saddle_family(clf.data, dims, r, strict, generator=seed).weights for strict in (True, False)]
    gm = random_global_min(clf.data, dims, generator=seed).weights
    pts.append(gm)
    pts.append([w + 0.3 * torch.randn(w.shape, generator=g, dtype=F64) for w in gm])
    pts.append([w + 1e-5 * torch.randn(w.shape, generator=g, dtype=F64) for w in gm])
    pts.append([torch.zeros(dims[h + 1], dims[h], dtype=F64) for h in range(H)])
    bad = [w.clone() for w in gm]
    bad[0][0, 0] = float("nan")
    pts.append(bad)
    pts.append([w * 1e80 for w in gm])
    return [torch.stack([p[h] for p in pts]) for h in range(H)]


@pytest.mark.parametrize("dims", [[6, 4, 5, 4], [5, 4, 4, 4, 3], [3, 4, 5, 5], [5, 4, 3, 4, 3, 3], [6, 3, 4]])
def test_random_ensembles_every_branch(dims):
    X, Y = gaussian_data(dims[0] + 3, dims[0], dims[-1], seed=len(dims))
    labels = set()
    for clf in (Classifier(X, Y), Classifier(X, Y, grad_rtol=1e-2, rank_rtol=1e-2, gamma_tol=0.25)):
        for seed in range(2):
            stacked = _ensemble(clf, dims, seed)
            labels |= set(assert_same(clf, stacked))
            assert_same(clf, [w.float() for w in stacked])
    assert {"not_critical", "global_min", "strict_saddle"} <= labels
    if len(dims) >= 4:
        assert "nonstrict_saddle" in labels


def test_every_label_kind_across_the_suite(clean_classifier):
    """One ensemble holding all five labels: the oracles (H = 3) plus an ambiguous member."""
    ids = [i for i, (ws, *_r) in ORACLES.items() if [tuple(w.shape) for w in ws] == [(3, 4), (2, 3), (3, 2)]]
    members = [ORACLES[i][0] for i in ids]
    g = torch.Generator().manual_seed(0)
    members.append([w + 0.05 * torch.randn(w.shape, generator=g, dtype=F64) for w in ORACLES["O5"][0]])
    members.append([w + 1e-7 * torch.randn(w.shape, generator=g, dtype=F64) for w in ORACLES["O7"][0]])
    members.append([ORACLES["O8"][0][0], torch.tensor([[1, 0, 0], [0, 3e-6, 0]], dtype=F64), ORACLES["O8"][0][2]])
    stacked = [torch.stack([m[h] for m in members]) for h in range(3)]
    got = set(assert_same(clean_classifier, stacked))      # the pivot test inside the band: ambiguous
    # a loose gradient test lets the perturbed points through to Gamma, which is not 0/1: ambiguous
    loose = set(assert_same(Classifier(*clean_data(), grad_rtol=0.9, gamma_tol=0.01), stacked))
    assert "ambiguous" in loose
    got |= loose
    assert got == set(LABELS), got


def test_data_outside_assumption_1():
    X, Y = clean_data()
    Y = Y.clone()
    Y[1, 1] = 3.0
    clf = Classifier(X, Y)
    ws = [ORACLES["O7"][0], _mirror_O7(), [torch.ones_like(w) for w in ORACLES["O7"][0]]]
    stacked = [torch.stack([m[h] for m in ws]) for h in range(3)]
    assert assert_same(clf, stacked) == ["ambiguous", "ambiguous", "not_critical"]


def test_shared_products_and_singular_values_give_the_same_verdicts():
    dims = [5, 4, 4, 4, 3]
    X, Y = gaussian_data(9, 5, 3, seed=1)
    clf = Classifier(X, Y)
    stacked = _ensemble(clf, dims, 0)
    prods = partial_products(stacked)
    finite = torch.isfinite(torch.cat([p.flatten(1) for p in prods.values()], 1)).all(1)
    keep = finite.view(-1, 1, 1)
    zeroed = partial_products([torch.where(keep, w, 0.0) for w in stacked])  # as the metrics hook
    svs = singular_values(zeroed)
    assert_same(clf, stacked, products=zeroed, singular_values=svs, finite=finite)
    # the public ensemble path (Classifier.classify) is the batched one
    assert [c.label for c in clf.classify(stacked)] == [c.label for c in per_member(clf, stacked)]


def test_width_32_ensemble_is_bit_identical():
    """At the benchmark's shapes (square width 32) batched and single products round alike: every
    field of every member is bit for bit the per-point classifier's."""
    X, Y = gaussian_data(64, 32, 32, seed=0)
    clf = Classifier(X, Y, grad_rtol=1e-2, rank_rtol=1e-2)
    stacked = _ensemble(clf, [32] * 5, 0)
    b = clf.classify_ensemble(stacked)
    assert [repr(c) for c in b.members()] == [repr(c) for c in per_member(clf, stacked)]


@pytest.mark.parametrize("dims", [[6, 5, 5, 4], [6, 5, 5, 5, 4], [6, 4, 5, 4, 5, 4]])
def test_pivot_test_is_batched_and_agrees(dims):
    """Tightened (non-strict) and loose (strict) saddles of S = {1..r}, every r < r_max, batched with
    points of the other branches: the pivot test runs for all of them at once (nobody is handed to
    a member-by-member path) and agrees with each member classified alone, block ranks and loose pivots included."""
    X, Y = gaussian_data(14, 6, 4, seed=7)
    clf = Classifier(X, Y)
    pts, want = [], []
    for r in range(min(dims)):
        for seed in range(2):
            for strict in (False, True):
                pts.append(saddle_family(clf.data, dims, r, strict, generator=seed).weights)
                want.append("strict_saddle" if strict else "nonstrict_saddle")
    pts.append(random_global_min(clf.data, dims, generator=0).weights)
    want.append("global_min")
    stacked = [torch.stack([p[h] for p in pts]) for h in range(len(dims) - 1)]
    b = clf.classify_ensemble(stacked)
    assert b.label == want
    assert bool(b.pivot_ran[:-1].all()) and not bool(b.pivot_ran[-1])
    assert assert_same(clf, stacked) == want
    assert all(c.loose_pivots for c, w in zip(b.members(), want) if w == "strict_saddle")
