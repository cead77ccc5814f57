"""One row per run (or member): final values, jumps and first passages.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dlnlab.analysis.folders import RUN_COLUMNS
from dlnlab.analysis.runs import list_runs, load_runs, run_events
from dlnlab.experiments.config import Config

# ---------------------------------------------------------------------------------------------
# Summaries

def config_columns(df: pd.DataFrame) -> list[str]:
    """The columns of `df` that hold config values (the dotted names of dlnlab.experiments.config.Config)."""
    import dataclasses


    groups, scalars = set(), set()
    for f in dataclasses.fields(Config):  # groups are typed by a *Config dataclass (task: Any)
        is_group = str(getattr(f.type, "__name__", f.type)).endswith("Config") or str(f.type) == "Any"
        (groups if is_group else scalars).add(f.name)
    return [c for c in df.columns
            if c in scalars or ("." in c and c.split(".", 1)[0] in groups)]


def _mode(s: pd.Series):
    s = s.dropna()
    if s.empty:
        return np.nan
    return s.value_counts(sort=True).index[0]


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last recorded row of every (run, member)."""
    if df.empty:
        return df
    idx = df.groupby(["run", "member"], observed=True, sort=False)["step"].idxmax()
    return df.loc[np.sort(idx.to_numpy())]


def last_records(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's and each member's final record: one row per (run, member) of a run table from
    `load_runs`, at that member's own last step.

        last_records(load_runs("runs")).groupby("optim.lr")[["loss", "rank"]].mean()

    Unlike `df[df.step == df.step.max()]`, runs of different lengths (a GD run next to a longer
    SGD run, a run stopped early) all keep their final row."""
    return final_rows(df)


def _jump_columns(events: pd.DataFrame, keys: pd.DataFrame, tracked: set | None,
                  rank_type: str | None) -> pd.DataFrame:
    """For every (run, member) row of `keys`, from the events of `rank_type`: jumped, jumps,
    first_jump, first_passage_<r>, increases (as the tracker's summary counts them)."""
    ev = events
    if rank_type is not None and "rank_type" in ev.columns:
        ev = ev[ev["rank_type"].astype(object) == rank_type]
    ev = ev.assign(run=ev["run"].astype(str))
    kind = ev["kind"].astype(object)
    ent, inc = ev[kind == "entered"].sort_values("step", kind="stable"), ev[kind == "increase"]
    out = pd.DataFrame({"run": keys["run"].astype(str).to_numpy(), "member": keys["member"].to_numpy()})
    idx = pd.MultiIndex.from_frame(out)
    g = ent.groupby(["run", "member"])
    cols = {"jumps": g.size().reindex(idx).fillna(0).to_numpy(dtype=float)}
    cols["jumped"] = (cols["jumps"] > 0).astype(float)
    cols["first_jump"] = g["step"].min().reindex(idx).to_numpy(dtype=float)
    # first passage into B_r (rank <= r): the first "entered" event down to r or below, for the
    # members that started above r (the start rank is where the first event came from)
    start = g["from_rank"].first()
    for r in range(int(start.max()) if len(start) else 0):
        below = ent[ent["to_rank"] <= r].groupby(["run", "member"])["step"].min()
        below = below[start.reindex(below.index) > r]
        cols[f"first_passage_{r}"] = below.reindex(idx).to_numpy(dtype=float)
    cols["increases"] = inc.groupby(["run", "member"]).size().reindex(idx).fillna(0).to_numpy(dtype=float)
    res = pd.DataFrame(cols)
    if tracked is not None:  # runs without an events file: unknown, not zero
        res.loc[~out["run"].isin(tracked).to_numpy(), :] = np.nan
    return res


def summarize(df: pd.DataFrame, events=None, per: str = "run", metrics=("loss", "rank", "label"),
              rank_type: str | None = "layer") -> pd.DataFrame:
    """One row per run of a run table (from `load_runs`).

    Per (run, member) first: `final_step` (its last recorded step), `final_<metric>` for each of
    `metrics` present (loss, end-to-end rank, the classifier's label), `diverged` (1 if the member
    diverged), and from the rank tracker's events of `rank_type` ("layer", the default, as in the
    tracker's headline; "end_to_end"; None: both): `jumped` (1 if the rank fell below its start:
    an "entered" event), `jumps` (how many such drops), `first_jump` (the step of the first),
    `first_passage_<r>` (the first step at rank <= r, for members that started above r) and
    `increases` (rank increases; none expected under GD/SGD for H >= 3); NaN for runs the tracker
    did not see. per="member" returns those rows.

    per="run" (default) aggregates the members of a run: `members`, the median final loss and
    rank, the most frequent final label, `diverged` members, `jumped` members, total `jumps` and
    `increases`, and the median `first_jump` / `first_passage_<r>` over the members that got
    there; then `status`, `wall_time`, `overrides` and the config columns.

    events: None: read <run>/events.parquet of the runs in `df` where present (runs without one
    get NaN jump columns); a DataFrame from `load_events`; False: no jump columns.
    """
    if per not in ("run", "member"):
        raise ValueError(f"per={per!r}: allowed 'run' | 'member'")
    last = final_rows(df)
    cfg = config_columns(df)
    run_level = [c for c in (*RUN_COLUMNS, *cfg) if c in df.columns]
    out = pd.DataFrame({"run": last["run"].astype(str).to_numpy(), "member": last["member"].to_numpy(),
                        "final_step": last["step"].to_numpy()})
    for m in metrics:
        if m in last.columns:
            col = last[m]
            out[f"final_{m}"] = col.to_numpy() if col.dtype.kind in "biuf" else col.astype(object).to_numpy()
    if "member_status" in last.columns:
        out["diverged"] = (last["member_status"].astype(object) == "diverged").to_numpy().astype(int)
    tracked = None
    if events is None:
        # no tracked run at all: the jump columns are still there, NaN (unknown, not zero), so
        # code written for a tracked sweep runs on any sweep
        events, tracked = run_events(out["run"].unique())
    if isinstance(events, pd.DataFrame):
        out = pd.concat([out, _jump_columns(events, out, tracked, rank_type)], axis=1)
    run_info = last.groupby("run", observed=True, sort=False)[run_level].first() if run_level else None
    if per == "member":
        if run_info is not None:
            info = run_info.reset_index()
            info["run"] = info["run"].astype(str)
            out = out.merge(info, on="run", how="left")
        return out
    agg = {"members": ("member", "size"), "final_step": ("final_step", "max")}
    total = lambda s: s.sum(min_count=1)  # noqa: E731 - NaN (not 0) for runs without events
    for name in out.columns:
        if name in ("run", "member", "final_step"):
            continue
        if name in ("diverged", "jumped", "jumps", "increases"):
            agg[name] = (name, total)
        elif name == "first_jump" or name.startswith("first_passage_"):
            agg[name] = (name, "median")
        elif name.startswith("final_"):
            agg[name] = (name, "median" if pd.api.types.is_numeric_dtype(out[name]) else _mode)
    res = out.groupby("run", sort=False).agg(**agg).reset_index()
    if run_info is not None:
        info = run_info.reset_index()
        info["run"] = info["run"].astype(str)
        res = res.merge(info, on="run", how="left")
    return res


def sweep_table(root) -> pd.DataFrame:
    """One row per job of a sweep folder, in job order: `job` (the job number, the leading number of
    a run folder `<num>_<overrides>`; else the folder's path relative to `root`), `overrides`, `status`, `members`, `final_loss` (the median over the members of each
    member's last recorded loss; NaN when nothing was recorded)."""
    root = Path(root)
    runs = list_runs(root, config=False)
    if runs.empty:
        return pd.DataFrame(columns=["job", "overrides", "status", "members", "final_loss"])
    df = load_runs(root, columns=["loss"], config=False)
    last = final_rows(df) if not df.empty else df
    g = last.assign(run=last["run"].astype(str)).groupby("run", sort=False)["loss"] if not df.empty else None
    med = g.median() if g is not None else pd.Series(dtype=float)
    size = g.size() if g is not None else pd.Series(dtype=int)
    paths = runs["run"].astype(str)
    return pd.DataFrame({
        "job": [_job(root, p) for p in paths],
        "overrides": runs["overrides"].astype(object).fillna("").to_numpy(),
        "status": runs["status"].astype(str).to_numpy(),
        "members": size.reindex(paths).fillna(0).astype(int).to_numpy(),
        "final_loss": med.reindex(paths).to_numpy(dtype=float),
    })


def _job(root: Path, path: str) -> str:
    rel = str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path
    num, sep, _ = rel.partition("_")
    return num if num.isdigit() and "/" not in rel else rel
