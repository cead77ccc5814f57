"""Records handed to the hooks in batches (`record.batch`, auto by default for small networks): the
hooks that work over members take the batch as one stack of members. The run folder must not
depend on it: every column, label and TensorBoard value is the same bit for bit."""
import math

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run


def tensorboard_scalars(run_dir) -> dict:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, None if math.isnan(e.value) else e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("extra", [
    ["optim.steps=2500"],                                                       # the default run
    ["optim=sgd", "optim.lr=0.01", "optim.steps=600", "model.ensemble=3", "record.every=20"],
])
def test_record_batches_change_no_number(tmp_path, extra):
    tables, scalars = [], []
    for batch in (1, 0):
        out = tmp_path / f"b{batch}"
        run(compose(extra + [f"record.batch={batch}", "record.progress=off"]), out_dir=out)
        # the run's own columns: its folder, its clock and the config's record.batch differ
        tables.append(load_run(out).drop(columns=["run", "wall_time", "record.batch"], errors="ignore"))
        scalars.append(tensorboard_scalars(out))
    assert len(tables[0]) > 20 and {"near_label", "label", "sv_4_1_1"} <= set(tables[0])
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    assert len(scalars[0]) > 20 and scalars[0] == scalars[1]
