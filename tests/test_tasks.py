import dataclasses

import numpy as np
import pytest
import torch

from dlnlab.model import DeepLinearNet
from dlnlab.tasks import (
    DataError,
    Task,
    load_regression,
    make_completion,
    make_regression,
)


def test_whitened_regression_has_the_teacher_spectrum_as_plateaus():
    task = make_regression(m=40, d_x=6, d_y=3, spectrum=[3.0, 2.0, 1.0], seed=1)
    torch.testing.assert_close(task.X.T @ task.X, 40 * torch.eye(6, dtype=torch.float64))
    # Sigma = Syx Sxx^-1 Sxy has eigenvalues m * s_i^2: plateaus of the lab loss at sum_{i>r} s_i^2
    A = task.target()
    torch.testing.assert_close(torch.linalg.svdvals(A), torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    zero = [torch.zeros(1, 4, 6, dtype=torch.float64), torch.zeros(1, 3, 4, dtype=torch.float64)]
    torch.testing.assert_close(task.loss(zero), torch.tensor([14.0], dtype=torch.float64))
    assert task.paper_scale == 40


def test_regression_is_seeded():
    a, b = make_regression(10, 3, 2, seed=5), make_regression(10, 3, 2, seed=5)
    assert torch.equal(a.X, b.X) and torch.equal(a.Y, b.Y)
    assert not torch.equal(a.Y, make_regression(10, 3, 2, seed=6).Y)


def test_regression_from_npz_and_csv(tmp_path):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(20, 4)), rng.normal(size=(20, 2))
    np.savez(tmp_path / "d.npz", X=X, Y=Y)
    task = load_regression(path=str(tmp_path / "d.npz"))
    assert task.X.shape == (20, 4) and task.info["assumption1_failures"] == []
    np.savetxt(tmp_path / "x.csv", X, delimiter=",", header="a,b,c,d", comments="")
    np.savetxt(tmp_path / "y.csv", Y, delimiter=",")
    task2 = load_regression(x_path=str(tmp_path / "x.csv"), y_path=str(tmp_path / "y.csv"))
    torch.testing.assert_close(task2.X, task.X) and torch.testing.assert_close(task2.Y, task.Y)


def test_bad_data_files_are_named(tmp_path):
    np.savez(tmp_path / "nox.npz", Z=np.ones((3, 2)))
    with pytest.raises(DataError, match=r"nox.npz: no array named 'X'"):
        load_regression(path=str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "rows.npz", X=np.ones((5, 2)), Y=np.ones((4, 1)))
    with pytest.raises(DataError, match="X has 5 rows but Y has 4"):
        load_regression(path=str(tmp_path / "rows.npz"))
    np.savez(tmp_path / "nan.npz", X=np.full((5, 2), np.nan), Y=np.ones((5, 1)))
    with pytest.raises(DataError, match="non-finite"):
        load_regression(path=str(tmp_path / "nan.npz"))
    with pytest.raises(DataError, match="not found"):
        load_regression(path=str(tmp_path / "missing.npz"))
    # finite, but too large for float64 statistics (found by the fuzz test): a named error, no LAPACK trace
    np.savez(tmp_path / "huge.npz", X=np.full((5, 2), 1e200), Y=np.ones((5, 1)))
    with pytest.raises(DataError, match=r"huge.npz: the data's second moments .* overflow float64"):
        load_regression(path=str(tmp_path / "huge.npz"))


def test_data_violating_assumption1_warns_but_loads(tmp_path):
    X = np.ones((6, 3))  # Sxx singular
    np.savez(tmp_path / "d.npz", X=X, Y=np.ones((6, 2)))
    with pytest.warns(UserWarning, match="Assumption 1"):
        task = load_regression(path=str(tmp_path / "d.npz"))
    assert task.info["assumption1_failures"]


def test_completion_fully_observed_and_partial():
    full = make_completion(6, 5, rank=2, singular_values=[4.0, 1.0], noise=0.0, seed=0)
    assert full.fully_observed and full.n_samples == 30
    torch.testing.assert_close(torch.linalg.svdvals(full.truth)[:2], torch.tensor([4.0, 1.0], dtype=torch.float64))
    part = make_completion(6, 5, rank=1, singular_values=[2.0], observed_count=12, seed=0)
    assert part.n_samples == 12 and len(set(zip(part.rows.tolist(), part.cols.tolist()))) == 12
    # the loss is the mean squared error over observed entries of the end-to-end product
    net = DeepLinearNet([5, 3, 6], ensemble=2, seed=0)
    A = net.end_to_end().detach()
    expect = (A[:, part.rows, part.cols] - part.values).pow(2).mean(-1)
    torch.testing.assert_close(part.loss([w.detach() for w in net.weights]), expect)
    every = torch.arange(part.n_samples).expand(2, -1)
    torch.testing.assert_close(part.batch_loss([w.detach() for w in net.weights], every), expect)


def test_completion_options_are_checked():
    with pytest.raises(DataError, match="task.rank"):
        make_completion(3, 3, rank=4)
    with pytest.raises(DataError, match="observed"):
        make_completion(3, 3, rank=1, observed_count=10)


def test_the_built_in_tasks_implement_the_task_protocol():
    assert isinstance(make_regression(16, 4, 3), Task)
    assert isinstance(make_completion(5, 4, 1), Task)
    assert not isinstance(object(), Task)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_product_loss_grad_is_the_loss_and_its_autograd_gradient(dtype):
    """The metrics hook's closed form: the loss bit for bit as `loss([P])`, dL/dP = 2 (P Sxx - Syx)."""
    task = make_regression(m=12, d_x=4, d_y=3, spectrum=[3.0, 2.0, 1.0], noise=0.1, seed=0).to(dtype)
    P = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    Pg = P.clone().requires_grad_(True)
    want = task.loss([Pg])
    (G,) = torch.autograd.grad(want.sum(), [Pg])
    loss, got = task.product_loss_grad(P)
    assert torch.equal(loss, want.detach()) and got.dtype == torch.float64
    torch.testing.assert_close(got, G.double(), rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=1e-6)
    assert dataclasses.replace(task, objective=object()).product_loss_grad(P) is None  # autograd then
