"""Compare runs: tables grouped by config keys, curves per group, and the `dlnlab-compare` CLI.

    dlnlab-compare runs/multirun/2025-01-01/12-00-00_sweep --by optim.lr,task.noise --metric loss
    dlnlab-compare ROOT --by optim.lr --metric rank --plot rank.png --csv rank.csv

From Python, on a run table from `dlnlab.runs.load_runs`:

    df = load_runs(root)
    compare(df, by=["optim.lr"], metric="loss")      # mean, std, count of the final loss per lr
    curves(df, by=["optim.lr"], metric="rank")       # median and quartiles per lr and step

Statistics are across seeds and ensemble members: every (run, member) contributes one value, its
value at its last record (`at_step=None`) or at its last record at or before `at_step`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dlnlab import runs as R

NON_METRICS = {"run", "step", "member", "member_status", *R.RUN_COLUMNS}


class CompareError(ValueError):
    """A user error of dlnlab-compare (unknown key or metric, no runs); the message says what."""


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The recorded columns of a run table (loss, rank, sv_4_1_1, label, ...)."""
    cfg = set(R.config_columns(df))
    return [c for c in df.columns if c not in NON_METRICS and c not in cfg]


def swept_keys(df: pd.DataFrame) -> list[str]:
    """The config keys whose value differs between runs, seeds excluded (`seed`, `*.seed`)."""
    cfg = [c for c in R.config_columns(df) if c != "seed" and not c.endswith(".seed") and c != "out_dir"]
    if not cfg:
        return []
    per_run = df.groupby("run", observed=True, sort=False)[cfg].first()
    return [c for c in cfg if per_run[c].astype(object).nunique(dropna=False) > 1]


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
    cfg = R.config_columns(df)
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
    return R.final_rows(df)


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
    if not by:
        out.index.name = "group"
    return out


def curves(df: pd.DataFrame, by=None, metric: str = "loss", quantiles=(0.25, 0.5, 0.75)) -> pd.DataFrame:
    """Per group of the `by` keys and per recorded step: the quantiles of `metric` across runs
    (seeds) and members (columns q25, q50, q75) and the number of values."""
    by = swept_keys(df) if by is None else ([by] if isinstance(by, str) else list(by))
    _check(df, by, metric)
    if df[metric].dtype.kind not in "biuf":
        raise CompareError(f"--metric {metric!r} is not numeric: no curves to draw")
    g = df.groupby([*by, "step"], observed=True, dropna=False, sort=True)[metric]
    out = g.quantile(list(quantiles)).unstack()
    out.columns = [f"q{round(100 * q)}" for q in quantiles]
    out["count"] = g.count()
    return out


def _label(by: list[str], key) -> str:
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{k}={v}" for k, v in zip(by, key)) or "all runs"


def plot_curves(cv: pd.DataFrame, by: list[str], metric: str, path, logy: bool | None = None,
                title: str | None = None) -> None:
    """Draw `curves(...)` output: the median per group against step, with its quartile band."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise CompareError("--plot needs matplotlib: pip install 'dlnlab[plots]' "
                           f"(or pip install matplotlib) ({e})") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = cv.groupby(level=list(range(len(by))), observed=True, sort=True) if by else [((), cv)]
    for key, part in groups:
        steps = part.index.get_level_values("step")
        line, = ax.plot(steps, part["q50"], label=_label(by, key), lw=1.5)
        ax.fill_between(steps, part["q25"], part["q75"], color=line.get_color(), alpha=0.2, lw=0)
    values = cv[["q25", "q50", "q75"]].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    if logy is None:
        logy = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 100
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric}: median and quartiles across seeds and members")
    if by:
        ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        raise CompareError(f"cannot write the plot {path}: {e}") from None
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The command line

def _parse_where(items) -> dict:
    import yaml

    where = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompareError(f"--where {item!r}: allowed KEY=VALUE or KEY=V1,V2 (e.g. optim.lr=0.1)")
        vals = [yaml.safe_load(v) for v in value.split(",")]
        where[key.strip()] = vals if len(vals) > 1 else vals[0]
    return where


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dlnlab-compare",
        description="Compare the runs under ROOT (a sweep folder, or runs/): a table of a metric "
                    "grouped by config keys, with mean, std and count across seeds and ensemble "
                    "members of the final value of every (run, member).")
    p.add_argument("root", metavar="ROOT", help="a folder holding run folders (searched recursively)")
    p.add_argument("--by", default=None,
                   help="comma-separated config keys to group by, e.g. optim.lr,task.noise "
                        "(default: the keys that differ between runs, seeds excluded)")
    p.add_argument("--metric", default="loss",
                   help="a recorded column: loss (default), rank (end-to-end rank), rank_4_1, "
                        "sv_4_1_1, balance_1, label, ...")
    p.add_argument("--at-step", type=int, default=None, metavar="N",
                   help="take each run's value at its last record at or before step N instead of "
                        "its final value")
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="only runs with this config value (repeatable; KEY=V1,V2: any of them; "
                        "status=finished works too)")
    p.add_argument("--csv", metavar="FILE", help="also write the table to FILE (CSV)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw the metric against step per group: median and quartile band across "
                        "seeds and members (needs matplotlib)")
    p.add_argument("--logy", action=argparse.BooleanOptionalAction, default=None,
                   help="log-scale y axis of --plot (default: when the values span > 2 decades)")
    return p


def run_cli(argv=None, out=None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    root = Path(args.root)
    if not root.exists():
        raise CompareError(f"ROOT {root} does not exist")
    by = None if args.by is None else [k.strip() for k in args.by.split(",") if k.strip()]
    where = _parse_where(args.where) or None
    runs = R._scan(R.find_runs(root))
    if where and runs:
        known = R._config_keys(runs, True) + ["status"]
        for key in where:
            if key not in known:
                raise unknown("--where key", key, known)
        select = R._selector(where)
        runs = [r for r in runs if select({**r.config, "status": R.effective_status(r.status)})]
    if not runs:
        raise CompareError(f"no runs under {root} (no run folder with a status.json)"
                           + (f" matching --where {' '.join(args.where)}" if where else ""))
    keys = R._config_keys(runs, True)
    for key in by or ():
        if key not in keys:
            raise unknown("--by key", key, keys)
    df = R._load([], columns=[args.metric, "member_status"], runs=runs)
    if args.metric not in df.columns:
        available = _recorded_columns([r.path for r in runs])
        if not available:
            raise CompareError(f"no run under {root} has recorded anything yet")
        raise unknown("--metric", args.metric, available)
    if df.empty:
        raise CompareError(f"no recorded rows under {root} yet")
    by = swept_keys(df) if by is None else by
    if args.plot and df[args.metric].dtype.kind not in "biuf":  # before printing anything
        raise CompareError(f"--metric {args.metric!r} is not numeric: no curves to --plot "
                           "(the table works without --plot)")
    table = compare(df, by, args.metric, args.at_step)
    when = (f"at its last record at or before step {args.at_step}" if args.at_step is not None
            else "at its last record")
    print(f"{args.metric}: the value of every (run, member) {when}; mean, std and count across "
          f"seeds and members, grouped by {', '.join(by) or 'nothing (all runs)'} "
          f"({df['run'].nunique()} runs)".replace("(1 runs)", "(1 run)"), file=out)
    with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 160,
                           "display.float_format", "{:.6g}".format):
        print(table.to_string(), file=out)
    if args.csv:
        try:
            table.to_csv(args.csv)
        except OSError as e:
            raise CompareError(f"cannot write {args.csv}: {e}") from None
        print(f"wrote {args.csv}", file=out)
    if args.plot:
        plot_curves(curves(df, by, args.metric), by, args.metric, args.plot, logy=args.logy)
        print(f"wrote {args.plot}", file=out)
    return 0


def _recorded_columns(run_dirs) -> list[str]:
    """The union of the recorded columns of the runs' tables (read from the parquet schemas)."""
    import pyarrow.parquet as pq

    names: dict = {}
    for d in run_dirs:
        for f in R._table_files(Path(d)):
            try:
                names.update(dict.fromkeys(pq.read_schema(f).names))
            except Exception:  # noqa: BLE001 - damaged files were reported by the load
                pass
    return [n for n in names if n not in NON_METRICS]


def main(argv=None) -> None:
    """`dlnlab-compare ROOT --by KEYS --metric M [--at-step N] [--csv F] [--plot F.png]`."""
    import warnings

    try:
        with warnings.catch_warnings():
            # a skipped damaged file is news for the user, not a Python source line
            warnings.showwarning = lambda message, category, *a, **k: print(
                f"dlnlab-compare: warning: {message}", file=sys.stderr)
            code = run_cli(argv)
    except (CompareError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"dlnlab-compare: error: {msg}", file=sys.stderr)
        code = 2
    except BrokenPipeError:  # `dlnlab-compare ... | head`
        code = 0
    sys.exit(code)


# ---------------------------------------------------------------------------------------------
# A synthetic sweep in the real run-folder format, and the load benchmark

def _metric_names(dims: list[int]) -> list[str]:
    """The recorded metric columns of a real run with layer widths `dims`, in their order
    (computed by the real MetricsHook on one random network)."""
    import types

    import torch

    from dlnlab.hooks import MetricsHook, Record
    from dlnlab.tasks import make_regression

    task = make_regression(4 * dims[0], dims[0], dims[-1])
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(1, dims[h + 1], dims[h], generator=gen, dtype=torch.float64)
          for h in range(len(dims) - 1)]
    stub = types.SimpleNamespace(task=task)
    hook = MetricsHook()
    hook.on_start(stub)
    rec = Record(0, ws, torch.ones(1, dtype=torch.bool), 0.01, 0.0)
    hook.on_record(stub, rec)
    names = []
    for key, v in rec.metrics.items():
        names += [key] if v.dim() == 1 else [f"{key}_{n + 1}" for n in range(v.shape[1])]
    return names


def make_runs_fixture(root, runs: int = 1000, records: int = 1000, depth: int = 4, width: int = 6,
                      ensemble: int = 1, steps: int = 20000, events: bool = False,
                      seed: int = 0) -> dict:
    """Write `runs` finished run folders under `root` (root/0, root/1, ...) in the real format
    (config.yaml, status.json, .hydra/overrides.yaml, metrics/table.parquet with the columns of a
    real run of that depth) with `records` records each: a synthetic SGD sweep over optim.lr (5
    values), task.noise (2) and seed. Loss curves walk down a saddle-to-saddle staircase and the
    end-to-end rank climbs with it. events=True also writes events.parquet as the rank tracker
    does (a member's layer rank jumping 4 -> 3, an "entered" event, at an exponential time with
    mean 200 / lr). Returns {'runs', 'records', 'rows', 'seconds'}."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from dlnlab.experiment import compose
    from omegaconf import OmegaConf

    t0 = time.perf_counter()
    root = Path(root)
    base = OmegaConf.to_container(compose(["optim=sgd", f"model.depth={depth}", f"model.width={width}",
                                           f"model.ensemble={ensemble}", f"optim.steps={steps}"]),
                                  resolve=True)
    d_x, d_y = base["task"]["d_x"], base["task"]["d_y"]
    dims = [d_x, *[width] * (depth - 1), d_y]
    names = _metric_names(dims)
    spectrum = np.asarray(base["task"]["spectrum"], dtype=float)[: min(d_x, d_y)]
    lrs, noises = [0.001, 0.002, 0.005, 0.01, 0.02], [0.0, 0.1]
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    rng = np.random.default_rng(seed)
    step = np.unique(np.linspace(0, steps, records).round().astype(np.int64))
    n = step.size
    col = {name: k for k, name in enumerate(names)}
    for i in range(runs):
        lr, noise, s = lrs[i % len(lrs)], noises[(i // len(lrs)) % len(noises)], i // (len(lrs) * len(noises))
        cfg = json.loads(json.dumps(base))
        cfg["optim"]["lr"], cfg["task"]["noise"], cfg["seed"] = lr, noise, s
        d = root / str(i)
        (d / "metrics").mkdir(parents=True, exist_ok=True)
        (d / ".hydra").mkdir(exist_ok=True)
        (d / "config.yaml").write_text(yaml.dump(cfg, Dumper=dumper, sort_keys=False))
        (d / ".hydra" / "overrides.yaml").write_text(
            yaml.dump([f"optim.lr={lr}", f"task.noise={noise}", f"seed={s}"], Dumper=dumper))
        frames, ev = [], []
        for k in range(ensemble):
            # mode k is learnt around t_k ~ 1 / (lr * s_k) (log-normal jitter per run and member)
            t_mode = np.log(1 / (0.05 * spectrum)) / (lr * spectrum) * 40 * rng.lognormal(0, 0.2, spectrum.size)
            learnt = 1 / (1 + np.exp(-(step[:, None] - t_mode) / (0.1 * t_mode)))  # (n, modes)
            values = rng.lognormal(0, 0.1, (n, len(names)))
            loss = ((spectrum * (1 - learnt)) ** 2).sum(1) / d_y + noise ** 2
            rank = (learnt > 0.5).sum(1).astype(float)
            values[:, col["loss"]] = loss
            values[:, col["reg_loss"]] = loss
            values[:, col["paper_loss"]] = loss * 64
            values[:, col["lr"]] = lr
            values[:, col["ridge"]] = 0.0
            for name, j in col.items():
                if name.startswith("rank_"):
                    values[:, j] = rank
            values[:, col["rank"]] = rank
            sv = spectrum * learnt
            for m in range(sv.shape[1]):
                values[:, col[f"sv_{depth}_1_{m + 1}"]] = sv[:, m]
            for m in range(sv.shape[1], min(d_x, d_y)):
                values[:, col[f"sv_{depth}_1_{m + 1}"]] = 1e-6
            table = {"step": step, "member": np.full(n, k, dtype=np.int64)}
            table.update({name: values[:, j] for name, j in col.items()})
            # the classifier hook's columns (dlnlab.classify_hook), numbers first as the table writes them
            top = "{" + ",".join(str(j + 1) for j in range(int(rank[-1]))) + "}"
            labels = np.where(rank < min(dims), "strict_saddle", "global_min").astype(object)
            table.update({"label_code": np.where(rank < min(dims), 1.0, 3.0), "r": rank,
                          "critical_value": loss, "nearest_value": loss,
                          "classify_grad_norm": values[:, col["grad_norm"]] * 64})
            table["member_status"] = np.full(n, "training", dtype=object)
            table.update({"label": labels, "label_reason": np.full(n, "synthetic", dtype=object),
                          "S": np.full(n, top, dtype=object), "nearest_S": np.full(n, top, dtype=object)})
            frames.append(pa.table(table))
            if events:  # a one-way jump of the layer rank, 4 -> 3, sooner for a larger lr
                t_jump = rng.exponential(200 / lr)
                if t_jump <= step[-1]:
                    ev.append((k, int(step[np.searchsorted(step, t_jump)]), 4, 3, "entered", "layer"))
        t = frames[0] if ensemble == 1 else pa.concat_tables(frames)
        if ensemble > 1:  # rows in record order, members interleaved, as a real run writes them
            t = t.take(np.lexsort((t["member"].to_numpy(), t["step"].to_numpy())))
        pq.write_table(t, d / "metrics" / R.TABLE_FILE)
        if events:
            cols = list(zip(*ev)) if ev else [[]] * 6
            pq.write_table(pa.table({"member": pa.array(cols[0], pa.int64()), "step": pa.array(cols[1], pa.int64()),
                                     "from_rank": pa.array(cols[2], pa.int64()),
                                     "to_rank": pa.array(cols[3], pa.int64()),
                                     "kind": pa.array(cols[4], pa.string()),
                                     "rank_type": pa.array(cols[5], pa.string()),
                                     "in_B": pa.array([True] * len(cols[0]), pa.bool_())}), d / R.EVENTS_FILE)
        now = time.time()
        (d / R.STATUS_FILE).write_text(json.dumps(
            {"status": "finished", "step": steps, "steps": steps, "started": now - 60, "ensemble": ensemble,
             "ended": now, "wall_time": float(rng.uniform(30, 90)), "diverged_members": {}}, indent=1))
    return {"runs": runs, "records": n, "rows": runs * n * ensemble, "seconds": time.perf_counter() - t0}


def bench_load(root=None, runs: int = 1000, records: int = 1000, repeat: int = 1) -> dict:
    """Time `load_runs` on a sweep of `runs` runs x `records` records (H = 4): under `root` if it
    holds runs already, else a fixture written there (or in a temporary folder, removed after).
    Returns {'runs', 'rows', 'columns', 'seconds' (best of `repeat` loads), 'fixture_seconds',
    'cpus' (the cores this process may use: the reader threads)}."""
    tmp = None
    if root is None:
        tmp = root = tempfile.mkdtemp(prefix="dlnlab-bench-")
    try:
        fixture = {"seconds": 0.0}
        if not R.find_runs(root):
            fixture = make_runs_fixture(root, runs=runs, records=records)
        best, df = float("inf"), None
        for _ in range(max(1, repeat)):
            del df
            t0 = time.perf_counter()
            df = R.load_runs(root)
            best = min(best, time.perf_counter() - t0)
        return {"runs": int(df["run"].nunique()), "rows": len(df), "columns": df.shape[1],
                "seconds": best, "fixture_seconds": fixture["seconds"], "cpus": R._default_threads()}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
