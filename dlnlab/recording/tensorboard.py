"""TensorBoard sink: scalars of the columns the hooks declare, a custom-scalar layout, the config and
hparams (docs/columns.md, "TensorBoard tags").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.scalar import metadata as scalar_metadata

from dlnlab.recording.base import Hook, Record, nth_due, product_key
from dlnlab.runfolder import swept_keys_of

# descriptions of the fixed tags (shown by TensorBoard next to a chart); hooks add theirs for the
# columns they declare (`tb_descriptions`); docs/columns.md lists them all
DESCRIPTIONS = {
    "loss/train": "training loss (lab units: mean over samples of the squared error, no ridge)",
    "loss/regularised": "loss + lambda * sum_h ||W_h||_F^2 (the objective)",
    "grad_norm": "norm of the full-batch gradient of the objective",
    "theta_sq": "sum_h ||W_h||_F^2",
    "sv": "singular values of the end-to-end product W_H...W_1, largest first",
    "rank/end_to_end": "numerical rank of the end-to-end product W_H...W_1 (rank/H_1 under a depth-free tag)",
    "rank": "numerical rank of the partial product W_j...W_i (rank/j_i)",
    "sv_top": "largest singular value of the partial product W_j...W_i (sv_top/j_i)",
    "balance": "||W_{h+1}^T W_{h+1} - W_h W_h^T||_F (balance/h)",
    "ensemble/loss": "quantiles over all members of the training loss (q25, median q50, q75)",
    "ensemble/rank": "quantiles over all members of the end-to-end rank (lower quantiles: integers)",
}
QUANTILES = (("q25", 0.25), ("q50", 0.5), ("q75", 0.75))


def describe(tag: str, extra: dict) -> str:
    """The description of a tag (member prefix m<k>/ and indices dropped), or ""."""
    base = tag.split("/", 1)[1] if tag.startswith("m") and tag.split("/", 1)[0][1:].isdigit() else tag
    for key in (base, base.rsplit("_", 1)[0], base.split("/", 1)[0]):
        if key in extra:
            return extra[key]
        if key in DESCRIPTIONS:
            return DESCRIPTIONS[key]
    return ""


class TensorBoardHook(Hook):
    """Scalars for the losses, ranks, end-to-end singular values and balancedness, laid out with
    custom-scalar charts (all partial-product ranks on one chart, the end-to-end spectrum on one);
    the config as text at the start and hparams at the end, all in the run directory itself.

    Only every `every_records`-th record and the first `members` members are written: TensorBoard
    is for looking, the run table keeps everything.
    """
    background = True

    def __init__(self, log_dir, members: int = 8, singular_values: int = 8, every_records: int = 1,
                 sources: Sequence[Hook] = ()):
        self.log_dir, self.members, self.n_sv = str(log_dir), members, singular_values
        self.every_records, self._n, self.writer = every_records, 0, None
        self._last: dict = {}
        # the hooks whose declared columns (tb_tags) and end-of-run histograms this sink writes
        self.sources = list(sources)
        self.tags: dict[str, str] = {k: v for h in self.sources for k, v in h.tb_tags.items()}
        # tag -> description, declared by the hooks for their tags
        self.descriptions: dict[str, str] = {self.tags.get(k, k): v for h in self.sources
                                             for k, v in getattr(h, "tb_descriptions", {}).items()}
        self._described: set = set()

    def _prefix(self, k: int, E: int) -> str:
        return "" if E == 1 else f"m{k}/"

    def on_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        resumed = getattr(trainer, "resumed_from", None)
        if resumed is not None:
            # TensorBoard drops the events of earlier files at steps >= purge_step: what the stopped
            # run wrote after its checkpoint; layout and config are there already
            self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=resumed + 1)
            return
        self.writer = SummaryWriter(log_dir=self.log_dir)
        E = trainer.net.E
        layout = {}
        shown = range(min(E, self.members))
        for k in shown:
            p = self._prefix(k, E)
            charts = {
                "losses": ["Multiline", [rf"{p}loss/.*"]],
                "ranks of all partial products W_j...W_i": ["Multiline", [rf"{p}rank/.*"]],
                "end-to-end singular values": ["Multiline", [rf"{p}sv/.*"]],
                "top singular value of every partial product W_j...W_i": ["Multiline", [rf"{p}sv_top/.*"]],
                "balancedness": ["Multiline", [rf"{p}balance/.*"]],
            }
            if "label_code" in self.tags.values():  # its legend in the chart's title
                charts[f"label_code: {self.descriptions.get('label_code', 'label')}"] = \
                    ["Multiline", [rf"{p}label_code$"]]
            layout[f"member {k}" if E > 1 else "dlnlab"] = charts
        if E > 1:
            layout["ensemble"] = {
                "loss over all members: median and quartiles": [
                    "Margin", ["ensemble/loss_q50", "ensemble/loss_q25", "ensemble/loss_q75"]],
                "end-to-end rank over all members: median and quartiles": [
                    "Margin", ["ensemble/rank_q50", "ensemble/rank_q25", "ensemble/rank_q75"]],
                "end-to-end rank, shown members": ["Multiline", [r"m\d+/rank/end_to_end$"]],
                "loss, shown members": ["Multiline", [r"m\d+/loss/train"]],
            }
        self.writer.add_custom_scalars(layout)
        if trainer.config:
            import yaml

            text = yaml.safe_dump(trainer.config, sort_keys=False)
            self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def state_dict(self) -> dict:
        return {"n": self._n, "last": dict(self._last), "described": sorted(self._described)}

    def load_state_dict(self, state: dict) -> None:
        self._n, self._last, self._described = int(state["n"]), dict(state["last"]), set(state["described"])

    def on_record(self, trainer, rec: Record) -> None:
        m = rec.metrics
        if "loss" not in m:
            return
        for tag, text in rec.texts.items():  # texts are news: written whatever the cadence
            self.writer.add_text(tag, text, rec.step)
        self._n += 1
        if not nth_due(rec, self._n, self.every_records):
            return
        E, H = trainer.net.E, len(rec.weights)
        shown = min(E, self.members)
        # the shown members' numbers as Python floats, one conversion per column (not per value)
        col = {key: (v if E <= shown else v[:shown]).tolist()
               for key, v in m.items() if isinstance(v, torch.Tensor)}
        e2e = col[f"sv_{product_key(H, 1)}"]
        values = []
        for k in range(shown):
            if trainer.diverged_at[k] is not None and trainer.diverged_at[k] < rec.step:
                continue
            p = self._prefix(k, E)
            for key, tag in (("loss", "loss/train"), ("reg_loss", "loss/regularised"),
                             ("grad_norm", "grad_norm"), ("theta_sq", "theta_sq")):
                values.append((p + tag, col[key][k]))
            values.append((p + "rank/end_to_end", col["rank"][k]))  # the same tag at every depth
            for key in m:
                if key.startswith(("rank_", "balance_")):
                    group, _, name = key.partition("_")
                    values.append((f"{p}{group}/{name}", col[key][k]))
                elif key.startswith("sv_"):  # the top singular value of every partial product
                    values.append((f"{p}sv_top/{key[3:]}", col[key][k][0]))
                elif key in self.tags:  # columns other hooks declared for TensorBoard
                    values.append((p + self.tags[key], col[key][k] if key in col else m[key][k]))
            for n, s in enumerate(e2e[k][: self.n_sv], start=1):
                values.append((f"{p}sv/{n}", s))
        if E > 1:
            values += ensemble_quantiles(m, rec.active)
        values += list(rec.scalars.items())
        # One event with many values costs far less than one add_scalar per tag.
        summary = Summary(value=[self._value(t, v) for t, v in values])
        self.writer.file_writer.add_summary(summary, rec.step)
        self._last = {key: m[key] for key in ("loss", "reg_loss", "grad_norm", "rank") if key in m}
        if rec.final or rec.checkpoint:
            self.writer.flush()

    def _value(self, tag: str, v) -> Summary.Value:
        """A scalar; the first of each tag carries its description (TensorBoard reads the first)."""
        if tag in self._described:
            return Summary.Value(tag=tag, simple_value=float(v))
        self._described.add(tag)
        text = describe(tag, self.descriptions)
        meta = scalar_metadata.create_summary_metadata(display_name=tag, description=text) if text else None
        return Summary.Value(tag=tag, simple_value=float(v), metadata=meta)

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


            hp = hparam_dict(trainer.config, status, getattr(trainer, "info", None))
            exp, ssi, sei = hparams(hp, metrics)
            mark_differs(exp, swept_keys_of(self.log_dir), hp)
            writer = self.writer.file_writer
            for summary in (exp, ssi, sei):
                writer.add_summary(summary)
            for k, v in metrics.items():
                self.writer.add_scalar(k, v)
            for h in self.sources:
                for tag, values in h.tb_histograms().items():
                    self.writer.add_histogram(tag, values, global_step=trainer.step)
                for tag, text in h.tb_end_texts().items():
                    self.writer.add_text(tag, text, global_step=trainer.step)
        finally:
            self.writer.close()


def ensemble_quantiles(m: dict, active=None) -> list[tuple[str, float]]:
    """(tag, value) of the quartiles of the loss and the end-to-end rank over all members that are
    still training (active, with a finite loss); ranks use lower quantiles, so they stay integers."""
    if "loss" not in m:
        return []
    ok = torch.isfinite(m["loss"].double())
    if active is not None:
        ok &= torch.as_tensor(active, dtype=torch.bool)
    out = []
    for key in ("loss", "rank"):
        if key not in m or not bool(ok.any()):
            continue
        v = m[key].double()[ok].numpy()
        method = "lower" if key == "rank" else "linear"
        for name, q in QUANTILES:
            out.append((f"ensemble/{key}_{name}", float(np.quantile(v, q, method=method))))
    return out


def _finite_mean(v: torch.Tensor) -> float:
    """Mean over the members with a finite value (NaN when every member diverged)."""
    v = v.double()
    v = v[torch.isfinite(v)]
    return float(v.mean()) if v.numel() else float("nan")


def hparam_dict(config: dict, status: str, info: dict | None = None) -> dict:
    """The scalar leaves of a nested config as {dotted.name: value} (what HParams can show), plus the
    run's `info` (width_condition, bottlenecks...; lists as strings)."""
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
    walk(info or {}, "")
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

