"""Cost of the trajectory numbers per member-record, batched (issue 10 target: <= 0.5 ms at E = 256,
H = 4, width 32, the default teacher's d_x = 6, d_y = 4; P = 2368 > full_max_params, so Lanczos).

    .venv/bin/python scripts/bench_trajectory.py [--E 256] [--width 32] [--records 5] [--curvature-only]

First the curvature entry (`curvature_bench`): Lanczos at H = 4, width 32 with d_x = d_y = 32 (P = 4096),
ms per member per warm call at E = 1 and E = 256, HVPs per member, and the largest error against
eigvalsh of the exact Hessian at a small size (P = 100), relative to max|lam| and on plateau members to |lam_min|.

Members are small-init GD checkpoints near the S = {1} plateau (eps = 0.03 with per-member noise), and
successive records are a few GD steps apart, so the warm start is exercised as in a run. Reports ms per
member-record for: curvature (cold and warm Lanczos), tight_margin, project_to_critical without and
with the Theorem 7 label of the projected point (the label is a per-member Python loop).
"""
from __future__ import annotations

import argparse
import time

import torch

from dlnlab.linalg import product
from dlnlab.tasks import make_regression
from dlnlab.theory.critical import loss_of_product
from dlnlab.theory.data import LandscapeData
from dlnlab.theory.lanczos import SquareLossHVP
from dlnlab.theory.trajectory import curvature, project_to_critical, tight_margin


def checkpoints(data, dims, E, eps, steps, lr, gen):
    """E members trained by full-batch GD (paper loss, lr in lab units / m) from eps-scale inits."""
    ws = [eps * torch.randn(E, dims[h + 1], dims[h], generator=gen, dtype=torch.float64)
          for h in range(len(dims) - 1)]
    for _ in range(steps):
        g = SquareLossHVP(ws, data.A, data.Sxx).grad()
        ws = [w - lr / data.m * gw for w, gw in zip(ws, g)]
    return ws


def gd(ws, data, steps, lr):
    for _ in range(steps):
        g = SquareLossHVP(ws, data.A, data.Sxx).grad()
        ws = [w - lr / data.m * gw for w, gw in zip(ws, g)]
    return ws


def curvature_bench(E_list=(1, 256), records=4):
    """Warm Lanczos calls along small-init GD checkpoints (init scales 0.25..1 x 0.03 / 32^0.25, 1500
    steps, records 100 steps apart), H = 4, width 32, d_x = d_y = 32; then the error against eigvalsh
    at P = 100 (near-saddle and plateau members)."""
    spectrum = [8.0, 4.0, 2.0, 1.0] + [0.5 - 0.015 * i for i in range(28)]   # distinct: Assumption 1
    task = make_regression(64, 32, 32, spectrum)
    data = LandscapeData.from_xy(task.X, task.Y)
    for E in E_list:
        gen = torch.Generator().manual_seed(1)
        eps = 0.03 / 32 ** 0.25 * (0.25 + 0.75 * torch.rand(E, 1, 1, generator=gen, dtype=torch.float64))
        ws = gd([eps * torch.randn(E, 32, 32, generator=gen, dtype=torch.float64) for _ in range(4)], data, 1500, 0.008)
        t, (_, _, st) = timed(lambda: curvature(ws, data), 1)
        cold = (t, float(st.hvps.double().mean()))
        ts, hv, mx = [], [], []
        for _ in range(records):
            ws = gd(ws, data, 100, 0.008)
            t, (_, _, st) = timed(lambda: curvature(ws, data, warm=st), 1)
            ts.append(t)
            hv.append(float(st.hvps.double().mean()))
            mx.append(int(st.n_hvp))
        print(f"curvature E = {E:3d}, P = 4096: cold {cold[0] / E * 1e3:7.2f} ms/member ({cold[1]:.1f} HVPs); "
              f"warm {sum(ts) / len(ts) / E * 1e3:7.2f} ms/member per call, HVPs per member "
              f"{sum(hv) / len(hv):.1f} (slowest member {max(mx)})")
    # accuracy against the exact Hessian at P = 100, default tolerances
    small = make_regression(64, 6, 4, [8.0, 4.0, 2.0, 1.0])
    d = LandscapeData.from_xy(small.X, small.Y)
    dims = [6, 5, 5, 5, 4]
    gen = torch.Generator().manual_seed(2)
    eps = torch.linspace(0.03, 0.06, 32, dtype=torch.float64).view(32, 1, 1)
    ws = gd([eps * torch.randn(32, dims[h + 1], dims[h], generator=gen, dtype=torch.float64) for h in range(4)], d, 600, 0.008)
    ex_min, ex_max, _ = curvature(ws, d)                       # exact: eigvalsh of the full Hessians
    lmin, lmax, st = curvature(ws, d, full_max_params=0)
    scale = torch.maximum(ex_min.abs(), ex_max.abs())
    err = torch.maximum((lmin - ex_min).abs(), (lmax - ex_max).abs()) / scale
    on = (loss_of_product(product(ws), d) / d.critical_value((1,)) - 1).abs() <= 1e-3
    rel = ((lmin - ex_min).abs() / ex_min.abs())[on]
    print(f"accuracy P = 100, E = 32: max |err| / max|lam| = {float(err.max()):.1e} (bound lanczos_rtol); "
          f"on the S = {{1}} plateau ({int(on.sum())} members) max |lam_min err| / |lam_min| = "
          f"{float(rel.max()) if rel.numel() else float('nan'):.1e}; HVPs per member {float(st.hvps.double().mean()):.1f}")


def timed(fn, n):
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
        out = fn()
    return (time.perf_counter() - t0) / n, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--E", type=int, default=256)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--records", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--curvature-only", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    curvature_bench()
    if a.curvature_only:
        return
    task = make_regression(64, 6, 4, [8.0, 4.0, 2.0, 1.0])
    data = LandscapeData.from_xy(task.X, task.Y)
    dims = [6] + [a.width] * (a.depth - 1) + [4]
    gen = torch.Generator().manual_seed(0)
    ws = checkpoints(data, dims, a.E, 0.03 / a.width ** 0.25, 1500, 0.008, gen)
    P = sum(dims[h] * dims[h + 1] for h in range(len(dims) - 1))
    print(f"E = {a.E}, H = {a.depth}, width {a.width}, P = {P}, threads {a.threads}")
    per = 1e3 / a.E

    t_cold, (_, _, st) = timed(lambda: curvature(ws, data), 1)
    print(f"curvature cold        {t_cold * per:8.3f} ms/member-record  ({st.method}, {st.n_hvp} HVPs, "
          f"converged {int(st.converged.sum())}/{a.E})")
    warm_times, hvps, conv = [], [], []
    for _ in range(a.records):
        for _ in range(100):    # the next record: 100 GD steps later
            g = SquareLossHVP(ws, data.A, data.Sxx).grad()
            ws = [w - 0.008 / data.m * gw for w, gw in zip(ws, g)]
        t, (_, _, st) = timed(lambda: curvature(ws, data, warm=st), 1)
        warm_times.append(t)
        hvps.append(st.n_hvp)
        conv.append(int(st.converged.sum()))
    t_warm = sum(warm_times) / len(warm_times)
    print(f"curvature warm        {t_warm * per:8.3f} ms/member-record  (HVPs per record {hvps}, converged {conv})")
    t_tm, _ = timed(lambda: tight_margin(ws, 1, data), 3)
    print(f"tight_margin          {t_tm * per:8.3f} ms/member-record")
    t_pr, pr = timed(lambda: project_to_critical(ws, data, label=False), 3)
    print(f"projection (no label) {t_pr * per:8.3f} ms/member-record  (S {sorted(set(pr.S_str))}, "
          f"max grad_rel {float(pr.grad_rel.max()):.2e})")
    t_lab, pr = timed(lambda: project_to_critical(ws, data, label=True), 1)
    print(f"projection + label    {t_lab * per:8.3f} ms/member-record  (labels {sorted(set(pr.near_label))})")
    total = t_warm + t_tm + t_pr
    print(f"TOTAL curvature(warm) + margin + projection: {total * per:.3f} ms/member-record "
          f"(with labels {(t_warm + t_tm + t_lab) * per:.3f}); target 0.5")


if __name__ == "__main__":
    main()
