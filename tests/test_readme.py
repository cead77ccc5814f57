"""The README's commands and snippets, run as written (the ones that fit in a test)."""
import re
import shlex
from pathlib import Path

import pytest

from dlnlab.experiments.build import conf_dir
from dlnlab.experiments.config import register

README = (Path(__file__).parents[1] / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def commands(text: str) -> list[list[str]]:
    """The shell commands of a bash block (continuation lines joined, comments dropped)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            out.append(shlex.split(line))
    return out


def hydra_config(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=True)


def test_the_slurm_local_command_composes_as_written():
    cmds = [c for b in blocks("bash") for c in commands(b) if "hydra/launcher=slurm_local" in c]
    assert cmds, "the README shows a slurm_local command"
    for c in cmds:
        assert c[0] == "dlnlab-train" and c[1] == "-m"
        # a sweep's values (a,b / range) compose one by one: take the first of each
        over = [re.sub(r"=(range\((\d+),\d+\)|([^,\[]+),.*)$", lambda m: "=" + (m.group(2) or m.group(3)), a)
                for a in c[2:]]
        cfg = hydra_config(over)  # `Key 'partition' not in 'LocalQueueConf'` would raise here
        assert cfg.hydra.launcher._target_.endswith("LocalLauncher")


def test_the_tour_says_how_to_reach_the_commands():
    assert "source .venv/bin/activate" in README
    assert "python scripts/jumps_report.py" not in README and "dlnlab-report" in README
    assert "df.step.max()" not in README and "last_records(df)" in README
    assert 'load_events(root, where={"jumps.phase": "sgd"})' in README
    assert "--index-url https://download.pytorch.org/whl/cpu" in README and "(CPU build) first" not in README


@pytest.mark.timeout(600)
def test_the_notebook_and_units_snippets_run(tmp_path, monkeypatch):
    """The notebook snippet (a short run) and the units snippet (classify_checkpoint, task, plateaus): the
    checkpoint's labels are the run table's final row, in lab units."""
    monkeypatch.chdir(tmp_path)
    notebook = next(b for b in blocks("python") if "from dlnlab import compose, run" in b)
    units = next(b for b in blocks("python") if "classify_checkpoint(run_dir)" in b)
    ns: dict = {}
    exec(notebook.replace('"optim.steps=2000"', '"optim.steps=300"'), ns)
    exec(units, ns)
    task, c, final = ns["task"], ns["c"], ns["final"]
    assert task.paper_scale == 64  # m samples of the default regression
    for col in ("step", "label", "S", "nearest_S", "near_label", "loss", "nearest_value", "classify_grad_norm"):
        assert c[col] == final[col], col   # the run's own labels, bit for bit
    # the same point in both units: the run table's loss (lab) x paper_scale = its paper_loss
    assert abs(final["loss"] * task.paper_scale - final["paper_loss"]) <= 1e-12 * final["paper_loss"]
    plateaus = ns["plateaus"]
    assert plateaus.iloc[0] == pytest.approx(85.0)  # sum of the teacher's s_i^2 (lab units), tr(Syy)/m
    assert c.nearest_value == pytest.approx(85.0) and ns["paper"] == pytest.approx(64 * 85.0)  # 5440 = 64 x 85
