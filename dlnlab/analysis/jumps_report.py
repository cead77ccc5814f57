"""Reading and reporting a rank-jump experiment: per-phase rank curves, a table and a figure.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from dlnlab.analysis.folders import find_runs
from dlnlab.analysis.runs import load_run
from dlnlab.runfolder import (
    EVENTS_FILE,
    JUMPS_REPORT_PNG,
    REPORT_TB_DIR,
    SUMMARY_FILE,
    events_frame,
    quartiles,
)

# ---------------------------------------------------------------------------------------------
# Reading and reporting

def read_summary(path) -> dict | None:
    """The jumps_summary.json of an experiment's folder as a dict (None when there is none)."""
    p = Path(path) / SUMMARY_FILE
    return json.loads(p.read_text()) if p.exists() else None


def phase_dirs(path) -> dict[str, Path]:
    """{phase name: run folder} of an experiment folder (jumps_summary.json), or {name: path} for a
    single tracked run folder."""
    path = Path(path)
    s = read_summary(path)
    if s:
        return {n: Path(p["dir"]) if p.get("dir") and Path(p["dir"]).exists() else path / n
                for n, p in s["phases"].items()}
    return {(p.name if p != path else path.name): p for p in find_runs(path)}


def rank_curves(path) -> pd.DataFrame:
    """step, member, layer_rank, e2e_rank_jump and `phase` of every tracked phase under `path`."""
    frames = []
    for name, d in phase_dirs(path).items():
        try:
            df = load_run(d, config=False)
        except Exception:  # noqa: BLE001 - a phase without a table
            continue
        if "layer_rank" not in df.columns:
            continue
        frames.append(df[["step", "member", "layer_rank", "e2e_rank_jump"]].assign(phase=name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["step", "member", "layer_rank", "e2e_rank_jump", "phase"])


def report_table(path) -> pd.DataFrame:
    """One row per tracked phase: members, start/final layer ranks, members jumped, first-passage
    quartiles (layer and A-rank), rank increases, computed from the run tables and events files."""
    curves = rank_curves(path)
    rows = []
    for name, d in phase_dirs(path).items():
        c = curves[curves["phase"] == name]
        if c.empty:
            continue
        ev = pd.read_parquet(Path(d) / EVENTS_FILE) if (Path(d) / EVENTS_FILE).exists() else events_frame([])
        first = c[c["step"] == c["step"].min()].set_index("member")["layer_rank"]
        last = c[c["step"] == c["step"].max()].set_index("member")["layer_rank"]
        row = {"phase": name, "members": int(c["member"].nunique()),
               "start_layer_rank": int(first.mode().iloc[0]),
               "final_layer_ranks": dict(sorted((int(k), int(v)) for k, v in last.value_counts().items()))}
        for t, col in (("layer", "layer"), ("end_to_end", "e2e")):
            ent = ev[(ev["kind"] == "entered") & (ev["rank_type"] == t)].groupby("member")["step"].min()
            q = quartiles(ent.tolist())
            if t == "layer":
                row["jumped"] = int(len(ent))
            row[f"first_passage_{col}_median"] = q["median"]
            row[f"first_passage_{col}_q1"] = q["q1"]
            row[f"first_passage_{col}_q3"] = q["q3"]
            row[f"increases_{col}"] = int(((ev["kind"] == "increase") & (ev["rank_type"] == t)).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def report_figure(path, png: str | Path | None = None, tensorboard: bool = True):
    """Layer rank and A-rank against step for GD and every member of the other phases (the warm-up,
    in grey, at negative steps: it ends where the other phases start), and the first-passage
    histogram; saved as PNG (default `<path>/jumps_report.png`) and, with tensorboard, written as the
    image `jumps/report` to `<path>/jumps_report_tb/` (REPORT_TB_DIR; `tensorboard --logdir <path>`
    shows it as the run "jumps_report_tb"). That folder is deleted and rewritten on every call, so
    re-running the report replaces the image instead of adding a second one (appending to the phase's
    own event file could not be undone). Returns (figure, png path)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    curves = rank_curves(path)
    dirs = phase_dirs(path)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {"gd": "black", "warmup": "tab:grey"}
    for ax, col, title in ((axes[0], "layer_rank", "layer rank  max_l #{s_i(W_l) > tol}"),
                           (axes[1], "e2e_rank_jump", "A-rank  #{s_i(A) > tol}")):
        for name, c in curves.groupby("phase", sort=False):
            if name == "warmup":
                c = c.assign(step=c["step"] - c["step"].max())
            members = sorted(c["member"].unique())
            for k in members:
                ck = c[c["member"] == k]
                gd = name == "gd"
                jitter = 0 if gd else (k - (len(members) - 1) / 2) * 0.25 / max(len(members), 1)
                ax.step(ck["step"], ck[col] + jitter, where="post", lw=2.5 if gd else 0.8,
                        color=colours.get(name), alpha=1.0 if gd else 0.6,
                        label=(name if k == members[0] else None), zorder=3 if gd else 2)
        if (curves["phase"] == "warmup").any():  # the warm-up is drawn before step 0, where it ends
            ax.axvline(0, color="tab:grey", lw=0.8, ls="--")
            ax.annotate("end of GD warm-up", (0, 1), xycoords=("data", "axes fraction"), xytext=(4, -12),
                        textcoords="offset points", fontsize=9, color="tab:grey")
        ax.set_xlabel("training step (warm-up shifted to end at 0)")
        ax.set_ylabel("rank (members jittered for visibility)")
        ax.set_title(title)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
        ax.legend(loc="center right")
    ax = axes[2]
    main = next((n for n in dirs if n not in ("gd", "warmup")), None)
    if main is not None and (dirs[main] / EVENTS_FILE).exists():
        ev = pd.read_parquet(dirs[main] / EVENTS_FILE)
        for t, colr in (("layer", "tab:blue"), ("end_to_end", "tab:orange")):
            fp = ev[(ev["kind"] == "entered") & (ev["rank_type"] == t)].groupby("member")["step"].min()
            if len(fp):
                ax.hist(fp.to_numpy(), bins=min(30, max(5, len(fp) // 2)), alpha=0.6, color=colr,
                        label=f"{t} ({len(fp)} members)")
        if ax.get_legend_handles_labels()[0]:  # no first passage: no legend (matplotlib would warn)
            ax.legend()
    ax.set_title(f"first passage below the start rank ({main})")
    ax.set_xlabel(f"training step of the {main} phase")
    ax.set_ylabel("members")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    png = Path(png) if png else path / JUMPS_REPORT_PNG
    fig.savefig(png, dpi=110)
    if tensorboard and main is not None:
        from torch.utils.tensorboard import SummaryWriter
        tb_dir = path / REPORT_TB_DIR
        if tb_dir.exists():
            shutil.rmtree(tb_dir)
        w = SummaryWriter(log_dir=str(tb_dir))
        try:
            w.add_figure("jumps/report", fig, global_step=int(curves["step"].max()) if len(curves) else 0,
                         close=False)
        finally:
            w.close()
    return fig, png


