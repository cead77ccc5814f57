"""Benchmark of dlnlab.theory.convex.labels against the issue's targets (float64, one torch thread):
labelling one checkpoint <= 20 ms at H = 4, width 32, m = 256 (Hessian excluded); ell* <= 2 s at
d_in = 64, d_out = 10, m = 2000."""
import time

import torch

from dlnlab.losses import make_loss
from dlnlab.theory.convex.labels import ConvexLabeller, convex_reference

F64 = torch.float64


def best_of(fn, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    for name in ("cross_entropy", "huber", "logistic"):
        C = 1 if name == "logistic" else 10
        X = torch.randn(2000, 64, generator=g, dtype=F64)
        Z = X @ torch.randn(64, C, generator=g, dtype=F64) / 8 + torch.randn(2000, C, generator=g, dtype=F64)
        Y = {"cross_entropy": Z.argmax(1), "huber": Z, "logistic": torch.sign(Z[:, 0])}[name]
        t = best_of(lambda: convex_reference(make_loss(name), X, Y, d_out=C), 2)
        print(f"ell*  {name:14s} d_in=64 d_out={C:2d} m=2000: {t * 1e3:8.1f} ms  (target 2000 ms)")
    d, m, H = 32, 256, 4
    X = torch.randn(m, d, generator=g, dtype=F64)
    y = (X @ torch.randn(d, 10, generator=g, dtype=F64)).argmax(1)
    loss = make_loss("cross_entropy")
    lab = ConvexLabeller(convex_reference(loss, X, y, d_out=10), [d] * H + [10])
    for E in (1, 16):
        ws = [torch.randn(E, b, a, generator=g, dtype=F64) / a ** 0.5 for a, b in zip([d] * H, [d] * (H - 1) + [10])]
        ws1 = [w[0] for w in ws] if E == 1 else ws
        t = best_of(lambda: lab.label(ws1, hessian=False), 20)
        print(f"label cross_entropy H=4 width 32 m=256 E={E:2d}: {t * 1e3:7.2f} ms per checkpoint, "
              f"{t / E * 1e3:6.2f} ms per member  (target 20 ms)")


if __name__ == "__main__":
    main()
