"""The labels of a run's saved checkpoint, as the run's own hooks gave them (docs/columns.md).

    from dlnlab import classify_checkpoint
    df = classify_checkpoint("runs/notebook")             # its last.pt (or newest step_*.pt)
    df = classify_checkpoint("runs/notebook", step=2000)  # checkpoints/step_000002000.pt
    df[["member", "label", "S", "critical_value", "near_label", "lam_min"]]

One row per member with the run table's columns for that record: the run's config (config.yaml, so
its `classify.*` tolerances, its loss and its task rebuilt from its seed) builds the run's own
producer hooks (metrics, then Theorem 7 / ridge / convex labels, then the numbers near critical
points), which label the checkpoint's weights as one record at its step. So `label`, `S`,
`critical_value`, ... are those of the run table's row at that step, whichever rule the run used.
`lam_min`, `lam_max` are computed at every checkpoint (the run computes them every
`classify.curvature_every` records): from a cold start, they agree with the run's to the Lanczos
bound above `classify.full_max_params` parameters, exactly below it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml
from omegaconf import OmegaConf

from dlnlab.experiments.build import build_hooks, build_net, build_trainer, prepare
from dlnlab.experiments.config import Config
from dlnlab.recording.base import Record
from dlnlab.runfolder import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    STEP_CHECKPOINTS,
    step_checkpoint,
)

__all__ = ["CheckpointNotFound", "SavedCheckpoint", "load_checkpoint", "replay_checkpoint", "record_frame", "label_checkpoint", "classify_checkpoint"]


class CheckpointNotFound(FileNotFoundError):
    """No run folder or no checkpoint where one was asked for; the message names what exists."""


@dataclass
class SavedCheckpoint:
    """A checkpoint with what its run was: `config` (typed where it still fits the schema), its `task`
    (rebuilt from the config, in the run's precision), `weights` [W_1..W_H] (each (E, d_h, d_{h-1}), the
    run's dtype), `active` (E,) bool, and `final`: last.pt, whose record was the run's last."""
    path: Path
    step: int
    final: bool
    config: object
    task: object
    weights: list
    active: torch.Tensor


def _listing(folder: Path, limit: int = 12) -> str:
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "nothing"


def _run_folders(parent: Path, limit: int = 12) -> str:
    """The run folders in `parent`, for an error about a folder that is not there."""
    if not parent.is_dir():
        return f"{parent} does not exist either"
    runs = sorted(p.name for p in parent.iterdir() if (p / CONFIG_FILE).is_file() or (p / CHECKPOINTS_DIR).is_dir())
    if not runs:
        return f"{parent} holds no run folder"
    more = f" and {len(runs) - limit} more" if len(runs) > limit else ""
    return f"the run folders in {parent}: {', '.join(runs[:limit])}{more}"


def _step_of(path: Path) -> int:
    return int(path.stem.split("_")[1])


def _choose(run_dir: Path, step: int | None) -> tuple[Path, bool]:
    """The checkpoint file to label and whether it is last.pt."""
    ck_dir = run_dir / CHECKPOINTS_DIR
    steps = sorted(ck_dir.glob(STEP_CHECKPOINTS), key=_step_of)
    last = ck_dir / LAST_CHECKPOINT
    last_step = int(torch.load(last, weights_only=True)["step"]) if last.is_file() else None
    if step is None:
        if last_step is not None and (not steps or last_step >= _step_of(steps[-1])):
            return last, True
        if steps:
            return steps[-1], False
    elif last_step == int(step):
        return last, True
    elif (ck_dir / step_checkpoint(int(step))).is_file():
        return ck_dir / step_checkpoint(int(step)), False
    have = [str(_step_of(p)) for p in steps] + ([f"last.pt (step {last_step})"] if last_step is not None else [])
    where = f"no checkpoint at step {step}" if step is not None else "no checkpoint"
    raise CheckpointNotFound(f"{where} in {ck_dir}; it holds: {', '.join(have) if have else 'no checkpoint'}"
                             + ("" if ck_dir.is_dir() else f" ({run_dir} holds: {_listing(run_dir)})"))


def _config(run_dir: Path, ck: dict):
    """The run's config: config.yaml (else the copy in the checkpoint), typed when it fits the schema."""
    path = run_dir / CONFIG_FILE
    saved = yaml.safe_load(path.read_text()) if path.is_file() else ck.get("config")
    if not isinstance(saved, dict):
        raise CheckpointNotFound(f"{run_dir} holds no {CONFIG_FILE} and its checkpoint no config")
    try:
        return OmegaConf.merge(OmegaConf.structured(Config), saved)
    except Exception:  # noqa: BLE001 - a config of an older lab version: keep it untyped
        return OmegaConf.create(saved)


def load_checkpoint(run_dir, step: int | None = None) -> SavedCheckpoint:
    """A run's checkpoint with its config and task. `run_dir`: a run folder, or one of its checkpoint
    files; `step`: None for the newest (last.pt at the end of a run, else the newest step_*.pt), else
    the checkpoint at that step. CheckpointNotFound names the checkpoints (or files) that exist."""
    p = Path(run_dir)
    if p.is_file():  # a checkpoint file: its run folder is two levels up
        path, run_dir = p, p.parent.parent
        final = p.name == LAST_CHECKPOINT
    else:
        if not p.is_dir():
            raise CheckpointNotFound(f"no run folder {p}; {_run_folders(p.parent)}")
        run_dir = p
        path, final = _choose(p, step)
    try:
        ck = torch.load(path, weights_only=True)
        weights, ck_step = list(ck["weights"]), int(ck["step"])
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise CheckpointNotFound(f"{path} is not a dlnlab checkpoint: {e}") from None
    cfg = _config(run_dir, ck)
    E = int(weights[0].shape[0])
    active = ck.get("active")
    active = torch.ones(E, dtype=torch.bool) if active is None else active.clone().bool()
    return SavedCheckpoint(path, ck_step, final, cfg, prepare(cfg), weights, active)


def _replay_config(cfg, curvature: bool):
    """The run's config, its hooks due at any record: cadences change when a hook acts, not what it
    computes (curvature: every record, or never)."""
    c = cfg.classify
    over = {"record": {"progress": "off", "tensorboard": False}, "device": "cpu",
            "classify": {"every_records": 1, "ridge_every": 1, "curvature_every": 1 if curvature else 0,
                         "near": bool(c.near or curvature)}}
    return OmegaConf.merge(cfg, over)


def replay_checkpoint(ck: SavedCheckpoint, curvature: bool = True) -> tuple[Record, list]:
    """The checkpoint as one record through the run's own producer hooks: the record (its `metrics`
    filled) and the hooks (e.g. the ClassifierHook's `ridge_points`)."""
    cfg = _replay_config(ck.config, curvature)
    hooks = build_hooks(cfg, None)
    trainer = build_trainer(cfg, ck.task, build_net(cfg, ck.task), hooks, None)
    # the record of step s carries the lr and lambda of the update that made it (step s - 1's)
    at = max(ck.step - 1, 0)
    rec = Record(step=ck.step, weights=[w.detach() for w in ck.weights], active=ck.active.clone(),
                 lr=trainer.lr_at(at), ridge=trainer.ridge_at(at), final=ck.final)
    for h in hooks:
        h.on_start(trainer)
    for h in hooks:
        h.on_records(trainer, [rec])
    return rec, hooks


def record_frame(rec: Record) -> pd.DataFrame:
    """A record's per-member columns as the run table's rows (step, member, then each column; an
    (E, k) column as k columns `<name>_1..k`)."""
    E = int(rec.active.shape[0])
    cols = {"step": [rec.step] * E, "member": list(range(E))}
    for key, v in rec.metrics.items():
        if isinstance(v, torch.Tensor) and v.dim() == 2:   # one column per entry, as the table writes it
            cols.update({f"{key}_{n + 1}": v[:, n].tolist() for n in range(v.shape[1])})
        else:
            cols[key] = v.tolist() if isinstance(v, torch.Tensor) else list(v)
    return pd.DataFrame(cols)


def label_checkpoint(ck: SavedCheckpoint, curvature: bool = True) -> pd.DataFrame:
    """The run table's columns for the checkpoint's record, one row per member (see the module)."""
    return record_frame(replay_checkpoint(ck, curvature)[0])


def classify_checkpoint(run_dir, step: int | None = None, curvature: bool = True) -> pd.DataFrame:
    """Label a run's checkpoint as the run's own hooks did: one row per member with the run table's
    columns (`label`, `S`, `critical_value`, `near_label`, ..., or `convex_label`, ... under another
    loss) at that step. `run_dir`: a run folder (or a checkpoint file in it); `step`: None for the
    newest checkpoint (last.pt at the end), else the step of a `checkpoints/step_*.pt` or of last.pt.
    `curvature`: also lam_min, lam_max (a Hessian per member). Errors (CheckpointNotFound) name what
    exists."""
    return label_checkpoint(load_checkpoint(run_dir, step), curvature=curvature)
