import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Small-matrix torch code is fastest (and most reproducible) on one thread.
    torch.set_num_threads(1)
