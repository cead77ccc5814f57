"""Table B.3 (dlnlab.experiments.convex_losses) on a reduced grid: the width condition reaches ell*
from every init under L-BFGS, the bottlenecks do not; the experiment's files and dispatch."""
import pandas as pd

from dlnlab.experiments.build import compose
from dlnlab.experiments.convex_losses import ConvexLossesSummary, run_convex_losses
from dlnlab.experiments.run import run

REDUCED = ["experiment=convex_losses", "convex_losses.depths=[3]", "convex_losses.widths=[4,1]",
           "convex_losses.inits=3", "convex_losses.gd_steps=200", "record.progress=off"]


def test_table_B3_pattern_on_a_reduced_grid(tmp_path):
    s = run_convex_losses(compose(REDUCED + ["convex_losses.depths=[3,4]"]), out_dir=tmp_path)
    t = s.table
    lb = t[t.optimiser == "lbfgs"]
    assert len(lb) == 4 * 1 + 4 and set(lb.loss) == {"cross_entropy", "huber"}
    ok, bottleneck = lb[lb.width_condition], lb[~lb.width_condition]
    assert (ok.reached == ok.inits).all() and (ok.gap_max <= 1e-8).all(), ok
    assert (bottleneck.reached == 0).all() and (bottleneck.gap_min > 1e-2).all(), bottleneck
    runs = s.runs[s.runs.optimiser == "lbfgs"]
    assert ((runs.gap >= -1e-12) | ~runs.width_condition).all()   # ell* is a lower bound (up to rounding)
    for f in ("convex_losses.csv", "convex_losses_runs.csv", "convex_losses.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "convex_losses.csv")) == len(t)
    assert "width_condition" in str(s) and "lbfgs" in str(s)


def test_run_dispatches_convex_losses():
    cfg = compose(REDUCED + ["convex_losses.losses=[huber]", "convex_losses.widths=[1]", "convex_losses.inits=1",
                             "convex_losses.gd_steps=0"])
    s = run(cfg)
    assert isinstance(s, ConvexLossesSummary) and len(s.runs) == 1 and s.status == "finished"
