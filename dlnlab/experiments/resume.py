"""Resuming a stopped run from its newest checkpoint (`dlnlab-train resume=RUN_DIR`, `run(cfg, resume=...)`).

A run folder's `checkpoints/step_*.pt` (written every `record.checkpoint_every` steps, by default
10 x `record.every`) hold the weights, SGD sampler, member status and every hook's state
(`Hook.state_dict`). Resuming loads the newest readable one, drops the table rows, events and
TensorBoard points written after it, and goes on: the final table, events and `last.pt` are bitwise
those of a run that was never stopped (same machine, same `threads`).

The resumed run keeps the config saved in the folder (`config.yaml`); an override that would change
its trajectory is refused (ConfigError), only the options in `FREE_KEYS` may change.
A rank-jump experiment's folder (`jumps_config.yaml`, phases as run folders) resumes as a whole:
`dlnlab.experiments.jumps.run_experiment(..., resume=True)` uses the helpers here for each phase.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

from dlnlab.experiments.config import Config, ConfigError
from dlnlab.runfolder import CONFIG_FILE, read_status

# options that do not change what a run computes (its progress display, its folder's name, the
# fused loop, record batches and the record thread: the same numbers bit for bit)
FREE_KEYS = ("resume", "threads", "name", "record.progress", "record.progress_seconds", "optim.fused",
             "record.batch", "record.thread")
ENDED = ("finished", "diverged")  # statuses with nothing left to do
SWEEP_FILE = "multirun.yaml"
# the config of a rank-jump experiment (jumps.enabled), in its folder (which holds no config.yaml of its
# own: its phases are the run folders)
EXPERIMENT_CONFIG = "jumps_config.yaml"


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def is_experiment(path) -> bool:
    """A rank-jump experiment's folder (phases warmup, main, gd as run folders)."""
    return (Path(path) / EXPERIMENT_CONFIG).exists() and not (Path(path) / CONFIG_FILE).exists()


def saved_config(run_dir) -> dict:
    """The config saved in a run folder (or a rank-jump experiment's folder), as a dict."""
    path = Path(run_dir) / (EXPERIMENT_CONFIG if is_experiment(run_dir) else CONFIG_FILE)
    if not Path(run_dir).is_dir():
        raise ConfigError(f"resume={run_dir}: no such folder")
    try:
        saved = yaml.safe_load(path.read_text())
    except OSError:
        if (Path(run_dir) / "jumps_summary.json").exists():
            raise ConfigError(f"resume={run_dir}: a rank-jump experiment without {EXPERIMENT_CONFIG} "
                              "(written by an older dlnlab); rerun it") from None
        raise ConfigError(f"resume={run_dir}: not a run folder (no {CONFIG_FILE}); "
                          f"a sweep folder holds {SWEEP_FILE}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"resume={run_dir}: {CONFIG_FILE} is not a config")
    return saved


def resume_config(cfg, run_dir):
    """The config a resumed run uses: the one saved in `run_dir`, with only the FREE_KEYS taken from
    `cfg` (None: the saved one as it is). Any other difference raises ConfigError naming it."""
    saved = saved_config(run_dir)
    if (saved.get("jumps") or {}).get("enabled") and not is_experiment(run_dir):
        raise ConfigError(f"resume={run_dir}: a phase of a rank-jump experiment; resume the experiment's "
                          f"folder ({Path(run_dir).parent})")
    merged = dict(saved)
    if cfg is not None:
        given, old = _flat(_container(cfg)), _flat(saved)
        free = lambda k: any(k == f or k.startswith(f + ".") for f in FREE_KEYS)  # noqa: E731
        changed = [k for k in given if not free(k) and k in old and given[k] != old[k]]
        if changed:
            shown = ", ".join(f"{k}={given[k]!r} (saved {old.get(k)!r})" for k in changed[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise ConfigError(f"resume={run_dir}: {shown}{more} would change the run's trajectory; a resumed "
                              f"run keeps its saved config (only {', '.join(FREE_KEYS[1:])} may change)")
        for k in FREE_KEYS[1:]:
            if k in given:
                node = merged
                *path, last = k.split(".")
                for p in path:
                    node = node.setdefault(p, {})
                node[last] = given[k]
    merged["resume"] = None
    try:
        return OmegaConf.merge(OmegaConf.structured(Config), merged)
    except Exception:  # noqa: BLE001 - a config of an older lab version: keep it untyped
        return OmegaConf.create(merged)


def checkpoints(run_dir) -> list[Path]:
    """The step_*.pt files of a run folder, newest first."""
    return sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"), reverse=True)


def newest_checkpoint(run_dir) -> dict | None:
    """The newest readable resumable checkpoint (one with the hooks' states), or None."""
    for path in checkpoints(run_dir):
        try:
            ck = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged file: fall back to the one before
            continue
        if isinstance(ck, dict) and "hooks" in ck:
            return ck
    return None


def clear_after(run_dir, step: int) -> None:
    """Step files newer than the checkpoint resumed from (unreadable ones) and stray .tmp files."""
    for f in checkpoints(run_dir):
        if int(f.stem.split("_")[1]) > step:
            f.unlink(missing_ok=True)
    for f in (Path(run_dir) / "checkpoints").glob("*.tmp"):
        f.unlink(missing_ok=True)


def run_state(run_dir) -> str:
    """`ended` (finished or diverged: nothing to do), `resume` (a checkpoint to go on from) or
    `restart` (no checkpoint yet: start over in the folder)."""
    if read_status(run_dir).get("status") in ENDED:
        return "ended"
    return "resume" if checkpoints(run_dir) else "restart"


def is_sweep(path) -> bool:
    """A sweep folder: it has the sweep's file and is not itself a run."""
    return (Path(path) / SWEEP_FILE).exists() and not (Path(path) / CONFIG_FILE).exists()


def sweep_overrides(sweep_dir) -> list[str]:
    """The command line of a sweep (its task overrides and the hydra ones that choose the launcher),
    read from multirun.yaml, to launch it again into the same folder."""
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        hydra = yaml.safe_load(path.read_text())["hydra"]
        task = [str(o) for o in hydra["overrides"]["task"] or []]
        extra = [str(o) for o in hydra["overrides"].get("hydra") or []
                 if not o.startswith(("hydra.mode=", "hydra.sweep.dir=", "hydra.run.dir="))]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        raise ConfigError(f"resume={sweep_dir}: cannot read {SWEEP_FILE} ({e})") from None
    return [o for o in task if not o.startswith("resume=")] + extra
