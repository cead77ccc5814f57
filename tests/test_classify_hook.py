"""The classifier in training runs: the default saddle-to-saddle experiment, labelled."""
import subprocess
import sys
from pathlib import Path

import pytest

from dlnlab.experiment import compose, prepare, run
from dlnlab.landscape import plateau_values
from dlnlab.runs import load_run


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("s2s")
    cfg = compose(["record.progress=off"])  # the default experiment, unshortened (~10 s)
    run(cfg, out_dir=out)
    return out, cfg


def test_plateaus_are_labelled_in_order_at_their_critical_values(default_run):
    out, cfg = default_run
    df = load_run(out)
    task = prepare(cfg)
    X, Y = task.landscape_data()
    r_max = min(cfg.task.d_x, cfg.task.d_y, cfg.model.width)
    predicted = {p.r: p.value / task.paper_scale for p in plateau_values(X, Y, r_max=r_max)}
    saddles = df[df.label.isin(["strict_saddle", "nonstrict_saddle"])]
    # every saddle the run sits at is a "top" S = {1..r}, visited in order r = 0, 1, ..., r_max - 1
    order = list(dict.fromkeys(saddles.S))
    assert order == ["{}", "{1}", "{1,2}", "{1,2,3}"]
    # A plateau: the records whose S was read (saddles, and "ambiguous" ones whose tightened/loose
    # verdict sat inside the rank tolerance band: the unlearned components are ~init^(1/H)).
    plateau = df[df.label.isin(["strict_saddle", "nonstrict_saddle", "ambiguous"]) & (df.S != "")]
    for r, S in enumerate(order):
        on = plateau[plateau.S == S]
        best = on.loc[on.grad_norm.idxmin()]  # the flattest point of the plateau
        assert abs(best.loss - predicted[r]) <= 1e-3 * predicted[r], (S, best.loss, predicted[r])
        assert best.critical_value == pytest.approx(predicted[r], rel=1e-12)
    final = df[df.step == df.step.max()].iloc[0]
    assert final.label == "global_min" and final.S == "{1,2,3,4}"


def test_nearest_plateau_is_reported_between_labels(default_run):
    df = load_run(default_run[0])
    assert df.nearest_S.str.len().gt(0).all()
    moving = df[df.label.isin(["not_critical", "ambiguous"])]
    assert len(moving) and moving.nearest_value.notna().all()


def test_labels_reach_tensorboard(default_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(default_run[0]), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/critical_value", "loss/nearest_plateau", "label_code"} <= tags
    assert [e.value for e in acc.Scalars("label_code")][-1] == 3.0  # global_min
    assert "label/text_summary" in acc.Tags()["tensors"]


def test_classify_cli_on_a_checkpoint(default_run):
    out = default_run[0]
    p = subprocess.run([str(Path(sys.executable).parent / "dlnlab-classify"), str(out), "--hessian"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "global_min" in p.stdout and "S = {1,2,3,4}" in p.stdout and "hessian_min_eig" in p.stdout
    bad = subprocess.run([str(Path(sys.executable).parent / "dlnlab-classify"), str(out / "nope.pt")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nope.pt" in bad.stderr


def test_ridge_runs_get_second_order_labels_at_the_end(tmp_path):
    cfg = compose(["optim.ridge=0.01", "optim.steps=300", "record.every=100", "record.progress=off",
                   "model.init.kind=gaussian", "model.init.scale=1.0", "optim.lr=0.01"])
    run(cfg, out_dir=tmp_path)
    df = load_run(tmp_path)
    last = df[df.step == 300].iloc[0]
    assert last.label in {"not_critical", "strict_saddle", "local_min", "degenerate"}
    assert last.label_reason
