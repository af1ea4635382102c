import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def data_dir():
    """Real MNIST in torchvision's layout: $PLASTICITY_DATA_DIR (set by .ci/run), else ../shared/data."""
    path = os.environ.get("PLASTICITY_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
    if not os.path.isdir(os.path.join(path, "MNIST", "raw")):
        pytest.fail(f"MNIST not found in {path}: set PLASTICITY_DATA_DIR to a folder holding MNIST/raw")
    return path
