"""`dlnlab-compare`: compare runs from the command line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from dlnlab.analysis.compare import (
    NON_METRICS,
    CompareError,
    compare,
    curves,
    plot_curves,
    swept_keys,
    unfinished,
    unknown,
)
from dlnlab.analysis.folders import (
    config_keys,
    effective_status,
    find_runs,
    run_selector,
    scan_runs,
)
from dlnlab.analysis.runs import load_scanned
from dlnlab.runfolder import read_table_schema, table_files

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
    """Run `dlnlab-compare` on `argv`, printing to `out` (stdout); 0 on success, a CompareError
    (or KeyError) for the user's mistakes."""
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    root = Path(args.root)
    if not root.exists():
        raise CompareError(f"ROOT {root} does not exist")
    by = None if args.by is None else [k.strip() for k in args.by.split(",") if k.strip()]
    where = _parse_where(args.where) or None
    runs = scan_runs(find_runs(root))
    if where and runs:
        known = config_keys(runs, True) + ["status"]
        for key in where:
            if key not in known:
                raise unknown("--where key", key, known)
        select = run_selector(where)
        runs = [r for r in runs if select({**r.config, "status": effective_status(r.status)})]
    if not runs:
        raise CompareError(f"no runs under {root} (no run folder with a status.json)"
                           + (f" matching --where {' '.join(args.where)}" if where else ""))
    keys = config_keys(runs, True)
    for key in by or ():
        if key not in keys:
            raise unknown("--by key", key, keys)
    df = load_scanned(runs, columns=[args.metric, "member_status"])
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
    flags = unfinished(df, by)
    if flags:
        print("note: groups with runs that did not end (their value is the last one recorded; column "
              "unfinished): " + "; ".join(f"{', '.join(map(str, k)) or 'all'}: {v}" for k, v in flags.items()),
              file=out)
    if args.csv:
        try:
            table.to_csv(args.csv)
        except OSError as e:
            raise CompareError(f"cannot write {args.csv}: {e}") from None
        print(f"wrote {args.csv}", file=out)
    if args.plot:
        plot_curves(curves(df, by, args.metric), by, args.metric, args.plot, logy=args.logy, flags=flags)
        print(f"wrote {args.plot}", file=out)
    return 0


def _recorded_columns(run_dirs) -> list[str]:
    """The union of the recorded columns of the runs' tables (read from the files' schemas)."""
    names: dict = {}
    for d in run_dirs:
        for f in table_files(d):
            try:
                names.update(dict.fromkeys(read_table_schema(f).names))
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


