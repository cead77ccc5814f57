#!/usr/bin/env python
"""Write a synthetic sweep in the real run-folder format, and optionally time loading it.

    python scripts/make_runs_fixture.py /tmp/fixture --runs 1000 --records 1000
    python scripts/make_runs_fixture.py /tmp/fixture --runs 1000 --records 1000 --bench

Every run folder (ROOT/0, ROOT/1, ...) has config.yaml, status.json, .hydra/overrides.yaml and
metrics/table.parquet with the columns a real run of that depth writes (H = 4 by default):
an SGD sweep over optim.lr (5 values), task.noise (2) and seed. See
scripts/runs_fixture.py (which scripts/bench.py calls).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runs_fixture import bench_load, make_runs_fixture

from dlnlab.analysis.folders import find_runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="folder to write the run folders into (created)")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--records", type=int, default=1000, help="records (rows per member) per run")
    p.add_argument("--depth", type=int, default=4, help="H, the number of weight matrices")
    p.add_argument("--width", type=int, default=6, help="hidden width")
    p.add_argument("--ensemble", type=int, default=1, help="members per run")
    p.add_argument("--events", action="store_true", help="also write events.parquet (rank jumps)")
    p.add_argument("--bench", action="store_true", help="then time load_runs on it")
    args = p.parse_args(argv)


    if args.root.exists() and find_runs(args.root):
        print(f"make_runs_fixture: error: {args.root} already holds runs; choose an empty folder", file=sys.stderr)
        return 2
    info = make_runs_fixture(args.root, runs=args.runs, records=args.records, depth=args.depth,
                             width=args.width, ensemble=args.ensemble, events=args.events)
    print(f"wrote {info['runs']} runs x {info['records']} records ({info['rows']} rows) to {args.root} "
          f"in {info['seconds']:.1f} s")
    if args.bench:
        print(json.dumps(bench_load(args.root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
