"""The report of an ordinary run (`dlnlab-report RUN` -> report.png, dlnlab/analysis/report.py) and the
staircase as a TensorBoard text, on a short default run (docs/columns.md)."""
import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlnlab.analysis.report import run_report
from dlnlab.cli.report import run_cli
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run

PLATEAUS = [85.0, 21.0, 5.0, 1.0]   # the default teacher's plateau values (lab units)


@pytest.fixture(scope="module")
def short_default_run(tmp_path_factory):
    """The default experiment, stopped on the S = {1,2,3} plateau (TensorBoard on)."""
    out = tmp_path_factory.mktemp("report")
    summary = run(compose(["record.progress=off", "optim.steps=5000"]), out_dir=str(out))
    return out, summary


def test_report_figure_panels_and_plateau_lines(short_default_run):
    import matplotlib.pyplot as plt

    out, _ = short_default_run
    fig, png = run_report(out)
    try:
        assert png == out / "report.png" and png.stat().st_size > 20_000
        # four panels stacked on one step axis; the fifth axis is panel (d)'s twin (tight_margin)
        panels = fig.axes[:4]
        rows = sorted(ax.get_subplotspec().rowspan.start for ax in panels)
        assert rows == [0, 1, 2, 3] and len(fig.axes) == 5
        assert fig.axes[4].get_subplotspec().rowspan.start == 3 and fig.axes[4].get_yscale() == "log"
        assert all(ax.get_shared_x_axes().joined(panels[0], ax) for ax in panels)
        loss_ax = panels[0]
        assert loss_ax.get_yscale() == "log"
        # horizontal reference lines at the theory's plateau values, each labelled with its S
        ref = sorted({float(line.get_ydata()[0]) for line in loss_ax.get_lines()
                      if len(set(np.atleast_1d(line.get_ydata()))) == 1 and line.get_linestyle() == "--"},
                     reverse=True)
        np.testing.assert_allclose(ref, PLATEAUS, rtol=1e-9)
        texts = [t.get_text() for t in loss_ax.texts]
        for S in ("{}", "{1}", "{1,2}", "{1,2,3}"):
            assert any(f"S = {S}" in t for t in texts), (S, texts)
        assert sum("non-strict saddle" in t for t in texts) >= 3   # the near_label of each plateau visit
        # panel (b): the teacher's singular values 8, 4, 2, 1 as dashed lines; units everywhere
        sv_lines = sorted(float(line.get_ydata()[0]) for line in panels[1].get_lines()
                          if line.get_linestyle() == "--" and len(line.get_ydata()))
        np.testing.assert_allclose(sv_lines, [1, 2, 4, 8], rtol=1e-9)
        assert "lab units" in loss_ax.get_ylabel() and "step" in panels[3].get_xlabel()
        assert panels[2].get_ylabel() and "weight" in panels[3].get_ylabel()
        for ax in fig.axes:   # readable in a talk
            assert ax.title.get_fontsize() >= 11 and ax.yaxis.label.get_fontsize() >= 11
            assert all(t.get_fontsize() >= 11 for t in ax.get_yticklabels())
    finally:
        plt.close(fig)


def test_report_cli_on_a_run_folder(short_default_run, capsys):
    out, summary = short_default_run
    assert f"dlnlab-report {out}" in str(summary)      # offered at the end of the run
    (out / "report.png").unlink(missing_ok=True)
    assert run_cli([str(out)]) == 0
    text = capsys.readouterr().out
    assert "{1,2,3}" in text and f"figure      {out / 'report.png'}" in text
    assert (out / "report.png").exists() and not (out / "jumps_report.png").exists()


def test_staircase_is_a_tensorboard_text(short_default_run):
    out, _ = short_default_run
    acc = EventAccumulator(str(out), size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Tensors("staircase/text_summary")
    assert len(events) == 1 and events[0].step == 5000
    md = events[0].tensor_proto.string_val[0].decode()
    rows = pd.read_csv(out / "staircase.csv", dtype={"S": str})
    assert list(rows.S) == ["{}", "{1}", "{1,2}", "{1,2,3}"]
    body = [line for line in md.splitlines() if line.startswith("| {")]
    assert [line.split("|")[1].strip() for line in body] == list(rows.S)   # one table row per visit, in order
    assert "near_label" in md and md.count("nonstrict_saddle") >= 3
