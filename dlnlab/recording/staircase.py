"""The staircase of a run: one row per plateau visited, per member (docs/theory.md §9).

    from dlnlab.recording.staircase import staircase, StaircaseTolerances
    rows = staircase(table, plateau_values)      # table: the run table (step, member, loss, ...)

Units: the run table's `loss` is in LAB units (mean over samples); `plateau_values` must be given in
the same units (paper value / task.paper_scale; `paper_scale=` divides them here for convenience).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from dlnlab.theory.square.data import format_S

__all__ = ["StaircaseTolerances", "staircase", "which_plateau", "plateau_table", "format_staircase", "staircase_markdown"]

COLUMNS = ["member", "S", "r", "start_step", "end_step", "steps", "records", "loss", "theory_value",
           "near_label", "near_dist", "lam_min", "lam_max", "lam_step"]


@dataclass(frozen=True)
class StaircaseTolerances:
    """When a record is "on a plateau".

    rtol: |loss - v| <= rtol * max(v, floor) puts a record on the plateau of value v.
    zero_floor_frac: floor = zero_floor_frac * (smallest positive plateau value): the relative test
        needs a scale at the global minimum v = 0 (with the defaults, loss <= 1e-5 for the
        default teacher, whose smallest positive plateau is 1).
    min_records: a visit needs at least this many consecutive records.
    """
    rtol: float = 1e-3
    zero_floor_frac: float = 1e-2
    min_records: int = 1

    def __post_init__(self):
        if not (self.rtol > 0 and self.zero_floor_frac > 0 and self.min_records >= 1):
            raise ValueError("rtol > 0, zero_floor_frac > 0 and min_records >= 1 are required")


def plateau_table(plateau_values: Any, paper_scale: float = 1.0) -> pd.DataFrame:
    """Plateau values as a frame (S, r, value), from dlnlab.theory.square.critical.plateau_values (objects or its
    frame), a sequence of (S, value) pairs, or plain values (the r-th is S = {1..r}); values / paper_scale."""
    if isinstance(plateau_values, pd.DataFrame):
        rows = [(tuple(_parse_S(s)), float(v)) for s, v in zip(plateau_values["S"], plateau_values["value"])]
    else:
        rows = []
        for r, p in enumerate(plateau_values):
            if hasattr(p, "value"):
                rows.append((tuple(p.S), float(p.value)))
            elif isinstance(p, (tuple, list)) and len(p) == 2:
                rows.append((tuple(_parse_S(p[0])), float(p[1])))
            else:
                rows.append((tuple(range(1, r + 1)), float(p)))
    return pd.DataFrame({"S": [format_S(s) for s, _ in rows], "r": [len(s) for s, _ in rows],
                         "value": [v / paper_scale for _, v in rows]})


def _parse_S(s: Any) -> Sequence[int]:
    if isinstance(s, str):
        s = s.strip("{}")
        return [int(x) for x in s.split(",") if x.strip()]
    return [int(x) for x in s]


def which_plateau(loss: np.ndarray, values: np.ndarray, tol: StaircaseTolerances) -> np.ndarray:
    """Index of the plateau each loss lies on, -1 for none (the nearest one if several match)."""
    # the global minimum's value is 0 up to rounding (say 1e-13): not a scale for the floor
    pos = values[values > 1e-9 * max(float(values.max(initial=0.0)), 1e-300)]
    floor = tol.zero_floor_frac * (pos.min() if pos.size else 1.0)
    band = tol.rtol * np.maximum(values, floor)                  # (K,)
    dist = np.abs(loss[:, None] - values[None, :])               # (N, K)
    on = dist <= band[None, :]
    idx = np.where(on, dist, np.inf).argmin(1)
    return np.where(on.any(1), idx, -1)


def staircase(table: pd.DataFrame, plateau_values: Any, tol: StaircaseTolerances = StaircaseTolerances(),
              paper_scale: float = 1.0) -> pd.DataFrame:
    """One row per plateau visit per member.

    Args:
        table: run table with columns step, loss (lab units) and optionally member (default 0),
            near_label, near_dist (read at the visit's midpoint record; NaN/None if absent), lam_min,
            lam_max (at the visit's record nearest the midpoint that has lam_min).
        plateau_values: see `plateau_table` (in lab units, or paper units with `paper_scale`).
        tol: StaircaseTolerances.
        paper_scale: plateau values are divided by it (task.paper_scale for paper-unit values).

    Returns:
        DataFrame with COLUMNS: S ("{1,2}"), r, start_step / end_step (first and last record on the
        plateau), steps (end - start), records, loss (at the midpoint record), theory_value, and
        near_label, near_dist at the midpoint record; lam_min, lam_max at the record nearest it that
        has them and lam_step, that record's step (NaN if none has); in visit order per member.
    """
    pt = plateau_table(plateau_values, paper_scale)
    values = pt["value"].to_numpy(dtype=float)
    t = table if "member" in table.columns else table.assign(member=0)
    out = []
    for member, g in t.sort_values(["member", "step"]).groupby("member", sort=True):
        g = g.reset_index(drop=True)
        which = which_plateau(g["loss"].to_numpy(dtype=float), values, tol)
        start = 0
        for n in range(1, len(g) + 1):
            if n < len(g) and which[n] == which[start]:
                continue
            k, count = which[start], n - start
            if k >= 0 and count >= tol.min_records:
                mid = g.iloc[start + (count - 1) // 2]
                lam = _nearest_row(g, start, n, start + (count - 1) // 2, "lam_min")
                out.append({"member": member, "S": pt["S"][k], "r": int(pt["r"][k]),
                            "start_step": int(g["step"][start]), "end_step": int(g["step"][n - 1]),
                            "steps": int(g["step"][n - 1] - g["step"][start]), "records": count,
                            "loss": float(mid["loss"]), "theory_value": float(values[k]),
                            "near_label": mid.get("near_label"), "near_dist": _num(mid, "near_dist"),
                            "lam_min": _num(lam, "lam_min"), "lam_max": _num(lam, "lam_max"),
                            "lam_step": _num(lam, "step")})
            start = n
    return pd.DataFrame(out, columns=COLUMNS)


def _nearest_row(g: pd.DataFrame, lo: int, hi: int, mid: int, key: str) -> pd.Series:
    """The record of rows lo..hi-1 nearest to `mid` (the earlier on a tie) that has a number in `key` (a
    column computed every few records, as lam_min); an empty row if none does."""
    if key not in g.columns:
        return pd.Series(dtype=float)
    v = pd.to_numeric(g[key].iloc[lo:hi], errors="coerce").to_numpy(dtype=float)
    ok = np.flatnonzero(np.isfinite(v))
    return g.iloc[lo + ok[np.abs(ok + lo - mid).argmin()]] if ok.size else pd.Series(dtype=float)


def _num(row: pd.Series, key: str) -> float:
    v = row.get(key)
    return float(v) if v is not None and pd.notna(v) else float("nan")


def format_staircase(rows: pd.DataFrame, members: int = 4) -> str:
    """The staircase as text: the rows of the first `members` members, then (ensembles) a summary per
    plateau over members: how many visited it, and the median and range of its length in steps."""
    if rows.empty:
        return "staircase: no plateau visited"
    show = ["S", "start_step", "end_step", "steps", "loss", "theory_value", "near_label", "near_dist", "lam_min"]
    ids = sorted(rows["member"].unique())
    lines = []
    for m in ids[:members]:
        g = rows[rows.member == m][show]
        head = f"staircase, member {m}" if len(ids) > 1 else "staircase"
        lines += [head, g.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
    if len(ids) > 1:
        s = rows.groupby("S", sort=False).agg(members=("member", "nunique"), theory_value=("theory_value", "first"),
                                              steps_median=("steps", "median"), steps_min=("steps", "min"),
                                              steps_max=("steps", "max"))
        lines += [f"staircase over {len(ids)} members (steps on each plateau)",
                  s.to_string(float_format=lambda v: f"{v:.4g}")]
    return "\n".join(lines)


MARKDOWN_COLUMNS = ["S", "start_step", "end_step", "steps", "loss", "theory_value", "near_label", "near_dist",
                    "lam_min"]


def staircase_markdown(rows: pd.DataFrame, members: int = 8) -> str:
    """The staircase as a markdown table (TensorBoard's text plugin renders it): the rows of the
    first `members` members (a `member` column for ensembles), then for ensembles one row per plateau
    over all members (members that visited it, median / min / max of its length in steps)."""
    if rows.empty:
        return "no plateau visited"
    ids = sorted(rows["member"].unique())
    cols = (["member"] if len(ids) > 1 else []) + MARKDOWN_COLUMNS
    parts = ["One row per plateau visit (as in staircase.csv): steps in optimizer steps; loss and "
             "theory_value in lab units; near_dist unit-free; lam_min in lab units per weight² (docs/columns.md).",
             _md_table(rows[rows["member"].isin(ids[:members])], cols)]
    if len(ids) > members:
        parts.append(f"(members {ids[0]}..{ids[members - 1]} of {len(ids)} shown)")
    if len(ids) > 1:
        s = rows.groupby("S", sort=False).agg(members=("member", "nunique"), theory_value=("theory_value", "first"),
                                              steps_median=("steps", "median"), steps_min=("steps", "min"),
                                              steps_max=("steps", "max")).reset_index()
        parts += [f"**over {len(ids)} members** (steps on each plateau)", _md_table(s, list(s.columns))]
    return "\n\n".join(parts)


def _md_table(df: pd.DataFrame, cols: list) -> str:
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df[cols].itertuples(index=False)]
    return "\n".join(lines)
