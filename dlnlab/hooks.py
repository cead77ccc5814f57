"""Recording hooks: the public interface between the training loop and everything it records.

A hook is any object with a `cadence` (or None: the trainer's record cadence) and three methods:

    on_start(trainer)          once, before step 0
    on_record(trainer, rec)    at every step its cadence makes due (step 0 and the last step too)
    on_end(trainer, status)    once, whatever ended the run (finished, diverged, interrupted, failed)

`rec` is a `Record`: the step, the detached weights [W_1..W_H] (each (E, d_h, d_{h-1})), the mask of
members still training, lr and lambda, and `rec.metrics`, a dict of per-member columns that the hooks
fill in order (the metrics hook first, sinks such as the run table and TensorBoard last), so a hook
of your own placed before the sinks gets its columns written:

    class TraceNorm(Hook):
        def on_record(self, trainer, rec):
            rec.metrics["trace"] = torch.diagonal(rec.weights[0], dim1=-2, dim2=-1).sum(-1)
"""
from __future__ import annotations

import copy
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from tensorboard.compat.proto.summary_pb2 import Summary

from dlnlab import spectra


class Cadence:
    """When a hook fires: every `every` steps (step 0 included; every=0: never on the way), plus
    `log_spaced` log-spaced steps per decade, plus the last step of the run (`last`, set by the
    trainer)."""

    def __init__(self, every: int = 100, log_spaced: int = 0, last: int | None = None):
        if every < 0:
            raise ValueError(f"cadence every={every}: allowed an integer >= 0")
        self.every, self.log_spaced, self._last = int(every), int(log_spaced), None
        self._log: set = set()
        self.last = last

    @property
    def last(self):
        return self._last

    @last.setter
    def last(self, value):
        self._last = value
        if value is not None and self.log_spaced:
            self._log = {min(value, int(round(10 ** (k / self.log_spaced))))
                         for k in range(int(math.ceil(math.log10(max(value, 1)) * self.log_spaced)) + 1)}

    def due(self, step: int) -> bool:
        return (self.every and step % self.every == 0) or step == self._last or step in self._log

    def next_due(self, step: int) -> int | None:
        """The first step after `step` at which the cadence fires (None: never again)."""
        cands = [s for s in self._log if s > step]
        if self.every:
            cands.append((step // self.every + 1) * self.every)
        if self._last is not None:  # nothing fires after the last step
            cands = [c for c in cands if c < self._last] + ([self._last] if self._last > step else [])
        return min(cands) if cands else None


@dataclass
class Record:
    step: int
    weights: list
    active: torch.Tensor
    lr: float
    ridge: float
    final: bool = False
    metrics: dict = field(default_factory=dict)  # name -> (E,) or (E, k) tensor, or E strings


class Hook:
    """Base class with no-op methods; subclass and override what you need."""

    cadence: Cadence | None = None

    def on_start(self, trainer) -> None:
        pass

    def on_record(self, trainer, rec: Record) -> None:
        pass

    def on_end(self, trainer, status: str) -> None:
        pass


def product_key(j: int, i: int) -> str:
    """Column suffix of the partial product W_j ... W_i."""
    return f"{j}_{i}"


class MetricsHook(Hook):
    """Per member: loss, regularised loss, gradient norm, ||theta||^2, and for every partial product
    W_j...W_i its singular values (`sv_j_i`) and numerical rank (`rank_j_i`), plus the
    balancedness `balance_h` = ||W_{h+1}^T W_{h+1} - W_h W_h^T||_F. `rank` is the end-to-end rank.

    A singular value counts towards a rank when s > rank_rtol * max(s_1, floor^(l/H)) for a product
    of l layers; `rank_floor` defaults to the task's scale (top singular value of its target).
    """

    def __init__(self, rank_rtol: float = 1e-3, rank_floor: float | None = None):
        if not 0 < rank_rtol < 1:
            raise ValueError(f"rank_rtol={rank_rtol}: allowed a tolerance in (0, 1)")
        self.rank_rtol, self.rank_floor = rank_rtol, rank_floor

    def on_start(self, trainer) -> None:
        if self.rank_floor is None:
            self.rank_floor = float(torch.linalg.matrix_norm(trainer.task.target(), ord=2))

    def on_record(self, trainer, rec: Record) -> None:
        weights = [w.detach() for w in rec.weights]
        H = len(weights)
        prods = spectra.partial_products([w.double() for w in weights])
        loss, grad_sq = _loss_and_grad_sq(trainer.task, weights, prods, rec.ridge)
        theta_sq = torch.cat([w.flatten(1) for w in weights], 1).double().pow(2).sum(1)
        m = rec.metrics
        m["loss"] = loss
        m["reg_loss"] = loss + rec.ridge * theta_sq.to(loss.dtype)
        m["paper_loss"] = loss * trainer.task.paper_scale
        m["grad_norm"] = torch.sqrt(grad_sq).to(loss.dtype)
        m["theta_sq"] = theta_sq.to(loss.dtype)
        m["lr"] = torch.full_like(m["loss"], rec.lr)
        m["ridge"] = torch.full_like(m["loss"], rec.ridge)
        # Finite layers can still overflow in a long product (a member about to diverge): its
        # spectra are NaN like a diverged member's, and the SVD never sees it.
        finite = torch.isfinite(torch.cat([p.flatten(1) for p in prods.values()], 1)).all(1)
        all_finite = bool(finite.all())
        weights = [w.double() for w in weights]
        if not all_finite:
            weights = [torch.where(finite.view(-1, 1, 1), w, 0.0) for w in weights]
            prods = spectra.partial_products(weights)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        # one batched svdvals and one rank comparison per shape of product, not per product
        for keys, s in spectra.grouped_singular_values(prods):
            floors = torch.tensor([self.rank_floor ** ((j - i + 1) / H) for j, i in keys], dtype=s.dtype)
            ranks = spectra.numerical_rank(s, self.rank_rtol, floors.view(-1, *[1] * (s.dim() - 1))).double()
            if not all_finite:
                ranks = torch.where(finite, ranks, nan)
                s = torch.where(finite.unsqueeze(-1), s, nan)
            for (j, i), rank, sv in zip(keys, ranks.unbind(0), s.unbind(0)):
                m[f"rank_{product_key(j, i)}"] = rank
                m[f"sv_{product_key(j, i)}"] = sv
        m["rank"] = m[f"rank_{product_key(H, 1)}"]
        for h, b in enumerate(spectra.balancedness(weights), start=1):
            m[f"balance_{h}"] = b if all_finite else torch.where(finite, b, nan)


def _loss_and_grad_sq(task, weights: list, prods: dict, ridge: float):
    """Per member: the task's loss and ||grad (loss + ridge ||theta||^2)||^2 over all layers.

    A task whose loss is a function of the end-to-end product P alone (`loss_of_product`, as the
    built-in ones) needs autograd only on the one-layer "network" [P]; the chain rule through the
    partial products, at hand for the spectra, gives dL/dW_h = P_{H..h+1}^T G P_{h-1..1}^T. Any
    other task gets autograd through the layers."""
    H = len(weights)
    if not getattr(task, "loss_of_product", False):
        ws = [w.clone().requires_grad_(True) for w in weights]
        with torch.enable_grad():
            loss = task.loss(ws)
            grads = torch.autograd.grad(loss.sum(), ws)
        return loss.detach(), sum((g + 2 * ridge * w).double().pow(2).sum((-1, -2))
                                  for g, w in zip(grads, weights))
    P = prods[(H, 1)].to(weights[0].dtype, copy=True).requires_grad_(True)  # not prods itself
    with torch.enable_grad():
        loss = task.loss([P])
        (G,) = torch.autograd.grad(loss.sum(), [P])
    G = G.double()
    grad_sq = 0.0
    for h in range(1, H + 1):
        g = G if h == H else prods[(H, h + 1)].transpose(-1, -2) @ G
        if h > 1:
            g = g @ prods[(h - 1, 1)].transpose(-1, -2)
        if ridge:
            g = g + 2 * ridge * weights[h - 1].double()
        grad_sq = grad_sq + g.pow(2).sum((-1, -2))
    return loss.detach(), grad_sq


class TensorBoardHook(Hook):
    """Scalars for the losses, ranks, end-to-end singular values and balancedness, laid out with
    custom-scalar charts (all partial-product ranks on one chart, the end-to-end spectrum on one);
    the config as text at the start and hparams at the end, all in the run directory itself.

    Only every `every_records`-th record and the first `members` members are written: TensorBoard
    is for looking, the run table keeps everything.
    """

    def __init__(self, log_dir, members: int = 8, singular_values: int = 8, every_records: int = 1):
        self.log_dir, self.members, self.n_sv = str(log_dir), members, singular_values
        self.every_records, self._n, self.writer = every_records, 0, None
        self._last: dict = {}
        # metric column -> TensorBoard tag, for hooks that add their own curves (e.g. the classifier)
        self.extra: dict[str, str] = {}

    def _prefix(self, k: int, E: int) -> str:
        return "" if E == 1 else f"m{k}/"

    def on_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=self.log_dir)
        H, E = trainer.net.H, trainer.net.E
        layout = {}
        shown = range(min(E, self.members))
        for k in shown:
            p = self._prefix(k, E)
            layout[f"member {k}" if E > 1 else "dlnlab"] = {
                "losses": ["Multiline", [rf"{p}loss/.*"]],
                "ranks of all partial products W_j...W_i": ["Multiline", [rf"{p}rank/.*"]],
                "end-to-end singular values": ["Multiline", [rf"{p}sv/.*"]],
                "balancedness": ["Multiline", [rf"{p}balance/.*"]],
            }
        if E > 1:
            layout["ensemble"] = {
                "end-to-end rank, all members": ["Multiline", [rf"m\d+/rank/{H}_1"]],
                "loss, all members": ["Multiline", [r"m\d+/loss/train"]],
            }
        self.writer.add_custom_scalars(layout)
        if trainer.config:
            import yaml

            text = yaml.safe_dump(trainer.config, sort_keys=False)
            self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def on_record(self, trainer, rec: Record) -> None:
        m = rec.metrics
        if "loss" not in m:
            return
        self._n += 1
        if not (rec.final or (self._n - 1) % self.every_records == 0):
            return
        E, H = trainer.net.E, len(rec.weights)
        values = []
        for k in range(min(E, self.members)):
            if trainer.diverged_at[k] is not None and trainer.diverged_at[k] < rec.step:
                continue
            p = self._prefix(k, E)
            for key, tag in (("loss", "loss/train"), ("reg_loss", "loss/regularised"),
                             ("grad_norm", "grad_norm"), ("theta_sq", "theta_sq")):
                values.append((p + tag, m[key][k]))
            for key, v in m.items():
                if key.startswith(("rank_", "balance_")):
                    group, _, name = key.partition("_")
                    values.append((f"{p}{group}/{name}", v[k]))
                elif key in self.extra:  # columns other hooks registered for TensorBoard
                    values.append((p + self.extra[key], v[k]))
            for n, s in enumerate(m[f"sv_{product_key(H, 1)}"][k][: self.n_sv], start=1):
                values.append((f"{p}sv/{n}", s))
        # One event with many values costs far less than one add_scalar per tag.
        summary = Summary(value=[Summary.Value(tag=t, simple_value=float(v)) for t, v in values])
        self.writer._get_file_writer().add_summary(summary, rec.step)
        self._last = {key: m[key] for key in ("loss", "reg_loss", "grad_norm", "rank") if key in m}
        if rec.final:
            self.writer.flush()

    def on_end(self, trainer, status: str) -> None:
        if self.writer is None:
            return
        try:
            metrics = {f"final/{k}": _finite_mean(v) for k, v in self._last.items()}
            metrics["final/diverged_members"] = float(sum(d is not None for d in trainer.diverged_at))
            # One HParams session per run folder, written by the run's own writer (like
            # add_hparams(..., run_name=".")). The hparams a sweep varies are marked `differs`:
            # TensorBoard lists those first and shows them by default (it shows the first 5).
            from torch.utils.tensorboard.summary import hparams

            from dlnlab.runs import swept_keys_of

            hp = hparam_dict(trainer.config, status)
            exp, ssi, sei = hparams(hp, metrics)
            mark_differs(exp, swept_keys_of(self.log_dir), hp)
            writer = self.writer._get_file_writer()
            for summary in (exp, ssi, sei):
                writer.add_summary(summary)
            for k, v in metrics.items():
                self.writer.add_scalar(k, v)
        finally:
            self.writer.close()


def _finite_mean(v: torch.Tensor) -> float:
    """Mean over the members with a finite value (NaN when every member diverged)."""
    v = v.double()
    v = v[torch.isfinite(v)]
    return float(v.mean()) if v.numel() else float("nan")


def hparam_dict(config: dict, status: str) -> dict:
    """The scalar leaves of a nested config as {dotted.name: value} (what HParams can show)."""
    flat = {}

    def walk(d, prefix):
        for k, v in d.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, name + ".")
            elif isinstance(v, (bool, int, float, str)):
                flat[name] = v
            elif isinstance(v, (list, tuple)):
                flat[name] = str(list(v))
    walk(config or {}, "")
    flat["status"] = status
    return flat


def mark_differs(exp, keys, hp: dict) -> None:
    """Mark the hparams named by `keys` (config keys, or groups such as `optim` -> optim.name,
    `task` -> task.kind, `experiment` -> name) as `differs` in the experiment summary `exp`."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    names = set()
    for k in keys:
        for name in (k, f"{k}.name", f"{k}.kind", "name" if k == "experiment" else None):
            if name in hp:
                names.add(name)
                break
    if not names:
        return
    meta = exp.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(meta.content)
    for info in data.experiment.hparam_infos:
        if info.name in names:
            info.differs = True
    meta.content = data.SerializeToString()


def _atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class CheckpointHook(Hook):
    """Saves weights, optimizer state, step, RNG state, member status and the resolved config at its
    cadence and at the end (`last.pt`), each file written atomically and loadable with
    `torch.load(path, weights_only=True)`.

    It sees every record (the trainer's cadence) and writes `step_*.pt` at the records whose step
    is a multiple of `every` (0: only `last.pt`). `last.pt` holds the last good state of every
    member: a member whose weights or loss stopped being finite (diverged) is saved as it was at
    its last record with finite weights and loss (`good_step`, per member), so a diverged run leaves
    loadable, meaningful weights behind."""

    def __init__(self, directory, every: int = 0):
        if every < 0:
            raise ValueError(f"checkpoint every={every}: allowed an integer >= 0")
        self.dir = str(directory)
        self.every = int(every)
        self._good: list | None = None  # per layer (E, d_h, d_{h-1}): each member's last good weights
        self._good_step: torch.Tensor | None = None  # (E,) the step of those weights, -1: none yet

    def state(self, trainer, step: int, weights, good_step=None) -> dict:
        return {
            "step": step,
            "dims": list(trainer.net.dims),
            "weights": [w.detach().clone() for w in weights],
            "good_step": (good_step if good_step is not None
                          else torch.full((trainer.net.E,), step, dtype=torch.long)),
            "optimizer": trainer.optimizer.state_dict(),
            "sampler": trainer.sampler.state_dict() if trainer.sampler is not None else None,
            "seed": trainer.seed,
            "active": trainer.active.clone(),
            "diverged_at": [-1 if d is None else int(d) for d in trainer.diverged_at],
            "config": copy.deepcopy(trainer.config),
        }

    def on_start(self, trainer) -> None:
        os.makedirs(self.dir, exist_ok=True)

    def _remember(self, rec: Record) -> None:
        if "loss" in rec.metrics:  # NaN/inf layers or an overflowing product: the loss tells
            ok = torch.isfinite(rec.metrics["loss"])
        else:
            ok = torch.stack([torch.isfinite(w).flatten(1).all(1) for w in rec.weights]).all(0)
        self._ok = ok
        if self._good is None:
            self._good = [w.clone() for w in rec.weights]
            self._good_step = torch.where(ok, rec.step, -1)
        elif bool(ok.all()):  # the usual case: one plain copy per layer
            for g, w in zip(self._good, rec.weights):
                g.copy_(w)
            self._good_step.fill_(rec.step)
        elif bool(ok.any()):
            for g, w in zip(self._good, rec.weights):
                g[ok] = w[ok]
            self._good_step[ok] = rec.step

    def on_record(self, trainer, rec: Record) -> None:
        self._remember(rec)
        if self.every and rec.step % self.every == 0 and not rec.final:
            good = torch.where(self._ok, rec.step, -1)  # -1: that member's weights here are not good
            _atomic_save(self.state(trainer, rec.step, rec.weights, good),
                         os.path.join(self.dir, f"step_{rec.step:09d}.pt"))

    def on_end(self, trainer, status: str) -> None:
        if self._good is None:
            return
        have = self._good_step >= 0
        if not bool(have.any()):
            return
        weights = [torch.where(have.view(-1, 1, 1), g, w) for g, w in zip(self._good, trainer.weights)]
        step = int(self._good_step.max())
        _atomic_save(self.state(trainer, step, weights, self._good_step.clone()),
                     os.path.join(self.dir, "last.pt"))


class ProgressHook(Hook):
    """A one-line progress bar with loss and end-to-end rank on a terminal; silent otherwise."""

    def __init__(self, stream=None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled

    def on_record(self, trainer, rec: Record) -> None:
        if not self.enabled or "loss" not in rec.metrics:
            return
        frac = rec.step / max(trainer.steps, 1)
        bar = "#" * int(30 * frac)
        rank = rec.metrics["rank"].double().numpy()
        loss = rec.metrics["loss"].double().numpy()
        rank, loss = rank[np.isfinite(rank)], loss[np.isfinite(loss)]  # diverged members: NaN
        if rank.size:
            line = f"loss {np.median(loss):.4g}  rank {int(np.median(rank))}" if loss.size else \
                f"loss inf  rank {int(np.median(rank))}"
        else:
            line = "every member diverged"
        self.stream.write(f"\r[{bar:<30}] step {rec.step}/{trainer.steps}  {line}   ")
        self.stream.flush()

    def on_end(self, trainer, status: str) -> None:
        if self.enabled:
            self.stream.write(f"\n{status}\n")
            self.stream.flush()
