"""Thin command-line entry points; the work is done by library code (dlnlab.experiments)."""
from __future__ import annotations

import logging
import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from dlnlab.experiments.build import conf_dir, prepare, width_report
from dlnlab.experiments.config import ConfigError, register
from dlnlab.experiments.options import check_choices, check_overrides, help_text
from dlnlab.experiments.resume import (
    is_experiment,
    is_sweep,
    newest_checkpoint,
    run_state,
    saved_config,
    sweep_overrides,
)
from dlnlab.experiments.run import RunFailed, mark_failed, run
from dlnlab.runfolder import CONFIG_FILE, read_status
from dlnlab.tasks import DataError

log = logging.getLogger(__name__)
register()
# Exit codes: 0 finished (or diverged), 2 a user error (a bad override, Hydra's type and key errors
# and the lab's own validation alike), 1 a run that failed once started (disk full...), 130 interrupted.
USER_ERROR, RUN_ERROR = 2, 1
_in_task: list = []  # set while the task function runs: its exceptions are not config errors


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def _train(cfg) -> None:
    _in_task.append(True)
    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    if cfg.resume:
        try:
            summary = _resume(cfg, hc, out_dir)
        except (ConfigError, DataError) as e:
            print(f"dlnlab-train: error: {e}", file=sys.stderr)
            if hc.mode == RunMode.RUN:
                sys.exit(2)
            return
        if summary is not None:
            _report(summary, hc)
        return
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
            sys.exit(USER_ERROR)
        return
    print(f"dlnlab-train: {width_report(cfg, task).message}", file=sys.stderr)
    print(f"dlnlab-train: writing to {out_dir}", file=sys.stderr)
    try:
        summary = run(cfg, out_dir=out_dir, task=task)
    except RunFailed as e:  # status.json says failed, with this line; the flushed table stays readable
        print(f"dlnlab-train: error: run failed: {e} (status failed in {out_dir})", file=sys.stderr)
        if hc.mode == RunMode.RUN:
            sys.exit(RUN_ERROR)
        return
    _report(summary, hc)


def _report(summary, hc) -> None:
    print(summary)
    if summary.status == "interrupted" and hc.mode == RunMode.RUN:
        sys.exit(130)


def _resume(cfg, hc, out_dir):
    """`resume=RUN_DIR`: continue that run (only the overrides given on the command line are checked
    against its saved config). A job of a resumed sweep (`resume=SWEEP_DIR`, relaunched into that
    folder) resumes its own folder, is skipped when it had ended, or starts when it never did."""
    target = cfg.resume
    if is_sweep(target):
        _drop_resume_override(out_dir)
        if is_experiment(out_dir):  # a rank-jump experiment: it knows which of its phases ended
            state = "experiment"
        else:
            state = run_state(out_dir) if (Path(out_dir) / CONFIG_FILE).exists() else "new"
        if state == "ended":
            print(f"dlnlab-train: {out_dir}: had ended ({read_status(out_dir).get('status')}), skipped",
                  file=sys.stderr)
            return None
        if state == "new":
            cfg.resume = None
            print(f"dlnlab-train: {out_dir}: not started before, running it", file=sys.stderr)
            return run(cfg, out_dir=out_dir)
        target = out_dir
        given = cfg
    else:
        keys = [o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.task]
        given = {}
        for key in keys:
            value = OmegaConf.select(cfg, key, default=None)
            if key != "resume" and value is not None:
                given = OmegaConf.merge(given, OmegaConf.create(_nest(key, value)))
    saved_config(target)  # not a run folder: say so before anything else
    if is_experiment(target):
        print(f"dlnlab-train: resuming the rank-jump experiment {target} (phases that ended are kept)",
              file=sys.stderr)
        return run(given or None, resume=str(target))
    ck = newest_checkpoint(target) if run_state(target) == "resume" else None
    where = f"from step {int(ck['step'])}" if ck is not None else "from the start (no checkpoint)"
    print(f"dlnlab-train: resuming {target} {where}", file=sys.stderr)
    return run(given or None, resume=str(target))


def _nest(key: str, value) -> dict:
    out: dict = {}
    node = out
    *path, last = key.split(".")
    for p in path:
        node = node.setdefault(p, {})
    node[last] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def _drop_resume_override(out_dir) -> None:
    """A resumed sweep job keeps its original .hydra/overrides.yaml (without `resume=`)."""
    path = Path(out_dir) / ".hydra" / "overrides.yaml"
    try:
        items = yaml.safe_load(path.read_text()) or []
        path.write_text(yaml.safe_dump([o for o in items if not str(o).startswith("resume=")]))
    except (OSError, yaml.YAMLError):
        pass


def _resume_argv(args: list[str]) -> list[str]:
    """The command line of `dlnlab-train resume=DIR [...]`: a run folder is continued in place (no new
    folder, no .hydra of its own); a sweep folder is launched again into itself with its saved
    overrides, each job resuming (see `_resume`)."""
    target = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if not target:
        return args
    rest = [a for a in args if a not in ("-m", "--multirun")]
    if is_sweep(target):
        return ["-m", *sweep_overrides(target), *rest, f"hydra.sweep.dir={target}"]
    if any(a.startswith("hydra.run.dir=") for a in args):
        return args
    return [*rest, f"hydra.run.dir={target}", "hydra.output_subdir=null"]


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
    try:
        sys.argv[1:] = _resume_argv(args)
    except ConfigError as e:
        print(f"dlnlab-train: error: {e}", file=sys.stderr)
        sys.exit(USER_ERROR)
    try:  # before Hydra makes the run folder
        check_overrides([a for a in args if "=" in a and not a.startswith("-")], conf_dir())
    except ConfigError as e:
        print(f"dlnlab-train: error: {e}", file=sys.stderr)
        sys.exit(USER_ERROR)
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for Hydra's traceback
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing and exiting 1
    try:
        _train()
    except Exception as e:
        if full or _in_task:
            raise
        print(f"dlnlab-train: error: {hydra_error(e)}", file=sys.stderr)
        sys.exit(USER_ERROR)
    finally:
        if not full:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def hydra_error(e: BaseException) -> str:
    """Hydra's error (a bad override, a type or key outside the schema) as one line that names the
    override: its first line, and the first line of its cause."""
    first = lambda x: (str(x).strip().splitlines() or [type(x).__name__])[0]  # noqa: E731
    line = first(e)
    override = getattr(e, "override", None)  # OverrideParseException: which override did not parse
    if isinstance(override, str) and override not in line:
        line = f"{override}: {line}"
    if e.__cause__ is not None and first(e.__cause__) not in line:
        line = f"{line.rstrip('.')}: {first(e.__cause__)}"
    return line


if __name__ == "__main__":
    train()
