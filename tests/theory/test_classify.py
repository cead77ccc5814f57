"""dlnlab.theory.square.classify: Theorem 7 on the hand-checkable oracles O1-O18 (the oracles of docs/theory.md §4), on random exact critical
points (checked against an independent float64 Hessian), and on the edge cases (ambiguity band, d_y > d_x,
failing assumptions, ensembles, approximate training points)."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from landscape_data import clean_data, data_loss, gaussian_data, random_dims

from dlnlab import theory
from dlnlab.theory.square.classify import Classifier, Tolerances, classify
from dlnlab.theory.square.critical import critical_values
from dlnlab.theory.square.data import LandscapeData, dims_of
from dlnlab.theory.square.hessian import hessian_min_eig
from dlnlab.theory.square.points import (
    enumeration_points,
    escape_path,
    normal_form,
    random_global_min,
    random_invertible,
    random_normal_form_point,
    saddle_family,
)

F64 = torch.float64
# torch loads its forward-mode AD decompositions with torch.jit.script on first use (a torch-internal warning)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")

# Tolerances of the tests (why each value):
EXACT_ATOL = 1e-12          # clean data (integer entries): float64 results are exact to rounding
SPEC_PRINT_ATOL = 1e-4      # the oracles of docs/theory.md §4 prints Hessian eigenvalues to 4-5 significant digits
SPEC_GRAD_ATOL = 5e-4       # spec prints ||grad L|| of O14 to 3 digits (0.899)
HESS_ZERO_ATOL = 1e-9       # clean data: eigenvalues the theorem calls 0 come out <= 2.2e-11 (docs/theory.md §5)
HESS_NEG_RTOL = 1e-8        # random data: "negative" means below -HESS_NEG_RTOL * spectral radius ...
HESS_ZERO_FLOOR = 1e-12     # ... minus HESS_ZERO_FLOOR * tr(Syy) (an identically zero Hessian)
VALUE_RTOL = 1e-9           # loss == critical value at constructed points (gauges of cond 4 cost digits)
VALUE_ATOL_REL = 1e-10      # ... with an absolute floor relative to tr(Syy) near the global minimum 0
CV_RTOL = 1e-12             # the classifier's critical value vs the generator's (same formula)
MARGIN_RTOL = 1e-6          # Hessian margins -4 eps, -4 eps^2 of docs/theory.md §5 (closed forms)
HESS_METHODS_ATOL = 1e-9    # two float64 Hessians of the same O(10) problem (closed form vs sample loss)


def T(rows):
    return torch.tensor(rows, dtype=F64)


def Z(r, c):
    return torch.zeros(r, c, dtype=F64)





def hessian_eigs(weights, X, Y):
    """Independent reference: eigenvalues of torch.func.hessian of the sample-wise loss (ascending)."""
    shapes = [w.shape for w in weights]
    sizes = [w.numel() for w in weights]

    def f(theta):
        return data_loss([p.reshape(s) for p, s in zip(torch.split(theta, sizes), shapes)], X, Y)

    Hm = torch.func.hessian(f)(torch.cat([w.reshape(-1) for w in weights]))
    return torch.linalg.eigvalsh((Hm + Hm.T) / 2)


# ---------------------------------------------------------------------------------------------
# Oracles O1-O18 (the oracles of docs/theory.md §4). Columns: weights [W_1..W_H], label, S, loss (= critical value),
# Hessian lam_min (None: not given), loose pivots (None: n/a, the pivot test is not reached).

W1s = T([[3, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
W3s = T([[1, 0], [0, 0], [0, 0]])
O5 = [T([[3, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]]), T([[1, 0, 0], [0, 1, 0]]), T([[1, 0], [0, 1], [0, 0]])]
O17 = [T([[3, 0, 0, 0], [0, 0, 0, 0]]), torch.eye(2, dtype=F64), torch.eye(2, dtype=F64), T([[1, 0], [0, 0], [0, 0]])]

ORACLES = {
    # H = 2, dims (4,2,3), r_max = 2
    "O1": ([T([[3, 0, 0, 0], [0, 2, 0, 0]]), T([[1, 0], [0, 1], [0, 0]])], "global_min", (1, 2), 1.0, 0.0, None),
    "O2": ([T([[3, 0, 0, 0], [0, 0, 1, 0]]), T([[1, 0], [0, 0], [0, 1]])], "strict_saddle", (1, 3), 4.0, -2.0, None),
    "O3": ([Z(2, 4), Z(3, 2)], "strict_saddle", (), 14.0, -6.0, ((2, 1),)),
    "O4": ([T([[3, 0, 0, 0], [0, 0, 0, 0]]), T([[1, 0], [0, 0], [0, 0]])], "strict_saddle", (1,), 5.0, -4.0, ((2, 1),)),
    # H = 3, dims (4,3,2,3), r_max = 2
    "O5": (O5, "global_min", (1, 2), 1.0, 0.0, None),
    "O6": ([Z(3, 4), Z(2, 3), Z(3, 2)], "nonstrict_saddle", (), 14.0, 0.0, ()),
    "O7": ([W1s, T([[1, 0, 0], [0, 0, 0]]), W3s], "nonstrict_saddle", (1,), 5.0, 0.0, ()),
    "O8": ([W1s, T([[1, 0, 0], [0, 1, 0]]), W3s], "strict_saddle", (1,), 5.0, -4.0, ((3, 1),)),
    "O9": ([T([[0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), T([[1, 0, 0], [0, 0, 0]]), T([[0, 0], [1, 0], [0, 0]])],
           "strict_saddle", (2,), 10.0, -1.7082, None),
    "O10": ([T([[3, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]), T([[1, 0, 0], [0, 1, 0]]), T([[1, 0], [0, 0], [0, 1]])],
            "strict_saddle", (1, 3), 4.0, -2.0, None),
    "O11": ([T([[3, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]), T([[1, 0, 0], [0, 0, 0]]), W3s],
            "nonstrict_saddle", (1,), 5.0, 0.0, ()),
    "O12": ([T([[3, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]), T([[1, 0, 0], [0, 0, 0]]), W3s],
            "strict_saddle", (1,), 5.0, -4.0, ((3, 2),)),
    "O13": ([W1s, T([[1, 0, 0], [0, 0, 0]]), T([[1, 0], [0, 1], [0, 0]])], "strict_saddle", (1,), 5.0, -4.0, ((2, 1),)),
    "O15a": ([Z(3, 4), torch.ones(2, 3, dtype=F64), Z(3, 2)], "strict_saddle", (), 14.0, -14.697, ((3, 1),)),
    # H = 4
    "O15b": ([Z(3, 4), torch.ones(2, 3, dtype=F64), Z(2, 2), Z(3, 2)], "nonstrict_saddle", (), 14.0, 0.0, ()),
    "O16": ([T([[3, 0, 0, 0], [0, 2, 0, 0]]), torch.eye(2, dtype=F64), torch.eye(2, dtype=F64),
             T([[1, 0], [0, 1], [0, 0]])], "global_min", (1, 2), 1.0, 0.0, None),
    "O17": (O17, "strict_saddle", (1,), 5.0, -4.0, ((4, 1),)),
    "O18": ([O17[0], torch.eye(2, dtype=F64), T([[1, 0], [0, 0]]), O17[3]], "nonstrict_saddle", (1,), 5.0, 0.0, ()),
}


@pytest.fixture(scope="module")
def clean_classifier():
    return Classifier(*clean_data())


@pytest.mark.parametrize("oid", list(ORACLES))
def test_oracle(oid, clean_classifier):
    ws, label, S, L, lam_min, loose = ORACLES[oid]
    c = clean_classifier.classify(ws)
    assert c.label == label, c.reason
    assert c.S == S and c.r == len(S)
    assert c.critical_value == pytest.approx(L, abs=EXACT_ATOL) and c.loss == pytest.approx(L, abs=EXACT_ATOL)
    assert c.nearest_S == S and c.nearest_value == pytest.approx(L, abs=EXACT_ATOL)
    assert c.loose_pivots == loose
    assert c.grad_norm < EXACT_ATOL and c.warnings == () and c.ambiguous_values == ()
    assert c.r_max == min(dims_of(ws)) and c.H == len(ws)
    # the theorem's verdict against the Hessian (independent computation)
    ev = hessian_eigs(ws, *clean_data())
    assert float(ev[0]) == pytest.approx(lam_min, abs=SPEC_PRINT_ATOL)
    assert (label == "strict_saddle") == (float(ev[0]) < -HESS_ZERO_ATOL)


@pytest.mark.parametrize("oid, zeros", [("O1", 4), ("O5", 14), ("O16", 12)])
def test_global_min_flat_directions(oid, zeros):
    """Spec §5: the Hessian alone cannot tell a global minimum from a non-strict saddle (many zeros)."""
    ev = hessian_eigs(ORACLES[oid][0], *clean_data())
    assert int((ev.abs() < HESS_ZERO_ATOL).sum()) == zeros and float(ev[0]) > -HESS_ZERO_ATOL


def test_O14_not_critical(clean_classifier):
    ws = [O5[0].clone(), O5[1], O5[2]]
    ws[0][0, 0] = 3.1
    c = clean_classifier.classify(ws)
    assert c.label == "not_critical" and c.S is None and c.critical_value is None
    assert c.grad_norm == pytest.approx(0.899, abs=SPEC_GRAD_ATOL)
    assert c.loss == pytest.approx(1.01, abs=EXACT_ATOL)
    # the nearest plateau is still reported
    assert c.nearest_S == (1, 2) and c.nearest_value == 1.0


def test_classify_function_equals_classifier_and_accepts_numpy_float32(clean_classifier):
    ws = ORACLES["O8"][0]
    a = classify([w.numpy().astype(np.float32) for w in ws], *clean_data())
    b = clean_classifier.classify([w.float() for w in ws])
    assert a.to_dict() == b.to_dict()
    # float64 input: same verdict, only the input-precision gradient floor differs
    c = clean_classifier.classify(ws)
    assert {k: v for k, v in c.to_dict().items() if k != "grad_tol"} == \
        {k: v for k, v in a.to_dict().items() if k != "grad_tol"}
    tr_syy = float((clean_data()[1] ** 2).sum())
    t = Tolerances()
    assert c.grad_tol == pytest.approx(t.grad_rtol * tr_syy)
    assert a.grad_tol == pytest.approx(t.grad_eps * float(np.finfo(np.float32).eps) * tr_syy)


def test_hessian_field(clean_classifier):
    c = clean_classifier.classify(ORACLES["O9"][0], hessian=True)
    ref = float(hessian_eigs(ORACLES["O9"][0], *clean_data())[0])
    assert c.hessian_min_eig == pytest.approx(ref, abs=HESS_METHODS_ATOL)
    assert c.hessian_min_eig == pytest.approx(-1.7082039, abs=SPEC_PRINT_ATOL)
    assert clean_classifier.classify(ORACLES["O9"][0]).hessian_min_eig is None


# ---------------------------------------------------------------------------------------------
# Random exact critical points: Theorem 7 vs the Hessian

def _check_against_hessian(c, pt, X, Y):
    assert c.label == pt.label or (pt.label is None and c.label in ("strict_saddle", "nonstrict_saddle")), \
        (pt.kind, pt.dims, pt.S, pt.label, c.label, c.reason)
    assert c.S == pt.S and c.critical_value == pytest.approx(pt.value, rel=CV_RTOL)
    assert c.warnings == () and c.ambiguous_values == ()      # Lemma 24 / Prop. 4 checks pass
    assert c.loss == pytest.approx(c.critical_value, rel=VALUE_RTOL, abs=VALUE_ATOL_REL * float((Y ** 2).sum()))
    ev = hessian_eigs(pt.weights, X, Y)
    scale = float(ev.abs().max())
    # negative relative to the spectral radius, with an absolute floor for an identically zero Hessian
    negative = float(ev[0]) < -HESS_NEG_RTOL * scale - HESS_ZERO_FLOOR * float((Y ** 2).sum())
    assert negative == (c.label == "strict_saddle"), (pt.dims, pt.S, c.label, float(ev[0]), scale)


@pytest.mark.parametrize("dims", [[6, 3, 4], [6, 5, 3, 4], [5, 4, 4, 4, 3], [5, 4, 3, 4, 3, 3], [3, 4, 5, 5]])
def test_enumeration_points_against_hessian(dims):
    """Spec §6.2: one point per admissible S, all Z = 0, random D_h. The last dims have d_y > d_x."""
    X, Y = gaussian_data(dims[0] + 3, dims[0], dims[-1], seed=len(dims))
    clf = Classifier(X, Y)
    labels = []
    for pt in enumeration_points(clf.data, dims, generator=1):
        c = clf.classify(pt.weights)
        _check_against_hessian(c, pt, X, Y)
        labels.append(c.label)
    assert "global_min" in labels and "strict_saddle" in labels
    assert ("nonstrict_saddle" in labels) == (len(dims) >= 4)


def test_random_normal_form_points_against_hessian():
    """Spec §6.2 "random structured search": sparse Z_h, random S (some not top), random D_h, H = 2..5,
    including d_y > d_x. Every exact critical point: strict iff lam_min(Hess) < 0, loss = critical value;
    the others are not critical."""
    rng = np.random.default_rng(2024)
    counts = {}
    for trial in range(160):
        dims = random_dims(rng, trial, transposed_every=5)
        d_x, d_y = dims[0], dims[-1]
        X, Y = gaussian_data(d_x + int(rng.integers(0, 3)), d_x, d_y, seed=trial)
        clf = Classifier(X, Y)
        assert clf.data.assumptions.ok
        r = int(rng.integers(0, min(min(dims), clf.data.k) + 1))
        S = tuple(range(1, r + 1))
        if rng.random() < 0.35:
            S = tuple(sorted(rng.choice(np.arange(1, clf.data.k + 1), size=r, replace=False).tolist()))
        pt = random_normal_form_point(clf.data, dims, S, generator=trial, critical_only=trial % 2 == 1)
        assert pt.critical or trial % 2 == 0
        c = clf.classify(pt.weights)
        counts[c.label] = counts.get(c.label, 0) + 1
        if not pt.critical:
            assert c.label == "not_critical"
            continue
        _check_against_hessian(c, pt, X, Y)
    assert set(counts) == {"not_critical", "global_min", "strict_saddle", "nonstrict_saddle"}, counts


@pytest.mark.parametrize("dims, r", [([6, 4, 5, 4], 1), ([5, 4, 4, 4, 3], 2), ([6, 5, 5, 5, 5, 4], 0),
                                     ([6, 5, 5, 5, 5, 4], 3), ([3, 4, 4, 5], 1)])
def test_saddle_families_against_hessian(dims, r):
    X, Y = gaussian_data(9, dims[0], dims[-1], seed=r)
    clf = Classifier(X, Y)
    for strict in (True, False):
        pt = saddle_family(clf.data, dims, r, strict, generator=r + 7)
        c = clf.classify(pt.weights)
        _check_against_hessian(c, pt, X, Y)
        if strict:
            assert (len(dims) - 1, 1) in c.loose_pivots       # Z_{H-1}...Z_2 != 0: pivot (H,1) loose
        else:
            assert c.loose_pivots == ()


def test_random_global_min_against_hessian():
    for dims in ([6, 3, 4], [6, 5, 3, 4], [2, 4, 3, 5]):
        X, Y = gaussian_data(9, dims[0], dims[-1], seed=3)
        clf = Classifier(X, Y)
        for seed in range(2):
            pt = random_global_min(clf.data, dims, generator=seed)
            c = clf.classify(pt.weights)
            _check_against_hessian(c, pt, X, Y)


def test_pivot_cases_H4():
    """Spec §6.2 pivot cases, H = 4, S = {1..r}, normal form with chosen Z's."""
    X, Y = gaussian_data(10, 6, 4, seed=5)
    clf = Classifier(X, Y)
    dims, r = [6, 4, 4, 4, 4], 1
    g = torch.Generator().manual_seed(0)
    shapes = [(dims[1] - r, dims[0])] + [(dims[h] - r, dims[h - 1] - r) for h in range(2, 5)]
    rnd = lambda h: torch.randn(*shapes[h - 1], generator=g, dtype=F64)
    zero = lambda h: torch.zeros(*shapes[h - 1], dtype=F64)
    Z2 = torch.zeros(3, 3, dtype=F64)
    Z2[0, 0] = 1.0
    Z3 = torch.zeros(3, 3, dtype=F64)
    Z3[1, 1] = 1.0                                          # Z_3 Z_2 = 0, both rank 1
    cases = {
        "Z1,Z4 generic, Z2=Z3=0: only (3,2) loose": ([rnd(1), zero(2), zero(3), rnd(4)], "strict_saddle", ((3, 2),)),
        "Z1 generic only": ([rnd(1), zero(2), zero(3), zero(4)], "nonstrict_saddle", ()),
        "Z3 Z2 = 0": ([zero(1), Z2, Z3, zero(4)], "nonstrict_saddle", ()),
        "Z3 Z2 != 0": ([zero(1), rnd(2), rnd(3), zero(4)], "strict_saddle", ((4, 1),)),
    }
    for name, (Zs, label, loose) in cases.items():
        Ds = [random_invertible(k, 4.0, g) for k in dims[1:-1]]
        ws = normal_form(clf.data, dims, range(1, r + 1), Zs, Ds)
        c = clf.classify(ws)
        assert c.label == label and c.loose_pivots == loose, (name, c.label, c.loose_pivots)
        ev = hessian_eigs(ws, X, Y)
        assert (float(ev[0]) < -HESS_NEG_RTOL * float(ev.abs().max())) == (label == "strict_saddle"), name


def test_appendix_G_configuration():
    """Spec §6.2 App. G: d_x = 10, d_y = 4, H = 5, widths 10, m = 100, S = {1,2}, Z_h = I_8 or 0."""
    X, Y = gaussian_data(100, 10, 4, seed=0)
    clf = Classifier(X, Y)
    dims = [10, 10, 10, 10, 10, 4]
    shapes = [(8, 10), (8, 8), (8, 8), (8, 8), (2, 8)]
    for eye, label in ((True, "strict_saddle"), (False, "nonstrict_saddle")):
        Zs = [torch.zeros(*s, dtype=F64) for s in shapes]
        for h in (2, 3, 4):
            Zs[h - 1] = torch.eye(8, dtype=F64) if eye else Zs[h - 1]
        ws = normal_form(clf.data, dims, (1, 2), Zs)
        c = clf.classify(ws)
        assert c.label == label
        if eye:
            assert (5, 1) in c.loose_pivots


# ---------------------------------------------------------------------------------------------
# Tolerances and the ambiguity band

@pytest.mark.parametrize("eps, label", [(1e-2, "strict_saddle"), (3e-6, "ambiguous"), (3e-7, "ambiguous"),
                                        (1e-8, "nonstrict_saddle"), (0.0, "nonstrict_saddle")])
def test_ambiguous_band_H3(eps, label, clean_classifier):
    """O8 with W_2 = [1 0 0; 0 eps 0]: exactly critical for every eps, strict iff eps != 0 with
    lam_min = -4 eps (docs/theory.md §5). Defaults: rank_rtol 1e-6, rank_band 10 -> gap (1e-7, 1e-5]."""
    ws = [W1s, T([[1, 0, 0], [0, eps, 0]]), W3s]
    c = clean_classifier.classify(ws)
    assert c.label == label, c.reason
    assert c.S == (1,) and c.critical_value == 5.0
    if label == "ambiguous":
        assert c.ambiguous_values and c.ambiguous_values[0][0] == "B2(3,1)"
        assert c.ambiguous_values[0][1] == pytest.approx(eps)
    assert float(hessian_eigs(ws, *clean_data())[0]) == pytest.approx(-4 * eps, rel=MARGIN_RTOL, abs=EXACT_ATOL)
    # the band moves with the tolerance
    assert classify(ws, *clean_data(), rank_rtol=1e-12, rank_band=10).label == (
        "strict_saddle" if eps >= 1e-10 else "nonstrict_saddle")


def test_H4_margin_is_quadratic(clean_classifier):
    """Spec §5: H = 4, W_3 = W_2 = diag(1, eps): lam_min = -4 eps^2; pivot (4,1) sees eps^2."""
    eps = 1e-2
    ws = [O17[0], torch.diag(T([1, eps])), torch.diag(T([1, eps])), O17[3]]
    c = clean_classifier.classify(ws)
    assert c.label == "strict_saddle" and (4, 1) in c.loose_pivots
    assert float(hessian_eigs(ws, *clean_data())[0]) == pytest.approx(-4 * eps ** 2, rel=MARGIN_RTOL)


def test_tolerances_validation_and_overrides():
    assert Tolerances().with_(rank_rtol=1e-2).rank_rtol == 1e-2
    with pytest.raises(ValueError):
        Tolerances(rank_rtol=2.0)
    with pytest.raises(ValueError):
        Tolerances(gamma_tol=0.7)
    with pytest.raises(TypeError):
        Tolerances().with_(no_such_tolerance=1)
    c = classify(ORACLES["O8"][0], *clean_data(), grad_rtol=1e-3)
    assert c.grad_tol == pytest.approx(14e-3)


def test_approximate_training_point_reports_its_plateau():
    """A point near the O7 plateau: not critical at the default tolerance, but nearest_S says {1};
    with the loose training tolerances of docs/theory.md §5 the classifier recovers S and the critical value."""
    g = torch.Generator().manual_seed(0)
    ws = [w + 1e-3 * torch.randn(w.shape, generator=g, dtype=F64) for w in ORACLES["O7"][0]]
    X, Y = clean_data()
    c = classify(ws, X, Y)
    assert c.label == "not_critical" and c.nearest_S == (1,) and c.nearest_value == 5.0
    loose = classify(ws, X, Y, grad_rtol=1e-2, rank_rtol=1e-2)
    assert loose.label != "not_critical" and loose.S == (1,) and loose.critical_value == 5.0
    assert loose.gamma_diag[0] == pytest.approx(1.0, abs=1e-2)


def test_escape_path_points_read_their_S():
    """Along the O7 escape path the product moves from S={1} to S={1,2}: nearest_S follows Gamma."""
    X, Y = clean_data()
    clf = Classifier(X, Y)
    ep = escape_path(clf.data, [4, 3, 2, 3], 1)
    assert clf.classify(ep.weights_at(0.0)).label == "nonstrict_saddle"
    mid = clf.classify(ep.weights_at(0.5))
    assert mid.label == "not_critical" and mid.nearest_S == (1,)           # Gamma_22 = t^3 = 0.125
    assert mid.gamma_diag[1] == pytest.approx(0.125)
    end = clf.classify(ep.weights_at(1.0))
    assert end.label == "global_min" and end.S == (1, 2)


# ---------------------------------------------------------------------------------------------
# Data edge cases, ensembles, output

def test_d_y_greater_than_d_x():
    X, Y = gaussian_data(6, 3, 5, seed=1)
    clf = Classifier(X, Y)
    assert clf.data.assumptions.transposed and clf.data.assumptions.ok
    c = clf.classify(random_global_min(clf.data, [3, 4, 4, 5], generator=0).weights)
    assert c.label == "global_min" and c.S == (1, 2, 3) and c.assumptions_ok and c.warnings == ()


def _mirror_O7():
    """O7 with the roles of output coordinates 1 and 2 swapped: associated with e_2 instead of e_1."""
    return [T([[0, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), T([[1, 0, 0], [0, 0, 0]]), T([[0, 0], [1, 0], [0, 0]])]


def test_repeated_eigenvalues_give_ambiguous_not_a_theorem_7_label():
    """Y[1,1] = 3: lam = (9, 9, 1), Assumption 1 fails (docs/theory.md §9). O7 and its mirror image (swap the
    output coordinates 1 and 2, a symmetry of these data) are both critical with PSD Hessians (the
    independent float64 Hessian), yet S read through the SVD's eigenvectors is {1} for one and {2} for
    the other: Theorem 7 would call the "S = {2} != {1..r}" one a strict saddle, which the Hessian
    refutes. The classifier must answer "ambiguous" and say which part of Assumption 1 fails."""
    X, Y = clean_data()
    Y = Y.clone()
    Y[1, 1] = 3.0
    clf = Classifier(X, Y)
    assert not clf.data.assumptions.distinct
    readings = set()
    for ws in (ORACLES["O7"][0], _mirror_O7()):
        c = clf.classify(ws)
        assert c.label == "ambiguous" and "Assumption 1" in c.reason and "repeated" in c.reason, c.reason
        assert c.S is None and c.critical_value is None and not c.assumptions_ok
        assert c.grad_norm <= c.grad_tol                         # first order was decided: critical
        ev = hessian_eigs(ws, X, Y)
        assert float(ev[0]) >= -HESS_ZERO_ATOL                   # PSD: "strict" would be wrong
        readings.add(c.nearest_S)
    assert readings == {(1,), (2,)}                              # the index-based S is an artefact


def test_failing_assumptions_still_decide_first_order():
    X2, Y2 = gaussian_data(3, 5, 2)                     # m < d_x, Sxx singular
    crit = classify([torch.zeros(3, 5), torch.zeros(2, 3)], X2, Y2)   # W = 0: grad = 0 for H = 2
    assert not crit.assumptions_ok and crit.label == "ambiguous"
    assert "Sxx is singular" in crit.reason and "d_x <= m" in crit.reason
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(3, 5, generator=g, dtype=F64), torch.randn(2, 3, generator=g, dtype=F64)]
    moving = classify(ws, X2, Y2)
    assert moving.label == "not_critical" and moving.grad_norm > moving.grad_tol


@pytest.mark.parametrize("which, bad", [("X", float("nan")), ("Y", float("inf"))])
def test_non_finite_data_raise_a_clear_error(which, bad):
    X, Y = (t.clone() for t in clean_data())
    (X if which == "X" else Y)[2, 1] = bad
    with pytest.raises(ValueError, match=rf"^{which} contains 1 non-finite value"):
        classify(ORACLES["O7"][0], X, Y)


def test_mixed_2d_and_3d_weights_raise_a_clear_error(clean_classifier):
    ws = ORACLES["O7"][0]
    with pytest.raises(ValueError, match="all 2-D .* or all 3-D"):
        clean_classifier.classify([ws[0].unsqueeze(0), ws[1], ws[2]])
    with pytest.raises(ValueError, match="number of members"):
        clean_classifier.classify([torch.stack([w] * k) for w, k in zip(ws, (2, 2, 3))])


def test_float32_rounded_exact_points_keep_their_labels():
    """Exact critical points saved in float32: the rank and gradient floors follow the input precision
    (Tolerances.rank_floor_eps, grad_eps), so default tolerances still label them; with float64 floors
    the rounding noise lands inside the tolerance gap (ambiguous) or above the gradient tolerance."""
    labels, float64_floors = [], []
    for seed in range(3):
        dims, r = [8, 6, 6, 6, 6, 5], 2
        X, Y = gaussian_data(12, dims[0], dims[-1], seed=seed)
        clf = Classifier(X, Y)
        strict64 = Classifier(clf.data, rank_floor_eps=0.0, grad_eps=0.0)
        for pt in (saddle_family(clf.data, dims, r, False, generator=seed),
                   saddle_family(clf.data, dims, r, True, generator=seed),
                   random_global_min(clf.data, dims, generator=seed)):
            w32 = [w.float() for w in pt.weights]
            assert clf.classify(w32).label == pt.label
            labels.append(pt.label)
            float64_floors.append(strict64.classify(w32).label == pt.label)
    assert set(labels) == {"nonstrict_saddle", "strict_saddle", "global_min"}
    assert not all(float64_floors)          # the input-precision floor is what made them pass


def test_issue_api_is_exported_from_dlnlab_theory():
    """The issue's API: critical_values(X, Y, r_max), hessian_min_eig(weights, X, Y) and the generators
    from dlnlab.theory. Critical values against an independent numpy eigendecomposition of Sigma and
    the hand values of the oracles of docs/theory.md §4."""
    assert {"critical_values", "hessian_min_eig", "random_global_min", "saddle_family",
            "random_normal_form_point", "enumeration_points", "escape_path"} <= set(theory.__all__)
    X, Y = clean_data()
    rows = critical_values(X, Y, 2)
    Xn, Yn = X.numpy(), Y.numpy()
    Sxy = Xn.T @ Yn
    lam = np.sort(np.linalg.eigvalsh(Sxy.T @ np.linalg.solve(Xn.T @ Xn, Sxy)))[::-1]
    tr_syy = float((Yn ** 2).sum())
    assert {c.S: c.value for c in rows} == pytest.approx(
        {S: tr_syy - sum(lam[i - 1] for i in S) for r in range(3) for S in itertools.combinations((1, 2, 3), r)},
        abs=EXACT_ATOL)
    assert {c.S: c.value for c in rows} == pytest.approx(
        {(): 14, (1,): 5, (2,): 10, (3,): 13, (1, 2): 1, (1, 3): 4, (2, 3): 9}, abs=EXACT_ATOL)   # the oracles of docs/theory.md §4
    assert hessian_min_eig(ORACLES["O9"][0], X, Y) == pytest.approx(float(hessian_eigs(ORACLES["O9"][0], X, Y)[0]),
                                                                    abs=HESS_METHODS_ATOL)
    data = LandscapeData.from_xy(X, Y)
    dims = [4, 3, 2, 3]
    assert classify(random_global_min(data, dims, generator=0).weights, X, Y).label == "global_min"
    assert classify(saddle_family(data, dims, 1, False, generator=0).weights, X, Y).label == "nonstrict_saddle"
    assert random_normal_form_point(data, dims, (1,), generator=0, critical_only=True).critical
    assert len(enumeration_points(data, dims, generator=0)) == len(critical_values(data, 2))
    assert escape_path(data, dims, 1).loss_formula(1.0) == pytest.approx(1.0, abs=EXACT_ATOL)


def test_non_finite_weights():
    ws = [w.clone() for w in ORACLES["O7"][0]]
    ws[1][0, 0] = float("nan")
    c = classify(ws, *clean_data())
    assert c.label == "not_critical" and "non-finite" in c.reason
    ws[1][0, 0] = 1e200
    assert classify(ws, *clean_data()).label == "not_critical"


def test_ensemble_returns_one_result_per_member(clean_classifier):
    ids = ["O5", "O6", "O7", "O8", "O11", "O12"]
    stacked = [torch.stack([ORACLES[i][0][h] for i in ids]).float() for h in range(3)]
    out = clean_classifier.classify(stacked)
    assert isinstance(out, list) and len(out) == len(ids)
    for i, c in zip(ids, out):
        assert c.label == ORACLES[i][1] and c.S == ORACLES[i][2]
    out2 = classify(stacked, *clean_data())
    assert [c.to_dict() for c in out] == [c.to_dict() for c in out2]


def test_to_dict_is_a_table_row(clean_classifier):
    rows = [clean_classifier.classify(ORACLES[i][0]).to_dict() for i in ("O3", "O8", "O9", "O16")]
    df = pd.DataFrame(rows)
    assert list(df.label) == ["strict_saddle", "strict_saddle", "strict_saddle", "global_min"]
    assert list(df.S) == ["{}", "{1}", "{2}", "{1,2}"]
    assert list(df.loose_pivots.fillna("n/a")) == ["(2,1)", "(3,1)", "n/a", "n/a"]
    assert all(isinstance(v, (str, int, float, bool, type(None))) for r in rows for v in r.values())
