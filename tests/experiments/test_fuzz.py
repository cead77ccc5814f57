"""Fuzzing the two doors of user input, config overrides and data files (`task=regression_file`),
with hypothesis: every failure is a one-line error naming the field (or the file), never a Python
traceback, and a failed start leaves no folder that `load_runs` mistakes for a run.

The in-process cases use the library entry points (`compose`, `prepare`, `run`), with what
`dlnlab-train` counts as a user error (exit code 2); a few cases go through the real CLI.
`pytest -m slow tests/experiments/test_fuzz.py` runs many more examples."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

from dlnlab.analysis.folders import find_runs
from dlnlab.cli.train import hydra_error
from dlnlab.experiments import guards
from dlnlab.experiments.build import compose, prepare
from dlnlab.experiments.config import ConfigError
from dlnlab.experiments.options import option_rows
from dlnlab.experiments.run import run
from dlnlab.runfolder import read_status
from dlnlab.tasks import DataError

BIN = Path(sys.executable).parent
KEYS = [name for name, _, _ in option_rows() if name != "task"] + [
    "task.m", "task.d_x", "task.d_y", "task.noise", "task.spectrum", "task.seed", "task.whiten"]
FAST = ["record.progress=off", "record.tensorboard=false", "classify.enabled=false"]
USER_ERRORS = (ConfigError, DataError, HydraException, OmegaConfBaseException)
FUZZ = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

numbers = st.one_of(
    st.integers(-10, 10), st.integers(-2**70, 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**12, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "-0.0", "1e-320"]))
words = st.text(st.sampled_from("abcxyz_-./ 0123456789"), max_size=12)
values = st.one_of(numbers, words, st.booleans(), st.just("null"),
                   st.lists(st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True)), max_size=4))


def text_of(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(text_of(x) for x in v) + "]"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    return str(v)


def message_of(e: BaseException) -> str:
    return hydra_error(e) if isinstance(e, (HydraException, OmegaConfBaseException)) else str(e)


def attempt(overrides, out_dir) -> str | None:
    """Compose, validate and (when it is short and ordinary) run the config; the one-line user
    error, or None when it ran. Anything else raises: a traceback the user would see."""
    try:
        cfg = compose([*FAST, *overrides])
        task = prepare(cfg)
        if cfg.optim.steps <= 50 and not cfg.jumps.enabled and cfg.model.ensemble <= 64:
            run(cfg, out_dir=out_dir, task=task)
    except USER_ERRORS as e:
        return message_of(e)
    return None


@pytest.fixture(autouse=True)
def small_machine(monkeypatch):
    """The memory guard believes 2 GB are free, so no example can allocate more."""
    monkeypatch.setattr(guards, "available_memory", lambda: 2 * 10**9)


def check_error(msg: str, names) -> None:
    assert "\n" not in msg.strip(), msg
    assert any(n in msg for n in names), (names, msg)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=3))
def test_config_overrides(tmp_path, pairs):
    overrides = [f"{k}={text_of(v)}" for k, v in pairs]
    out = tmp_path / f"run{abs(hash(tuple(overrides)))}"
    msg = attempt(overrides, out)
    if msg is not None:
        # the message names one of the options set (or, for a size, the model's shape)
        names = {k for k, _ in pairs} | {k.rsplit(".", 1)[-1] for k, _ in pairs} | {"model.width"} \
            | {k.split(".")[0] + "=" for k, _ in pairs}
        check_error(msg, names)
        assert not out.exists()  # refused before any folder
    else:
        assert read_status(out).get("status") in (None, "finished", "diverged") or not out.exists()


def _matrix(draw, rows, cols):
    special = st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0, 1e-320])
    elems = st.one_of(st.floats(-1e3, 1e3), special) if draw(st.booleans()) else st.floats(-1e3, 1e3)
    return np.array(draw(st.lists(elems, min_size=rows * cols, max_size=rows * cols)),
                    dtype=np.float64).reshape(rows, cols)


@st.composite
def data_files(draw, folder: Path):
    """A .npz or a pair of CSV files: random shapes, NaN/Inf, encodings, headers, empty files."""
    n = draw(st.integers(0, 12))
    dx, dy = draw(st.integers(0, 5)), draw(st.integers(0, 4))
    X, Y = _matrix(draw, n, dx), _matrix(draw, draw(st.sampled_from([n, n, n + 1])), dy)
    if draw(st.booleans()):
        path = folder / "data.npz"
        arrays = {"X": X, "Y": Y}
        if draw(st.integers(0, 5)) == 0:
            arrays.pop(draw(st.sampled_from(["X", "Y"])))
        if draw(st.integers(0, 5)) == 0:
            arrays["X"] = X.reshape(-1)  # 1-D
        np.savez(path, **arrays)
        if draw(st.integers(0, 6)) == 0:
            path.write_bytes(path.read_bytes()[: draw(st.integers(0, 60))])  # truncated
        return [f"task.path={path}"], [str(path)]
    paths = []
    for name, a in (("x.csv", X), ("y.csv", Y)):
        text = "\n".join(",".join(repr(float(v)) for v in row) for row in a)
        if draw(st.booleans()):
            text = ",".join(f"c{k}" for k in range(a.shape[1])) + "\n" + text  # a header
        if draw(st.integers(0, 6)) == 0:
            text = draw(st.text(max_size=30))  # anything at all
        encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"]))
        data = text.encode(encoding, errors="replace")
        if draw(st.integers(0, 8)) == 0:
            data = b""  # an empty file
        if draw(st.integers(0, 8)) == 0:
            data = bytes(draw(st.lists(st.integers(0, 255), max_size=40)))  # binary noise
        (folder / name).write_bytes(data)
        paths.append(str(folder / name))
    return [f"task.x_path={paths[0]}", f"task.y_path={paths[1]}"], paths


@FUZZ
@given(st.data())
def test_data_files(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("data")
    overrides, paths = data.draw(data_files(folder))
    out = folder / "run"
    msg = attempt(["task=regression_file", "optim.steps=3", "record.every=1", *overrides], out)
    if msg is not None:
        check_error(msg, [*paths, "task.", "model.width", "optim.batch_size"])
        assert not out.exists()
    else:
        assert read_status(out)["status"] in ("finished", "diverged")


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(KEYS), values)
def test_the_cli_on_random_overrides(tmp_path_factory, key, value):
    """Through the real command line: exit code 0 or 2, no traceback, and a failed start leaves at
    most a folder whose status says `failed` (never one that looks like a run)."""
    root = tmp_path_factory.mktemp("cli")
    p = subprocess.run([str(BIN / "dlnlab-train"), f"{key}={text_of(value)}", "optim.steps=3", *FAST,
                        f"hydra.run.dir={root / 'run'}"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert "Traceback" not in p.stderr
    assert p.returncode in (0, 2), p.stderr
    if p.returncode == 2:
        errors = [line for line in p.stderr.splitlines() if line.startswith("dlnlab-train: error:")]
        assert len(errors) == 1, p.stderr
        for r in find_runs(root):
            assert read_status(r)["status"] == "failed" and read_status(r)["message"]


@pytest.mark.slow
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=4))
def test_config_overrides_long(tmp_path, pairs):
    test_config_overrides.hypothesis.inner_test(tmp_path, pairs)


@pytest.mark.slow
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_data_files_long(tmp_path_factory, data):
    test_data_files.hypothesis.inner_test(tmp_path_factory, data)
