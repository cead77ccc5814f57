"""The report figure of an ordinary run folder (`dlnlab-report RUN` writes RUN/report.png).

    from dlnlab.analysis.report import run_report
    fig, png = run_report("runs/2025-01-01/12-00-00_regression_gd")

Four panels on one step axis (docs/columns.md for every column):
  (a) the loss (lab units, log axis) with the theory's plateau values (docs/theory.md §2) as labelled
      reference lines, each plateau the run visited (staircase.csv) annotated with S and near_label;
  (b) the singular values of the product W_H...W_1 (`sv_H_1_k`) against those of the task's target map
      (`task.target()`: the least-squares map of a regression), dashed;
  (c) the numerical ranks of all partial products (`rank_j_i`);
  (d) the Hessian's smallest eigenvalue `lam_min` (lab per weight^2, the records that have one) and
      `tight_margin` (unit-free, log axis when positive) on a twin axis.
The plateau visits of staircase.csv are shaded in every panel. For an ensemble each curve is the median
over members with the quartile band (ranks: the lower median), annotations are member 0's.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import prepare
from dlnlab.runfolder import (
    CONFIG_FILE,
    EVENTS_FILE,
    METRICS_DIR,
    STAIRCASE_FILE,
    SUMMARY_FILE,
)
from dlnlab.theory.square.critical import plateau_values

__all__ = ["REPORT_PNG", "is_plain_run", "run_report", "report_data"]

REPORT_PNG = "report.png"  # an ordinary run's figure (a jumps experiment's: runfolder.JUMPS_REPORT_PNG)
LOSS_DECADES = 3        # the loss axis shows this many decades below the smallest positive plateau
BOX_FRAC = 0.15       # the width of a plateau's label box, as a fraction of the step axis (about)
MARGIN_FLOOR = 1e-10   # the tight-margin axis shows this range below its largest value
FONTS = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "xtick.labelsize": 11,
         "ytick.labelsize": 11, "legend.fontsize": 11, "figure.titlesize": 14}
LABEL_TEXT = {"nonstrict_saddle": "non-strict saddle", "strict_saddle": "strict saddle",
              "global_min": "global min", "not_critical": "not critical"}


def is_plain_run(path) -> bool:
    """A run folder with a run table that is neither a rank-jump experiment nor a tracked run."""
    p = Path(path)
    return (p / METRICS_DIR).is_dir() and not (p / SUMMARY_FILE).exists() and not (p / EVENTS_FILE).exists()


def report_data(path) -> dict:
    """What the figure draws: `table` (the run table), `staircase` (staircase.csv or None),
    `plateaus` (frame S, value in lab units, or None), `teacher_sv` (array or None), `config` (dict),
    `note` (why something is missing)."""
    path = Path(path)
    table = load_run(path, config=False)
    stairs = pd.read_csv(path / STAIRCASE_FILE, dtype={"S": str}) if (path / STAIRCASE_FILE).exists() else None
    cfg, task, notes = None, None, []
    if (path / CONFIG_FILE).exists():
        cfg = OmegaConf.load(path / CONFIG_FILE)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                task = prepare(cfg)
        except Exception as e:  # noqa: BLE001 - a data file that moved: the figure goes on without it
            notes.append(f"task not rebuilt ({type(e).__name__})")
    plateaus = None
    square = cfg is not None and _square_no_ridge(cfg, table)
    if task is not None and square and task.landscape_data() is not None:
        pv = plateau_values(*task.landscape_data())
        plateaus = pd.DataFrame({"S": ["{" + ",".join(map(str, p.S)) + "}" for p in pv],
                                 "value": [p.value / task.paper_scale for p in pv]})
    elif stairs is not None:
        plateaus = stairs.drop_duplicates("S")[["S", "theory_value"]].rename(columns={"theory_value": "value"})
    teacher = None
    if task is not None:
        import torch

        teacher = torch.linalg.svdvals(task.target().double()).numpy()
    return {"table": table, "staircase": stairs, "plateaus": plateaus, "teacher_sv": teacher,
            "config": OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {},
            "note": "; ".join(notes)}


def _square_no_ridge(cfg, table: pd.DataFrame) -> bool:
    loss = cfg.get("loss") or {}
    if loss.get("name", "square") != "square" or loss.get("product_ridge", 0.0):
        return False
    return "ridge" not in table.columns or bool((table["ridge"].fillna(0) == 0).all())


def _stats(table: pd.DataFrame, col: str, lower: bool = False):
    """(steps, median, q25, q75) of `col` over members at each step, NaN-free points only."""
    wide = table.pivot_table(index="step", columns="member", values=col, aggfunc="first", dropna=False)
    v = wide.to_numpy(dtype=float)
    ok = np.isfinite(v).any(1)
    steps, v = wide.index.to_numpy()[ok], v[ok]
    if v.shape[1] == 1:
        return steps, v[:, 0], v[:, 0], v[:, 0]
    method = "lower" if lower else "linear"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanquantile(v, [0.5, 0.25, 0.75], axis=1, method=method)
    return steps, q[0], q[1], q[2]


def _curve(ax, table, col, E, lower=False, band=True, **kw):
    steps, med, lo, hi = _stats(table, col, lower)
    line, = ax.plot(steps, med, **kw)
    if E > 1 and band:
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    return steps, med


def _product_cols(table: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in table.columns if c.startswith(prefix) and c[len(prefix):].isdigit()]


def _title(cfg: dict, path: Path, E: int) -> str:
    m, o, init = cfg.get("model", {}), cfg.get("optim", {}), cfg.get("model", {}).get("init", {})
    bits = [f"H = {m['depth']}" if "depth" in m else "", f"init {init.get('kind', '')} ε = {init['scale']:g}"
            if "scale" in init else "", f"{o.get('name', '').upper()} lr = {o['lr']:g}" if "lr" in o else ""]
    head = f"{path.name}: " + ", ".join(b for b in bits if b)
    if E > 1:
        head += f"\n{E} members: median and quartile band; plateau labels of member 0"
    return head


def run_report(path, png: str | Path | None = None):
    """Draw the four panels for the run folder `path`, save them (default `<path>/report.png`) and
    return (figure, png path). The figure's first four axes are the panels (a)..(d) top to bottom;
    the fifth is panel (d)'s twin axis of tight_margin (when the run has that column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    d = report_data(path)
    table = d["table"]
    E = int(table["member"].nunique())
    H = max(int(c.split("_")[1]) for c in table.columns if c.startswith("rank_") and c.count("_") == 2)
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(4, 1, figsize=(13, 14.5), sharex=True,
                                 gridspec_kw={"height_ratios": [1.5, 1.1, 1.0, 1.0]})
        _loss_panel(axes[0], d, E)
        _sv_panel(axes[1], d, E, H)
        _rank_panel(axes[2], table, E)
        _curvature_panel(axes[3], table, E)
        stairs = d["staircase"]
        if stairs is not None:
            first = stairs[stairs["member"] == stairs["member"].min()]
            for ax in axes:
                for _, row in first.iterrows():
                    ax.axvspan(row.start_step, row.end_step, color="0.9", alpha=0.6, lw=0, zorder=0)
        for ax in axes:
            ax.grid(True, which="major", alpha=0.3)
            ax.ticklabel_format(axis="x", useOffset=False, style="plain")
        axes[-1].set_xlabel("training step (optimizer steps)")
        axes[-1].set_xlim(table["step"].min(), table["step"].max())
        title = _title(d["config"], path, E)
        if stairs is not None:
            title += "\nshaded: the plateau visits of staircase.csv" + (" (member 0)" if E > 1 else "")
        if d["note"]:
            title += f"  ({d['note']})"
        fig.suptitle(title)
        fig.tight_layout()
        png = Path(png) if png else path / REPORT_PNG
        fig.savefig(png, dpi=100)
    return fig, png


def _loss_panel(ax, d, E) -> None:
    table, plateaus, stairs = d["table"], d["plateaus"], d["staircase"]
    steps, med = _curve(ax, table, "loss", E, color="black", lw=2.2, label="training loss", zorder=3)
    ax.set_yscale("log")
    ax.set_ylabel("loss (lab units,\nmean over samples)")
    ax.set_title("(a) loss and the theory's plateau values" if plateaus is not None else
                 "(a) loss (no plateau values: not the square loss at λ = 0)")
    pos = med[np.isfinite(med) & (med > 0)]
    top = float(pos.max()) if pos.size else 1.0
    values = plateaus["value"].to_numpy(dtype=float) if plateaus is not None else np.array([])
    floor_ref = values[values > 1e-9 * max(values.max(initial=0.0), 1e-300)]
    # every positive plateau on the axis; below them LOSS_DECADES decades at most (the global minimum is 0)
    bottom = (floor_ref.min() if floor_ref.size else top) * 10.0 ** -LOSS_DECADES
    if pos.size and pos.min() > bottom:
        bottom = min(pos.min(), floor_ref.min(initial=np.inf)) / 3
    ax.set_ylim(bottom, max(top, values.max(initial=0.0)) * 3)
    trans = ax.get_yaxis_transform()
    if plateaus is not None:
        for S, v in zip(plateaus["S"], values):
            if v > bottom:
                ax.axhline(v, color="tab:blue", ls="--", lw=1.2, zorder=1)
                ax.text(1.005, v, f"{v:.4g}  S = {S}", transform=trans, va="center", ha="left",
                        fontsize=11, color="tab:blue")
            else:   # the global minimum: value 0, below the axis
                shown = "0" if v <= 1e-9 * values.max(initial=0.0) else f"{v:.2g}"
                ax.text(1.005, 0.0, f"↓ {shown}  S = {S}\n(global min.)", transform=ax.transAxes,
                        va="bottom", ha="left", fontsize=11, color="tab:blue")
        ax.plot([], [], color="tab:blue", ls="--",
                label="theory: the plateau value of S (lab units)")
    if pos.size and pos.min() < bottom:
        ax.text(0.995, 0.03, f"below the axis: the loss reaches {pos.min():.2g}", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=11, color="0.3")
    if stairs is not None:
        first = stairs[stairs["member"] == stairs["member"].min()]
        lo, hi = float(table["step"].min()), float(table["step"].max())
        for row in first.itertuples(index=False):
            label = LABEL_TEXT.get(str(row.near_label), str(row.near_label)) if pd.notna(row.near_label) else "?"
            if row.theory_value > bottom:
                # below the plateau's line, ending where the visit ends: the loss descends, so the curve
                # is never there (on or above the line before the visit's end)
                x, ha = (row.end_step, "right") if row.end_step - lo > BOX_FRAC * (hi - lo) else (lo, "left")
                xy, off, va = (x, row.theory_value), (-4 if ha == "right" else 4, -6), "top"
            else:   # the global minimum (value 0): above the axis floor, centred on the visit
                x = min(max(0.5 * (row.start_step + row.end_step), lo + BOX_FRAC / 2 * (hi - lo)),
                        hi - BOX_FRAC / 2 * (hi - lo))
                xy, off, va, ha = (x, bottom), (0, 30), "bottom", "center"
            ax.annotate(f"S = {row.S}\n{label}", xy, xytext=off, textcoords="offset points", ha=ha, va=va,
                        ma="center", fontsize=11, zorder=4,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.6", "alpha": 0.9})
    ax.legend(loc="lower left", framealpha=0.9)


def _sv_panel(ax, d, E, H) -> None:
    table, teacher = d["table"], d["teacher_sv"]
    cols = _product_cols(table, f"sv_{H}_1_")
    colours = plt_colours(len(cols))
    for k, c in enumerate(cols):
        _curve(ax, table, c, E, color=colours[k], lw=2, label=rf"$\sigma_{{{k + 1}}}(W_{{{H}}} \cdots W_1)$")
        if teacher is not None and k < len(teacher) and teacher[k] > 1e-12 * teacher[0]:
            ax.axhline(teacher[k], color=colours[k], ls="--", lw=1.2, zorder=1)
            ax.text(1.005, teacher[k], f"{teacher[k]:.3g}", transform=ax.get_yaxis_transform(),
                    va="center", ha="left", fontsize=11, color=colours[k])
    if teacher is not None:
        ax.plot([], [], color="0.3", ls="--", label=r"target map's $\sigma_k$")
    ax.set_ylabel("singular value\n(map units: output per input)")
    ax.set_title("(b) singular values of the product vs the target map (least-squares teacher)")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.06, 1.0), borderaxespad=0)


def _rank_panel(ax, table, E) -> None:
    from matplotlib.ticker import MaxNLocator

    cols = sorted((c for c in table.columns if c.startswith("rank_") and c.count("_") == 2),
                  key=lambda c: (int(c.split("_")[1]) - int(c.split("_")[2]), int(c.split("_")[2])), reverse=True)
    colours = plt_colours(len(cols))
    for n, c in enumerate(cols):
        j, i = (int(x) for x in c.split("_")[1:])
        steps, med, _, _ = _stats(table, c, lower=True)
        off = (n - (len(cols) - 1) / 2) * 0.035
        name = rf"$W_{{{j}}}$" if i == j else rf"$W_{{{j}}} \cdots W_{{{i}}}$"
        ax.step(steps, med + off, where="post", color=colours[n], lw=2.4 if (j - i) == max(
            int(x.split("_")[1]) - int(x.split("_")[2]) for x in cols) else 1.5, label=name)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("numerical rank\n(lines offset slightly)")
    ax.set_title(r"(c) ranks of all partial products $W_j \cdots W_i$" + (" (lower median)" if E > 1 else ""))
    ax.legend(loc="upper left", bbox_to_anchor=(1.06, 1.0), borderaxespad=0, ncol=2, handlelength=1.2,
              columnspacing=0.8)


def _curvature_panel(ax, table, E) -> None:
    handles = []
    if "lam_min" in table.columns and table["lam_min"].notna().any():
        steps, med = _curve(ax, table, "lam_min", E, color="tab:red", lw=1.5, marker="o", ms=5,
                            label=r"$\lambda_{\min}$ of the Hessian")
        handles += ax.get_lines()[-1:]
        ax.axhline(0, color="tab:red", lw=0.8, alpha=0.6)
        ax.set_ylabel("$\\lambda_{\\min}$ (lab loss\nper weight²)", color="tab:red")
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    else:
        ax.text(0.5, 0.5, "lam_min not recorded (classify.curvature_every = 0, or not the square loss)",
                transform=ax.transAxes, ha="center", va="center", fontsize=11)
        ax.set_yticks([])
    ax.set_title("(d) curvature: smallest Hessian eigenvalue and the tight margin")
    if "tight_margin" in table.columns and table["tight_margin"].notna().any():
        tw = ax.twinx()
        steps, med = _curve(tw, table, "tight_margin", E, color="tab:blue", lw=1.8, label="tight margin")
        handles += tw.get_lines()[-1:]
        fin = med[np.isfinite(med)]
        if fin.size and np.all(fin > 0):
            tw.set_yscale("log")
            if fin.min() < MARGIN_FLOOR * fin.max():   # roundoff at a tightened point (a global minimum)
                tw.set_ylim(MARGIN_FLOOR * fin.max(), fin.max() * 3)
                tw.text(0.995, 0.03, f"below the axis: margin {fin.min():.1g} (roundoff: tightened)",
                        transform=tw.transAxes, ha="right", va="bottom", fontsize=11, color="tab:blue")
        else:
            tw.ticklabel_format(axis="y", useOffset=False, style="plain")
        tw.set_ylabel("tight margin\n(unit-free)", color="tab:blue")
    if handles:
        ax.legend(handles, [h.get_label() for h in handles], loc="upper left", bbox_to_anchor=(1.1, 1.0),
                  borderaxespad=0)


def plt_colours(n: int) -> list:
    """`n` distinct matplotlib colours (tab10 up to ten, else viridis)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(k if n <= 10 else k / max(n - 1, 1)) for k in range(n)]
