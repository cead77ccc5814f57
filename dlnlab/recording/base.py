"""Recording hooks: the public interface between the training loop and everything it records.

A hook is any object with a `cadence` (or None: the trainer's record cadence) and three methods:

    on_start(trainer)          once, before step 0
    on_record(trainer, rec)    at every step its cadence makes due (step 0 and the last step too)
    on_end(trainer, status)    once, whatever ended the run (finished, diverged, interrupted, failed)

Small networks' records are handed over a few at a time (`RecordSettings.batch`), in step order:
`on_records(trainer, recs)` calls `on_record` for each unless a hook batches them itself; a hook
that reads the trainer's live state at a record (a checkpoint) says so with `immediate(rec)`. Hooks
that declare `background = True` may run on the trainer's record thread, beside the training loop
(`dlnlab.recording.dispatch`): they read the record, never the trainer's live state.

A hook that holds state across records (counters, first passages...) also gives `state_dict()` and
`load_state_dict(state)`, so that a run resumed from a checkpoint goes on bitwise like one that was
never stopped; `on_start` sees `trainer.resumed_from` (None, or the step resumed from).

`rec` is a `Record`: the step, the detached weights [W_1..W_H] (each (E, d_h, d_{h-1})), the mask of
members still training, lr and lambda, and `rec.metrics`, a dict of per-member columns that the hooks
fill in order (the metrics hook first, sinks such as the run table and TensorBoard last), so a hook
of your own placed before the sinks gets its columns written:

    class TraceNorm(Hook):
        def on_record(self, trainer, rec):
            rec.metrics["trace"] = torch.diagonal(rec.weights[0], dim1=-2, dim2=-1).sum(-1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


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
        """The run's last step (always due), set by the trainer at the start."""
        return self._last

    @last.setter
    def last(self, value):
        """Set the last step; the log-spaced steps run up to it."""
        self._last = value
        if value is not None and self.log_spaced:
            self._log = {min(value, int(round(10 ** (k / self.log_spaced))))
                         for k in range(int(math.ceil(math.log10(max(value, 1)) * self.log_spaced)) + 1)}

    def due(self, step: int) -> bool:
        """Whether a record is due at `step`."""
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
class Spectra:
    """What the metrics hook publishes on each record (docs/columns.md, "Ranks"): every partial
    product W_j ... W_i in float64, its singular values and numerical rank, ||theta||^2, the
    balancedness, and which members are finite. Other hooks read these instead of recomputing."""
    products: dict          # (j, i) -> (E, d_j, d_{i-1})
    singular_values: dict   # (j, i) -> (E, k) descending; NaN rows for non-finite members
    ranks: dict             # (j, i) -> (E,) float64 (NaN for non-finite members)
    theta_sq: torch.Tensor  # (E,)
    balances: list          # h = 1..H-1 -> (E,)
    finite: torch.Tensor    # (E,) bool: the member's products are finite


    @staticmethod
    def stack(parts: list) -> "Spectra":
        """The spectra of several records as one stack of members, record by record."""
        cat = torch.cat
        first = parts[0]
        return Spectra(products={k: cat([p.products[k] for p in parts]) for k in first.products},
                       singular_values={k: cat([p.singular_values[k] for p in parts]) for k in first.singular_values},
                       ranks={k: cat([p.ranks[k] for p in parts]) for k in first.ranks},
                       theta_sq=cat([p.theta_sq for p in parts]),
                       balances=[cat([p.balances[h] for p in parts]) for h in range(len(first.balances))],
                       finite=cat([p.finite for p in parts]))

    def rows(self, sl: slice) -> "Spectra":
        """The members `sl` of a stack (one record's)."""
        return Spectra(products={k: v[sl] for k, v in self.products.items()},
                       singular_values={k: v[sl] for k, v in self.singular_values.items()},
                       ranks={k: v[sl] for k, v in self.ranks.items()}, theta_sq=self.theta_sq[sl],
                       balances=[b[sl] for b in self.balances], finite=self.finite[sl])


def nth_due(rec: Record, n: int, every: int) -> bool:
    """Whether a hook that acts on every `every`-th record it sees (the 1st, the (every+1)-th, ...;
    0: none on the way) and on the last one acts on `rec`, its n-th record (1-based)."""
    return rec.final or bool(every and (n - 1) % every == 0)


def stack_weights(recs: list) -> list:
    """The records' weights as one stack of members, record by record: member k of the n-th record
    is row n * E + k (`record_rows(n, E)`). Every per-member computation gives the same numbers on
    the stack as on each record (batched CPU kernels work matrix by matrix)."""
    return [torch.cat([r.weights[h] for r in recs]) for h in range(len(recs[0].weights))]


def record_rows(n: int, E: int) -> slice:
    """The rows of the n-th record's members in a stack of records of E members each."""
    return slice(n * E, (n + 1) * E)


def split_columns(columns: dict, recs: list) -> None:
    """Hand each record its rows of per-member columns computed on a stack (tensors or lists)."""
    E = recs[0].active.shape[0]
    for n, rec in enumerate(recs):
        sl = record_rows(n, E)
        for key, v in columns.items():
            rec.metrics[key] = v[sl]


@dataclass
class Record:
    """One checkpoint as the hooks see it. Hooks communicate only through its declared fields:
    producers (metrics, classifier, tracker) fill `metrics`, `spectra`, `scalars` and `texts`;
    sinks (table, TensorBoard, progress, checkpoints) read them."""
    step: int
    weights: list           # [W_1..W_H], each (E, d_h, d_{h-1}), detached
    active: torch.Tensor    # (E,) bool: members still training
    lr: float
    ridge: float            # lambda of this step
    final: bool = False
    checkpoint: bool = False  # a resumable checkpoint is taken at this record: sinks flush first
    loop_state: dict | None = None  # the trainer's own state at this step (`Trainer.state`), copied
                                    # for a checkpoint that a record thread writes later
    metrics: dict = field(default_factory=dict)  # column -> (E,) or (E, k) tensor, or E strings
    spectra: Spectra | None = None               # set by the metrics hook
    scalars: dict = field(default_factory=dict)  # run-level TensorBoard tag -> float
    texts: dict = field(default_factory=dict)    # TensorBoard text tag -> markdown


class Hook:
    """Base class with no-op methods; subclass and override what you need.

    Declared data: `tb_tags` maps the per-member columns a hook writes into `rec.metrics` to the
    TensorBoard tags they are charted under, `tb_descriptions` maps columns to the one-line
    descriptions TensorBoard shows with those charts; `tb_histograms()` gives histograms and
    `tb_end_texts()` markdown texts to write at the end of the run (the sink asks for both in its own
    `on_end`, which runs after the producers' `on_end`, so a producer may prepare them there). The
    builder hands the producers to the TensorBoard sink, which reads these."""

    cadence: Cadence | None = None
    tb_tags: dict = {}
    tb_descriptions: dict = {}
    # True: on_record(s) may run on the record thread, while the loop trains on (the hook reads only
    # the record and the task, and holds nothing bound to the main thread, such as a GUI)
    background: bool = False

    def on_start(self, trainer) -> None:
        """Once, before step 0 (or before the resumed step)."""
        pass

    def on_record(self, trainer, rec: Record) -> None:
        """At every step the hook's cadence makes due: compute, store or show from `rec`."""
        pass

    def on_end(self, trainer, status: str) -> None:
        """Once, whatever ended the run (`status`: finished, diverged, interrupted, failed)."""
        pass

    def on_records(self, trainer, recs: list) -> None:
        """Several records at once, in step order (the trainer hands small networks' records over in
        batches: `RecordSettings.batch`). A hook whose work is batched over members overrides this
        and treats the records as one stack of members (`stack_weights`, `Spectra.stack`)."""
        for rec in recs:
            self.on_record(trainer, rec)

    def immediate(self, rec: Record) -> bool:
        """True when `rec` must be handled at its own step, because the hook then reads the trainer's
        live state (a checkpoint's optimizer and sampler, unless `rec.loop_state` carries them); the
        trainer then hands over at once, on its own thread, the records that were waiting and this one."""
        return False

    def tb_histograms(self) -> dict:
        """{tag: 1-D array} to write as TensorBoard histograms at the end of the run."""
        return {}

    def tb_end_texts(self) -> dict:
        """{tag: markdown} to write as TensorBoard texts at the end of the run (at its last step)."""
        return {}

    def state_dict(self) -> dict | None:
        """What a resumed run needs to go on exactly as this one would (None: nothing). Saved in every
        checkpoint under the hook's class name; only tensors, numbers, strings, lists, tuples and
        dicts (`torch.load(weights_only=True)`)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` when a run resumes: called after `on_start`, before the first step
        (`trainer.resumed_from` is then the checkpoint's step)."""


def product_key(j: int, i: int) -> str:
    """Column suffix of the partial product W_j ... W_i."""
    return f"{j}_{i}"


