"""`dlnlab-classify PATH [--hessian]`: label a saved checkpoint (a run folder means its last.pt).

The task's data and loss are rebuilt from the run's config, and the labels are those the run's hooks
gave: Theorem 7 with the run's `classify.*` tolerances under the square loss, the labels of Laurent &
von Brecht's theorem (docs/theory.md §8, with the convex hook's training tolerances) under any other
loss, first and second order under ridge or a partially observed completion. Loss-like values are
printed in both units: "paper" = the landscape paper's loss, the SUM over samples (or observed
entries), and "lab" = the run's loss (the mean) = paper / task.paper_scale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dlnlab.experiments.build import build_loss, build_task
from dlnlab.recording.classifier import tolerances_from_config
from dlnlab.recording.convex import TRAINING_CONVEX_TOLERANCES
from dlnlab.runfolder import CHECKPOINTS_DIR, LAST_CHECKPOINT
from dlnlab.tasks import with_loss
from dlnlab.theory.convex.labels import ConvexLabeller
from dlnlab.theory.convex.reference import convex_reference
from dlnlab.theory.ridge.labels import classify as ridge_classify
from dlnlab.theory.square.classify import classify
from dlnlab.train import Schedule

# Classification fields that are losses (or their gradient), printed in paper and lab units
_LOSS_FIELDS = ("loss", "critical_value", "nearest_value", "grad_norm", "grad_tol")
# mode-table columns shown for ridge / partial-completion labels (dlnlab.theory.ridge.modes.mode_table)
_MODE_COLUMNS = ("mode", "y", "threshold", "s", "s_on", "s_barrier", "barrier_height", "state", "could_switch_off")


def _fail(msg: str) -> None:
    print(f"dlnlab-classify: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _load(path: Path):
    if path.is_dir():
        path = path / CHECKPOINTS_DIR / LAST_CHECKPOINT
    if not path.is_file():
        _fail(f"no checkpoint at {path}")
    try:
        ck = torch.load(path, weights_only=True)
        return path, ck, OmegaConf.create(ck["config"])
    except Exception as e:  # noqa: BLE001
        _fail(f"{path} is not a dlnlab checkpoint: {e}")


def _ridge_schedule(cfg):

    o = cfg.optim
    return Schedule(o.ridge, o.milestones, o.ridge_values, o.cycle)


def _fmt(v) -> str:
    return f"{v:.10g}" if isinstance(v, float) else str(v)


def _print_field(key: str, v) -> None:
    print(f"    {key:30s} {_fmt(v)}")


def _print_theorem7(res: dict, scale: float) -> None:
    for key, v in res.items():
        if key in ("label", "S") or v in (None, ""):
            continue
        if key in _LOSS_FIELDS and isinstance(v, float):
            print(f"    {key:30s} paper {v:.10g}   lab {v / scale:.10g}")
        else:
            _print_field(key, v)


def _print_modes(modes: list) -> None:
    print("    mode table (A.3):")
    cols = [c for c in _MODE_COLUMNS if any(c in row for row in modes)]
    print("      " + "  ".join(f"{c:>16s}" for c in cols))
    for row in modes:
        print("      " + "  ".join(f"{_fmt(row.get(c)):>16s}" for c in cols))


def _print_ridge(p) -> None:
    rows = {"reason": p.reason, "loss (lab units, with ridge)": p.loss, "grad_norm (lab units)": p.grad_norm,
            "hessian_min_eig": p.min_eig, "e2e_rank": p.e2e_rank, "layer_rank": p.layer_rank,
            "layer_ranks": getattr(p, "layer_ranks", None), "in_B": getattr(p, "in_B", None),
            "balance": getattr(p, "balance", None),
            "identity_residual": getattr(p, "identity_residual", None),
            "identity_holds": getattr(p, "identity_holds", None),
            "near_boundary": "; ".join(getattr(p, "near_boundary", []) or [])}
    for key, v in rows.items():
        if v not in (None, ""):
            _print_field(key, v)
    if getattr(p, "modes", None):
        _print_modes(p.modes)


def _convex(task, weights, n: int) -> None:
    """Laurent & von Brecht's labels of the first n members (as the convex hook's last record)."""
    data = task.convex_data()
    if data is None:
        _fail(f"loss={task.loss_name} on task={task.name}: no convex reference (regression data only)")
    X, T = data
    tol = TRAINING_CONVEX_TOLERANCES
    ref = convex_reference(task.objective, X.double(), T.double(), task.product_ridge, d_out=task.d_out,
                           tolerances=tol)
    dims = [weights[0].shape[-1]] + [w.shape[-2] for w in weights]
    labels = ConvexLabeller(ref, dims, tol).label([w[:n].double() for w in weights], hessian=True)
    print(f"units: lab (the run's loss, loss={task.loss_name}); convex reference ell* = {ref.value:.10g}"
          + (" (an infimum: ell has no minimiser)" if ref.no_minimiser else ""))
    print(f"tolerances (the convex hook's): grad_rtol={tol.grad_rtol:g}, grad_l_rtol={tol.grad_l_rtol:g}, "
          f"gap_rtol={tol.gap_rtol:g}")
    for k, c in enumerate(labels):
        print(f"member {k}: {c.label} (loss={task.loss_name}: Laurent & von Brecht, not Theorem 7)")
        for key, v in c.to_dict().items():
            if key != "label" and v not in (None, ""):
                _print_field(key, v)


def main(argv=None) -> None:
    """`dlnlab-classify PATH [--hessian]`: print the label of a checkpoint (see the module's docstring)."""
    ap = argparse.ArgumentParser(prog="dlnlab-classify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="a checkpoint .pt, or a run folder (its checkpoints/last.pt)")
    ap.add_argument("--hessian", action="store_true", help="also compute the Hessian's smallest eigenvalue")
    ap.add_argument("--members", type=int, default=8, help="label at most this many ensemble members")
    args = ap.parse_args(argv)
    path, ck, cfg = _load(Path(args.path))


    lc = cfg.get("loss")
    try:
        task = with_loss(build_task(cfg.task), build_loss(lc), lc.product_ridge if lc is not None else 0.0)
    except ValueError as e:  # ConfigError, DataError, LossError
        _fail(f"the run's task or loss cannot be rebuilt: {e}")
    weights = ck["weights"]
    E = weights[0].shape[0]
    if not task.square_loss:
        print(f"{path}  step {ck['step']}  dims {ck['dims']}  members {E}")
        _convex(task, weights, min(E, args.members))
        return
    schedule = _ridge_schedule(cfg)
    # the weights of step s were made by the step s - 1 took, under that step's lambda
    ridge = schedule(max(int(ck["step"]) - 1, 0))
    data = task.landscape_data()
    theorem7 = data is not None and not any(schedule.values)   # as the classifier hook decides
    scale = float(task.paper_scale)
    print(f"{path}  step {ck['step']}  dims {ck['dims']}  members {E}")
    if theorem7:
        tol = tolerances_from_config(cfg.get("classify"))
        print(f"units: paper = sum over the {task.n_samples} samples (the landscape paper's loss); "
              f"lab = the run's loss (mean) = paper / {scale:g}")
        print("tolerances (run config classify.*): " + ", ".join(
            f"{k}={getattr(tol, k):g}" for k in ("grad_rtol", "rank_rtol", "rank_band", "gamma_tol")))
    else:
        print(f"units: lab (the run's loss, mean over {task.n_samples} samples, plus ridge "
              f"lambda = {ridge:g} * ||theta||^2); paper = lab * {scale:g} without the ridge term")
    for k in range(min(E, args.members)):
        ws = [w[k] for w in weights]
        if theorem7:
            res = classify(ws, *data, tolerances=tol, hessian=args.hessian).to_dict()
            print(f"member {k}: {res['label']}  S = {res['S'] or res['nearest_S'] + ' (nearest)'}")
            _print_theorem7(res, scale)
        else:

            p = ridge_classify([w.double() for w in ws], task, ridge)
            why = "partially observed completion" if data is None else f"ridge lambda = {ridge:g}"
            print(f"member {k}: {p.label} ({why}: first and second order, not Theorem 7)")
            _print_ridge(p)


if __name__ == "__main__":
    main()
