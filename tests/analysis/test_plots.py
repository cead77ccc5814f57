"""`dlnlab-compare --plot`: what the figures show, on small hand-made run folders."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dlnlab.analysis.compare import curves, plot_curves, swept_keys
from dlnlab.analysis.runs import load_runs

pytest.importorskip("matplotlib")


def write_run(d: Path, table: pd.DataFrame, config: dict, overrides: str = ""):
    (d / "metrics").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "status.json").write_text(json.dumps({"status": "finished", "step": int(table.step.max()), "wall_time": 1.0}))
    if overrides:
        (d / ".hydra").mkdir()
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides.split()))
    table.to_parquet(d / "metrics" / "table.parquet", index=False)


def staircase(member_shift=0, members=1):
    """Four plateaus (85, 21, 5, 1) then a tail down to 1e-27."""
    steps = np.arange(0, 4000, 100)
    loss = np.select([steps < 1000, steps < 2000, steps < 3000, steps < 3500], [85.0, 21.0, 5.0, 1.0],
                     1e-27 * np.ones_like(steps, dtype=float))
    rank = np.select([steps < 1000, steps < 2000, steps < 3000], [0, 1, 2], 4)
    rows = []
    for k in range(members):
        rows.append(pd.DataFrame({"step": steps, "member": k, "loss": loss * (1 + 1e-3 * (k + member_shift)),
                                  "rank": rank.astype(float), "member_status": "training"}))
    return pd.concat(rows, ignore_index=True)


def test_a_single_run_keeps_its_plateaus_visible(tmp_path):
    write_run(tmp_path / "run", staircase(), {"optim": {"lr": 0.01}, "seed": 0})
    df = load_runs(tmp_path)
    info = plot_curves(curves(df, [], "loss"), [], "loss", tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    assert info["logy"] and info["title"] == "loss of one run"
    low, high = info["ylim"]
    # the 1e-27 tail does not set the axis: the plateaus 85 .. 1 fill most of it
    assert low >= 0.5 * 1e-12 * 85 and high <= 2 * 85.0 * 1.01
    assert np.log10(85 / 1) / np.log10(high / low) > 0.15


def test_ranks_are_integer_steps_and_diverged_members_are_marked(tmp_path):
    a = staircase(members=2)
    b = staircase(members=2, member_shift=5)
    b.loc[(b.member == 1) & (b.step >= 1500), ["loss", "rank"]] = np.nan
    b.loc[(b.member == 1) & (b.step >= 1500), "member_status"] = "diverged"
    a["rank"] = np.where((a.member == 1) & (a.step >= 900), a["rank"] + 1, a["rank"])  # members differ by one
    write_run(tmp_path / "0", a, {"optim": {"lr": 0.01}, "seed": 0})
    write_run(tmp_path / "1", b, {"optim": {"lr": 0.02}, "seed": 0})
    df = load_runs(tmp_path)
    cv = curves(df, ["optim.lr"], "rank")
    q50 = cv["q50"].dropna().to_numpy()
    assert np.array_equal(q50, np.round(q50))  # never 0.5 or 1.5
    assert cv.loc[(0.01, 900), "q50"] == 0 and cv.loc[(0.01, 1000), "q50"] == 1  # lower medians of (0, 1), (1, 2)
    assert cv.loc[(0.02, 1400), "diverged"] == 0 and cv.loc[(0.02, 1500), "diverged"] == 1
    assert cv.loc[(0.02, 3900), "diverged"] == 1 and cv.loc[(0.01, 3900), "diverged"] == 0
    info = plot_curves(cv, ["optim.lr"], "rank", tmp_path / "rank.png")
    assert info["diverged_marked"] and not info["logy"] and info["y_offset"] is False
    assert info["title"] == "rank: median and quartiles across seeds and members"


def test_values_near_85_have_no_offset_notation(tmp_path):
    t = staircase()
    t["loss"] = 84.99 + 1e-4 * np.arange(len(t))
    write_run(tmp_path / "run", t, {"optim": {"lr": 0.01}, "seed": 0})
    info = plot_curves(curves(load_runs(tmp_path), [], "loss"), [], "loss", tmp_path / "flat.png")
    assert not info["logy"] and info["y_offset"] is False


def test_default_grouping_is_the_swept_keys_and_many_groups_put_the_legend_outside(tmp_path):
    # a jumps-like sweep: phases differ in optim.name and jumps.phase by construction, the sweep sets optim.lr
    for k, (lr, phase) in enumerate([(lr, ph) for lr in (0.02, 0.05, 0.1) for ph in ("sgd", "gd")]):
        write_run(tmp_path / f"{k}", staircase(), {"optim": {"lr": lr, "name": phase}, "jumps": {"phase": phase},
                                                   "seed": 0}, overrides=f"optim.lr={lr} seed=0")
    df = load_runs(tmp_path)
    assert swept_keys(df) == ["optim.lr"]
    assert sorted(swept_keys(df.drop(columns="overrides"))) == ["jumps.phase", "optim.lr", "optim.name"]
    by = ["optim.lr", "optim.name"]
    info = plot_curves(curves(df, by, "loss"), by, "loss", tmp_path / "many.png")
    assert info["legend_outside"]  # 6 groups
