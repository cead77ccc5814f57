"""Theorem 7 labels of training-like points (docs/theory.md §5, §6): the product's rank is measured
against the data's smallest sqrt(lam_k), so a teacher of wide dynamic range is not `ambiguous` at its
global minimum; and a point critical only to the training tolerance gets the pivots of its plateau's
critical point, the point `near_label` is read at."""
import pytest
import torch

import dlnlab.theory.square.theorem7 as t7
from dlnlab.theory.square.classify import TRAINING_TOLERANCES, Classifier, classify
from dlnlab.theory.square.data import LandscapeData
from dlnlab.theory.square.points import (
    enumeration_points,
    random_global_min,
    saddle_family,
)
from dlnlab.theory.square.trajectory import project_to_critical

F64 = torch.float64


def teacher_data(spectrum, d_x=None, m=64, seed=0):
    """Whitened-ish Gaussian inputs and a noiseless teacher with the given singular values."""
    g = torch.Generator().manual_seed(seed)
    d_y = len(spectrum)
    d_x = d_x or d_y + 1
    X = torch.randn(m, d_x, generator=g, dtype=F64)
    U = torch.linalg.qr(torch.randn(d_y, d_y, generator=g, dtype=F64)).Q
    V = torch.linalg.qr(torch.randn(d_x, d_y, generator=g, dtype=F64)).Q
    teacher = U @ torch.diag(torch.tensor(spectrum, dtype=F64)) @ V.T
    return X, X @ teacher.T


@pytest.mark.parametrize("spectrum", [[8, 4, 2, 0.5], [10, 1, 0.1, 0.01], [1, 0.5, 0.02, 0.001]])
@pytest.mark.parametrize("H", [3, 5])
def test_exact_global_min_of_a_wide_range_teacher_is_global_min_under_training_tolerances(spectrum, H):
    X, Y = teacher_data(spectrum)
    data = LandscapeData.from_xy(X, Y)
    dims = [X.shape[1]] + [6] * (H - 1) + [len(spectrum)]
    p = random_global_min(data, dims, generator=1)
    c = classify(p.weights, X, Y, tolerances=TRAINING_TOLERANCES)
    assert c.label == "global_min", c.reason
    assert c.r == len(spectrum) and c.ambiguous_values == ()
    # the exact-point defaults agree
    assert classify(p.weights, X, Y).label == "global_min"


def test_product_rank_threshold_is_relative_to_the_smallest_data_eigenvalue():
    X, Y = teacher_data([10, 1, 0.1, 0.01])
    clf = Classifier(X, Y, tolerances=TRAINING_TOLERANCES)
    lam = clf.data.lam
    # a product of rank 4 whose smallest singular value is sqrt(lam_4), 1000x below sqrt(lam_1)
    p = random_global_min(clf.data, [X.shape[1], 4, 4, 4], generator=2)
    c = clf.classify(p.weights)
    assert c.label == "global_min"
    thr = TRAINING_TOLERANCES.rank_rtol * float(lam[3]).__pow__(0.5)
    assert float(lam[3]) ** 0.5 > thr * TRAINING_TOLERANCES.rank_band   # outside the band
    assert float(lam[3] / lam[0]) ** 0.5 < 2e-3                            # the old band held it


def near_zero_point(dims, scale, seed):
    """A small random point: on the plateau of S = {} (the start of a small-init run)."""
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(dims[h + 1], dims[h], generator=g, dtype=F64) for h in range(len(dims) - 1)]


@pytest.mark.parametrize("H, scale, expected", [(2, 1e-4, "strict_saddle"), (3, 0.02, "nonstrict_saddle"),
                                                (4, 0.05, "nonstrict_saddle"), (4, 1e-3, "nonstrict_saddle"),
                                                (5, 1e-2, "nonstrict_saddle")])
def test_approximately_critical_point_near_zero_gets_the_plateau_saddle_type(H, scale, expected):
    X, Y = teacher_data([3, 2, 1])
    dims = [X.shape[1]] + [5] * (H - 1) + [3]
    ws = near_zero_point(dims, scale, seed=H)
    clf = Classifier(X, Y, tolerances=TRAINING_TOLERANCES)
    c = clf.classify(ws)
    # critical to the training tolerance; at scale 1e-3 and H = 4 also to the exact-point one in units
    # of tr(Syy) (||grad L|| ~ scale^(H-1)), yet nothing in the gradient cancels: not exactly critical
    assert c.grad_norm <= TRAINING_TOLERANCES.grad_rtol * clf.data.tr_syy
    assert c.label == expected, c.reason
    assert c.S == () and c.reason.startswith("approximately critical: pivots of the plateau's critical point")
    assert c.label == project_to_critical(ws, clf.data).near_label[0]
    if H >= 3:
        # read on the point itself, its numerical ranks make every pivot loose: the old verdict
        own = Classifier(X, Y, tolerances=TRAINING_TOLERANCES.with_(exact_grad_rtol=1.0)).classify(ws)
        assert own.label == "strict_saddle" and len(own.loose_pivots) == H * (H - 1) // 2


@pytest.mark.parametrize("H", [3, 4])
def test_perturbed_plateau_critical_point_gets_the_plateau_saddle_type(H):
    X, Y = teacher_data([4, 2, 1, 0.5], d_x=5)
    data = LandscapeData.from_xy(X, Y)
    dims = [5] + [6] * (H - 1) + [4]
    clf = Classifier(data, tolerances=TRAINING_TOLERANCES)
    g = torch.Generator().manual_seed(H)
    for p in enumeration_points(data, dims, generator=3):
        S = p.S
        if S != tuple(range(1, len(S) + 1)) or len(S) in (0, 4):
            continue
        ws = [w + 1e-4 * torch.randn(w.shape, generator=g, dtype=F64) for w in p.weights]
        c = clf.classify(ws)
        assert c.grad_norm > TRAINING_TOLERANCES.exact_grad_rtol * data.tr_syy
        assert (c.label, c.S) == ("nonstrict_saddle", S), c.reason
        assert "approximately critical" in c.reason


def test_exact_points_keep_their_own_pivots_under_training_tolerances():
    """An exact strict saddle with a loose pivot (App. B.8, O(1) Z) stays strict: the projection is
    only for points that are not exactly critical."""
    X, Y = teacher_data([4, 2, 1, 0.5], d_x=5)
    data = LandscapeData.from_xy(X, Y)
    p = saddle_family(data, [5, 6, 6, 4], 1, strict=True, generator=0, d_cond=None)
    c = Classifier(data, tolerances=TRAINING_TOLERANCES).classify(p.weights)
    assert c.label == "strict_saddle" and "approximately" not in c.reason
    assert c.loose_pivots


def test_exact_grad_rtol_is_validated():
    with pytest.raises(ValueError, match="exact_grad_rtol"):
        TRAINING_TOLERANCES.with_(exact_grad_rtol=-1.0)


def test_no_plateau_critical_point_leaves_the_pivots_ambiguous(monkeypatch):
    """Where the projection cannot keep the learned modes (a singular core: NaN gradient), the
    label says so instead of guessing."""
    def failed(ws, data, r):
        return [torch.full_like(w, float("nan")) for w in ws], torch.full((ws[0].shape[0],), float("nan"), dtype=F64)

    monkeypatch.setattr(t7, "snap_plateaus", failed)
    X, Y = teacher_data([3, 2, 1])
    ws = near_zero_point([X.shape[1], 5, 5, 3], 0.02, seed=3)
    c = Classifier(X, Y, tolerances=TRAINING_TOLERANCES).classify(ws)
    assert c.label == "ambiguous" and "no critical point of the plateau keeps" in c.reason
