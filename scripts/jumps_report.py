"""Rank-jump report of a run: a table and a figure (PNG, and an image in the run's TensorBoard).

    .venv/bin/python scripts/jumps_report.py RUN [--png PATH] [--no-tensorboard]

RUN is the output folder of a jumps experiment (it holds jumps_summary.json and the phase folders
warmup/, sgd/, gd/), or a single run folder tracked by dlnlab.recording.jumps.RankJumpHook (events.parquet).
The table gives per phase: members, start and final layer ranks, members that jumped, first-passage
quartiles (layer rank and A-rank) and rank increases; then the run's FINDING lines (layer-rank
increases at H >= 3, from jumps_summary.json), if any. The figure shows the layer rank and the A-rank
against the step for GD (thick black), the warm-up (grey, at negative steps) and every other member,
and the first-passage histogram; it is saved as RUN/jumps_report.png and written to TensorBoard as
the image `jumps/report` in RUN/jumps_report_tb/. That folder is replaced on every run of this
script, so re-running it leaves one image, not two.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dlnlab.analysis.jumps_report import read_summary, report_figure, report_table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a jumps experiment folder or a tracked run folder")
    p.add_argument("--png", default=None, help="where to save the figure (default RUN/jumps_report.png)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not add the figure to TensorBoard")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not run.is_dir():
        print(f"jumps_report: error: {run} is not a folder", file=sys.stderr)
        return 2

    import pandas as pd


    table = report_table(run)
    if table.empty:
        print(f"jumps_report: error: no run tracked by the rank-jump hook under {run} "
              "(no layer_rank column)", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.to_string(index=False))
    summary = read_summary(run)
    if summary:
        h = summary.get("headline", {})
        keep = {k: h[k] for k in ("gd_final_layer_rank", "members", "jumped", "fraction_jumped",
                                  "first_jump_layer", "increases_layer", "increases_e2e") if k in h}
        print(json.dumps(keep, indent=1))
        for f in summary.get("findings", []):
            print(f"FINDING: {f}")
    _, png = report_figure(run, args.png, tensorboard=not args.no_tensorboard)
    print(f"figure      {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
