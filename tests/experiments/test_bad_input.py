"""Bad input is refused early, in one line naming the option and what is allowed, by the command
line (exit code 2, no folder written) and by the library alike: typos, keys outside the schema,
names, sizes beyond memory, threads beyond the CPUs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlnlab.experiments.build import compose, prepare
from dlnlab.experiments.config import ConfigError
from dlnlab.experiments.guards import check_memory, estimate_memory, threads_for

BIN = Path(sys.executable).parent
QUIET = ["record.progress=off", "classify.enabled=false", "record.tensorboard=false"]


def train(*args, timeout=240):
    return subprocess.run([str(BIN / "dlnlab-train"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def one_error_line(p) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


# -- config typos and keys outside the schema ---------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["experiment=saddle_to_sadle"], "experiment='saddle_to_sadle' is invalid: allowed annealed | "),
    (["+device=cuda"], "+device=cuda: device is not an option"),
    (["+anything.deep=1"], "+anything.deep=1: anything.deep is not an option"),
    (["name=../../../escape"], "name='../../../escape' is invalid: allowed letters, digits and ._-"),
    (["name=a/b"], "name='a/b' is invalid"),
    (["model.width=abc"], "model.width=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    (["optim.lr=-1"], "optim.lr=-1.0 is invalid"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, message):
    out = tmp_path / "run"
    p = train(*args, "optim.steps=2", f"hydra.run.dir={out}")
    assert p.returncode == 2
    line = one_error_line(p)
    assert line.startswith("dlnlab-train: error: ") and message in line
    if "=" in args[0] and not args[0].startswith(("model", "optim")):  # refused before any folder
        assert not out.exists()
    assert not list(tmp_path.rglob("escape"))


def test_the_library_refuses_the_same():
    with pytest.raises(ConfigError, match="experiment='saddle_to_sadle' is invalid"):
        compose(["experiment=saddle_to_sadle"])
    with pytest.raises(ConfigError, match="device is not an option"):
        compose(["+device=cuda"])
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(compose(["optim.steps=2"])))  # untyped, as from a dict
    cfg.model.colour = "red"
    with pytest.raises(ConfigError, match="model.colour is not an option of model"):
        prepare(cfg)
    cfg.model.pop("colour")
    cfg.name = "a/b"
    with pytest.raises(ConfigError, match="name='a/b' is invalid"):
        prepare(cfg)


# -- sizes and threads ---------------------------------------------------------------------------
def test_a_run_too_big_for_memory_is_refused_before_allocation():
    with pytest.raises(ConfigError) as e:
        prepare(compose(["model.width=100000"]))
    msg = str(e.value)
    assert msg.startswith("model.width=100000 model.depth=4 model.ensemble=1 needs about 1,120 GB")
    assert "parameters 640 GB" in msg and "recording 480 GB" in msg and "lower model.width" in msg
    cfg = compose(["model.width=1000", "model.ensemble=8"])
    est = estimate_memory(cfg, [6, 1000, 1000, 1000, 4], 64)
    assert est.total > 10**8
    with pytest.raises(ConfigError, match="model.ensemble=8 needs about"):
        check_memory(cfg, [6, 1000, 1000, 1000, 4], 64, available=est.total - 1)
    check_memory(cfg, [6, 1000, 1000, 1000, 4], 64, available=est.total + 1)


def test_threads_beyond_the_cpus_are_clamped_with_a_warning():
    cfg = compose(["threads=1000"])
    with pytest.warns(UserWarning, match="threads=1000 is more than the .* CPUs"):
        n = threads_for(cfg, warn=True)
    assert 1 <= n < 1000 and threads_for(compose(["threads=1"])) == 1
