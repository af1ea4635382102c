import os
import sys

# The tests' tensors are tiny: a second OpenMP thread only adds synchronisation, and on a busy machine its spinning
# stalled single Lanczos runs from 8 ms to 6 s. Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def data_dir():
    """Real MNIST in torchvision's layout: $PLASTICITY_DATA_DIR (set by .ci/run), else ../shared/data."""
    path = os.environ.get("PLASTICITY_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
    if not os.path.isdir(os.path.join(path, "MNIST", "raw")):
        pytest.fail(f"MNIST not found in {path}: set PLASTICITY_DATA_DIR to a folder holding MNIST/raw")
    return path
