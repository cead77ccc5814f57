import pytest
import torch

from dlnlab.linalg import numerical_rank, singular_values


def matrix_with_spectrum(s, rows, cols, seed=0):
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(rows, rows, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(cols, cols, generator=gen, dtype=torch.float64))
    S = torch.zeros(rows, cols, dtype=torch.float64)
    S[range(len(s)), range(len(s))] = torch.tensor(s, dtype=torch.float64)
    return U @ S @ V.T


@pytest.mark.parametrize("s, rtol, rank", [
    ([3.0, 2.0, 1.0], 1e-3, 3),
    ([3.0, 2.0, 1e-6], 1e-3, 2),
    ([3.0, 1e-2, 1e-6], 1e-3, 2),
    ([3.0, 1e-2, 1e-6], 1e-1, 1),
    ([0.0, 0.0, 0.0], 1e-3, 0),
])
def test_rank_of_known_spectra(s, rtol, rank):
    M = matrix_with_spectrum(s, 4, 5)
    sv = singular_values({"M": M})["M"]
    torch.testing.assert_close(sv[:3], torch.tensor(s, dtype=torch.float64), atol=1e-12, rtol=0)
    assert int(numerical_rank(sv, rtol)) == rank


def test_floor_keeps_a_tiny_matrix_at_rank_zero():
    sv = torch.tensor([1e-6, 5e-7, 1e-7], dtype=torch.float64)
    assert int(numerical_rank(sv, 1e-3)) == 3  # purely relative: full rank
    assert int(numerical_rank(sv, 1e-3, floor=10.0)) == 0
    assert int(numerical_rank(sv * 1e7, 1e-3, floor=10.0)) == 3  # grown past the floor


def test_batched_singular_values_match_one_by_one():
    mats = {k: matrix_with_spectrum([4.0 - k, 1.0], 3, 3, seed=k) for k in range(3)}
    mats["other"] = torch.randn(2, 5, 4, dtype=torch.float64)
    got = singular_values(mats)
    for k, m in mats.items():
        torch.testing.assert_close(got[k], torch.linalg.svdvals(m))


def test_rank_tolerance_must_be_a_fraction():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        numerical_rank(torch.ones(3), 1.5)
