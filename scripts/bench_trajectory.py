"""Cost of the trajectory numbers per member-record, batched (issue 10 target: <= 0.5 ms at E = 256,
H = 4, width 32, the default teacher's d_x = 6, d_y = 4; P = 2368 > full_max_params, so Lanczos).

    .venv/bin/python scripts/bench_trajectory.py [--E 256] [--width 32] [--records 5]

Members are small-init GD checkpoints near the S = {1} plateau (eps = 0.03 with per-member noise), and
successive records are a few GD steps apart, so the warm start is exercised as in a run. Reports ms per
member-record for: curvature (cold and warm Lanczos), tight_margin, project_to_critical without and
with the Theorem 7 label of the projected point (the label is a per-member Python loop).
"""
from __future__ import annotations

import argparse
import time

import torch

from dlnlab.theory.classify import Classifier
from dlnlab.theory.data import LandscapeData
from dlnlab.tasks import make_regression
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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--labels-only", action="store_true", help="only the projection/labels/margin lines")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for E in (1, 256):
        projection_labels_margin(E, a.threads)
    if a.labels_only:
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


def projection_labels_margin(E: int, threads: int) -> None:
    """ms per member-record of the projection + Theorem 7 labels and of tight_margin at the peer
    shapes (H = 4, width 32, d_x = d_y = 32, m = 256), new (batched) and old (the per-point
    classifier on each projected member) in one run."""
    task = make_regression(256, 32, 32)
    data = LandscapeData.from_xy(task.X, task.Y)
    clf = Classifier(data)
    ws = checkpoints(data, [32] * 5, E, 0.05, 1000, 5e-4, torch.Generator().manual_seed(1))
    per = 1e3 / E
    n = 3 if E > 1 else 20
    t_new, pr = timed(lambda: project_to_critical(ws, data, classifier=clf), n)

    def old():
        p = project_to_critical(ws, data, label=False, classifier=clf)
        return [c.label for c in (clf._classify_one([w[e] for w in p.weights_proj], False, "auto", 2.0 ** -52)
                                  for e in range(E))]
    t_old, labels = timed(old, max(1, n // 3))
    assert labels == pr.near_label
    t_tm, _ = timed(lambda: tight_margin(ws, pr.r, data), n)
    print(f"E = {E:3d} d_x = d_y = 32: projection + labels {t_new * per:.3f} ms/member-record (per-point labels "
          f"{t_old * per:.3f}); tight_margin {t_tm * per:.3f}; total {(t_new + t_tm) * per:.3f} (target 0.1; "
          f"r {sorted(set(pr.r.tolist()))}, labels {sorted(set(pr.near_label))})")


if __name__ == "__main__":
    main()
