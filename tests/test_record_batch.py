"""Records handed to the hooks in batches (`record.batch`, auto by default for small networks): the
hooks that work over members take the batch as one stack of members. The run folder must not
depend on it: every column, label and TensorBoard value is the same bit for bit."""
import pandas as pd
import pytest

from dlnlab.analysis.runs import load_events, load_run
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run


@pytest.mark.parametrize("extra", [
    ["optim.steps=2500"],                                                       # the default run
    ["optim=sgd", "optim.lr=0.01", "optim.steps=600", "model.ensemble=3", "record.every=20"],
])
def test_record_batches_change_no_number(tmp_path, extra):
    tables, events = [], []
    for batch in (1, 0):
        out = tmp_path / f"b{batch}"
        run(compose(extra + [f"record.batch={batch}", "record.progress=off"]), out_dir=out)
        # the run's own columns (its folder, its clock and the config's record.batch differ)
        drop = ["run", "wall_time", "record.batch", "wall_time_s"]
        tables.append(load_run(out).drop(columns=drop, errors="ignore"))
        events.append(load_events(out).drop(columns=drop, errors="ignore"))
    assert len(tables[0]) > 20 and len(events[0]) > 20 and {"near_label", "label"} <= set(tables[0])
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    pd.testing.assert_frame_equal(events[0], events[1], check_exact=True)
