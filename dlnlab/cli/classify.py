"""`dlnlab-classify PATH [--step N] [--hessian]`: label a saved checkpoint (a run folder means its newest:
last.pt at the end of a run).

A thin front of `dlnlab.experiments.checkpoint_labels.classify_checkpoint`: the run's own hooks,
built from its config (its task, loss and `classify.*` tolerances), label the checkpoint, so every
label and value printed is the run table's for that record: Theorem 7 under the square loss, the
labels of Laurent & von Brecht's theorem (docs/theory.md §8) under any other loss, first and second
order under ridge or a partially observed completion. Loss-like values are printed in both units:
"paper" = the landscape paper's loss, the SUM over samples (or observed entries), and "lab" = the
run's loss (the mean) = paper / task.paper_scale.
"""
from __future__ import annotations

import argparse
import sys

from dlnlab.experiments.checkpoint_labels import (
    CheckpointNotFound,
    load_checkpoint,
    record_frame,
    replay_checkpoint,
)
from dlnlab.experiments.config import ConfigError
from dlnlab.recording.classifier import ClassifierHook, tolerances_from_config
from dlnlab.recording.convex import convex_tolerances

# run-table columns in lab loss units (printed also in paper units: x task.paper_scale)
_LAB_FIELDS = ("loss", "critical_value", "nearest_value", "lam_min", "lam_max")
# run-table columns in paper units (the classifier's gradient of the summed loss)
_PAPER_FIELDS = ("classify_grad_norm",)
# the Theorem 7 hook's and the trajectory hook's columns, in the order printed (docs/columns.md)
_THEOREM7_COLUMNS = ("label_reason", "r", "loss", "critical_value", "nearest_S", "nearest_value",
                     "classify_grad_norm", "grad_norm", "near_label", "near_S", "near_dist", "tight_margin",
                     "lam_min", "lam_max", "lam_converged")
_CONVEX_COLUMNS = ("convex_reason", "loss", "convex_gap", "grad_l_norm", "grad_norm")
# mode-table columns shown for ridge / partial-completion labels (dlnlab.theory.ridge.modes.mode_table)
_MODE_COLUMNS = ("mode", "y", "threshold", "s", "s_on", "s_barrier", "barrier_height", "state", "could_switch_off")


def _fail(msg: str) -> None:
    print(f"dlnlab-classify: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _fmt(v) -> str:
    return f"{v:.10g}" if isinstance(v, float) else str(v)


def _print_field(key: str, v) -> None:
    print(f"    {key:30s} {_fmt(v)}")


def _print_row(row, columns, scale: float) -> None:
    """A member's run-table columns; loss-like ones in paper and lab units (hessian_min_eig: the
    paper Hessian's smallest eigenvalue = lam_min x task.paper_scale)."""
    for key in columns:
        v = row.get(key)
        if v is None or v == "" or (isinstance(v, float) and v != v):   # NaN: not computed or not critical
            continue
        if key in _LAB_FIELDS and isinstance(v, float):
            name = "hessian_min_eig" if key == "lam_min" else key
            print(f"    {name:30s} paper {v * scale:.10g}   lab {v:.10g}")
        elif key in _PAPER_FIELDS and isinstance(v, float):
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


def _print_convex(df, cfg, loss_name: str, members: int) -> None:
    tol = convex_tolerances((cfg.get("classify") or {}).get("convex_gap_rtol"))  # the run's, as its hook had
    print(f"units: lab (the run's loss, loss={loss_name}); convex_gap = loss - ell* (the convex reference)")
    print(f"tolerances (the convex hook's): grad_rtol={tol.grad_rtol:g}, grad_l_rtol={tol.grad_l_rtol:g}, "
          f"gap_rtol={tol.gap_rtol:g}")
    for k, row in df.head(members).iterrows():
        print(f"member {k}: {row['convex_label']} (loss={loss_name}: Laurent & von Brecht, not Theorem 7)")
        for key in _CONVEX_COLUMNS:
            if row.get(key) not in (None, ""):
                _print_field(key, row[key])


def _print_ridge_members(df, hooks, task, ridge: float, members: int) -> None:
    data = task.landscape_data()
    clf = next((h for h in hooks if isinstance(h, ClassifierHook)), None)
    points = clf.ridge_points if clf is not None else []
    print(f"units: lab (the run's loss, mean over {task.n_samples} samples, plus ridge "
          f"lambda = {ridge:g} * ||theta||^2); paper = lab * {float(task.paper_scale):g} without the ridge term")
    why = "partially observed completion" if data is None else f"ridge lambda = {ridge:g}"
    for k, row in df.head(members).iterrows():
        print(f"member {k}: {row.get('label') or 'unlabelled'} ({why}: first and second order, not Theorem 7)")
        if k < len(points) and points[k] is not None:
            _print_ridge(points[k])


def _print_theorem7_members(df, cfg, task, members: int) -> None:
    scale = float(task.paper_scale)
    tol = tolerances_from_config(cfg.get("classify"))
    print(f"units: paper = sum over the {task.n_samples} samples (the landscape paper's loss); "
          f"lab = the run's loss (mean) = paper / {scale:g}")
    print("tolerances (run config classify.*): " + ", ".join(
        f"{k}={getattr(tol, k):g}" for k in ("grad_rtol", "rank_rtol", "rank_band", "gamma_tol")))
    for k, row in df.head(members).iterrows():
        print(f"member {k}: {row['label']}  S = {row['S'] or row['nearest_S'] + ' (nearest)'}")
        _print_row(row, _THEOREM7_COLUMNS, scale)


def main(argv=None) -> None:
    """`dlnlab-classify PATH [--step N] [--hessian]`: print the labels of a checkpoint (see the module)."""
    ap = argparse.ArgumentParser(prog="dlnlab-classify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="a run folder (its newest checkpoint), or a checkpoint .pt in it")
    ap.add_argument("--step", type=int, default=None, help="the checkpoint at this step (a run folder's)")
    ap.add_argument("--hessian", action="store_true", help="also the Hessian's extreme eigenvalues")
    ap.add_argument("--members", type=int, default=8, help="print at most this many ensemble members")
    args = ap.parse_args(argv)
    try:
        ck = load_checkpoint(args.path, args.step)
        rec, hooks = replay_checkpoint(ck, curvature=args.hessian)
    except (CheckpointNotFound, ConfigError, ValueError) as e:  # ConfigError, DataError, LossError
        _fail(str(e))
    df = record_frame(rec)
    task, cfg = ck.task, ck.config
    print(f"{ck.path}  step {ck.step}  dims {[int(ck.weights[0].shape[-1])] + [int(w.shape[-2]) for w in ck.weights]}"
          f"  members {len(df)}")
    if not task.square_loss:
        _print_convex(df, cfg, task.loss_name, args.members)
    elif "S" in df.columns:
        _print_theorem7_members(df, cfg, task, args.members)
    else:
        _print_ridge_members(df, hooks, task, rec.ridge, args.members)


if __name__ == "__main__":
    main()
