"""The `loss` config group in runs: training under a convex loss, the width condition at start, and the
ConvexHook's columns and status (dlnlab.experiments, dlnlab.recording.convex)."""
import json

import pytest
import torch

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import (
    build_hooks,
    compose,
    prepare,
    run_info,
    width_report,
)
from dlnlab.experiments.config import ConfigError
from dlnlab.experiments.run import run
from dlnlab.recording.base import Hook
from dlnlab.recording.classifier import ClassifierHook
from dlnlab.recording.convex import ConvexHook
from dlnlab.recording.tensorboard import hparam_dict
from dlnlab.tasks import DataError

QUIET = ["record.progress=off", "record.tensorboard=false"]


def test_huber_run_trains_and_its_loss_decreases():
    cfg = compose(["loss=huber", "loss.delta=0.5", "optim.steps=200", "record.every=50"] + QUIET)
    task = prepare(cfg)
    assert task.loss_name == "huber" and task.batch_arrays(None)[-1] is task.objective  # factored, grad_out
    seen = []

    class Losses(Hook):
        def on_record(self, trainer, rec):
            seen.append(float(rec.metrics["loss"][0]))

    s = run(cfg, extra_hooks=[Losses()], task=task)
    assert s.status == "finished" and s.steps == 200
    assert len(seen) == 5 and all(b < a for a, b in zip(seen, seen[1:]))
    # the recorded loss is the Huber loss of the task, not the square loss
    assert seen[-1] == pytest.approx(s.final_loss[0], rel=1e-12)


def test_square_default_is_todays_task_and_classifier():
    cfg = compose(["optim.steps=1"] + QUIET)
    task = prepare(cfg)
    assert task.objective is None and task.square_loss and task.batch_arrays(None) is not None
    hooks = build_hooks(cfg, None)
    assert any(isinstance(h, ClassifierHook) for h in hooks) and not any(isinstance(h, ConvexHook) for h in hooks)
    hooks = build_hooks(compose(["loss=huber"] + QUIET), None)
    assert any(isinstance(h, ConvexHook) for h in hooks) and not any(isinstance(h, ClassifierHook) for h in hooks)


def test_square_with_product_ridge_adds_mu_norm_of_product():
    plain = prepare(compose(QUIET))
    ridged = prepare(compose(["loss.product_ridge=0.1"] + QUIET))
    ws = [torch.randn(2, 6, 6, dtype=torch.float64), torch.randn(2, 6, 6, dtype=torch.float64),
          torch.randn(2, 6, 6, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)]
    A = ws[3] @ ws[2] @ ws[1] @ ws[0]
    assert torch.allclose(ridged.loss(ws), plain.loss(ws) + 0.1 * A.pow(2).sum((-1, -2)))
    assert ridged.batch_arrays(None) is None


@pytest.mark.parametrize("overrides, needle", [
    (["loss.name=foo"], "loss='foo' is invalid: allowed square | cross_entropy"),
    (["loss=huber", "loss.delta=0"], "loss.delta=0.0 is invalid"),
    (["loss=pseudo_huber", "loss.delta=-1"], "loss.delta=-1.0 is invalid"),
    (["loss=lp", "loss.p=1"], "loss.p=1.0 is invalid: allowed a number in (1, 2]"),
    (["loss=lp", "loss.p=2.5"], "loss.p=2.5 is invalid"),
    (["loss.product_ridge=-0.1"], "loss.product_ridge=-0.1 is invalid"),
    (["task.targets=labels"], "task.targets='labels' is invalid: allowed real | classes"),
    (["loss=huber", "classify.convex_gap_rtol=0"], "classify.convex_gap_rtol=0.0 is invalid: allowed a finite"),
])
def test_bad_loss_options_are_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError) as e:
        prepare(compose(overrides + QUIET))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_cross_entropy_on_real_targets_is_a_one_line_error():
    with pytest.raises(DataError) as e:
        prepare(compose(["loss=cross_entropy"] + QUIET))
    msg = str(e.value)
    assert msg.startswith("loss=cross_entropy needs class targets") and "\n" not in msg


def test_width_condition_in_status_hparams_and_summary(tmp_path):
    s = run(compose(["model.width=2", "optim.steps=5"] + QUIET), out_dir=tmp_path)
    st = json.loads((tmp_path / "status.json").read_text())
    assert st["width_condition"] is False and st["bottlenecks"] == [[1, 2], [2, 2], [3, 2]]
    assert "bottleneck at layer h=1" in st["width_message"] and "bottleneck" in s.width
    hp = hparam_dict({"optim": {"lr": 0.1}}, "finished", {"width_condition": False, "bottlenecks": [[1, 2]]})
    assert hp["width_condition"] is False and hp["bottlenecks"] == "[[1, 2]]"
    run(compose(["optim.steps=5"] + QUIET), out_dir=tmp_path / "wide")
    st = json.loads((tmp_path / "wide" / "status.json").read_text())
    assert st["width_condition"] is True and st["bottlenecks"] == [] and st["loss"] == "square"


def test_width_report_names_the_bottleneck():
    cfg = compose(["model.widths=[6,1,6]"] + QUIET)
    w = width_report(cfg, prepare(cfg))
    assert not w.holds and w.bottlenecks == ((2, 1),) and "layer h=2 (d_2=1)" in w.message


def test_convex_hook_labels_a_huber_run_global_min(tmp_path):
    cfg = compose(["loss=huber", "loss.delta=0.5", "optim.lr=0.005", "model.init.scale=0.5",
                   "optim.steps=4000", "record.every=1000", "record.progress=off"])
    s = run(cfg, out_dir=tmp_path)
    df = load_run(tmp_path)
    for col in ("convex_gap", "grad_l_norm", "convex_label", "convex_label_code"):
        assert col in df.columns
    assert df["convex_label"].iloc[0] == "not_critical"
    last = df.iloc[-1]
    assert last["convex_label"] == "global_min" and s.labels == ["global_min"]
    assert abs(last["convex_gap"]) < 1e-8 and last["grad_l_norm"] < 1e-3
    st = json.loads((tmp_path / "status.json").read_text())
    assert st["no_minimiser"] is False and st["convex_reference_converged"] is True
    assert st["convex_reference"] == pytest.approx(0.0, abs=1e-12)
    # the numeric columns are declared for TensorBoard
    assert set(ConvexHook.tb_tags) == {"convex_gap", "grad_l_norm", "convex_label_code"}


def test_cross_entropy_on_separable_classes_reports_no_minimiser(tmp_path):
    cfg = compose(["loss=cross_entropy", "task.targets=classes", "optim.lr=0.05", "model.init.scale=0.3",
                   "optim.steps=300", "record.every=100"] + QUIET)
    s = run(cfg, out_dir=tmp_path)
    st = json.loads((tmp_path / "status.json").read_text())
    assert st["no_minimiser"] is True and "separable" in st["no_minimiser_evidence"]
    assert "global_min" not in set(load_run(tmp_path)["convex_label"]) and s.status == "finished"


def test_cross_entropy_on_noisy_classes_has_a_minimiser(tmp_path):
    cfg = compose(["loss=cross_entropy", "task.targets=classes", "task.noise=3", "optim.lr=0.05",
                   "model.init.scale=0.3", "optim.steps=3000", "record.every=3000"] + QUIET)
    s = run(cfg, out_dir=tmp_path)
    st = json.loads((tmp_path / "status.json").read_text())
    assert st["no_minimiser"] is False
    assert s.final_loss[0] == pytest.approx(st["convex_reference"], rel=1e-6) and s.labels == ["global_min"]


def test_classify_convex_gap_rtol_decides_global_min_against_near_global(tmp_path):
    """The run's records at step 3000 of a cross-entropy run have grad ell(A) ~ 0 and a gap to ell* of
    ~1e-7 (relative ~5e-7): global_min at the default convex_gap_rtol (1e-4), near_global at 1e-9."""
    base = ["loss=cross_entropy", "task.targets=classes", "task.noise=1", "optim.lr=0.05", "model.init.scale=0.3",
            "optim.steps=3000", "record.every=1000"] + QUIET
    labels = {}
    for rtol in (None, 1e-9):
        out = tmp_path / str(rtol)
        run(compose(base + ([] if rtol is None else [f"classify.convex_gap_rtol={rtol}"])), out_dir=out)
        last = load_run(out).iloc[-1]
        st = json.loads((out / "status.json").read_text())
        rel = last["convex_gap"] / max(abs(st["convex_reference"]), 1e-300)
        assert last["grad_l_norm"] <= 1e-3 and 1e-9 < rel < 1e-4, (last["convex_gap"], rel)
        labels[rtol] = (last["convex_label"], last["convex_label_code"])
    assert labels == {None: ("global_min", 3.0), 1e-9: ("near_global", 4.0)}


@pytest.mark.parametrize("overrides, applies, why", [
    ([], True, None),
    (["optim.ridge=0.01"], False, "lambda up to 0.01"),
    (["optim.milestones=[100]", "optim.ridge_values=[0,0.002]"], False, "lambda up to 0.002"),  # later
    (["model.width=2"], False, "bottleneck at layer h=1"),
    (["loss=huber", "loss.product_ridge=0.1"], True, None),   # mu ||A||^2 is inside the theorem
    (["experiment=rank_staircase"], False, "lambda up to 0.01"),
    (["experiment=one_way_jumps", "optim.ridge=0", "jumps.warmup.ridge=0.003"], False, "lambda up to 0.003"),
])
def test_the_run_says_whether_all_local_minima_are_global(overrides, applies, why):
    """The width line printed at the start, in status.json and in the summary (`width_message`)."""
    cfg = compose(overrides + QUIET)
    info = run_info(cfg, prepare(cfg))
    msg = info["width_message"]
    assert info["theorem_applies"] is applies
    assert ("all local minima are global" in msg) is applies
    if not applies:
        assert "theorem does not apply" in msg and why in msg, msg
