"""Comparing runs: `compare`/`curves`, the `dlnlab-compare` CLI, launcher presets, and a real sweep
through the submitit launcher compared with one command."""
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from runs_fixture import bench_load, make_runs_fixture

from dlnlab.analysis.compare import compare, curves, swept_keys
from dlnlab.analysis.folders import find_runs
from dlnlab.analysis.runs import load_runs
from dlnlab.cli.compare import main
from dlnlab.experiments.build import compose, conf_dir
from dlnlab.experiments.config import register
from dlnlab.experiments.run import run

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A synthetic sweep (real format): lr in 5 values x noise in 2 x seeds 0-2, with job 3's labels
    rewritten and one diverged member added by hand."""
    root = tmp_path_factory.mktemp("sweep")
    make_runs_fixture(root, runs=30, records=40, steps=4000)
    # job 3 (lr 0.01, noise 0, seed 0): its member diverged at step 2000 (NaN from then on)
    t = pd.read_parquet(root / "3" / "metrics" / "table.parquet")
    t.loc[t["step"] >= 2000, "member_status"] = "diverged"
    t.loc[t["step"] >= 2000, "loss"] = np.nan
    t["label"] = np.where(t["rank"] >= 3, "minimum", "saddle")
    t.to_parquet(root / "3" / "metrics" / "table.parquet", index=False)
    return root


def direct_final(root, metric, at_step=None):
    """(lr, noise) -> list of final values, reading every run's files with pandas and yaml."""
    out = {}
    for d in find_runs(root):
        t = pd.read_parquet(d / "metrics" / "table.parquet")
        if at_step is not None:
            t = t[t["step"] <= at_step]
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        out.setdefault((cfg["optim"]["lr"], cfg["task"]["noise"]), []).append(t.sort_values("step")[metric].iloc[-1])
    return out


def test_compare_the_final_loss_by_two_keys(sweep):
    df = load_runs(sweep)
    table = compare(df, ["optim.lr", "task.noise"], "loss")
    expect = direct_final(sweep, "loss")
    assert len(table) == len(expect) == 10
    for key, values in expect.items():
        row = table.loc[key]
        v = np.array(values, dtype=float)
        finite = v[~np.isnan(v)]
        assert row["count"] == len(finite) and row["runs"] == 3
        assert np.isclose(row["mean"], finite.mean()) and np.isclose(row["std"], finite.std(ddof=1))
        assert row["diverged"] == (1 if key == (0.01, 0.0) else 0)
    # default keys: the swept ones, seeds excluded
    assert swept_keys(df) == ["task.noise", "optim.lr"]


def test_compare_at_a_step_and_a_label_metric(sweep):
    df = load_runs(sweep, columns=["rank", "label", "member_status"])
    table = compare(df, ["optim.lr"], "rank", at_step=1000)
    expect = {}
    for (lr, _), values in direct_final(sweep, "rank", at_step=1000).items():
        expect.setdefault(lr, []).extend(values)
    for lr, values in expect.items():
        assert np.isclose(table.loc[lr, "mean"], np.mean(values)) and table.loc[lr, "count"] == 6
    labels = compare(df, [], "label")
    finals = pd.Series([v for vs in direct_final(sweep, "label").values() for v in vs]).value_counts()
    assert labels.loc["all", "count"] == finals.sum() == 30  # one final label per run (E = 1)
    for name, n in finals.items():
        assert labels.loc["all", f"n_{name}"] == n


def test_curves_are_quartiles_across_seeds(sweep):
    df = load_runs(sweep, columns=["loss"])
    cv = curves(df, ["optim.lr"], "loss")
    step = np.sort(df["step"].unique())[10]
    sel = df[(df["optim.lr"] == 0.002) & (df["step"] == step)]["loss"].to_numpy()
    assert len(sel) == 6
    assert np.allclose(cv.loc[(0.002, step), ["q25", "q50", "q75"]].to_numpy(dtype=float),
                       np.quantile(sel, [0.25, 0.5, 0.75]))


def cli(*args):
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        with pytest.raises(SystemExit) as ex:
            main(list(map(str, args)))
    finally:
        sys.stdout, sys.stderr = old
    return ex.value.code, out.getvalue(), err.getvalue()


def test_cli_table_csv_and_plot(sweep, tmp_path):
    code, out, err = cli(sweep, "--by", "optim.lr,task.noise", "--metric", "loss", "--csv", tmp_path / "t.csv",
                         "--plot", tmp_path / "loss.png")
    assert code == 0, err
    assert "at its last record" in out and "grouped by optim.lr, task.noise" in out and "(30 runs)" in out
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [r["optim.lr"] for r in rows[:2]] == ["0.001", "0.001"] and len(rows) == 10
    expect = direct_final(sweep, "loss")
    for r in rows:
        v = np.array(expect[(float(r["optim.lr"]), float(r["task.noise"]))], dtype=float)
        assert np.isclose(float(r["mean"]), np.nanmean(v)) and int(r["count"]) == np.isfinite(v).sum()
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    code, out, _ = cli(sweep, "--by", "optim.lr", "--metric", "rank", "--at-step", "500", "--where", "task.noise=0.1")
    assert code == 0 and "at or before step 500" in out and "(15 runs)" in out


@pytest.mark.parametrize("args, message", [
    (["--by", "optim.lrr"], "unknown --by key 'optim.lrr' (did you mean 'optim.lr'?); allowed: model.depth"),
    (["--metric", "los"], "unknown --metric 'los' (did you mean 'loss'?); allowed: loss, reg_loss"),
    (["--where", "optim.l=0.1"], "unknown --where key 'optim.l'"),
    (["--where", "optim.lr=7"], "no runs under"),
])
def test_cli_user_errors_name_the_allowed_values(sweep, args, message):
    code, out, err = cli(sweep, *args)
    assert code == 2 and message in err and "Traceback" not in err and out == ""


def test_cli_empty_or_missing_root(tmp_path):
    code, _, err = cli(tmp_path)
    assert code == 2 and "no runs under" in err
    code, _, err = cli(tmp_path / "nope")
    assert code == 2 and "does not exist" in err


def test_plot_without_matplotlib_is_a_clear_error(sweep, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = cli(sweep, "--plot", tmp_path / "x.png")
    assert code == 2 and "--plot needs matplotlib" in err and "Traceback" not in err


def test_the_fixture_has_the_columns_of_a_real_run(tmp_path):
    run(compose(["optim.steps=5", "record.every=5", "record.progress=off", "record.tensorboard=false",
                 "model.width=6"]), out_dir=tmp_path / "real")
    make_runs_fixture(tmp_path / "fake", runs=2, records=5, width=6)
    real, fake = load_runs(tmp_path / "real"), load_runs(tmp_path / "fake")
    assert list(real.columns) == list(fake.columns)
    assert real.dtypes.astype(str).tolist() == fake.dtypes.astype(str).tolist()
    assert len(fake) == 10
    assert bench_load(tmp_path / "fake")["rows"] == 10


def hydra_config(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir


    register()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=True)


def test_launcher_presets_compose():
    jl = hydra_config(["hydra/launcher=joblib_local"]).hydra.launcher
    assert jl._target_.endswith("JoblibLauncher") and jl.n_jobs == -1 and jl.prefer == "processes"
    local = hydra_config(["hydra/launcher=slurm_local", "threads=2"]).hydra.launcher
    assert local._target_.endswith("LocalLauncher") and local.cpus_per_task == 2


def test_slurm_preset_makes_the_sbatch_script(tmp_path, monkeypatch):
    """The preset's options reach sbatch: the launcher's own parameter mapping, rendered by submitit
    (with a stand-in `srun` on PATH, as on a cluster login node)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = hydra_config(["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.timeout_min=240",
                        "hydra.launcher.array_parallelism=50", "threads=2", f"hydra.sweep.dir={tmp_path}/sweep",
                        "hydra.job.name=dlnlab"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    # as SlurmLauncher.launch does it
    ex = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                               slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    ex._executor.parameters["map_count"] = 1000
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=cpu", "#SBATCH --time=240", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --mem=4GB", "#SBATCH --array=0-999%50", "#SBATCH --job-name=dlnlab"):
        assert line in text, line


def test_a_sweep_through_submitit_compared_with_one_command(tmp_path):
    """Four tiny jobs (2 lrs x 2 seeds) through the submitit launcher's local executor (the SLURM
    code path, run here), then `dlnlab-compare` on the sweep folder."""
    sweep_dir = tmp_path / "sweep"
    p = subprocess.run([str(BIN / "dlnlab-train"), "-m", "optim.steps=50", "record.every=10", "model.width=3",
                        "record.progress=off", "optim.lr=0.004,0.008", "seed=0,1", "hydra/launcher=slurm_local",
                        f"hydra.sweep.dir={sweep_dir}"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (sweep_dir / ".submitit").is_dir()  # it went through submitit
    df = load_runs(sweep_dir)
    assert df["run"].nunique() == 4 and set(df["status"]) == {"finished"}
    assert sorted(df.groupby("run", observed=True)[["optim.lr", "seed"]].first().itertuples(index=False)) == \
        [(0.004, 0), (0.004, 1), (0.008, 0), (0.008, 1)]
    c = subprocess.run([str(BIN / "dlnlab-compare"), str(sweep_dir), "--metric", "loss", "--csv",
                        str(tmp_path / "c.csv")], capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    assert "grouped by optim.lr" in c.stdout  # the swept key, found by itself
    table = pd.read_csv(tmp_path / "c.csv").set_index("optim.lr")
    final = df[df["step"] == 50].groupby("optim.lr")["loss"]
    assert table["count"].tolist() == [2, 2]
    assert np.allclose(table["mean"], final.mean()) and np.allclose(table["std"], final.std())
