"""Convex losses of the network output: pure functions on tensors (docs/theory.md §8).

    from dlnlab.losses import make_loss
    loss = make_loss("huber", delta=0.5)
    T = loss.check_targets(Y, d_out=4)       # once per run: canonical targets (or a one-line LossError)
    loss.value(out, T)                       # out (E, m, d_out) or (m, d_out) -> (E,) or ()
    loss.grad_out(out, T)                    # d value / d out, closed form: the factored step's deltas

Reduction (the lab's convention, tasks.RegressionTask.loss): value = (1/m) sum_i sum_j phi(out_ij, t_ij),
the MEAN over samples of the SUM over output coordinates; `square` is exactly today's loss
(out - Y)^2 summed over outputs and averaged over samples. Per-sample losses phi (r = out - t):

  square        r^2                                   targets real (m, d_out)
  huber         r^2 if |r| <= delta else 2 delta |r| - delta^2    (2x the textbook Huber, so that
                delta -> inf gives `square` exactly)   targets real
  pseudo_huber  2 delta^2 (sqrt(1 + (r/delta)^2) - 1)  (-> r^2 as delta -> inf)      targets real
  lp            |r|^p, 1 < p <= 2 (p = 2 is `square`)                                targets real
  poisson       exp(o) - t o + t log t - t  (log link, mean exp(o); >= 0, = 0 at o = log t)
                                                       targets counts >= 0
  cross_entropy logsumexp(o) - sum_k t_k o_k  (softmax) targets class indices (m,) or one-hot rows
  logistic      log(1 + exp(-t o)), output dim 1       targets +-1 or 0/1 (canonical: +-1, (m, 1))
  l1            |r|  NOT differentiable: outside Laurent & von Brecht's theorem (smooth = False)

Every loss is convex in the output, hence ell(A) = value(X A^T, T) is convex in the product A.
Targets are canonicalised once by `check_targets` (idempotent); `value`/`grad_out` assume canonical
targets (no checks on the hot path).
"""
from __future__ import annotations

import math

import torch

__all__ = ["LossError", "Loss", "Square", "CrossEntropy", "Logistic", "Huber", "PseudoHuber", "Lp",
           "Poisson", "L1", "LOSSES", "make_loss", "product_value_grad"]


class LossError(ValueError):
    """Bad loss name, loss parameter or targets; a one-line message naming the field."""


class Loss:
    """A convex loss of the network output, batched over any leading dims (ensemble E).

    Subclasses define `_phi(out, t)` (elementwise or per-sample terms summed over the last dim) and
    `_dphi(out, t)` (its derivative in out), and may override `_canonical(Y, d_out)`.
    """

    name: str = ""
    smooth: bool = True          # differentiable: inside the theorem (l1 is not)
    params: tuple[str, ...] = ()  # the constructor's parameters (for messages and make_loss)

    def value(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over samples of the per-sample loss.

        Args:
            out: network outputs (..., m, d_out).
            targets: canonical targets (from `check_targets`), broadcastable to `out`.

        Returns:
            (...,) the loss, e.g. (E,) for an ensemble.
        """
        return self._phi(out, targets).sum(-1).mean(-1)

    def grad_out(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """d value / d out in closed form, shape of `out` (includes the 1/m of the mean)."""
        return self._dphi(out, targets) / out.shape[-2]

    def check_targets(self, Y, d_out: int | None = None) -> torch.Tensor:
        """Canonical targets for this loss, or LossError naming the problem.

        Args:
            Y: targets (m,) or (m, k); any numeric array-like. Canonical targets pass through unchanged.
            d_out: the network's output dimension, when known (checks shapes and class ranges).

        Returns:
            A float tensor (m, d_out) (in Y's float dtype, float64 for integer input).
        """
        Y = torch.as_tensor(Y)
        if not Y.is_floating_point():
            Y = Y.to(torch.float64)
        if Y.ndim not in (1, 2) or Y.shape[0] == 0:
            raise LossError(f"loss={self.name} needs targets Y of shape (m,) or (m, d_out), got {tuple(Y.shape)}")
        if not torch.isfinite(Y).all():
            bad = int((~torch.isfinite(Y)).any(-1).nonzero()[0, 0]) if Y.ndim == 2 else \
                int((~torch.isfinite(Y)).nonzero()[0, 0])
            raise LossError(f"loss={self.name}: Y has NaN or infinite values (first at sample {bad})")
        T = self._canonical(Y, d_out)
        if d_out is not None and T.shape[-1] != d_out:
            raise LossError(f"loss={self.name}: targets have {T.shape[-1]} columns but the network output "
                            f"dim d_out is {d_out}")
        return T

    def _canonical(self, Y: torch.Tensor, d_out: int | None) -> torch.Tensor:
        return Y if Y.ndim == 2 else Y.unsqueeze(-1)

    def _phi(self, out, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def _dphi(self, out, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)}" for p in self.params)
        return f"{type(self).__name__}({args})"


def _check_param(loss: str, field: str, v, ok: bool, want: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok:
        raise LossError(f"loss.{field} must be {want} for loss={loss}, got {v!r}")
    return float(v)


class Square(Loss):
    """The square loss ‖o − y‖², the loss of Theorem 7 (docs/theory.md §2)."""

    name = "square"

    def value(self, out, targets):
        # the exact expression of tasks.RegressionTask.loss: bit for bit today's square loss
        return (out - targets).pow(2).sum(-1).mean(-1)

    def _phi(self, out, t):
        return (out - t).pow(2)

    def _dphi(self, out, t):
        return 2.0 * (out - t)


class Huber(Loss):
    """Huber: quadratic within `delta` of the target, linear beyond (smooth, convex)."""

    name, params = "huber", ("delta",)

    def __init__(self, delta: float = 1.0):
        self.delta = _check_param(self.name, "delta", delta, isinstance(delta, (int, float)) and delta > 0, "> 0")

    def _phi(self, out, t):
        a = (out - t).abs()
        d = self.delta
        return torch.where(a <= d, a * a, 2.0 * d * a - d * d)

    def _dphi(self, out, t):
        return 2.0 * (out - t).clamp(-self.delta, self.delta)


class PseudoHuber(Loss):
    """Pseudo-Huber δ²(√(1 + (r/δ)²) − 1): a smooth, strictly convex Huber."""

    name, params = "pseudo_huber", ("delta",)

    def __init__(self, delta: float = 1.0):
        self.delta = _check_param(self.name, "delta", delta, isinstance(delta, (int, float)) and delta > 0, "> 0")

    def _phi(self, out, t):
        d = self.delta
        # 2 d^2 (sqrt(1 + u^2) - 1) = 2 r^2 / (sqrt(1 + u^2) + 1): no cancellation for small r
        r = out - t
        return 2.0 * r * r / (torch.sqrt(1.0 + (r / d) ** 2) + 1.0)

    def _dphi(self, out, t):
        r = out - t
        return 2.0 * r / torch.sqrt(1.0 + (r / self.delta) ** 2)


class Lp(Loss):
    """|r|^p summed over outputs, 1 < p: convex and differentiable."""

    name, params = "lp", ("p",)

    def __init__(self, p: float = 1.5):
        self.p = _check_param(self.name, "p", p, isinstance(p, (int, float)) and 1.0 < p <= 2.0, "in (1, 2]")

    def _phi(self, out, t):
        return (out - t).abs().pow(self.p)

    def _dphi(self, out, t):
        r = out - t
        return self.p * r.sign() * r.abs().pow(self.p - 1.0)


class L1(Loss):
    """|r| summed over outputs: convex but not differentiable at r = 0 (docs/theory.md §8)."""

    name, smooth = "l1", False

    def _phi(self, out, t):
        return (out - t).abs()

    def _dphi(self, out, t):
        return (out - t).sign()  # a subgradient (0 at the kink)


class Poisson(Loss):
    """Poisson negative log-likelihood exp(o) − y·o with counts y ≥ 0 as targets."""

    name = "poisson"

    def _canonical(self, Y, d_out):
        Y = super()._canonical(Y, d_out)
        if (Y < 0).any():
            i = int((Y < 0).any(-1).nonzero()[0, 0])
            raise LossError(f"loss=poisson needs counts Y >= 0: sample {i} has a negative value")
        return Y

    def _phi(self, out, t):
        # t log t - t makes phi >= 0 with phi = 0 at out = log t (the per-sample deviance / 2);
        # xlogy gives 0 log 0 = 0 for zero counts
        return torch.exp(out) - t * out + torch.xlogy(t, t) - t

    def _dphi(self, out, t):
        return torch.exp(out) - t


class CrossEntropy(Loss):
    """Softmax cross-entropy logsumexp(o) − Σ_k t_k o_k, targets class indices or one-hot rows."""

    name = "cross_entropy"

    def _canonical(self, Y, d_out):
        if Y.ndim == 2 and Y.shape[1] > 1:
            if not ((Y == 0) | (Y == 1)).all() or not (Y.sum(-1) == 1).all():
                i = int((~(((Y == 0) | (Y == 1)).all(-1) & (Y.sum(-1) == 1))).nonzero()[0, 0])
                raise LossError(f"loss=cross_entropy needs class targets (indices (m,) or one-hot rows): Y row {i} is "
                                f"not one-hot")
            return Y
        c = Y.reshape(-1)
        if (c != c.round()).any():
            i = int((c != c.round()).nonzero()[0, 0])
            raise LossError(f"loss=cross_entropy needs class targets: Y has non-integer values (sample {i}: "
                            f"{float(c[i]):g})")
        n = int(c.max()) + 1 if d_out is None else d_out  # class indices need the number of classes
        if (c < 0).any() or (c >= n).any():
            i = int(((c < 0) | (c >= n)).nonzero()[0, 0])
            raise LossError(f"loss=cross_entropy: class index {int(c[i])} (sample {i}) out of range [0, {n - 1}]"
                            f" for d_out={n}")
        return torch.nn.functional.one_hot(c.long(), n).to(Y.dtype)

    def value(self, out, targets):
        return (torch.logsumexp(out, -1) - (targets * out).sum(-1)).mean(-1)

    def grad_out(self, out, targets):
        return (torch.softmax(out, -1) - targets) / out.shape[-2]


class Logistic(Loss):
    """Binary logistic loss log(1 + exp(−y·o)) per output, targets ±1 (or 0/1)."""

    name = "logistic"

    def _canonical(self, Y, d_out):
        if Y.ndim == 2 and Y.shape[1] != 1:
            raise LossError(f"loss=logistic is binary: needs Y of shape (m,) or (m, 1) and d_out = 1, got "
                            f"{tuple(Y.shape)}")
        y = Y.reshape(-1, 1)
        pm = ((y == 1) | (y == -1)).all()
        zo = ((y == 0) | (y == 1)).all()
        if not (pm or zo):
            odd = ~((y == 1) | (y == -1) | (y == 0))
            i = int(odd.nonzero()[0, 0]) if odd.any() else int((y == 0).nonzero()[0, 0])
            raise LossError(f"loss=logistic needs binary targets: Y must be all +-1 or all 0/1 (sample {i}: "
                            f"{float(y[i, 0]):g})")
        return y if pm else 2.0 * y - 1.0

    def _phi(self, out, t):
        return torch.nn.functional.softplus(-t * out)

    def _dphi(self, out, t):
        return -t * torch.sigmoid(-t * out)


_CLASSES = {c.name: c for c in (Square, CrossEntropy, Logistic, Huber, PseudoHuber, Lp, Poisson, L1)}
LOSSES: tuple[str, ...] = tuple(_CLASSES)


def make_loss(name: str, **params) -> Loss:
    """The loss `name` with its parameters (delta for huber/pseudo_huber, p for lp).

    Raises:
        LossError: unknown name (listing LOSSES), unknown parameter or out-of-range value.
    """
    if name not in _CLASSES:
        raise LossError(f"loss={name!r} is unknown; allowed: {', '.join(LOSSES)}")
    cls = _CLASSES[name]
    extra = sorted(set(params) - set(cls.params))
    if extra:
        raise LossError(f"loss={name} has no parameter {extra[0]!r}; allowed: "
                        f"{', '.join(cls.params) or '(none)'}")
    return cls(**params)


def product_value_grad(loss: Loss, A: torch.Tensor, X: torch.Tensor, targets: torch.Tensor,
                       product_ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """ell(A) = loss(X A^T, T) + mu ||A||_F^2 and its gradient in A (the product-space objective).

    Args:
        A: products (..., d_out, d_in); X: inputs (m, d_in), samples as rows; targets: canonical.
        product_ridge: mu >= 0 (inside the theorem: a convex function of the product).

    Returns:
        (value (...,), grad (..., d_out, d_in)).
    """
    out = X @ A.transpose(-1, -2)
    v = loss.value(out, targets)
    g = loss.grad_out(out, targets).transpose(-1, -2) @ X
    if product_ridge:
        v = v + product_ridge * A.pow(2).sum((-1, -2))
        g = g + 2.0 * product_ridge * A
    return v, g
