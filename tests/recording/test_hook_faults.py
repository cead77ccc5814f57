"""A run that fails, whichever hook fails, keeps every row, event and checkpoint written before the
failure (issue 20, item 3): a fault is injected into each built-in hook at its first record at or
after step FAULT, then the folder is read back and resumed."""
import pytest
import torch
from test_record_batch import tensorboard_scalars

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import compose
from dlnlab.experiments.run import run
from dlnlab.recording.checkpoint import CheckpointHook
from dlnlab.recording.classifier import ClassifierHook
from dlnlab.recording.convex import ConvexHook
from dlnlab.recording.jumps import RankJumpHook
from dlnlab.recording.metrics import MetricsHook
from dlnlab.recording.progress import ProgressHook
from dlnlab.recording.table import TableHook
from dlnlab.recording.tensorboard import TensorBoardHook
from dlnlab.recording.trajectory import TrajectoryHook
from dlnlab.runfolder import read_status

FAULT, EVERY, STEPS, CHECKPOINT = 250, 10, 400, 100
BASE = [f"optim.steps={STEPS}", f"record.every={EVERY}", f"record.checkpoint_every={CHECKPOINT}",
        "record.progress=off", "record.flush_every=7"]
CONVEX = ["loss=cross_entropy", "task.targets=classes", "task.noise=1", "optim.lr=0.05", "model.init.scale=0.3"]
JUMPS = ["experiment=one_way_jumps", "jumps.warmup.steps=0", "jumps.gd_reference=false", "jumps.polish_steps=0",
         "model.ensemble=2", "record.tb_members=2"]

# hook class, extra overrides, the column it writes (None: a sink)
CASES = {
    "metrics": (MetricsHook, [], "loss"),
    "classifier": (ClassifierHook, [], "label"),
    "trajectory": (TrajectoryHook, [], "near_label"),
    "convex": (ConvexHook, CONVEX, "convex_label"),
    "jumps": (RankJumpHook, JUMPS, None),
    "table": (TableHook, [], None),
    "tensorboard": (TensorBoardHook, [], None),
    "checkpoint": (CheckpointHook, [], None),
    "progress": (ProgressHook, ["record.progress=auto", "record.progress_seconds=0.01"], None),
}


def inject_fault(monkeypatch, cls) -> None:
    """cls.on_records handles the records before step FAULT, then raises."""
    real = cls.on_records

    def on_records(self, trainer, recs):
        before = [r for r in recs if r.step < FAULT]
        if before:
            real(self, trainer, before)
        if len(before) < len(recs):
            raise RuntimeError(f"injected fault in {cls.__name__}")

    monkeypatch.setattr(cls, "on_records", on_records)


@pytest.mark.parametrize("case", list(CASES))
def test_a_failing_hook_keeps_what_was_recorded_before_it(tmp_path, monkeypatch, case):
    cls, extra, column = CASES[case]
    inject_fault(monkeypatch, cls)
    out = tmp_path / "run"
    with pytest.raises(Exception, match=f"injected fault in {cls.__name__}"):
        run(compose(BASE + extra), out_dir=out)
    monkeypatch.undo()
    folder = out / "sgd" if case == "jumps" else out
    assert read_status(folder)["status"] == "failed"
    before = set(range(0, FAULT, EVERY))
    df = load_run(folder, config=False)
    assert before <= set(df["step"]), sorted(before - set(df["step"]))
    early = df[df["step"] < FAULT]
    assert early["loss"].notna().all()                 # the producers' columns of those rows too
    if column is not None and case != "trajectory":   # near_label is "" away from plateaus
        assert early[column].notna().all() and (early[column].astype(str) != "").all(), case
    # events: TensorBoard has every record before the fault
    scalars = tensorboard_scalars(folder)
    assert before <= {s for points in scalars.values() for s, _ in points}
    # checkpoints: the last good one is there and loads; none taken after the fault; last.pt loads
    good = torch.load(folder / "checkpoints" / f"step_{200:09d}.pt", weights_only=True)
    assert good["step"] == 200 and "hooks" in good
    later = [p.name for p in (folder / "checkpoints").glob("step_*.pt") if int(p.stem.split("_")[1]) > 200]
    assert later == []
    last = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] >= 200
    if case != "jumps":  # the run goes on from the last good checkpoint to its end
        s = run(None, resume=str(folder))
        assert s.status == "finished" and s.steps == STEPS
        df = load_run(folder, config=False)
        assert set(range(0, STEPS + 1, EVERY)) == set(df["step"])
        if column is not None and case != "trajectory":
            assert df[column].notna().all()
