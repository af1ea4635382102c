"""Image datasets as uint8 tensors on the device: MNIST, Fashion-MNIST, CIFAR-10, and random relabelling.

MNIST and Fashion-MNIST come through torchvision (``download=True`` is the real path for users with internet;
an existing ``<data-dir>/MNIST/raw`` is used as is). CIFAR-10 is downloaded through torchvision and read from
its ``cifar-10-batches-py`` pickles here, so a small file in the same format loads through the same code.
Fashion-MNIST also loads from Debian's ``dataset-fashion-mnist`` package when it is installed.
"""
import gzip
import os
import pickle

import numpy as np
import torch

from common.cli import UsageError

DATASETS = ("mnist", "fashion_mnist", "cifar10")
NUM_CLASSES = 10
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
_HOW_TO_GET = {
    "mnist": "a folder holding MNIST/raw/*-ubyte (torchvision's layout; ../shared/data has it)",
    "fashion_mnist": "a folder holding FashionMNIST/raw/*-ubyte, or `apt-get install dataset-fashion-mnist`",
    "cifar10": "a folder holding cifar-10-batches-py/ (torchvision's layout)",
}


def load_dataset(name, data_dir, train=True, device="cpu", download=True):
    """Return ``(images, labels)``: uint8 ``(N, C, H, W)`` and int64 ``(N,)`` tensors on ``device``."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    try:
        if name == "cifar10":
            images, labels = _load_cifar10(data_dir, train, download)
        elif name == "fashion_mnist" and _debian_fashion_mnist_only(data_dir):
            images, labels = _load_idx_gz(FASHION_MNIST_DEBIAN_DIR, train)
        else:
            images, labels = _load_torchvision_mnist(name, data_dir, train, download)
    except (OSError, RuntimeError) as e:  # torchvision's download errors are RuntimeErrors, URLError is an OSError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{name} is not in --data-dir {data_dir!r} and could not be downloaded ({reason}); "
                         f"pass --data-dir pointing at {_HOW_TO_GET[name]}") from None
    return images.to(device), labels.to(device)


def random_relabel(labels, num_classes=NUM_CLASSES, seed=0):
    """Labels drawn uniformly at random, one per image, reproducible from ``seed`` (the random-label variant)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(num_classes, labels.shape, generator=generator).to(labels.device)


def _load_torchvision_mnist(name, data_dir, train, download):
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    dataset = cls(data_dir, train=train, download=download)
    return dataset.data.unsqueeze(1).contiguous(), dataset.targets.long()


def _load_cifar10(data_dir, train, download):
    folder = os.path.join(data_dir, "cifar-10-batches-py")
    if not os.path.isdir(folder):
        if not download:
            raise FileNotFoundError(folder)
        import torchvision

        torchvision.datasets.CIFAR10(data_dir, train=train, download=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for file in files:
        with open(os.path.join(folder, file), "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch["labels"])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


def _debian_fashion_mnist_only(data_dir):
    has_torchvision_copy = os.path.isdir(os.path.join(data_dir, "FashionMNIST", "raw"))
    return not has_torchvision_copy and os.path.isdir(FASHION_MNIST_DEBIAN_DIR)


def _load_idx_gz(folder, train):
    """Read the IDX files (gzipped) of an MNIST-format dataset."""
    prefix = "train" if train else "t10k"

    def read(kind):
        with gzip.open(os.path.join(folder, f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz")) as f:
            data = f.read()
        ndim = data[3]
        shape = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)

    images = torch.from_numpy(read("images").copy()).unsqueeze(1)
    return images, torch.from_numpy(read("labels").astype(np.int64))
