"""Thin command-line entry points; the work is done by library code (dlnlab.experiments)."""
from __future__ import annotations

import logging
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from dlnlab.experiments.build import conf_dir, prepare, width_report
from dlnlab.experiments.config import ConfigError, register
from dlnlab.experiments.options import check_choices, help_text
from dlnlab.experiments.run import mark_failed, run
from dlnlab.tasks import DataError

log = logging.getLogger(__name__)
register()


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def _train(cfg) -> None:
    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                check_choices(dict(hc.runtime.choices))
                task = prepare(cfg)
            finally:  # e.g. a data file outside Assumption 1: one line, not a source listing
                for w in caught:
                    print(f"dlnlab-train: note: {w.message}", file=sys.stderr)
    except (ConfigError, DataError) as e:
        # A user error: say what is wrong, no traceback. In a sweep the other jobs go on.
        mark_failed(out_dir, str(e))
        print(f"dlnlab-train: error: {e}", file=sys.stderr)
        if hc.mode == RunMode.RUN:
            sys.exit(2)
        return
    print(f"dlnlab-train: {width_report(cfg, task).message}", file=sys.stderr)
    print(f"dlnlab-train: writing to {out_dir}", file=sys.stderr)
    summary = run(cfg, out_dir=out_dir, task=task)
    print(summary)
    if summary.status == "interrupted" and hc.mode == RunMode.RUN:
        sys.exit(130)


def _version() -> str:
    """dlnlab's version (the same as dlnlab.__version__)."""
    try:
        return version("dlnlab")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def train() -> None:
    """`dlnlab-train [OVERRIDES]`: the Hydra app (see README); `--help` and `--version` are dlnlab's
    (Hydra's own help: `--hydra-help`)."""
    args = sys.argv[1:]
    if "--version" in args:
        print(f"dlnlab {_version()}")
        return
    if "--help" in args or "-h" in args:
        print(help_text(conf_dir(), _version()))
        return
    _train()


if __name__ == "__main__":
    train()
