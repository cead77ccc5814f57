"""`dlnlab-classify PATH [--hessian]`: label a saved checkpoint (a run folder means its last.pt)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf


def _fail(msg: str) -> None:
    print(f"dlnlab-classify: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="dlnlab-classify", description=__doc__)
    ap.add_argument("path", help="a checkpoint .pt, or a run folder (its checkpoints/last.pt)")
    ap.add_argument("--hessian", action="store_true", help="also compute the Hessian's smallest eigenvalue")
    ap.add_argument("--members", type=int, default=8, help="label at most this many ensemble members")
    args = ap.parse_args(argv)
    path = Path(args.path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        _fail(f"no checkpoint at {path}")
    try:
        ck = torch.load(path, weights_only=True)
        cfg = OmegaConf.create(ck["config"])
    except Exception as e:  # noqa: BLE001
        _fail(f"{path} is not a dlnlab checkpoint: {e}")

    from dlnlab.classify import Tolerances, classify
    from dlnlab.experiment import build_task

    task = build_task(cfg.task)
    weights = [w.double() for w in ck["weights"]]
    E = weights[0].shape[0]
    ridge = float(cfg.optim.ridge) if not len(cfg.optim.ridge_values) else float(cfg.optim.ridge_values[-1])
    data = task.landscape_data()
    print(f"{path}  step {ck['step']}  dims {ck['dims']}  members {E}")
    for k in range(min(E, args.members)):
        ws = [w[k] for w in weights]
        if data is not None and ridge == 0:
            c = cfg.get("classify", {})
            tol = Tolerances(grad_rtol=c.get("grad_rtol", 1e-2), rank_rtol=c.get("rank_rtol", 1e-2))
            res = classify(ws, *data, tolerances=tol, hessian=args.hessian).to_dict()
            head = f"member {k}: {res['label']}  S = {res['S'] or res['nearest_S'] + ' (nearest)'}"
        else:
            from dlnlab.ridge import classify as ridge_classify

            p = ridge_classify(ws, task, ridge)
            res = {"label": p.label, "reason": p.reason, "loss": p.loss, "grad_norm": p.grad_norm,
                   "e2e_rank": p.e2e_rank, "layer_rank": p.layer_rank, "hessian_min_eig": p.min_eig,
                   "balanced_identity_residual": p.identity_residual}
            head = f"member {k}: {p.label} (ridge lambda = {ridge}, first and second order)"
        print(head)
        for key, v in res.items():
            if key not in ("label", "S") and v not in (None, ""):
                print(f"    {key:22s} {v}")


if __name__ == "__main__":
    main()
