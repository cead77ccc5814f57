"""Reading runs into pandas: load_runs / list_runs / load_events / summarize, on real runs and on
synthetic sweeps in the real run-folder format, checked against reading the files directly."""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from runs_fixture import make_runs_fixture

import dlnlab.analysis.runs as R
from dlnlab.analysis.folders import DamagedRunWarning, find_runs, flatten_config
from dlnlab.analysis.runs import list_runs, load_events, load_run, load_runs
from dlnlab.analysis.summary import summarize
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run
from dlnlab.runfolder import part_path, write_part

TINY = ["optim.steps=40", "record.every=10", "record.log_spaced=0", "model.width=3", "record.progress=off",
        "record.tensorboard=false"]


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """Three real runs as a sweep folder: two lrs, and one ensemble of 2; with Hydra's overrides."""
    root = tmp_path_factory.mktemp("sweep")
    jobs = [["optim.lr=0.005"], ["optim.lr=0.01"], ["optim.lr=0.01", "model.ensemble=2", "model.depth=3"]]
    for k, extra in enumerate(jobs):
        out = root / str(k)
        (out / ".hydra").mkdir(parents=True)
        (out / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(extra))
        run(compose(TINY + extra), out_dir=out)
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_runs_fixture(root, runs=12, records=25, steps=2000, events=True)
    return root


def direct_table(run_dir: Path) -> pd.DataFrame:
    """A run's table read with plain pandas, the independent way."""
    files = [run_dir / "metrics" / "table.parquet"]
    if not files[0].exists():
        files = sorted((run_dir / "metrics").glob("part-*"))
    read = lambda f: pd.read_feather(f) if f.suffix == ".arrow" else pd.read_parquet(f)   # noqa: E731
    return pd.concat([read(f) for f in files], ignore_index=True)


def test_load_runs_matches_the_files_of_real_runs(real_sweep):
    df = load_runs(real_sweep)
    runs = [str(real_sweep / k) for k in ("0", "1", "2")]
    assert df["run"].unique().tolist() == runs
    for r in runs:
        part = df[df["run"] == r].reset_index(drop=True)
        direct = direct_table(Path(r))
        assert len(part) == len(direct) > 0
        for col in direct.columns:
            a, b = part[col].astype(object).to_numpy(), direct[col].astype(object).to_numpy()
            assert ((a == b) | (pd.isna(a) & pd.isna(b))).all(), col   # NaN: columns computed every few records
        cfg = flatten_config(yaml.safe_load((Path(r) / "config.yaml").read_text()))
        for key in ("optim.lr", "model.depth", "model.ensemble", "seed", "task.kind", "model.widths"):
            assert (part[key] == cfg[key]).all(), key
        status = json.loads((Path(r) / "status.json").read_text())
        assert (part["status"] == "finished").all() and (part["wall_time"] == status["wall_time"]).all()
    # the ensemble run has one row per (step, member), the H = 3 run no rank_4_1 values
    ens = df[df["model.ensemble"] == 2]
    assert sorted(ens["member"].unique()) == [0, 1] and ens["rank_4_1"].isna().all()
    assert ens["rank_3_1"].notna().all() and df.loc[df["model.depth"] == 4, "rank_4_1"].notna().all()
    assert df.loc[df["run"] == runs[2], "overrides"].iloc[0] == "optim.lr=0.01 model.ensemble=2 model.depth=3"
    # columns: run, the table, per-run values, then the config
    assert list(df.columns[:3]) == ["run", "step", "member"]
    assert df.columns.get_loc("status") < df.columns.get_loc("model.depth")


def test_load_run_of_one_folder_and_the_column_subset(real_sweep):
    one = load_run(real_sweep / "1")
    assert one["run"].nunique() == 1 and one["step"].tolist() == [0, 10, 20, 30, 40]
    few = load_runs(real_sweep, columns=["loss"], config=["optim.lr"])
    assert list(few.columns) == ["run", "step", "member", "loss", "status", "wall_time", "overrides",
                                 "optim.lr"]
    assert len(few) == len(load_runs(real_sweep))


def test_where_selects_runs_before_reading_their_tables(synthetic):
    every = list_runs(synthetic)
    assert len(every) == 12 and every["run"].tolist() == [str(synthetic / str(k)) for k in range(12)]
    lr = 0.002  # jobs 1, 6, 11 of the synthetic sweep (lr cycles through 5 values)
    # a damaged table in a run that is not selected is never opened: no warning
    victim = synthetic / "0" / "metrics" / "table.parquet"
    good = victim.read_bytes()
    victim.write_bytes(good[:100])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            df = load_runs(synthetic, where={"optim.lr": lr})
            assert sorted(df["run"].unique()) == sorted(str(synthetic / k) for k in ("1", "11", "6"))
            both = load_runs(synthetic, where={"optim.lr": [lr, 0.005], "task.noise": 0.0})
            # lr 0.002 or 0.005 and noise 0 (jobs 0-4 and 10-11 have noise 0)
            assert sorted(both["run"].unique()) == sorted(str(synthetic / k) for k in ("1", "11", "2"))
            fn = load_runs(synthetic, where=lambda c: c["seed"] == 1 and c["status"] == "finished")
            assert sorted(fn["run"].unique()) == [str(synthetic / str(k)) for k in (10, 11)]
        with pytest.raises(KeyError, match="optim.lrr"):
            load_runs(synthetic, where={"optim.lrr": lr})
        with pytest.warns(DamagedRunWarning, match="table.parquet"):
            load_runs(synthetic, where={"optim.lr": 0.001})  # selects job 0
    finally:
        victim.write_bytes(good)


def write_run(d: Path, status="finished", parts=None, config=None, events=None):
    (d / "metrics").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config or {"optim": {"lr": 0.1}, "seed": 0}))
    (d / "status.json").write_text(json.dumps({"status": status, "step": 20, "wall_time": 1.5}))
    for k, part in enumerate(parts or []):
        part.to_parquet(d / "metrics" / f"part-{k:05d}.parquet", index=False)
    if events is not None:
        events.to_parquet(d / "events.parquet", index=False)


def part(steps, members=1, **cols):
    n = len(steps) * members
    df = pd.DataFrame({"step": np.repeat(steps, members).astype(np.int64),
                       "member": np.tile(np.arange(members), len(steps)).astype(np.int64)})
    for k, v in cols.items():
        df[k] = v if np.ndim(v) else [v] * n
    df["member_status"] = "training"
    return df


def test_unfinished_runs_and_damaged_files(tmp_path):
    # a running job wrote two parts; the second has a column the first lacks (a new hook's)
    write_run(tmp_path / "running", status="running",
              parts=[part([0, 10], loss=[2.0, 1.0]), part([20], loss=0.5, label="saddle")])
    write_run(tmp_path / "truncated", parts=[part([0], loss=1.0)])
    f = tmp_path / "truncated" / "metrics" / "part-00000.parquet"
    f.write_bytes(f.read_bytes()[:-30])
    write_run(tmp_path / "bad_status", parts=[part([0], loss=3.0)])
    (tmp_path / "bad_status" / "status.json").write_text("{not json")
    write_run(tmp_path / "bad_config", parts=[part([0], loss=4.0)])
    (tmp_path / "bad_config" / "config.yaml").write_text("optim: [unclosed\n  lr: :")
    with pytest.warns(DamagedRunWarning) as caught:
        df = load_runs(tmp_path)
    messages = "\n".join(str(w.message) for w in caught)
    for name in ("truncated/metrics/part-00000.parquet", "bad_status/status.json", "bad_config/config.yaml"):
        assert name in messages
    by_run = {Path(r).name: g for r, g in df.groupby("run", observed=True)}
    assert set(by_run) == {"running", "bad_status", "bad_config"}  # the truncated run has no rows
    running = by_run["running"]
    assert running["step"].tolist() == [0, 10, 20] and running["loss"].tolist() == [2.0, 1.0, 0.5]
    assert running["label"].isna().tolist() == [True, True, False] and (running["status"] == "running").all()
    assert (by_run["bad_status"]["status"] == "unknown").all()
    assert by_run["bad_config"]["optim.lr"].isna().all() and (by_run["running"]["optim.lr"] == 0.1).all()
    with pytest.warns(DamagedRunWarning) as caught:
        listed = list_runs(tmp_path)  # every run folder, the truncated one too
    assert caught[0].filename == __file__  # the warning points at the caller
    assert sorted(Path(r).name for r in listed["run"]) == ["bad_config", "bad_status", "running", "truncated"]


def test_runs_are_found_in_natural_order(tmp_path):
    for k in (10, 2, 1):
        write_run(tmp_path / str(k), parts=[part([0], loss=float(k))])
    assert [p.name for p in find_runs(tmp_path)] == ["1", "2", "10"]
    assert load_runs(tmp_path)["loss"].tolist() == [1.0, 2.0, 10.0]


def test_load_events(tmp_path, synthetic):
    write_run(tmp_path / "0", parts=[part([0], loss=1.0)])
    empty = load_events(tmp_path)
    assert empty.empty and list(empty.columns) == ["run", "member", "step", "from_rank", "to_rank", "kind",
                                                   "rank_type", "in_B"]
    ev = load_events(synthetic)
    direct = [pd.read_parquet(p / "events.parquet").assign(run=str(p)) for p in find_runs(synthetic)]
    direct = pd.concat(direct, ignore_index=True)
    assert len(ev) == len(direct) > 0
    assert list(ev.columns[:7]) == ["run", "member", "step", "from_rank", "to_rank", "kind", "rank_type"]
    for col in ("run", "member", "step", "from_rank", "to_rank", "kind"):
        assert ev[col].astype(object).tolist() == direct[col].astype(object).tolist()
    assert ev["step"].dtype == np.int64 and "optim.lr" in ev.columns
    lr = {str(p): yaml.safe_load((p / "config.yaml").read_text())["optim"]["lr"] for p in find_runs(synthetic)}
    assert (ev["optim.lr"] == ev["run"].astype(str).map(lr)).all()
    (tmp_path / "0" / "events.parquet").write_bytes(b"PAR1 garbage")
    with pytest.warns(DamagedRunWarning, match="0/events.parquet"):
        assert load_events(tmp_path).empty


def test_an_empty_root_gives_empty_frames(tmp_path):
    assert list(load_runs(tmp_path).columns[:3]) == ["run", "step", "member"] and load_runs(tmp_path).empty
    assert list_runs(tmp_path).empty and load_events(tmp_path).empty


def test_summarize_per_member_and_per_run(tmp_path):
    # run a: 2 members; member 1 diverges; labels; tracker events (layer rank 3 -> 1 for member 0,
    # 3 -> 2 for member 1, and one end-to-end event that the default rank_type leaves out)
    a = part([0, 10, 20], members=2, loss=[5.0, 6.0, 2.0, 7.0, 1.0, np.nan], rank=[0, 0, 1, 0, 2, np.nan],
             label=["saddle", "saddle", "saddle", "saddle", "minimum", "saddle"])
    a.loc[5, "member_status"] = "diverged"
    ev = pd.DataFrame({"member": [0, 0, 1, 0, 0], "step": [10, 20, 20, 15, 5], "from_rank": [3, 2, 3, 1, 3],
                       "to_rank": [2, 1, 2, 2, 2], "kind": ["entered", "entered", "entered", "increase", "entered"],
                       "rank_type": ["layer", "layer", "layer", "layer", "end_to_end"]})
    write_run(tmp_path / "a", parts=[a], events=ev, config={"optim": {"lr": 0.1}, "seed": 0})
    write_run(tmp_path / "b", parts=[part([0, 10], loss=[3.0, 0.5], rank=[0, 1], label=["saddle", "minimum"])],
              config={"optim": {"lr": 0.2}, "seed": 1})  # the tracker did not see it: no events file
    df = load_runs(tmp_path)
    m = summarize(df, per="member").set_index(["run", "member"])
    ra, rb = str(tmp_path / "a"), str(tmp_path / "b")
    assert m.loc[(ra, 0), ["final_step", "final_loss", "final_rank", "diverged", "jumped", "jumps", "first_jump",
                           "first_passage_1", "first_passage_2", "increases"]].tolist() == [20, 1, 2, 0, 1, 2, 10,
                                                                                         20, 10, 1]
    assert m.loc[(ra, 1), ["diverged", "jumped", "jumps", "first_jump", "first_passage_2", "increases"]].tolist() \
        == [1, 1, 1, 20, 20, 0]
    assert np.isnan(m.loc[(ra, 1), "first_passage_1"]) and m.loc[(ra, 0), "final_label"] == "minimum"
    assert m.loc[(rb, 0), ["jumped", "jumps", "first_jump", "increases"]].isna().all()  # unknown, not zero
    e2e = summarize(df, per="member", rank_type="end_to_end").set_index(["run", "member"])
    assert e2e.loc[(ra, 0), ["jumps", "first_jump"]].tolist() == [1, 5] and e2e.loc[(ra, 1), "jumps"] == 0
    r = summarize(df).set_index("run")
    assert r.loc[ra, ["members", "diverged", "jumped", "jumps", "increases"]].tolist() == [2, 1, 2, 3, 1]
    assert r.loc[ra, "first_jump"] == 15 and r.loc[ra, "first_passage_2"] == 15  # medians of (10, 20)
    assert r.loc[ra, "final_loss"] == 1.0  # the median of [1.0, NaN]
    assert r.loc[rb, "final_label"] == "minimum" and r.loc[rb, "final_loss"] == 0.5 and np.isnan(r.loc[rb, "jumped"])
    assert r.loc[ra, "optim.lr"] == 0.1 and r.loc[rb, "seed"] == 1
    assert r.loc[ra, "wall_time"] == 1.5 and r.loc[ra, "status"] == "finished"
    # events given explicitly (every run counts as tracked); and none at all
    assert "jumps" not in summarize(df, events=False).columns
    assert summarize(df, events=load_events(tmp_path)).set_index("run").loc[rb, "jumped"] == 0


def test_summarize_the_jumps_of_a_synthetic_sweep(synthetic):
    df = load_runs(synthetic, columns=["loss", "rank", "member_status"])
    s = summarize(df).set_index("run")
    direct = {str(p): pd.read_parquet(p / "events.parquet") for p in find_runs(synthetic)}
    for run_dir, ev in direct.items():
        entered = ev[(ev["kind"] == "entered") & (ev["rank_type"] == "layer")]
        assert s.loc[run_dir, "jumped"] == len(entered) <= 1
        if len(entered):
            assert s.loc[run_dir, "first_jump"] == entered["step"].iloc[0] == s.loc[run_dir, "first_passage_3"]
        else:
            assert np.isnan(s.loc[run_dir, "first_jump"])
    assert s["jumped"].sum() > 0  # some of the 12 runs jumped within 2000 steps


def test_a_table_with_a_config_named_column_keeps_the_recorded_one(tmp_path):
    write_run(tmp_path / "r", parts=[part([0], loss=1.0, seed=7.0)], config={"seed": 3})
    assert load_runs(tmp_path)["seed"].tolist() == [7.0]


def test_null_columns_and_string_metrics_load(tmp_path):
    p = part([0, 10], loss=1.0)
    table = pa.Table.from_pandas(p, preserve_index=False).append_column("S", pa.nulls(2))
    (tmp_path / "r" / "metrics").mkdir(parents=True)
    pq.write_table(table, tmp_path / "r" / "metrics" / "table.parquet")
    (tmp_path / "r" / "status.json").write_text(json.dumps({"status": "finished"}))
    with pytest.warns(DamagedRunWarning, match="config.yaml is missing"):   # this run has none
        df = load_runs(tmp_path)
    assert df["S"].isna().all() and df["S"].dtype == np.float64
    assert (df["member_status"] == "training").all() and df["overrides"].tolist() == ["", ""]


def test_arrow_parts_of_a_running_run_next_to_parquet_parts_of_an_older_version(tmp_path):
    """This version writes its parts as Arrow IPC files (`write_part`); a run folder may also hold the
    parquet parts of an earlier version (a resumed old run). Both load, in part order; a truncated
    Arrow part is reported and skipped like a truncated parquet one."""
    write_run(tmp_path / "r", status="running", parts=[part([0, 10], loss=[2.0, 1.0])])
    write_part(pa.Table.from_pandas(part([20], loss=0.5, label="saddle"), preserve_index=False),
               part_path(tmp_path / "r" / "metrics", 1))
    df = load_run(tmp_path / "r")
    assert df["step"].tolist() == [0, 10, 20] and df["loss"].tolist() == [2.0, 1.0, 0.5]
    assert df["label"].isna().tolist() == [True, True, False]
    write_run(tmp_path / "cut", status="running")
    f = part_path(tmp_path / "cut" / "metrics", 0)
    write_part(pa.Table.from_pandas(part([0], loss=1.0), preserve_index=False), f)
    f.write_bytes(f.read_bytes()[:-30])
    with pytest.warns(DamagedRunWarning, match="part-00000.arrow"):
        assert set(load_runs(tmp_path)["run"]) == {str(tmp_path / "r")}


def test_a_run_compacting_its_parts_while_being_read(tmp_path, monkeypatch):
    """The parts listed a moment ago are gone (the run just compacted them): list again."""

    write_run(tmp_path / "r", parts=[part([0, 10], loss=[2.0, 1.0])])
    real = R.table_files
    calls = []

    def listing(run_dir):
        calls.append(run_dir)
        return [run_dir / "metrics" / "part-00007.parquet"] if len(calls) == 1 else real(run_dir)
    monkeypatch.setattr(R, "table_files", listing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_runs(tmp_path)["loss"].tolist() == [2.0, 1.0] and len(calls) == 2


def test_a_file_with_odd_column_types_is_skipped_even_when_it_comes_first(tmp_path):
    """A run whose loss was stored as text cannot merge with the others: it is skipped with a
    warning naming it, and the good runs load, whichever order the folders come in."""
    write_run(tmp_path / "0", parts=[part([0, 10], loss="oops")])  # the odd one, read first
    write_run(tmp_path / "1", parts=[part([0, 10], loss=1.0)])
    write_run(tmp_path / "2", parts=[part([0, 10], loss=2.0)])
    bad_status = tmp_path / "2" / "status.json"
    bad_status.write_text(json.dumps({"status": "finished", "step": "20x", "wall_time": "oops"}))
    with pytest.warns(DamagedRunWarning) as caught:
        df = load_runs(tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert str(tmp_path / "0") in messages and "step, wall_time" in messages
    assert sorted(df["run"].unique()) == [str(tmp_path / "1"), str(tmp_path / "2")]
    assert df.groupby("run", observed=True)["loss"].first().tolist() == [1.0, 2.0]
    assert df.loc[df["run"] == str(tmp_path / "2"), "status"].iloc[0] == "finished"  # the sound fields stay


def test_a_reused_run_folder_shows_only_the_new_run(tmp_path):
    run(compose(["optim.steps=300", "record.progress=off"]), out_dir=tmp_path)
    run(compose(["optim.steps=100", "record.progress=off", "seed=3"]), out_dir=tmp_path)
    df = load_run(tmp_path)
    assert df["step"].max() == 100 and set(df["seed"]) == {3}


def test_last_records_keeps_every_run_and_member_at_its_own_last_step(tmp_path):
    # a short GD run next to a longer 2-member SGD run: `df.step == df.step.max()` would drop the GD run
    write_run(tmp_path / "gd", parts=[part([0, 10], loss=[3.0, 0.5], rank=[0, 1])],
              config={"optim": {"name": "gd", "lr": 0.1}, "seed": 0})
    write_run(tmp_path / "sgd", parts=[part([0, 10, 20], members=2, loss=[5.0, 6.0, 2.0, 7.0, 1.0, 4.0],
                                            rank=[0, 0, 1, 0, 2, 1])],
              config={"optim": {"name": "sgd", "lr": 0.2}, "seed": 0})
    from dlnlab import last_records

    df = load_runs(tmp_path)
    last = last_records(df)
    assert len(last) == 3
    assert sorted(zip(last["optim.name"], last["member"], last["step"], last["loss"])) == [
        ("gd", 0, 10, 0.5), ("sgd", 0, 20, 1.0), ("sgd", 1, 20, 4.0)]
    assert last.groupby("optim.lr")["loss"].mean().to_dict() == {0.1: 0.5, 0.2: 2.5}
    assert len(df[df.step == df.step.max()]) == 2  # what the README used to do: the GD run is lost
