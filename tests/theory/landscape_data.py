"""Data and an independent reference loss shared by the landscape, classifier and Hessian tests."""
import torch

F64 = torch.float64


def clean_data():
    """Spec §6.1: X = I_4, Y = [diag(3,2,1) | 0] (samples as rows: Y is 4 x 3): lam = (9,4,1), U = I,
    tr Syy = 14."""
    X = torch.eye(4, dtype=F64)
    Y = torch.zeros(4, 3, dtype=F64)
    Y[0, 0], Y[1, 1], Y[2, 2] = 3.0, 2.0, 1.0
    return X, Y


def gaussian_data(m, d_x, d_y, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d_x, generator=g, dtype=F64), torch.randn(m, d_y, generator=g, dtype=F64)


def random_dims(rng, trial: int, transposed_every: int) -> list[int]:
    """[d_x, d_1, .., d_y] of a random problem, H = 2..5; every `transposed_every`-th trial has
    d_y > d_x (the transposed extension of docs/theory.md §5)."""
    H = int(rng.integers(2, 6))
    d_y = int(rng.integers(1, 5))
    d_x = d_y + int(rng.integers(0, 3))
    if trial % transposed_every == 0:
        d_x, d_y = max(1, d_y - 1), d_x + 1
    return [d_x] + [int(rng.integers(1, 6)) for _ in range(H - 1)] + [d_y]


def data_loss(weights, X, Y):
    """Independent reference: the paper's loss straight from the samples."""
    out = X
    for w in weights:
        out = out @ w.T
    return ((out - Y) ** 2).sum()
