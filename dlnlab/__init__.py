"""dlnlab: training dynamics and loss landscape of deep linear networks f(x) = W_H ... W_1 x.

    from dlnlab import compose, run, load_run
    summary = run(compose(["optim.steps=2000"]), out_dir="runs/notebook")
    df = load_run("runs/notebook")
    labels = classify_checkpoint("runs/notebook")   # its last checkpoint, labelled as the run table

The layers and what each owns: docs/architecture.md. The theory: docs/theory.md.
"""
from importlib.metadata import PackageNotFoundError, version

from dlnlab.analysis.runs import list_runs, load_events, load_run, load_runs
from dlnlab.analysis.summary import final_rows, last_records, summarize
from dlnlab.experiments.build import build_net, build_task, compose, prepare
from dlnlab.experiments.checkpoint_labels import CheckpointNotFound, classify_checkpoint
from dlnlab.experiments.config import Config, ConfigError
from dlnlab.experiments.run import RunSummary, run
from dlnlab.model import DeepLinearNet
from dlnlab.recording.base import Cadence, Hook, Record
from dlnlab.theory.square.classify import Classifier, Tolerances, classify
from dlnlab.theory.square.critical import critical_values, plateau_values
from dlnlab.train import Trainer

try:
    __version__ = version("dlnlab")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    # the model and its training loop
    "DeepLinearNet", "Trainer",
    # experiments from configs
    "Config", "ConfigError", "compose", "prepare", "build_task", "build_net", "run", "RunSummary",
    # recording hooks
    "Hook", "Record", "Cadence",
    # a run's checkpoint labelled as its run table labels it
    "classify_checkpoint", "CheckpointNotFound",
    # theory: Theorem 7 labels and critical values
    "classify", "Classifier", "Tolerances", "critical_values", "plateau_values",
    # analysis of run folders
    "load_run", "load_runs", "list_runs", "load_events", "summarize", "final_rows", "last_records",
    "__version__",
]
