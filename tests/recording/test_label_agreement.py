"""The run table's `label` on ordinary training runs (docs/theory.md §5, §6): a converged run of a
teacher with a wide dynamic range ends `global_min`, and along small-initialisation runs `label`
never names a saddle type other than `near_label`'s."""
import pytest

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run

SADDLES = {"strict_saddle", "nonstrict_saddle"}
QUIET = ["record.progress=off", "record.tensorboard=false"]


def train(tmp_path, overrides):
    run(compose(QUIET + overrides), out_dir=str(tmp_path))
    return load_run(str(tmp_path))


def final_labels(df):
    last = df[df.step == df.step.max()]
    return last.label.astype(str).tolist(), last


def converged_run(tmp_path, spectrum, H, lr, steps, scale):
    return train(tmp_path, [f"task.spectrum={spectrum}", f"model.depth={H}", f"optim.lr={lr}",
                            f"optim.steps={steps}", f"model.init.scale={scale}"])


@pytest.mark.parametrize("spectrum, H, lr, steps, scale", [
    ("[8,4,2,0.5]", 3, 0.01, 8000, 0.1),            # range 16
    ("[1,0.1,0.01,0.001]", 3, 0.2, 60000, 0.1),     # range 1000
])
def test_converged_run_of_a_wide_range_teacher_ends_global_min(tmp_path, spectrum, H, lr, steps, scale):
    labels, last = final_labels(converged_run(tmp_path, spectrum, H, lr, steps, scale))
    assert labels == ["global_min"], last.label_reason.tolist()


# lr scaled to the teacher's top singular value 1: every grid point converges (docs/theory.md §6)
GRID = [(spectrum, H, lr, steps, scale)
        for spectrum in ["[1,0.5,0.2,0.1]", "[1,0.3,0.1,0.01]", "[1,0.1,0.01,0.001]"]
        for H, lr, scale in [(3, 0.2, 0.1), (4, 0.15, 0.2), (5, 0.1, 0.3)]
        for steps in [120000 if spectrum.endswith("0.001]") and H > 3 else 60000]]


@pytest.mark.slow
@pytest.mark.parametrize("spectrum, H, lr, steps, scale", GRID)
def test_converged_runs_on_a_grid_of_spectra_and_depths_end_global_min(tmp_path, spectrum, H, lr, steps, scale):
    df = converged_run(tmp_path, spectrum, H, lr, steps, scale)
    labels, last = final_labels(df)
    assert float(last.loss.iloc[0]) < 1e-4 * 1.0, "the run did not converge: pick more steps"
    assert labels == ["global_min"], last.label_reason.tolist()


def contradictions(df):
    """Records whose label and near_label name different saddle types."""
    lab, near = df.label.astype(str), df.near_label.astype(str)
    return df[lab.isin(SADDLES) & near.isin(SADDLES) & (lab != near)]


@pytest.mark.parametrize("overrides", [
    ["model.depth=2", "model.init.scale=0.001", "model.ensemble=2", "optim.steps=6000"],
    ["model.depth=3", "model.init.scale=0.01", "model.ensemble=3", "seed=5", "optim.steps=8000"],
    ["model.depth=5", "model.init.scale=0.1", "model.ensemble=2", "seed=2", "optim.steps=8000"],
    # ||grad L|| ~ 1e-8 tr(Syy) on the S = {} plateau: critical to 1e-6 in units of tr(Syy), not exactly
    ["model.init.scale=0.003", "optim.steps=3000"],
])
def test_small_init_runs_label_never_contradicts_near_label(tmp_path, overrides):
    df = train(tmp_path, overrides)
    bad = contradictions(df)
    assert bad.empty, bad[["step", "member", "label", "near_label", "label_reason"]].head().to_string()


def test_issue_run_plateau_records_are_nonstrict_like_near_label(tmp_path):
    """The command of issue 20: its S = {} plateau records read strict_saddle with every pivot loose,
    and near_label non-strict."""
    df = train(tmp_path, ["model.width=32", "model.init.scale=0.01", "task.seed=9", "seed=33", "optim.steps=6000"])
    assert contradictions(df).empty
    start = df[df.near_S.astype(str) == "{}"]
    assert len(start) >= 10 and (start.near_label.astype(str) == "nonstrict_saddle").all()
    labels = start.label.astype(str)
    assert (labels == "nonstrict_saddle").sum() >= len(start) - 2, labels.value_counts().to_string()
    assert start.label_reason[labels == "nonstrict_saddle"].str.startswith("approximately critical").all()
