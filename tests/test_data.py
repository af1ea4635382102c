import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from common.errors import UsageError
from common.science import classification
from common.science.classification import FASHION_MNIST_DEBIAN_DIR, load_dataset, random_relabel


def write_tiny_cifar10(root, per_batch=20, seed=0):
    """The real cifar-10-batches-py layout with ``per_batch`` images per batch file."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(i % 10) for i in range(per_batch)], "batch_label": name}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


def test_mnist_loads_as_uint8_images(data_dir):
    images, labels = load_dataset("mnist", data_dir, train=True)
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.long and torch.bincount(labels).tolist()[:2] == [5923, 6742]
    test_images, _ = load_dataset("mnist", data_dir, train=False)
    assert test_images.shape == (10000, 1, 28, 28)


def test_tiny_cifar_loads_through_the_user_code_path(tmp_path):
    root = write_tiny_cifar10(str(tmp_path))
    images, labels = load_dataset("cifar10", root, train=True)
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8
    with open(os.path.join(root, "cifar-10-batches-py", "data_batch_1"), "rb") as f:
        first = pickle.load(f)
    assert torch.equal(images[0].flatten(), torch.from_numpy(first["data"][0]))  # CHW order kept
    assert labels[:10].tolist() == list(range(10))
    assert load_dataset("cifar10", root, train=False)[0].shape == (20, 3, 32, 32)


def test_missing_data_names_the_data_dir_flag(tmp_path):
    with pytest.raises(UsageError, match="--data-dir"):
        load_dataset("mnist", str(tmp_path), download=False)
    with pytest.raises(UsageError, match="unknown dataset"):
        load_dataset("imagenet", str(tmp_path))


def test_random_relabel_is_seeded_and_uniform():
    labels = torch.arange(10).repeat(1000)
    a, b, c = random_relabel(labels, seed=3), random_relabel(labels, seed=3), random_relabel(labels, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a == labels).float().mean() < 0.2  # about 1/10 agree by chance
    assert torch.bincount(a, minlength=10).min() > 850


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DEBIAN_DIR), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    images, labels = load_dataset("fashion_mnist", str(tmp_path), train=True)
    assert images.shape == (60000, 1, 28, 28) and torch.bincount(labels).tolist() == [6000] * 10


def test_a_failed_download_leaves_no_folder_that_hides_the_debian_copy(tmp_path, monkeypatch):
    """Offline, torchvision makes FashionMNIST/raw before its download fails; that empty folder is removed, and an
    empty folder made some other way does not hide the Debian package's copy."""
    debian = tmp_path / "debian"
    debian.mkdir()
    for prefix, count in (("train", 3), ("t10k", 2)):  # tiny IDX files in the package's gzipped layout
        with gzip.open(debian / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + np.array([count, 28, 28], ">i4").tobytes() + bytes(count * 784))
        with gzip.open(debian / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + np.array([count], ">i4").tobytes() + bytes(range(count)))
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    def offline(name, data_dir, train, download):
        os.makedirs(os.path.join(data_dir, "FashionMNIST", "raw"))
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(classification, "_load_torchvision_mnist", offline)
    monkeypatch.setattr(classification, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "not-installed"))
    with pytest.raises(UsageError, match="could not be downloaded"):
        load_dataset("fashion_mnist", str(data_dir))
    assert os.listdir(data_dir) == []
    (data_dir / "FashionMNIST" / "raw").mkdir(parents=True)
    monkeypatch.setattr(classification, "FASHION_MNIST_DEBIAN_DIR", str(debian))
    images, labels = load_dataset("fashion_mnist", str(data_dir))
    assert images.shape == (3, 1, 28, 28) and labels.tolist() == [0, 1, 2]
