"""What TensorBoard shows: tag descriptions, the label legend, ensemble quartiles, sweep run names."""
import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    run(compose(["optim.steps=400", "record.every=100", "model.ensemble=12", "record.tb_members=2",
                 "record.progress=off", "optim.lr=0.03"]), out_dir=out)
    acc = EventAccumulator(str(out), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return out, acc


def test_ensemble_quartiles_over_all_members(ensemble_run):
    out, acc = ensemble_run
    df = load_run(out)
    assert (df[df.step == 400].member_status == "diverged").sum() >= 3  # lr 0.03 is too large for some
    for key in ("loss", "rank"):
        for name, q in (("q25", 0.25), ("q50", 0.5), ("q75", 0.75)):
            events = acc.Scalars(f"ensemble/{key}_{name}")
            assert [e.step for e in events] == [0, 100, 200, 300, 400]
            for e in events:  # over all 12 members, not the 2 shown; diverged members left out
                at = df[(df.step == e.step) & (df.member_status == "training")]
                v = at[key].to_numpy(dtype=float)
                assert len(v) >= 2 and np.isfinite(v).all()
                want = np.quantile(v, q, method="lower" if key == "rank" else "linear")
                assert e.value == pytest.approx(want, rel=1e-6)
                if key == "rank":
                    assert e.value == int(e.value)


def test_tags_carry_descriptions_and_the_label_legend(ensemble_run):
    out, acc = ensemble_run
    legend = "-1 ambiguous, 0 not_critical, 1 strict_saddle, 2 nonstrict_saddle, 3 global_min, 4 degenerate, 5 local_min"
    meta = acc.SummaryMetadata("m0/label_code")
    assert meta.summary_description == legend
    assert "lab units" in acc.SummaryMetadata("m1/loss/train").summary_description
    assert "quantiles over all members" in acc.SummaryMetadata("ensemble/rank_q50").summary_description
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    titles = [c.title for cat in layout.category for c in cat.chart]
    assert f"label_code: {legend}" in titles
    margin = next(c for cat in layout.category for c in cat.chart if c.title.startswith("loss over all members"))
    assert [s.value for s in margin.margin.series] == ["ensemble/loss_q50"]


def test_sweep_runs_are_named_by_their_overrides(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    p = subprocess.run([str(Path(sys.executable).parent / "dlnlab-train"), "-m", "optim.steps=20", "record.every=10",
                        "record.progress=off", "optim.lr=0.002,0.004", f"hydra.sweep.dir={tmp_path}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    names = sorted(d.name for d in tmp_path.iterdir() if d.is_dir())
    assert names == ["0_optim.lr=0.002,optim.steps=20,record.every=10",
                     "1_optim.lr=0.004,optim.steps=20,record.every=10"]
    assert json.loads((tmp_path / names[0] / "status.json").read_text())["status"] == "finished"
    assert "\n0    " in p.stdout  # the sweep table names jobs by number
