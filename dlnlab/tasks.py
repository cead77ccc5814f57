"""Tasks: the data of a run and its full-batch and minibatch losses.

Loss scaling (the lab's convention, used in every table and TensorBoard chart):
  regression          loss = (1/m) sum_i ||W_H...W_1 x_i - y_i||^2   (mean over samples, no 1/2)
  matrix completion   loss = (1/N) sum_{(i,j) in Omega} (A_ij - A*_ij)^2  (mean over observed entries)
The landscape paper (Achour et al.) uses the sum over samples: paper loss = m * lab loss, which is
`task.paper_scale * loss`. The rank-jump paper (Wang and Jacot) uses the completion loss as above.
Ridge adds lambda * sum_h ||W_h||_F^2 to either. A minibatch loss is the mean over `batch_size`
samples (or observed entries) drawn uniformly with replacement, so its expectation is the full loss.

Losses are pure functions of the weights [W_1, ..., W_H], each (E, d_h, d_{h-1}); they return (E,).

Other convex losses (dlnlab.losses, docs/losses.md): `with_loss(task, loss, product_ridge)` gives a task
whose `objective` is that loss (targets checked once, canonical in `targets`) plus mu ||W_H...W_1||_F^2.
Such a task steps in factored form when the loss is smooth and mu = 0 (`batch_arrays` hands out the loss,
whose closed-form `grad_out` replaces the square residual), else by autograd (`batch_arrays` None); its
`square_loss` is False; the loss is still a function of the product (`loss_of_product`).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from dlnlab.linalg import forward, product, random_orthogonal
from dlnlab.losses import Loss
from dlnlab.theory.square.data import LandscapeData


class DataError(ValueError):
    """Bad task data or task options; the message names the option or file."""


@runtime_checkable
class Task(Protocol):
    """What the trainer, the hooks and the classifier use of a task. A task of your own implements
    these; three are optional there: `info` (default {}), `loss_of_product` (default False: the
    metrics use autograd through the layers) and `batch_arrays` (default: absent, the trainer then
    steps with autograd on `batch_loss`)."""

    name: str
    info: dict              # free-form facts written into status.json (e.g. the teacher's spectrum)
    loss_of_product: bool   # True: `loss([P])` is the loss at end-to-end product P (cheap gradients)

    @property
    def d_in(self) -> int:
        """d_0, the input width."""

    @property
    def d_out(self) -> int:
        """d_H, the output width."""

    @property
    def n_samples(self) -> int:
        """What SGD samples from (samples or observed entries)."""

    @property
    def paper_scale(self) -> float:
        """paper loss = paper_scale * lab loss (docs/theory.md §1)."""

    def to(self, dtype: torch.dtype, device=None) -> "Task":
        """The task in `dtype` (device: only for config `device`)."""

    def loss(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """(E,) the full-batch lab loss of an ensemble's weights."""

    def batch_loss(self, weights: Sequence[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """(E,) the lab loss on the samples (or observed entries) `idx`."""

    def batch_arrays(self, idx: torch.Tensor | None):
        """(x, y) rows of a batch for the factored step."""

    def target(self) -> torch.Tensor:
        """The matrix whose scale sets rank floors."""

    def landscape_data(self):
        """(X, Y) of the square-loss landscape, or None."""


class _LossOfTask:
    """What the built-in tasks say about their loss (`objective` None: the square loss)."""

    objective: Loss | None

    @property
    def square_loss(self) -> bool:
        """The square loss of the landscape theory (no product ridge): factored steps, Theorem 7."""
        return self.objective is None

    @property
    def loss_name(self) -> str:
        return "square" if self.objective is None else self.objective.name


@dataclass
class RegressionTask(_LossOfTask):
    """Least squares on X (m, d_x) -> Y (m, d_y), samples as rows (the paper's X is X.T)."""

    X: torch.Tensor
    Y: torch.Tensor
    name: str = "regression"
    info: dict = field(default_factory=dict)
    objective: Loss | None = None  # None: the square loss (today's exact expressions)
    product_ridge: float = 0.0  # mu of + mu ||W_H...W_1||_F^2 (with `objective` only)
    targets: torch.Tensor | None = None  # Y canonical for `objective` (Loss.check_targets)
    loss_of_product = True  # the loss reads W_H...W_1 only: `loss([P])` is the loss at product P
    _grams: tuple | None = field(default=None, init=False, repr=False, compare=False)  # (Sxx, Syx) float64

    @property
    def d_in(self) -> int:
        """d_0 = d_x, the columns of X."""
        return self.X.shape[1]

    @property
    def d_out(self) -> int:
        """d_H = d_y, the columns of Y."""
        return self.Y.shape[1]

    @property
    def n_samples(self) -> int:
        """What SGD samples from: the m data points."""
        return self.X.shape[0]

    @property
    def paper_scale(self) -> float:
        """paper loss (sum over samples) = paper_scale * lab loss (mean over samples)."""
        return float(self.n_samples)

    def to(self, dtype: torch.dtype, device=None) -> "RegressionTask":
        """The same task in `dtype` on `device`."""
        T = None if self.targets is None else self.targets.to(device, dtype)
        return RegressionTask(self.X.to(device, dtype), self.Y.to(device, dtype), self.name, self.info,
                              self.objective, self.product_ridge, T)

    def loss(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """(E,) the full-batch lab loss (mean over samples) of the ensemble."""
        if self.objective is None:
            return (forward(weights, self.X) - self.Y).pow(2).sum(-1).mean(-1)
        return _with_ridge(self.objective.value(forward(weights, self.X), self.targets), weights, self.product_ridge)

    def product_loss_grad(self, P: torch.Tensor):
        """At end-to-end products P (E, d_y, d_x): (the loss, exactly `loss([P])`; its gradient with
        respect to P in float64, in closed form 2 (P Sxx - Syx) with Sxx = X^T X / m and
        Syx = Y^T X / m computed once), or None under another objective (autograd then)."""
        if self.objective is not None:
            return None
        if self._grams is None:
            X, Y = self.X.double(), self.Y.double()
            self._grams = (X.T @ X / X.shape[0], Y.T @ X / X.shape[0])
        Sxx, Syx = self._grams
        loss = self.loss([P])
        return loss, 2.0 * (P.double() @ Sxx - Syx)

    def batch_loss(self, weights: Sequence[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """idx: (E, B) sample indices, one row per ensemble member."""
        if self.objective is None:
            return (forward(weights, self.X[idx]) - self.Y[idx]).pow(2).sum(-1).mean(-1)
        out = self.objective.value(forward(weights, self.X[idx]), self.targets[idx])
        return _with_ridge(out, weights, self.product_ridge)

    def batch_arrays(self, idx: torch.Tensor | None):
        """(x, y, None) for `train.dln_batch_factors`: the samples `idx` (E, B) of each member, or
        all of them (idx None: full batch, the same (m, d_x) inputs for every member). Under another
        smooth loss without product ridge: (x, canonical targets, None, the loss), whose closed-form
        `grad_out` gives the factored step's deltas; None (autograd) otherwise."""
        if self.objective is not None:
            if not _factored(self):
                return None
            if idx is None:
                return self.X, self.targets, None, self.objective
            return self.X[idx], self.targets[idx], None, self.objective
        if idx is None:
            return self.X, self.Y, None
        return self.X[idx], self.Y[idx], None

    def target(self) -> torch.Tensor:
        """The least-squares map A = Syx Sxx^+ (d_y, d_x): the scale of the problem."""
        return torch.linalg.lstsq(self.X.double(), self.Y.double()).solution.T

    def landscape_data(self):
        """(X, Y) for the square-loss classifier; None under another loss (or a product ridge),
        whose landscape Theorem 7 does not describe."""
        return (self.X, self.Y) if self.square_loss else None

    def convex_data(self):
        """(X, canonical targets) of the convex reference ell* (dlnlab.theory.convex.reference)."""
        return self.X, (self.Y if self.targets is None else self.targets)


@dataclass
class CompletionTask(_LossOfTask):
    """Matrix completion: fit the observed entries (rows[k], cols[k]) -> values[k] of an n1 x n2 matrix.

    The network's end-to-end product A = W_H...W_1 has shape (d_H, d_0) = (n1, n2).
    """

    n1: int
    n2: int
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    truth: torch.Tensor  # the noiseless low-rank matrix A*
    name: str = "matrix_completion"
    info: dict = field(default_factory=dict)
    objective: Loss | None = None  # None: the square loss; else each observed entry is a sample (d_out 1)
    product_ridge: float = 0.0
    targets: torch.Tensor | None = None  # (N, 1) canonical values for `objective`
    loss_of_product = True  # the loss reads W_H...W_1 only: `loss([P])` is the loss at product P

    @property
    def d_in(self) -> int:
        """d_0 = n2, the columns of the target."""
        return self.n2

    @property
    def d_out(self) -> int:
        """d_H = n1, the rows of the target."""
        return self.n1

    @property
    def n_samples(self) -> int:
        """What SGD samples from: the N observed entries."""
        return self.values.shape[0]

    @property
    def fully_observed(self) -> bool:
        """Every entry observed (the fully observed noisy variant)."""
        return self.n_samples == self.n1 * self.n2

    @property
    def paper_scale(self) -> float:
        """paper loss = paper_scale * lab loss, paper_scale = N (the number of observed entries).

        The landscape paper's loss is the SUM over samples; a fully observed completion is the
        regression X = I_{n2}, Y = M^T (`landscape_data`), whose paper loss ||A - M||_F^2 sums the N
        squared errors, while the lab loss (= the rank-jump paper's C(A)) is their mean."""
        return float(self.n_samples)

    def to(self, dtype: torch.dtype, device=None) -> "CompletionTask":
        """The same task in `dtype` on `device`."""
        T = None if self.targets is None else self.targets.to(device, dtype)
        return CompletionTask(self.n1, self.n2, self.rows.to(device), self.cols.to(device),
                              self.values.to(device, dtype), self.truth.to(device, dtype), self.name, self.info,
                              self.objective, self.product_ridge, T)

    def loss(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """(E,) the lab loss over the observed entries of the ensemble."""
        A = product(weights)
        if self.objective is None:
            return (A[..., self.rows, self.cols] - self.values).pow(2).mean(-1)
        out = self.objective.value(A[..., self.rows, self.cols].unsqueeze(-1), self.targets)
        return _with_ridge(out, [A], self.product_ridge)

    def batch_loss(self, weights: Sequence[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """idx: (E, B) indices of observed entries; costs O(B H d^2), never the full product."""
        E = idx.shape[0]
        members = torch.arange(E, device=idx.device).unsqueeze(1)
        r, c = self.rows[idx], self.cols[idx]
        v = weights[0].transpose(-1, -2)[members, c]            # columns of W_1: (E, B, d_1)
        for w in weights[1:-1]:
            v = v @ w.transpose(-1, -2)
        out = (v * weights[-1][members, r]).sum(-1)              # rows of W_H
        if self.objective is None:
            return (out - self.values[idx]).pow(2).mean(-1)
        return _with_ridge(self.objective.value(out.unsqueeze(-1), self.targets[idx]), weights, self.product_ridge)

    def batch_arrays(self, idx: torch.Tensor | None):
        """(one-hot columns (E, B, n2), values (E, B), rows (E, B)) of the observed entries `idx`
        for `train.dln_batch_factors` (under another smooth loss without product ridge: the canonical
        targets (E, B, 1) and the loss as a fourth item); None for the full batch (its loss reads the
        product, which autograd handles as well) and for l1 or a product ridge."""
        if idx is None or (self.objective is not None and not _factored(self)):
            return None
        x = torch.zeros(*idx.shape, self.n2, dtype=self.values.dtype, device=self.values.device)
        x.scatter_(-1, self.cols[idx].unsqueeze(-1), 1.0)
        if self.objective is not None:
            return x, self.targets[idx], self.rows[idx], self.objective
        return x, self.values[idx], self.rows[idx]

    def observed_matrix(self) -> torch.Tensor:
        """The (n1, n2) matrix of the observed values, 0 elsewhere."""
        M = torch.zeros(self.n1, self.n2, dtype=self.values.dtype)
        M[self.rows, self.cols] = self.values
        return M

    def target(self) -> torch.Tensor:
        """The observed matrix in float64: the scale of the problem."""
        return self.observed_matrix().double()

    def landscape_data(self):
        """Theorem 7 is a square-loss regression result; a fully observed completion is the
        regression X = I_{n2}, Y = M^T (loss scaled by 1/N)."""
        if not (self.fully_observed and self.square_loss):
            return None
        return torch.eye(self.n2, dtype=torch.float64), self.observed_matrix().double().T

    def convex_data(self):
        """None: the convex reference is written for regression data (X, Y)."""
        return None


def _factored(task) -> bool:
    """A non-square objective steps in factored form when its per-sample gradient has a closed form
    (a smooth loss) and no product ridge couples the samples through ||W_H...W_1||_F^2."""
    return task.objective.smooth and not task.product_ridge


def _with_ridge(value: torch.Tensor, weights: Sequence[torch.Tensor], mu: float) -> torch.Tensor:
    """value + mu ||W_H...W_1||_F^2 (the product ridge, inside Laurent & von Brecht's theorem)."""
    if not mu:
        return value
    return value + mu * product(weights).pow(2).sum((-1, -2))


def with_loss(task, loss: Loss | None, product_ridge: float = 0.0):
    """`task` under `loss` (+ mu ||A||_F^2): its targets checked once (LossError, one line, naming the
    problem); the square loss without product ridge returns `task` itself (bit for bit today's)."""
    if loss is None or (loss.name == "square" and not product_ridge):
        return task
    Y = task.Y if isinstance(task, RegressionTask) else task.values
    try:
        T = loss.check_targets(Y, task.d_out if isinstance(task, RegressionTask) else None)
    except ValueError as e:
        raise DataError(f"{e} (task={task.name})") from None
    if isinstance(task, CompletionTask) and T.shape[-1] != 1:
        raise DataError(f"loss={loss.name} does not fit task={task.name}: an observed entry is one real value")
    return dataclasses.replace(task, objective=loss, product_ridge=float(product_ridge), targets=T)


# ---------------------------------------------------------------------------------------------
# Builders

def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def check_assumption1(X: torch.Tensor, Y: torch.Tensor, gap_rtol: float = 1e-6) -> list[str]:
    """Which parts of Assumption 1 (docs/theory.md §1) fail for data X (m, d_x), Y (m, d_y); [] if all hold."""

    return list(LandscapeData.from_xy(X, Y, eig_gap_rtol=gap_rtol).assumptions.failures)


def make_regression(m: int, d_x: int, d_y: int, spectrum: Sequence[float] | None = None,
                    noise: float = 0.0, whiten: bool = True, seed: int = 0,
                    gap_rtol: float = 1e-6, targets: str = "real") -> RegressionTask:
    """Synthetic teacher regression Y = X W*^T + noise, seeded, meeting Assumption 1.

    targets="classes": Y is the one-hot row of argmax_k (X W*^T + noise)_k (d_y classes), for
    loss=cross_entropy; Assumption 1 is then only reported (info["assumption1_failures"]). Without
    noise the classes are linearly separable: cross-entropy has no minimiser (docs/losses.md).

    W* = U diag(spectrum) V^T with Haar U, V. With `whiten`, X^T X = m I exactly, so that the
    eigenvalues of Sigma are lambda_i = m * spectrum_i^2 (+ noise) and the saddle-to-saddle
    plateaus of the lab loss sit at ||Y||^2/m - sum_{i<=r} spectrum_i^2.
    """
    for name, v, lo in (("task.m", m, 1), ("task.d_x", d_x, 1), ("task.d_y", d_y, 1)):
        if v < lo:
            raise DataError(f"{name} must be >= {lo}, got {v}")
    if not d_y <= d_x <= m:
        raise DataError(f"task: Assumption 1 needs d_y <= d_x <= m, got d_y={d_y}, d_x={d_x}, m={m}")
    k = d_y
    if spectrum is None or len(spectrum) == 0:
        spectrum = [float(k - i) for i in range(k)]  # distinct singular values k, k-1, ..., 1
    spectrum = [float(s) for s in spectrum]
    if len(spectrum) > k:
        raise DataError(f"task.spectrum has {len(spectrum)} values; at most d_y = {d_y} allowed")
    gen = _rng(seed)
    X = torch.randn(m, d_x, generator=gen, dtype=torch.float64)
    if whiten:
        q, _ = torch.linalg.qr(X)
        X = q * m ** 0.5
    s = torch.zeros(k, dtype=torch.float64)
    s[: len(spectrum)] = torch.tensor(spectrum, dtype=torch.float64)
    W_star = random_orthogonal(d_y, k, gen) @ torch.diag(s) @ random_orthogonal(d_x, k, gen).T
    Y = X @ W_star.T + noise * torch.randn(m, d_y, generator=gen, dtype=torch.float64)
    if targets not in ("real", "classes"):
        raise DataError(f"task.targets={targets!r} is invalid: allowed real | classes")
    if targets == "classes":
        Y = torch.nn.functional.one_hot(Y.argmax(-1), d_y).to(torch.float64)
        return RegressionTask(X, Y, info={"teacher_singular_values": spectrum, "targets": "classes",
                                          "assumption1_failures": check_assumption1(X, Y, gap_rtol)})
    failures = check_assumption1(X, Y, gap_rtol)
    if failures:
        raise DataError("task=regression does not meet Assumption 1 (docs/theory.md §1): "
                        + "; ".join(failures) + ". Use distinct non-zero task.spectrum values, "
                        "or add task.noise.")
    return RegressionTask(X, Y, info={"teacher_singular_values": spectrum})


def _load_matrix(path: Path, key: str | None = None) -> np.ndarray:
    if not path.exists():
        raise DataError(f"task data file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                if key not in z:
                    raise DataError(f"{path}: no array named {key!r} (found {sorted(z.files)}); "
                                    "a .npz needs arrays 'X' and 'Y', samples as rows")
                return np.asarray(z[key], dtype=np.float64)
        # A first row that is not numbers is a header; any other unreadable row is an error
        # about that row, not a reason to drop the first one.
        with open(path) as f:
            first = f.readline()
        try:
            [float(v) for v in first.split(",")]
            header = 0
        except ValueError:
            header = 1
        with warnings.catch_warnings():  # an empty file: the shape check below says so, once
            warnings.simplefilter("ignore", UserWarning)
            return np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64, skiprows=header)
    except DataError:
        raise
    except Exception as e:  # unreadable, not numeric, ragged...
        raise DataError(f"cannot read {path}: {e}") from None


def load_regression(path: str | None = None, x_path: str | None = None, y_path: str | None = None,
                    gap_rtol: float = 1e-6) -> RegressionTask:
    """X, Y from a `.npz` (arrays X and Y, samples as rows) or from two CSV files, validated."""
    if path:
        p = Path(path).expanduser()
        if p.suffix != ".npz":
            raise DataError(f"task.path={path}: expected a .npz file; for CSV use task.x_path and task.y_path")
        X, Y, src = _load_matrix(p, "X"), _load_matrix(p, "Y"), str(p)
    elif x_path and y_path:
        X, Y = _load_matrix(Path(x_path).expanduser()), _load_matrix(Path(y_path).expanduser())
        src = f"{x_path}, {y_path}"
    else:
        raise DataError("task=regression_file needs task.path (a .npz) or both task.x_path and task.y_path (CSV)")
    for name, a in (("X", X), ("Y", Y)):
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
            raise DataError(f"{src}: {name} must be a non-empty 2-D array (samples as rows), got shape {a.shape}")
        if not np.isfinite(a).all():
            raise DataError(f"{src}: {name} has {int((~np.isfinite(a)).sum())} non-finite values")
    if X.shape[0] != Y.shape[0]:
        raise DataError(f"{src}: X has {X.shape[0]} rows but Y has {Y.shape[0]}; samples must be rows of both")
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    X64, Y64 = Xt.double(), Yt.double()
    if not (bool(torch.isfinite(X64.T @ X64).all()) and bool(torch.isfinite(Y64.T @ X64).all())
            and bool(torch.isfinite(Y64.T @ Y64).all())):
        raise DataError(f"{src}: the data's second moments X^T X, Y^T X, Y^T Y overflow float64 (max |X| = "
                        f"{float(X64.abs().max()):.3g}, max |Y| = {float(Y64.abs().max()):.3g}): rescale the data")
    try:
        failures = check_assumption1(Xt, Yt, gap_rtol)
    except torch.linalg.LinAlgError as e:
        raise DataError(f"{src}: the data's statistics cannot be decomposed in float64 ({e}); rescale the data") from e
    if failures:
        warnings.warn(f"{src}: Assumption 1 fails ({'; '.join(failures)}); training works, "
                      "but the square-loss classifier's Theorem 7 does not apply", stacklevel=2)
    return RegressionTask(Xt, Yt, name="regression_file",
                          info={"source": src, "assumption1_failures": failures})


def make_completion(n1: int, n2: int, rank: int = 1, singular_values: Sequence[float] | None = None,
                    noise: float = 0.0, observed_fraction: float = 1.0,
                    observed_count: int | None = None, seed: int = 0) -> CompletionTask:
    """An n1 x n2 target of the given rank and singular values, plus noise, with a random set Omega
    of observed entries (all of them when observed_fraction = 1: the docs/theory.md §7 recipes)."""
    if n1 < 1 or n2 < 1:
        raise DataError(f"task.n1 and task.n2 must be >= 1, got {n1}, {n2}")
    if not 1 <= rank <= min(n1, n2):
        raise DataError(f"task.rank must lie in [1, min(n1, n2)] = [1, {min(n1, n2)}], got {rank}")
    sv = [float(v) for v in (singular_values or [])] or [float(rank - i) for i in range(rank)]
    if len(sv) != rank:
        raise DataError(f"task.singular_values has {len(sv)} values but task.rank = {rank}")
    if observed_count is not None and observed_count < 1:
        raise DataError(f"task.observed_count={observed_count} is invalid: allowed an integer >= 1, "
                        "or null to use task.observed_fraction")
    N = int(observed_count) if observed_count is not None else int(round(observed_fraction * n1 * n2))
    if not 1 <= N <= n1 * n2:
        raise DataError(f"task: the number of observed entries must lie in [1, {n1 * n2}], got {N} "
                        "(set task.observed_fraction in (0, 1] or task.observed_count)")
    gen = _rng(seed)
    truth = random_orthogonal(n1, rank, gen) @ torch.diag(torch.tensor(sv, dtype=torch.float64)) \
        @ random_orthogonal(n2, rank, gen).T
    noisy = truth + noise * torch.randn(n1, n2, generator=gen, dtype=torch.float64)
    flat = torch.arange(n1 * n2) if N == n1 * n2 else torch.randperm(n1 * n2, generator=gen)[:N].sort().values
    rows, cols = flat // n2, flat % n2
    return CompletionTask(n1, n2, rows, cols, noisy[rows, cols], truth,
                          info={"noisy_singular_values": torch.linalg.svdvals(noisy).tolist()})
