import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Small-matrix torch code is fastest (and most reproducible) on one thread.
    torch.set_num_threads(1)


# The benchmark and fixture helpers live in scripts/ (outside the package); tests use the fixture maker.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
