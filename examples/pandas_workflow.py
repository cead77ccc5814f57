"""The pandas workflow of the README, end to end, from Python (the test suite runs this file).

A small sweep over the learning rate and the seed, trained from Python instead of `dlnlab-train -m`,
then read back and compared:

    .venv/bin/python examples/pandas_workflow.py [OUT_DIR]
"""
import sys
import tempfile
from pathlib import Path

from dlnlab import compose, last_records, load_runs, run, summarize
from dlnlab.analysis.compare import compare, curves

LRS, SEEDS, STEPS = (0.004, 0.008), (0, 1), 3000


def sweep(root: Path) -> None:
    """One run folder per (lr, seed), as a multirun would write them."""
    for i, (lr, seed) in enumerate((lr, s) for lr in LRS for s in SEEDS):
        cfg = compose([f"optim.lr={lr}", f"seed={seed}", f"optim.steps={STEPS}", "record.progress=off"])
        run(cfg, out_dir=root / str(i))


def main(root: Path) -> dict:
    sweep(root)
    df = load_runs(root)                          # one row per (run, step, member), config as columns
    final = last_records(df)                      # each run's (and member's) final record
    by_lr = final.groupby("optim.lr")["loss"].mean()
    table = compare(df, by=["optim.lr"], metric="loss")    # mean, std, count of the final loss per lr
    ranks = curves(df, by=["optim.lr"], metric="rank")     # median rank against step, per lr
    runs = summarize(df)                          # one row per run: final loss, rank and label
    print(by_lr.to_string(), table.to_string(), runs[["optim.lr", "seed", "final_loss", "final_label"]].to_string(),
          sep="\n\n")
    return {"df": df, "final": final, "by_lr": by_lr, "table": table, "ranks": ranks, "runs": runs}


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="dlnlab_example_")))
