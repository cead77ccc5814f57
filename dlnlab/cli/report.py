"""`dlnlab-report RUN [--png PATH] [--no-tensorboard]`: the report of a run, a table and a figure.

An ordinary run folder (a run table, not a rank-jump run): the staircase (staircase.csv, if the run
wrote one) and RUN/report.png, four panels on one step axis: the loss with the theory's plateau values,
the product's singular values against the target map's, the ranks of all partial products, and
lam_min and tight_margin (dlnlab.analysis.report).

A rank-jump run: the rank-jump report, a table and a figure (PNG, and an image in the run's TensorBoard).

RUN is the output folder of a jumps experiment (it holds jumps_summary.json and the phase folders
warmup/, sgd/, gd/), or a single run folder tracked by the rank-jump hook (events.parquet). The table
gives per phase: members, start and final layer ranks, members that jumped, first-passage quartiles
(layer rank and A-rank) and rank increases; then the run's FINDING lines, if any. The figure is saved
as RUN/jumps_report.png and written to TensorBoard as the image `jumps/report` in RUN/jumps_report_tb/
(replaced on every call, so re-running it leaves one image).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from dlnlab.analysis.jumps_report import read_summary, report_figure, report_table
from dlnlab.analysis.report import is_plain_run, run_report
from dlnlab.runfolder import STAIRCASE_FILE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlnlab-report",
                                description="Report of a run: a table and a figure.")
    p.add_argument("run", metavar="RUN", help="a run folder, a jumps experiment folder or a tracked run folder")
    p.add_argument("--png", default=None,
                   help="where to save the figure (default RUN/report.png, or RUN/jumps_report.png)")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="do not add the rank-jump figure to TensorBoard")
    return p


def run_cli(argv=None, out=None) -> int:
    """Run `dlnlab-report` on `argv`, printing to `out` (stdout); the exit status."""
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    run = Path(args.run)
    if not run.is_dir():
        print(f"dlnlab-report: error: {run} is not a folder", file=sys.stderr)
        return 2
    if is_plain_run(run):
        return _plain(run, args.png, out)
    table = report_table(run)
    if table.empty:
        print(f"dlnlab-report: error: no run tracked by the rank-jump hook under {run} "
              "(no layer_rank column)", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.to_string(index=False), file=out)
    summary = read_summary(run)
    if summary:
        h = summary.get("headline", {})
        keep = {k: h[k] for k in ("gd_final_layer_rank", "members", "jumped", "fraction_jumped",
                                  "first_jump_layer", "increases_layer", "increases_e2e") if k in h}
        print(json.dumps(keep, indent=1), file=out)
        for f in summary.get("findings", []):
            print(f"FINDING: {f}", file=out)
    _, png = report_figure(run, args.png, tensorboard=not args.no_tensorboard)
    print(f"figure      {png}", file=out)
    return 0


def _plain(run: Path, png, out) -> int:
    """The staircase table, if any, and report.png of an ordinary run folder."""
    stairs = run / STAIRCASE_FILE
    if stairs.exists():
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            print(pd.read_csv(stairs, dtype={"S": str}).to_string(index=False, float_format=lambda v: f"{v:.4g}"),
                  file=out)
    _, path = run_report(run, png)
    print(f"figure      {path}", file=out)
    return 0


def main(argv=None) -> None:
    """The `dlnlab-report` entry point."""
    sys.exit(run_cli(argv))


if __name__ == "__main__":
    main()
