"""The classifier in training runs: the default saddle-to-saddle experiment, labelled; units of the
hook's values; TensorBoard; the dlnlab-classify CLI."""
import itertools
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlnlab.analysis.runs import load_run
from dlnlab.cli.classify import main as classify_cli
from dlnlab.experiments.build import compose, prepare
from dlnlab.experiments.run import run
from dlnlab.recording.classifier import ClassifierHook

# Tolerances of the tests (why each value):
PLATEAU_RTOL = 1e-3         # the issue: plateau losses within 1e-3 relative of the predicted values
VALUE_RTOL = 1e-12          # the hook's critical value vs the config's closed form (float64 rounding)
UNITS_RTOL = 1e-12          # the same number in paper units / paper_scale vs in lab units
PRINTED_RTOL = 1e-9         # the CLI prints 10 significant digits

SADDLES = ["strict_saddle", "nonstrict_saddle"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("s2s")
    cfg = compose(["record.progress=off"])  # the default experiment, unshortened (~10 s)
    run(cfg, out_dir=out)
    return out, cfg


def _fmt_S(S) -> str:
    return "{" + ",".join(str(i) for i in S) + "}"


def _teacher_plateaus(cfg) -> list[float]:
    """Lab-loss plateau values from the config alone: with X^T X = m I (whitened) and no noise, the
    critical point of S = {1..r} has lab loss sum_{i > r} s_i^2 (s = the teacher spectrum, descending);
    r = 0..r_max, the last one the global minimum."""
    assert cfg.task.whiten and cfg.task.noise == 0
    s = sorted((float(v) for v in cfg.task.spectrum), reverse=True)
    s += [0.0] * (cfg.task.d_y - len(s))
    r_max = min(cfg.task.d_x, cfg.task.d_y, cfg.model.width)
    return [sum(v * v for v in s[r:]) for r in range(r_max + 1)]


def _runs(seq) -> list:
    """Consecutive duplicates collapsed (a return to an earlier value shows up as a repeat)."""
    return [k for k, _ in itertools.groupby(seq)]


def test_plateaus_are_labelled_in_order_at_their_critical_values(default_run):
    out, cfg = default_run
    df = load_run(out).sort_values("step")
    predicted = _teacher_plateaus(cfg)                       # e.g. 85, 21, 5, 1 and 0 for s = (8, 4, 2, 1)
    r_max = len(predicted) - 1
    expected_S = [_fmt_S(range(1, r + 1)) for r in range(r_max + 1)]    # {}, {1}, ..., {1..r_max}
    # every S the run sits at, in step order, each visited once (no return to an earlier S)
    read = df[df.S != ""]
    assert _runs(read.S) == expected_S
    saddles = df[df.label.isin(SADDLES)]
    assert _runs(saddles.S) == expected_S[:-1]                # plateaus r = 0..r_max-1 labelled saddles
    for r, S in enumerate(expected_S[:-1]):
        on = read[read.S == S]                                # the plateau: saddles and "ambiguous" ones
        best = on.loc[on.grad_norm.idxmin()]                  # the flattest point of the plateau
        assert abs(best.loss - predicted[r]) <= PLATEAU_RTOL * predicted[r], (S, best.loss, predicted[r])
        assert best.critical_value == pytest.approx(predicted[r], rel=VALUE_RTOL)
    final = df.iloc[-1]
    assert final.label == "global_min" and final.S == expected_S[-1]


def test_nearest_plateau_is_reported_between_labels(default_run):
    df = load_run(default_run[0])
    assert df.nearest_S.str.len().gt(0).all()
    moving = df[df.label.isin(["not_critical", "ambiguous"])]
    assert len(moving) and moving.nearest_value.notna().all()


def test_completion_values_are_in_lab_units(tmp_path):
    """Fully observed completion: the classifier works on X = I, Y = M^T, whose (paper) loss sums the
    N squared errors; the hook reports lab units (the mean). At W = 0 (zero init: GD stays there) the
    critical value of S = {} must equal the lab loss, computed here from the observed entries."""
    cfg = compose(["task=matrix_completion", "model.init.kind=zero", "optim.steps=1", "record.every=1",
                   "record.progress=off"])
    run(cfg, out_dir=tmp_path)
    task = prepare(cfg)
    assert task.fully_observed and task.paper_scale == task.n_samples
    lab_loss_at_0 = float((task.values.double() ** 2).mean())
    first = load_run(tmp_path).sort_values("step").iloc[0]
    assert first.S == "{}" and first.label == "nonstrict_saddle"      # W = 0, H = 4 >= 3
    assert first.loss == pytest.approx(lab_loss_at_0, rel=UNITS_RTOL)
    assert first.critical_value == pytest.approx(lab_loss_at_0, rel=UNITS_RTOL)
    assert first.nearest_value == pytest.approx(lab_loss_at_0, rel=UNITS_RTOL)


def test_labels_reach_tensorboard(default_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(default_run[0]), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/critical_value", "loss/nearest_plateau", "label_code", "classify/r", "classify/grad_norm"} <= tags
    assert [e.value for e in acc.Scalars("label_code")][-1] == 3.0  # global_min
    df = load_run(default_run[0]).sort_values("step")
    assert [e.value for e in acc.Scalars("classify/r")] == [float(v) for v in df.r]
    # one text per change of (label, S), S the Theorem-7 S or else the nearest plateau
    keys = [(lab, S or "~" + nS) for lab, S, nS in zip(df.label, df.S, df.nearest_S)]
    assert len(acc.Tensors("label/text_summary")) == len(_runs(keys))


def test_label_text_is_written_when_S_changes_under_the_same_label():
    hook = ClassifierHook()
    seq = [("strict_saddle", "S = {1}"), ("strict_saddle", "S = {1}"), ("strict_saddle", "S = {1,2}"),
           ("ambiguous", "S = {1,2}"), ("ambiguous", "S = {1,2}")]
    texts = []
    for step, (lab, S) in enumerate(seq):
        rec = SimpleNamespace(step=step, texts={})
        hook._text(rec, [lab], [S])
        texts += [(step, t) for t in rec.texts.values()]  # what the TensorBoard sink writes
    assert [s for s, _ in texts] == [0, 2, 3]
    assert "{1,2}" in texts[1][1]


def test_classify_cli_on_a_checkpoint(default_run):
    out = default_run[0]
    p = subprocess.run([str(Path(sys.executable).parent / "dlnlab-classify"), str(out), "--hessian"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "global_min" in p.stdout and "S = {1,2,3,4}" in p.stdout and "hessian_min_eig" in p.stdout
    assert "paper = sum over the 64 samples" in p.stdout and "lab = the run's loss (mean) = paper / 64" in p.stdout
    bad = subprocess.run([str(Path(sys.executable).parent / "dlnlab-classify"), str(out / "nope.pt")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nope.pt" in bad.stderr


def _cli_lines(path, capsys) -> list[str]:
    classify_cli([str(path)])
    return capsys.readouterr().out.splitlines()


def _field(lines, name) -> str:
    return next(ln.split(None, 1)[1] for ln in lines if ln.split(None, 1)[:1] == [name])


def test_classify_cli_uses_every_classify_tolerance_of_the_run(tmp_path, capsys):
    """A run stopped on the {1} plateau with classify.rank_band = 1 (no ambiguity gap) and gamma_tol =
    0.1: the run table's label there is a confident saddle, which the default band (10) would call
    "ambiguous". The CLI must print the run's tolerances and the run table's label and values."""
    cfg = compose(["record.progress=off", "optim.steps=2000", "classify.rank_band=1.0", "classify.gamma_tol=0.1"])
    run(cfg, out_dir=tmp_path)
    last = load_run(tmp_path).sort_values("step").iloc[-1]
    assert last.label in SADDLES and last.S == "{1}"
    lines = _cli_lines(tmp_path, capsys)
    assert any(ln.startswith("tolerances (run config classify.*)") and "rank_band=1," in ln and "gamma_tol=0.1" in ln
               and f"grad_rtol={cfg.classify.grad_rtol:g}" in ln and f"rank_rtol={cfg.classify.rank_rtol:g}" in ln
               for ln in lines), lines
    assert f"member 0: {last.label}  S = {last.S}" in lines
    paper, lab = _field(lines, "critical_value").split()[1::2]
    scale = prepare(cfg).paper_scale
    assert float(lab) == pytest.approx(last.critical_value, rel=PRINTED_RTOL)
    assert float(paper) / scale == pytest.approx(float(lab), rel=PRINTED_RTOL)


def test_classify_cli_labels_a_cross_entropy_run_as_its_convex_hook_did(tmp_path, capsys):
    """Theorem 7 is a square-loss result: under another loss the CLI gives the convex hook's labels
    (Laurent & von Brecht) and values, never Theorem 7's."""
    cfg = compose(["loss=cross_entropy", "task.targets=classes", "task.noise=3", "optim.lr=0.05",
                   "model.init.scale=0.3", "optim.steps=300", "record.every=100", "record.progress=off"])
    run(cfg, out_dir=tmp_path)
    assert prepare(cfg).landscape_data() is None
    last = load_run(tmp_path).sort_values("step").iloc[-1]
    lines = _cli_lines(tmp_path, capsys)
    assert f"member 0: {last.convex_label} (loss=cross_entropy: Laurent & von Brecht, not Theorem 7)" in lines
    assert float(_field(lines, "convex_gap")) == pytest.approx(last.convex_gap, rel=PRINTED_RTOL)
    assert float(_field(lines, "grad_l_norm")) == pytest.approx(last.grad_l_norm, rel=PRINTED_RTOL)
    assert not any("Theorem 7" in ln and "not Theorem 7" not in ln for ln in lines)


def test_classify_cli_ridge_completion_prints_ranks_balance_and_modes(tmp_path, capsys):
    """lambda > 0: the CLI labels by first and second order (dlnlab.theory.ridge.labels.classify) and prints the layer
    ranks, B_r membership, balancedness, the balanced identity and (fully observed completion) the mode
    table."""
    cfg = compose(["task=matrix_completion", "optim.ridge=0.01", "optim.steps=50", "record.every=50",
                   "record.progress=off"])
    run(cfg, out_dir=tmp_path)
    lines = _cli_lines(tmp_path, capsys)
    text = "\n".join(lines)
    assert "ridge lambda = 0.01" in text and "not Theorem 7" in text
    for name in ("layer_ranks", "in_B", "balance", "identity_residual", "identity_holds"):
        assert any(ln.split(None, 1)[:1] == [name] for ln in lines), (name, text)
    header = lines[lines.index("    mode table (A.3):") + 1].split()
    assert {"y", "threshold", "s_on", "s_barrier", "barrier_height", "state", "could_switch_off"} <= set(header)
    task = prepare(cfg)
    assert sum(ln.split()[0].isdigit() for ln in lines[lines.index("    mode table (A.3):") + 2:]) == min(task.n1, task.n2)


def test_ridge_runs_get_second_order_labels_at_the_end(tmp_path):
    cfg = compose(["optim.ridge=0.01", "optim.steps=300", "record.every=100", "record.progress=off",
                   "model.init.kind=gaussian", "model.init.scale=1.0", "optim.lr=0.01"])
    run(cfg, out_dir=tmp_path)
    df = load_run(tmp_path)
    last = df[df.step == 300].iloc[0]
    assert last.label in {"not_critical", "strict_saddle", "local_min", "degenerate"}
    assert last.label_reason


def test_ridge_labels_use_the_runs_jumps_label_tolerances(tmp_path):
    """One label rule per run: the classifier hook's ridge labels take the jumps.* tolerances, as the
    rank-jump tracker's do. A loose jumps.grad_tol makes the point critical, and its reason quotes it."""
    base = ["optim.ridge=0.01", "optim.steps=300", "record.every=100", "record.progress=off",
            "model.init.kind=gaussian", "model.init.scale=1.0", "optim.lr=0.01"]
    labels = {}
    for grad_tol in (1e-7, 10.0):
        out = tmp_path / str(grad_tol)
        run(compose(base + [f"jumps.grad_tol={grad_tol}"]), out_dir=out)
        labels[grad_tol] = load_run(out).sort_values("step").iloc[-1]
    assert labels[1e-7].label == "not_critical" and "grad_tol = 1e-07" in labels[1e-7].label_reason
    assert labels[10.0].label != "not_critical" and labels[10.0].grad_norm < 10.0
