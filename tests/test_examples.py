"""The example scripts run as written and say what theory predicts."""
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PLATEAUS = (85.0, 21.0, 5.0, 1.0, 0.0)  # the default teacher's staircase, lab units (docs/theory.md §2)


def test_pandas_workflow_example(tmp_path, capsys):
    out = runpy.run_path(str(EXAMPLES / "pandas_workflow.py"))["main"](tmp_path)
    assert out["df"]["run"].nunique() == 4 and len(out["final"]) == 4
    # a larger step size walks further down the staircase in the same number of steps
    assert out["by_lr"][0.008] < out["by_lr"][0.004]
    # every final checkpoint sits on a plateau of the staircase
    for loss in out["final"]["loss"]:
        assert min(abs(loss - p) for p in PLATEAUS) <= 1e-2 * max(loss, 1.0)
    assert set(out["table"].index) == {0.004, 0.008} and (out["table"]["count"] == 2).all()
    # median ranks are ranks: integers, never 0.5
    assert out["ranks"]["q50"].dropna().apply(float.is_integer).all()
    assert "final_loss" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["pandas_workflow.py"])
def test_examples_have_a_usage_line(name):
    assert f"examples/{name}" in (EXAMPLES / name).read_text()
