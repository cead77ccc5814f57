"""The weights near each plateau visit's midpoint, kept while the visit lasts (docs/theory.md §6).

The staircase reads a visit's `lam_min`, `lam_max` at its record nearest the midpoint that has them
(`dlnlab.recording.staircase`), and the trajectory hook computes them only every
`classify.curvature_every` records: a visit shorter than that cadence would have none. A visit is
known only once it ends, so `PlateauVisits` follows each member's visit as the records come, with
the same rule as the staircase (`which_plateau`, `StaircaseTolerances`), and keeps copies of the
weights of records near the running midpoint: position (n - 1) // 2 of a visit of n records only
moves forward, so a copy behind it is dropped as soon as a later one is no farther from it. At most
`slots` copies per member, spread over the second half of the visit so far: up to 2 slots - 1
records every record is kept (the kept record is the midpoint itself); beyond, the copies are
thinned to every 2nd, 4th... record, and the kept record is within n / (2 (slots - 1)) records of
the midpoint of a visit of n records (one or two records on a long plateau of the default run).
When the visit ends, `end` hands back the kept record nearest the midpoint (position, row, weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dlnlab.recording.staircase import StaircaseTolerances, which_plateau

__all__ = ["MIDPOINT_SLOTS", "Visit", "PlateauVisits"]

# copies of a member's weights kept per visit: exact midpoints for visits up to 31 records, within
# 1/30 of the visit beyond; for a 16-member ensemble 256 copies of one member's weights, the size of
# 16 records of the whole ensemble (a record batch holds as many)
MIDPOINT_SLOTS = 16


@dataclass
class Visit:
    """One member's plateau visit so far: its plateau index, the rows (the hook's row numbers) of its
    records, and the kept (position, weights) pairs at stride `stride`."""
    plateau: int
    rows: list = field(default_factory=list)
    kept: list = field(default_factory=list)   # [(position in the visit, [W_1..W_H])]
    stride: int = 1

    def nearest(self) -> tuple[int, list]:
        """The kept (position, weights) nearest the midpoint (the earlier one on a tie, as the staircase)."""
        mid = (len(self.rows) - 1) // 2
        return min(self.kept, key=lambda e: (abs(e[0] - mid), e[0]))


class PlateauVisits:
    """Per member, the current plateau visit and the weights kept near its midpoint (see the module).

    Args:
        values: the plateau values in the loss's units (the staircase's `theory_value`).
        members: follow the first `members` members only.
        tol: when a record is on a plateau (the staircase's rule).
        slots: copies of the weights kept per member and visit.
    """

    def __init__(self, values, members: int, tol: StaircaseTolerances = StaircaseTolerances(),
                 slots: int = MIDPOINT_SLOTS):
        self.values = np.asarray(values, dtype=float)
        self.members, self.tol, self.slots = int(members), tol, max(2, int(slots))
        self.open: dict[int, Visit] = {}

    def observe(self, rows: list, loss, weights: list) -> list:
        """One record: `rows[k]` the hook's row of member k, `loss` (E,) in the values' units, `weights`
        [W_1..W_H] (E, d_h, d_{h-1}). Returns the visits this record ended, as (member, Visit)."""
        E = min(len(rows), self.members)
        which = which_plateau(np.asarray(loss, dtype=float)[:E], self.values, self.tol)
        ended = []
        for k in range(E):
            v = self.open.get(k)
            if v is not None and v.plateau != which[k]:
                ended.append((k, self.open.pop(k)))
                v = None
            if which[k] < 0:
                continue
            if v is None:
                v = self.open[k] = Visit(int(which[k]))
            self._add(v, rows[k], [w[k] for w in weights])
        return ended

    def _add(self, v: Visit, row: int, ws: list) -> None:
        pos = len(v.rows)
        v.rows.append(row)
        if pos % v.stride == 0:
            v.kept.append((pos, [w.detach().clone() for w in ws]))
        mid = pos // 2   # the running midpoint never moves back: a copy behind a nearer one is done
        while len(v.kept) >= 2 and v.kept[1][0] <= mid:
            v.kept.pop(0)
        if len(v.kept) > self.slots:
            v.stride *= 2
            v.kept = [e for e in v.kept if e[0] % v.stride == 0]

    def end_all(self) -> list:
        """The visits still open (the run ended during them), as (member, Visit)."""
        ended = sorted(self.open.items())
        self.open = {}
        return ended

    def state_dict(self) -> dict:
        """The open visits, for a checkpoint (a resumed run keeps the same copies)."""
        return {k: {"plateau": v.plateau, "rows": list(v.rows), "stride": v.stride,
                    "pos": [p for p, _ in v.kept], "weights": [ws for _, ws in v.kept]}
                for k, v in self.open.items()}

    def load_state_dict(self, state: dict) -> None:
        """Take back what `state_dict` gave."""
        self.open = {int(k): Visit(int(s["plateau"]), list(s["rows"]),
                                   [(int(p), list(ws)) for p, ws in zip(s["pos"], s["weights"])], int(s["stride"]))
                     for k, s in state.items()}

