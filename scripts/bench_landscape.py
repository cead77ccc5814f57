"""Timings of the landscape classifier and of the Hessian's smallest eigenvalue (for scripts/bench.py).

    from bench_landscape import bench_classify   # run from scripts/
    t = bench_classify()        # {"classify_ms": {...}, "hessian_s": {...}, ...}

Targets: one checkpoint classified (no Hessian) in < 5 ms for H = 4, width 32, m = 64;
lam_min of the Hessian at P = 100,000 parameters in < 30 s on 2 cores.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Sequence

import torch

from dlnlab.theory.square.classify import Classifier
from dlnlab.theory.square.data import LandscapeData
from dlnlab.theory.square.hessian import hessian_min_eig
from dlnlab.theory.square.points import random_global_min, saddle_family

F64 = torch.float64


def _median_ms(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def _data(width: int, m: int, seed: int) -> LandscapeData:
    g = torch.Generator().manual_seed(seed)
    return LandscapeData.from_xy(torch.randn(m, width, generator=g, dtype=F64),
                                 torch.randn(m, width, generator=g, dtype=F64))


def bench_classify(depth: int = 4, width: int = 32, m: int = 64, repeats: int = 200,
                   hessian_params: Sequence[int] = (1_000, 10_000, 100_000), hessian_depth: int = 4,
                   seed: int = 0) -> dict:
    """Median ms per checkpoint of Classifier.classify (no Hessian) on four kinds of points, and the
    seconds of hessian_min_eig (method "auto") at a strict and a non-strict saddle for each parameter
    count P (width = round(sqrt(P / depth)), all layers square). Uses torch's current thread count.

    Returns {"classify_ms": {kind: ms}, "hessian_s": {P: {"strict": s, "nonstrict": s, "method": ...,
    "..._n_hvp": ..., "..._lam_min": ..., "..._refined": ...}}, "hessian_warmup_s": s, "threads": n}.
    The Lanczos runs use
    1 torch thread (hessian.min_eigenvalue's default torch_threads=1).
    """
    g = torch.Generator().manual_seed(seed)
    data = _data(width, m, seed)
    clf = Classifier(data)
    dims = [width] * (depth + 1)
    r = max(1, width // 4)
    points = {
        "not_critical": [0.1 * torch.randn(width, width, generator=g, dtype=F64) for _ in range(depth)],
        "global_min": random_global_min(data, dims, generator=g).weights,
        "strict_saddle": saddle_family(data, dims, r, True, generator=g).weights,
        "nonstrict_saddle": saddle_family(data, dims, r, False, generator=g).weights,
    }
    out = {"threads": torch.get_num_threads(), "classify_ms": {}, "hessian_s": {}}
    for kind, ws in points.items():
        got = clf.classify(ws).label
        assert got == kind, (kind, got)
        out["classify_ms"][kind] = _median_ms(lambda: clf.classify(ws), repeats)
    # warm-up: the first torch.func Hessian / linearize call of a process pays a one-off ~1-5 s
    t0 = time.perf_counter()
    wu = _data(4, 8, seed)
    wws = random_global_min(wu, [4, 4, 4], generator=seed).weights
    hessian_min_eig(wws, wu, method="full")
    hessian_min_eig(wws, wu, method="lanczos")
    out["hessian_warmup_s"] = time.perf_counter() - t0
    for P in hessian_params:
        w = max(2, round(math.sqrt(P / hessian_depth)))
        d = _data(w, w + 16, seed + 1)
        hd = [w] * (hessian_depth + 1)
        row = {"width": w, "n_params": hessian_depth * w * w}
        for kind, strict in (("strict", True), ("nonstrict", False)):
            # z_scale keeps the middle Z products O(1) at every width
            ws = saddle_family(d, hd, max(1, w // 4), strict, generator=seed, z_scale=1 / math.sqrt(w)).weights
            t0 = time.perf_counter()
            res = hessian_min_eig(ws, d, return_result=True)
            row[kind] = time.perf_counter() - t0
            row[f"{kind}_lam_min"] = res.value
            row[f"{kind}_n_hvp"] = res.n_hvp
            row[f"{kind}_refined"] = res.refined   # the relative-accuracy second Lanczos pass ran
            row["method"] = res.method
        out["hessian_s"][P] = row
    return out


if __name__ == "__main__":  # pragma: no cover
    import json
    print(json.dumps(bench_classify(), indent=1, default=str))
