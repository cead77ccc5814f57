"""Compare runs: tables grouped by config keys, curves per group, and the `dlnlab-compare` CLI.

    dlnlab-compare runs/multirun/2025-01-01/12-00-00_sweep --by optim.lr,task.noise --metric loss
    dlnlab-compare ROOT --by optim.lr --metric rank --plot rank.png --csv rank.csv

From Python, on a run table from `dlnlab.analysis.runs.load_runs`:

    df = load_runs(root)
    compare(df, by=["optim.lr"], metric="loss")      # mean, std, count of the final loss per lr
    curves(df, by=["optim.lr"], metric="rank")       # median and quartiles per lr and step

Statistics are across seeds and ensemble members: every (run, member) contributes one value, its
value at its last record (`at_step=None`) or at its last record at or before `at_step`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dlnlab.analysis.folders import RUN_COLUMNS
from dlnlab.analysis.summary import config_columns, final_rows

NON_METRICS = {"run", "step", "member", "member_status", *RUN_COLUMNS}


class CompareError(ValueError):
    """A user error of dlnlab-compare (unknown key or metric, no runs); the message says what."""


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The recorded columns of a run table (loss, rank, sv_4_1_1, label, ...)."""
    cfg = set(config_columns(df))
    return [c for c in df.columns if c not in NON_METRICS and c not in cfg]


def swept_keys(df: pd.DataFrame) -> list[str]:
    """The config keys whose value differs between runs, seeds excluded (`seed`, `*.seed`).

    When the runs carry their command-line overrides (column `overrides`), only the keys that some
    override sets: the phases of a jumps experiment differ in optim.name, jumps.phase, ... by
    construction, not because a sweep set them (falls back to all differing keys if none is left)."""
    cfg = [c for c in config_columns(df) if c != "seed" and not c.endswith(".seed") and c != "out_dir"]
    if not cfg:
        return []
    per_run = df.groupby("run", observed=True, sort=False)[cfg].first()
    per_run = per_run[per_run.notna().any(axis=1)]  # a run whose config.yaml was lost has no say
    differ = [c for c in cfg if per_run[c].astype(object).nunique(dropna=False) > 1]
    if "overrides" in df.columns:
        import re

        text = " ".join(map(str, df.groupby("run", observed=True, sort=False)["overrides"].first().dropna()))
        overridden = {m.group(1).lstrip("+~") for m in re.finditer(r"(?:^|\s)([+~]*[\w.]+)=", text)}
        chosen = [c for c in differ if c in overridden]
        return chosen or differ
    return differ


_FAMILIES = (("rank_J_I", r"rank_\d+_\d+"), ("sv_J_I_K", r"sv_\d+_\d+_\d+"), ("balance_H", r"balance_\d+"))


def _compact(names: list[str]) -> list[str]:
    """Names with the per-product families folded: 'sv_J_I_K (sv_1_1_1 .. sv_4_4_3, 40 columns)'."""
    import re

    out, seen = [], set()
    for n in names:
        for label, pattern in _FAMILIES:
            if re.fullmatch(pattern, n):
                if label not in seen:
                    seen.add(label)
                    fam = [m for m in names if re.fullmatch(pattern, m)]
                    out.append(f"{label} ({fam[0]} .. {fam[-1]}, {len(fam)} columns)" if len(fam) > 2
                               else ", ".join(fam))
                break
        else:
            out.append(n)
    return out


def unknown(what: str, name: str, allowed: list[str]) -> CompareError:
    """The error for an unknown key or metric, with the closest allowed name and the list."""
    import difflib

    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return CompareError(f"unknown {what} {name!r}{hint}; allowed: {', '.join(_compact(list(allowed)))}")


def _check(df: pd.DataFrame, by: list[str], metric: str) -> None:
    cfg = config_columns(df)
    for key in by:
        if key not in df.columns or key not in cfg:
            raise unknown("--by key", key, cfg)
    if metric not in df.columns:
        raise unknown("--metric", metric, metric_columns(df))


def final_values(df: pd.DataFrame, at_step: int | None = None) -> pd.DataFrame:
    """One row per (run, member): its row at its last record, or at its last record at or before
    `at_step` (members whose first record comes later are left out)."""
    if at_step is not None:
        df = df[df["step"] <= at_step]
    return final_rows(df)


def _group(df: pd.DataFrame, by: list[str]):
    return df.groupby(by or (lambda _: "all"), observed=True, dropna=False, sort=True)


def compare(df: pd.DataFrame, by=None, metric: str = "loss", at_step: int | None = None) -> pd.DataFrame:
    """A table indexed by the `by` config keys (default: the swept keys) of the final value of
    `metric` per (run, member): mean, std, count (of non-NaN values), runs, and diverged (members
    whose status was "diverged" at that record) when the table has member statuses. A
    non-numeric metric (e.g. the classifier's `label`) gives the count of each value instead."""
    by = swept_keys(df) if by is None else ([by] if isinstance(by, str) else list(by))
    _check(df, by, metric)
    last = final_values(df, at_step)
    g = _group(last, by)
    col = last[metric]
    if col.dtype.kind in "biuf":
        out = g[metric].agg(["mean", "std", "count"])
    else:  # counts of each value (missing values not counted)
        counts = g[metric].value_counts()
        out = counts.unstack(fill_value=0) if len(counts) else pd.DataFrame(index=g.size().index)
        out = out.reindex(g.size().index, fill_value=0)
        out.columns = [f"n_{c}" for c in out.columns]
        out["count"] = out.sum(axis=1)
    out["runs"] = g["run"].nunique()
    if "member_status" in last.columns:
        out["diverged"] = (last["member_status"].astype(object) == "diverged").groupby(
            [last[k] for k in by] if by else (lambda _: "all"), observed=True, dropna=False).sum()
    if "status" in last.columns:
        bad = ~last["status"].astype(object).isin(ENDED)
        if bad.any():  # a killed, interrupted or failed run's last value is not its final value
            runs_ = last["run"].where(bad)
            out["unfinished"] = runs_.groupby([last[k] for k in by] if by else (lambda _: "all"),
                                              observed=True, dropna=False).nunique()
    if not by:
        out.index.name = "group"
    return out


ENDED = ("finished", "diverged")  # the statuses of runs that got to their end


def unfinished(df: pd.DataFrame, by: list[str]) -> dict:
    """{group key: "1 interrupted, 1 killed"} for the groups of `by` that hold runs that did not
    end (killed, interrupted, failed, running, unknown): their values are the last ones recorded."""
    if "status" not in df.columns:
        return {}
    per_run = df.groupby("run", observed=True, sort=False)[[*by, "status"]].first() if by else \
        df.groupby("run", observed=True, sort=False)[["status"]].first()
    per_run = per_run[~per_run["status"].astype(object).isin(ENDED)]
    out = {}
    for key, part in (per_run.groupby(by, observed=True, dropna=False) if by else [((), per_run)]):
        if len(part):
            counts = part["status"].astype(object).value_counts()
            out[key if isinstance(key, tuple) else (key,)] = ", ".join(f"{n} {s}" for s, n in counts.items())
    return out


def curves(df: pd.DataFrame, by=None, metric: str = "loss", quantiles=(0.25, 0.5, 0.75)) -> pd.DataFrame:
    """Per group of the `by` keys and per recorded step: the quantiles of `metric` across runs
    (seeds) and members (columns q25, q50, q75) and the number of values."""
    by = swept_keys(df) if by is None else ([by] if isinstance(by, str) else list(by))
    _check(df, by, metric)
    if df[metric].dtype.kind not in "biuf":
        raise CompareError(f"--metric {metric!r} is not numeric: no curves to draw")
    runs, members = df["run"].nunique(), df.groupby("run", observed=True)["member"].nunique().max()
    full = df.groupby([*by, "step"], observed=True, dropna=False, sort=True).size().index
    diverged = None
    if "member_status" in df.columns:  # diverged members leave the quantiles; they are counted
        is_div = df["member_status"].astype(object) == "diverged"
        first = df[is_div].groupby(["run", "member"], observed=True).agg(
            **{k: (k, "first") for k in by}, step=("step", "min"))
        new = first.groupby([*by, "step"], dropna=False).size() if len(first) else pd.Series(dtype=int)
        new = new.reindex(full, fill_value=0) if len(new) else pd.Series(0, index=full)
        # members of the group that have diverged by each step
        diverged = new.groupby(level=list(range(len(by)))).cumsum() if by else new.cumsum()
        df = df[~is_div]
    g = df.groupby([*by, "step"], observed=True, dropna=False, sort=True)[metric]
    values = df[metric].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    integer = values.size > 0 and bool(np.all(values == np.round(values)))
    # integer metrics (ranks): lower quantiles, so a median rank is a rank (never 1.5)
    out = pd.concat({f"q{round(100 * q)}": g.quantile(q, interpolation="lower" if integer else "linear")
                     for q in quantiles}, axis=1)
    out = out.reindex(full)
    out["count"] = g.count().reindex(full, fill_value=0)
    if diverged is not None:
        out["diverged"] = diverged.to_numpy(dtype=int)
    out.attrs.update(runs=int(runs), members=int(members), integer=integer)
    return out


def _label(by: list[str], key) -> str:
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{k}={v}" for k, v in zip(by, key)) or "all runs"


def plot_curves(cv: pd.DataFrame, by: list[str], metric: str, path, logy: bool | None = None,
                title: str | None = None, flags: dict | None = None) -> dict:
    """Draw `curves(...)` output: the median per group against step, with its quartile band.

    Integer metrics (ranks) are step lines; a log axis is limited to the meaningful range (values
    below 1e-12 x the largest are drawn but do not set the limits); members that diverged are marked
    with a red x where they did; no offset notation on the axes. `flags` ({group key tuple: text},
    e.g. from `unfinished`) is added to those groups' legend. Returns what was drawn (title,
    ylim, logy, legend_outside, y_offset, diverged_marked)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise CompareError("--plot needs matplotlib: pip install 'dlnlab[plots]' "
                           f"(or pip install matplotlib) ({e})") from None
    groups = list(cv.groupby(level=list(range(len(by))), observed=True, sort=True)) if by else [((), cv)]
    outside = len(groups) > 4
    fig, ax = plt.subplots(figsize=(9.5 if outside else 7, 4.5))
    integer = cv.attrs.get("integer", False)
    marked = False
    for key, part in groups:
        steps = part.index.get_level_values("step")
        flag = (flags or {}).get(key if isinstance(key, tuple) else (key,))
        label = _label(by, key) + (f" [not ended: {flag}]" if flag else "")
        if "diverged" in part.columns and part["diverged"].max() > 0:
            label += f" ({int(part['diverged'].max())} diverged)"
        if integer:
            line, = ax.step(steps, part["q50"], where="post", label=label, lw=1.5)
            ax.fill_between(steps, part["q25"], part["q75"], step="post", color=line.get_color(), alpha=0.2, lw=0)
        else:
            line, = ax.plot(steps, part["q50"], label=label, lw=1.5)
            ax.fill_between(steps, part["q25"], part["q75"], color=line.get_color(), alpha=0.2, lw=0)
        if "diverged" in part.columns:  # where members diverged: a red x on the group's median
            new = part["diverged"].diff().fillna(part["diverged"]) > 0
            y = part["q50"].ffill()
            if new.any():
                ax.plot(steps[new.to_numpy()], y[new].to_numpy(dtype=float), "x", color="red", ms=9, mew=2,
                        label=None if marked else "members diverged")
                marked = True
    values = cv[["q25", "q50", "q75"]].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    if logy is None:
        logy = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 100
    if logy:
        ax.set_yscale("log")
        positive = finite[finite > 0]
        if positive.size:
            top = positive.max()
            low = max(positive.min(), 1e-12 * top)
            ax.set_ylim(low / 2, top * 2)
    else:
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        if integer:
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{metric} (lab units: mean over samples)" if metric.startswith(("loss", "reg_loss"))
                  else metric)
    ax.set_title(title or _title(cv, metric))
    if by or marked or flags:
        if outside:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize=8, loc="best", framealpha=0.8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    info = {"title": ax.get_title(), "ylim": ax.get_ylim(), "logy": bool(logy), "legend_outside": outside,
            "y_offset": ax.get_yscale() == "linear" and ax.yaxis.get_major_formatter().get_useOffset(),
            "diverged_marked": marked}
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        raise CompareError(f"cannot write the plot {path}: {e}") from None
    finally:
        plt.close(fig)
    return info


def _title(cv: pd.DataFrame, metric: str) -> str:
    runs, members = cv.attrs.get("runs"), cv.attrs.get("members")
    if runs == 1 and members == 1:
        return f"{metric} of one run"
    if runs == 1:
        return f"{metric} of one run: median and quartiles across its {members} members"
    return f"{metric}: median and quartiles across seeds and members"
