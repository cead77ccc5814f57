"""Cost of the trajectory numbers per member-record, batched (issue 10 target: <= 0.5 ms at E = 256,
H = 4, width 32, the default teacher's d_x = 6, d_y = 4; P = 2368 > full_max_params, so Lanczos).

    .venv/bin/python scripts/bench_trajectory.py [--E 256] [--width 32] [--records 5] [--only curvature|labels|total]

First the curvature entry (`curvature_bench`): Lanczos at H = 4, width 32 with d_x = d_y = 32 (P = 4096),
ms per member per warm call at E = 1 and E = 256, HVPs per member, and the largest error against
eigvalsh of the exact Hessian at a small size (P = 100), relative to max|lam| and on plateau members to |lam_min|.

Then the projection, its labels and tight_margin at the peer shapes (`projection_labels_margin`), and
the total of issue 10 at the default teacher (`total`): members are small-init GD checkpoints near
the S = {1} plateau, successive curvature records 10 x 100 GD steps apart, so the warm start is
exercised as in a run; the figure is ms per member-record with the curvature amortised over
`--curvature-every` records.
"""
from __future__ import annotations

import argparse
import time

import torch

from dlnlab.linalg import partial_products, product, singular_values
from dlnlab.tasks import make_regression
from dlnlab.theory.square.classify import Classifier
from dlnlab.theory.square.critical import loss_of_product
from dlnlab.theory.square.data import LandscapeData
from dlnlab.theory.square.lanczos import SquareLossHVP
from dlnlab.theory.square.trajectory import curvature, project_to_critical, tight_margin


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
    ap.add_argument("--only", choices=["curvature", "labels", "total"], help="one part of the benchmark")
    ap.add_argument("--curvature-every", type=int, default=10, help="classify.curvature_every of the run")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.only in (None, "curvature"):
        curvature_bench()
    if a.only in (None, "labels"):
        for E in (1, 256):
            projection_labels_margin(E)
    if a.only in (None, "total"):
        total(a)


def total(a) -> None:
    """Issue 10's figure: what the trajectory hook adds per member-record at the default teacher, with
    the curvature of every member every `curvature_every` records (the hook's default limits it to
    classify.near_members = 16 members)."""
    task = make_regression(64, 6, 4, [8.0, 4.0, 2.0, 1.0])
    data = LandscapeData.from_xy(task.X, task.Y)
    clf = Classifier(data)
    dims = [6] + [a.width] * (a.depth - 1) + [4]
    gen = torch.Generator().manual_seed(0)
    ws = checkpoints(data, dims, a.E, 0.03 / a.width ** 0.25, 1500, 0.008, gen)
    P = sum(dims[h] * dims[h + 1] for h in range(len(dims) - 1))
    print(f"default teacher E = {a.E}, H = {a.depth}, width {a.width}, P = {P}, threads {a.threads}")
    per = 1e3 / a.E
    t_cold, (_, _, st) = timed(lambda: curvature(ws, data), 1)
    print(f"  curvature cold        {t_cold * per:8.3f} ms/member-call  ({st.method}, {st.n_hvp} HVPs, "
          f"converged {int(st.converged.sum())}/{a.E})")
    warm_times, hvps, conv = [], [], []
    for _ in range(a.records):
        for _ in range(100 * a.curvature_every):    # the next curvature record
            g = SquareLossHVP(ws, data.A, data.Sxx).grad()
            ws = [w - 0.008 / data.m * gw for w, gw in zip(ws, g)]
        t, (_, _, st) = timed(lambda: curvature(ws, data, warm=st), 1)
        warm_times.append(t)
        hvps.append(round(float(st.hvps.double().mean()), 1))
        conv.append(int(st.converged.sum()))
    t_warm = sum(warm_times) / len(warm_times)
    print(f"  curvature warm        {t_warm * per:8.3f} ms/member-call  (mean HVPs per member {hvps}, converged {conv})")
    pp = partial_products(ws)
    sv = singular_values(pp)
    t_pr, pr = timed(lambda: project_to_critical(ws, data, classifier=clf), 3)
    print(f"  projection + label    {t_pr * per:8.3f} ms/member-record  (S {sorted(set(pr.S_str))}, "
          f"labels {sorted(set(pr.near_label))}, max grad_rel {float(pr.grad_rel.max()):.2e})")
    t_tm, _ = timed(lambda: tight_margin(ws, pr.r, data, products=pp, singular_values=sv), 3)
    print(f"  tight_margin          {t_tm * per:8.3f} ms/member-record (on the metrics hook's spectra)")
    every = (t_pr + t_tm) * per
    print(f"  TOTAL per member-record: {every + t_warm * per / a.curvature_every:.3f} ms with the curvature of "
          f"every member every {a.curvature_every} records ({every:.3f} without it); target 0.5")


def projection_labels_margin(E: int) -> None:
    """ms per member-record of the projection with its labels (read from the construction's ranks;
    the batched numerical classifier; the per-point classifier, member by member) and of tight_margin
    (from the weights; on the metrics hook's spectra) at the peer shapes (H = 4, width 32,
    d_x = d_y = 32, m = 256), in one run. The three label routes must agree."""
    task = make_regression(256, 32, 32)
    data = LandscapeData.from_xy(task.X, task.Y)
    clf = Classifier(data)
    ws = checkpoints(data, [32] * 5, E, 0.05, 1000, 5e-4, torch.Generator().manual_seed(1))
    per = 1e3 / E
    n = 3 if E > 1 else 20
    t_new, pr = timed(lambda: project_to_critical(ws, data, classifier=clf), n)
    t_clf, pc = timed(lambda: project_to_critical(ws, data, classifier=clf, label="classifier"), max(1, n // 3))

    def old():
        p = project_to_critical(ws, data, label=False, classifier=clf)
        return [clf.classify([w[e] for w in p.weights_proj]).label for e in range(E)]
    t_old, labels = timed(old, max(1, n // 3))
    assert labels == pr.near_label == pc.near_label
    pp = partial_products(ws)
    sv = singular_values(pp)
    t_tm, _ = timed(lambda: tight_margin(ws, pr.r, data), n)
    t_ts, _ = timed(lambda: tight_margin(ws, pr.r, data, products=pp, singular_values=sv), n)
    print(f"labels E = {E:3d}, d_x = d_y = 32: projection + labels {t_new * per:.3f} ms/member-record "
          f"(numerical classifier {t_clf * per:.3f}, per point {t_old * per:.3f}); tight_margin {t_tm * per:.3f} "
          f"(on the metrics' spectra {t_ts * per:.3f}); r {sorted(set(pr.r.tolist()))}, "
          f"labels {sorted(set(pr.near_label))}")


if __name__ == "__main__":
    main()
