"""Table B.3 of Laurent & von Brecht's theorem (docs/theory.md §8): final ell - ell* per cell.

Cells: loss (cross-entropy, Huber) x depth H x hidden width (>= min(d_in, d_out): the width condition
holds; below: a bottleneck). Each cell trains `inits` networks from the same initialisations twice:
scipy L-BFGS-B on theta (float64, one run per init) and full-batch GD (the inits as one ensemble, the
trainer's factored step). ell* is the convex reference over all matrices (dlnlab.theory.convex.reference),
so a bottleneck cell can only reach its (unknown) rank-constrained optimum, above ell*.

    from dlnlab import compose
    from dlnlab.experiments.convex_losses import run_convex_losses
    s = run_convex_losses(compose(["experiment=convex_losses"]), out_dir="runs/b3")
    print(s); s.table          # one row per cell and optimiser; s.runs: one row per init

`dlnlab-train experiment=convex_losses` dispatches here (`convex_losses.enabled`); the output folder gets
convex_losses.csv (the table), convex_losses_runs.csv (every run) and convex_losses.png (the figure).
"""
from __future__ import annotations

import ctypes
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize

from dlnlab.losses import make_loss, product_value_grad
from dlnlab.model import DeepLinearNet
from dlnlab.tasks import RegressionTask, with_loss
from dlnlab.theory.convex.reference import convex_reference, width_condition
from dlnlab.train import Trainer

F64 = torch.float64
GAP_FLOOR = 1e-17  # gaps at or below 0 (rounding) are drawn here on the log axis


@contextmanager
def single_blas_thread():
    """OpenBLAS with one thread inside the block (scipy's L-BFGS-B calls LAPACK on 60 x 60 matrices: on a
    busy machine, waking BLAS threads costs milliseconds a call); a no-op where that is not possible."""
    setters = []
    try:
        with open("/proc/self/maps") as f:
            libs = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.rstrip().endswith(".so")}
    except OSError:
        libs = set()
    for lib in sorted(libs):
        try:
            dll = ctypes.CDLL(lib)
        except OSError:
            continue
        for prefix in ("scipy_", ""):
            for suffix in ("64_", ""):
                name = f"{prefix}openblas_set_num_threads{suffix}"
                get = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}", None)
                if hasattr(dll, name) and get is not None:
                    setters.append((getattr(dll, name), int(get())))
    for fn, _ in setters:
        fn(1)
    try:
        yield
    finally:
        for fn, n in setters:
            fn(n)


def b3_task(loss_name: str, c, seed: int = 0) -> RegressionTask:
    """The spec's data: m samples, X Gaussian; cross-entropy labels = argmax of a noisy linear teacher
    (not separable), Huber targets = teacher + Gaussian noise + a fraction of outliers."""
    g = torch.Generator().manual_seed(int(seed))
    X = torch.randn(c.m, c.d_in, generator=g, dtype=F64)
    teacher = torch.randn(c.d_out, c.d_in, generator=g, dtype=F64)
    if loss_name == "cross_entropy":
        Z = X @ teacher.T + c.class_noise * torch.randn(c.m, c.d_out, generator=g, dtype=F64)
        Y = torch.nn.functional.one_hot(Z.argmax(1), c.d_out).to(F64)
        loss = make_loss("cross_entropy")
    else:
        Y = X @ teacher.T + c.noise * torch.randn(c.m, c.d_out, generator=g, dtype=F64)
        k = int(round(c.outliers * c.m))
        Y[:k] += c.outlier_size
        loss = make_loss(loss_name, **({"delta": c.delta} if loss_name in ("huber", "pseudo_huber") else {}))
    return with_loss(RegressionTask(X, Y, name=f"b3_{loss_name}"), loss)


def initial_weights(dims, c, seed: int) -> list[list[torch.Tensor]]:
    """Per init k: entries N(0, std_k^2), std_k = init_stds[k mod len], seeded by seed + k."""
    out = []
    for k in range(c.inits):
        std = c.init_stds[k % len(c.init_stds)]
        g = torch.Generator().manual_seed(int(seed) + k)
        out.append([std * torch.randn(b, a, generator=g, dtype=F64) for a, b in zip(dims, dims[1:])])
    return out


def lbfgs_theta(task: RegressionTask, ws0, maxiter: int) -> tuple[list[torch.Tensor], int]:
    """scipy L-BFGS-B on theta = (W_1..W_H) of f = ell(W_H...W_1), gradients by the chain rule
    dF/dW_h = (W_H..W_{h+1})^T grad ell(A) (W_{h-1}..W_1)^T (float64)."""
    shapes = [tuple(w.shape) for w in ws0]
    cuts = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    X, T, loss = task.X, task.targets, task.objective

    def vg(A):
        return product_value_grad(loss, A, X, T)

    def fun(x):
        # torch, not numpy: numpy's BLAS threads cost milliseconds per tiny product on a busy machine
        x = torch.from_numpy(x)
        ws = [x[a:b].view(s) for a, b, s in zip(cuts, cuts[1:], shapes)]
        H = len(ws)
        right = [None] * (H + 1)                 # right[h] = W_h..W_1
        acc = None
        for h, w in enumerate(ws, start=1):
            acc = w if acc is None else w @ acc
            right[h] = acc
        v, G = vg(acc)
        v = float(v)
        grads, left = [None] * H, None            # left = W_H..W_{h+1}
        for h in range(H, 0, -1):
            d = G if left is None else left.T @ G
            grads[h - 1] = (d if h == 1 else d @ right[h - 1].T).reshape(-1)
            left = ws[h - 1] if left is None else left @ ws[h - 1]
        return v, torch.cat(grads).numpy()

    x0 = torch.cat([w.reshape(-1) for w in ws0]).numpy().copy()
    res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                   options=dict(maxiter=maxiter, maxcor=30, ftol=0.0, gtol=1e-13, maxls=50))
    return [torch.from_numpy(res.x[a:b].reshape(s).copy()) for a, b, s in zip(cuts, cuts[1:], shapes)], int(res.nit)


def _grad_theta_norm(task, ws) -> float:
    wr = [w.detach().clone().requires_grad_(True) for w in ws]
    g = torch.autograd.grad(task.loss([w.unsqueeze(0) for w in wr])[0], wr)
    return float(torch.sqrt(sum(x.pow(2).sum() for x in g)))


@dataclass
class CellRun:
    """One run of a cell (one init, one optimiser): a row of convex_losses_runs.csv."""
    loss: str
    depth: int
    width: int
    width_condition: bool
    optimiser: str  # lbfgs | gd
    init: int
    init_std: float
    loss_value: float  # NaN: diverged
    gap: float  # loss_value - ell*
    grad_norm: float  # ||grad_theta||
    iterations: int
    diverged: bool
    seconds: float


def run_cell(task, ref_value: float, dims, c, seed: int) -> list[CellRun]:
    """One cell: every init trained by L-BFGS and (as one ensemble) by GD; one row per run."""
    inits = initial_weights(dims, c, seed)
    rows = []
    base = dict(loss=task.objective.name, depth=len(dims) - 1, width=dims[1], width_condition=width_condition(dims).holds)
    for k, ws0 in enumerate(inits):
        t0 = time.perf_counter()
        ws, nit = lbfgs_theta(task, ws0, c.lbfgs_maxiter)
        f = float(task.loss([w.unsqueeze(0) for w in ws])[0])
        rows.append(CellRun(**base, optimiser="lbfgs", init=k, init_std=c.init_stds[k % len(c.init_stds)],
                            loss_value=f, gap=f - ref_value, grad_norm=_grad_theta_norm(task, ws), iterations=nit,
                            diverged=False, seconds=time.perf_counter() - t0))
    if c.gd_steps > 0:
        t0 = time.perf_counter()
        net = DeepLinearNet(dims, ensemble=c.inits, init="zero")
        for k, ws0 in enumerate(inits):
            net.load_member(k, ws0)
        tr = Trainer(net, task, optim="gd", lr=c.gd_lr, steps=c.gd_steps)
        tr.run()
        with torch.no_grad():
            fs = task.loss(list(net.weights))
        sec = (time.perf_counter() - t0) / c.inits
        for k in range(c.inits):
            ok = bool(tr.active[k]) and bool(torch.isfinite(fs[k]))
            ws = net.member(k)
            rows.append(CellRun(**base, optimiser="gd", init=k, init_std=c.init_stds[k % len(c.init_stds)],
                                loss_value=float(fs[k]) if ok else float("nan"),
                                gap=float(fs[k]) - ref_value if ok else float("nan"),
                                grad_norm=_grad_theta_norm(task, ws) if ok else float("nan"),
                                iterations=c.gd_steps, diverged=not ok, seconds=sec))
    return rows


def cell_table(runs: pd.DataFrame, reach_tol: float) -> pd.DataFrame:
    """One row per (loss, depth, width, optimiser): how many inits reached ell*, gap min/median/max."""
    def agg(g):
        gap = g.gap.dropna()
        return pd.Series(dict(width_condition=bool(g.width_condition.iloc[0]), inits=len(g),
                              reached=int((gap <= reach_tol).sum()), diverged=int(g.diverged.sum()),
                              gap_min=gap.min() if len(gap) else np.nan, gap_median=gap.median() if len(gap) else np.nan,
                              gap_max=gap.max() if len(gap) else np.nan, max_grad=g.grad_norm.max(),
                              seconds=g.seconds.sum()))
    keys = ["loss", "depth", "width", "optimiser"]
    t = runs.groupby(keys, sort=False).apply(agg, include_groups=False).reset_index()
    return t.astype({"inits": int, "reached": int, "diverged": int})


def plot_cells(runs: pd.DataFrame, reach_tol: float, path) -> None:
    """Final ell - ell* of every run, one column per cell, L-BFGS and GD side by side (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(zip(runs.loss, runs.depth, runs.width)))
    fig, ax = plt.subplots(figsize=(max(9.0, 0.75 * len(cells) + 4), 5.2))
    short = {"cross_entropy": "CE", "huber": "Huber"}
    for j, (loss, H, w) in enumerate(cells):
        sel = runs[(runs.loss == loss) & (runs.depth == H) & (runs.width == w)]
        if not bool(sel.width_condition.iloc[0]):
            ax.axvspan(j - 0.5, j + 0.5, color="0.92", zorder=0)
        for opt, dx, mk, col in (("lbfgs", -0.15, "o", "C0"), ("gd", 0.15, "s", "C1")):
            g = sel[sel.optimiser == opt].gap.dropna()
            ax.scatter(np.full(len(g), j + dx), np.maximum(g.to_numpy(), GAP_FLOOR), marker=mk, s=22,
                       facecolors="none", edgecolors=col, label=None)
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="C0", label="L-BFGS (scipy, on θ)")
    ax.scatter([], [], marker="s", facecolors="none", edgecolors="C1", label="GD (full batch)")
    ax.axhline(reach_tol, color="k", ls="--", lw=0.8, label=f"reached ℓ*: gap ≤ {reach_tol:g}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([f"{short.get(lo, lo)}\nH={H}\nwidth {w}" for lo, H, w in cells], fontsize=8)
    ax.set_xlim(-0.5, len(cells) - 0.5)
    ax.set_ylabel(f"final ℓ − ℓ*  (log; ≤ {GAP_FLOOR:g} drawn at {GAP_FLOOR:g})")
    ax.set_xlabel("cell: loss, depth H, hidden width (grey: bottleneck, width < min(d_in, d_out))")
    ax.set_title("Laurent & von Brecht, table B.3: final gap to the convex optimum ℓ* per init")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


@dataclass
class ConvexLossesSummary:
    """What the table B.3 grid did: status and time, the cell table, every run, and ell* per loss."""
    out_dir: str | None
    status: str
    wall_time: float
    table: pd.DataFrame  # one row per (loss, depth, width, optimiser): cell_table
    runs: pd.DataFrame  # one row per run: the CellRun fields
    references: dict = field(default_factory=dict)  # loss -> ell*

    def __str__(self) -> str:
        cols = ["loss", "depth", "width", "width_condition", "optimiser", "reached", "inits", "diverged",
                "gap_min", "gap_median", "gap_max", "max_grad"]
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3g}".format):
            lines = [f"status      {self.status}: {len(self.runs)} runs in {self.wall_time:.1f} s",
                     "ell*        " + ", ".join(f"{k} {v:.12g}" for k, v in self.references.items()),
                     self.table[cols].to_string(index=False)]
        if self.out_dir:
            lines.append(f"outputs     {self.out_dir}/convex_losses.csv, convex_losses_runs.csv, convex_losses.png")
        return "\n".join(lines)


def run_convex_losses(cfg, out_dir=None) -> ConvexLossesSummary:
    """Run the grid of `cfg.convex_losses` (seed: cfg.seed); write the table, runs and figure to out_dir."""
    c = cfg.convex_losses
    if getattr(cfg, "threads", 0):
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    rows, refs = [], {}
    for name in c.losses:
        task = b3_task(name, c, seed=cfg.seed)
        ref = convex_reference(task.objective, task.X, task.targets)
        refs[name] = ref.value
        with single_blas_thread():
            for H in c.depths:
                for w in c.widths:
                    rows += run_cell(task, ref.value, [c.d_in] + [w] * (H - 1) + [c.d_out], c, cfg.seed)
    runs = pd.DataFrame([asdict(r) for r in rows])
    table = cell_table(runs, c.reach_tol)
    s = ConvexLossesSummary(str(out_dir) if out_dir else None, "finished", time.perf_counter() - t0, table, runs, refs)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "convex_losses.csv", index=False)
        runs.to_csv(out / "convex_losses_runs.csv", index=False)
        plot_cells(runs, c.reach_tol, out / "convex_losses.png")
    return s
