"""The `device` option: validation, `auto` on a machine without CUDA, and (where CUDA is available)
training on the GPU with recording on the CPU. CPU results are unchanged bit for bit: every other
test runs with the default device=cpu."""
import pytest
import torch

from dlnlab.analysis.runs import load_run
from dlnlab.experiments.build import compose, prepare
from dlnlab.experiments.checks import validate
from dlnlab.experiments.config import ConfigError, resolve_device
from dlnlab.experiments.run import run

SMALL = ["model.depth=3", "model.width=4", "task.m=16", "task.d_x=4", "task.d_y=3", "task.spectrum=[]",
         "optim=sgd", "optim.steps=200", "optim.lr=0.01", "record.every=50", "record.progress=off",
         "model.ensemble=3", "record.tensorboard=false"]
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_invalid_device_names_the_option_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"^device='gpu' is invalid: allowed cpu \| cuda \| auto$"):
        validate(compose(SMALL + ["device=gpu"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"device='cuda' is invalid: CUDA is not available"):
        prepare(compose(SMALL + ["device=cuda"]))
    assert resolve_device("auto") == "cpu"


def _table(cfg, out):
    run(cfg, out)
    return load_run(out)


def test_auto_without_cuda_is_the_cpu_run_bit_for_bit(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("auto means cuda here")
    a = _table(compose(SMALL), tmp_path / "cpu")
    b = _table(compose(SMALL + ["device=auto"]), tmp_path / "auto")
    cols = [c for c in a.columns if c not in ("wall_time", "time", "run", "device")]
    assert a[cols].equals(b[cols])


@no_cuda
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_cuda_run_matches_the_cpu_run(tmp_path, precision):
    over = SMALL + [f"precision={precision}"]
    a = _table(compose(over), tmp_path / "cpu")
    b = _table(compose(over + ["device=cuda"]), tmp_path / "cuda")
    tol = 1e-9 if precision == "float64" else 1e-3
    assert a["loss"].to_numpy() == pytest.approx(b["loss"].to_numpy(), rel=tol)
    assert list(a["label"]) == list(b["label"]) and list(a["step"]) == list(b["step"])
