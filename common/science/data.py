"""Image datasets as uint8 tensors on the device: MNIST, Fashion-MNIST, CIFAR-10, and random relabelling.

MNIST and Fashion-MNIST come through torchvision (``download=True`` is the real path for users with internet;
an existing ``<data-dir>/MNIST/raw`` is used as is). CIFAR-10 is downloaded through torchvision and read from
its ``cifar-10-batches-py`` pickles here, so a small file in the same format loads through the same code.
Fashion-MNIST also loads from Debian's ``dataset-fashion-mnist`` package when it is installed.
"""
import gzip
import os
import pickle
import shutil

import numpy as np
import torch

from common.errors import UsageError

DATASETS = ("mnist", "fashion_mnist", "cifar10")
NUM_CLASSES = 10
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
_HOW_TO_GET = {
    "mnist": "a folder holding MNIST/raw/*-ubyte (torchvision's layout)",
    "fashion_mnist": "a folder holding FashionMNIST/raw/*-ubyte, or `apt-get install dataset-fashion-mnist`",
    "cifar10": "a folder holding cifar-10-batches-py/ (torchvision's layout)",
}


def load_dataset(name, data_dir, train=True, device="cpu", download=True):
    """Return ``(images, labels)``: uint8 ``(N, C, H, W)`` and int64 ``(N,)`` tensors on ``device``."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    files = _local_files(name, data_dir, train)
    if files:  # on disk: a read error means a damaged file, not a missing one
        try:
            return tuple(t.to(device) for t in _load(name, data_dir, train, download=False))
        except Exception as e:  # a truncated or empty file fails in numpy, torch or torchvision's parser
            raise UsageError(f"{name} in --data-dir {data_dir!r} is corrupt or truncated ({_reason(e)}); delete "
                             f"{' / '.join(files)} to download it again, or copy a good one there") from None
    created = _outermost_missing(_dataset_folder(name, data_dir))
    try:
        images, labels = _load(name, data_dir, train, download)
    except (OSError, RuntimeError) as e:  # torchvision's download errors are RuntimeErrors, URLError is an OSError
        if created:  # neither a mistyped --data-dir nor an empty dataset folder is left behind on disk
            shutil.rmtree(created, ignore_errors=True)
        raise UsageError(f"{name} is not in --data-dir {data_dir!r} and could not be downloaded ({_reason(e)}); "
                         f"pass --data-dir pointing at {_HOW_TO_GET[name]}") from None
    return images.to(device), labels.to(device)


def _load(name, data_dir, train, download):
    if name == "cifar10":
        return _load_cifar10(data_dir, train, download)
    if name == "fashion_mnist" and _debian_fashion_mnist_only(data_dir):
        return _load_idx_gz(FASHION_MNIST_DEBIAN_DIR, train)
    return _load_torchvision_mnist(name, data_dir, train, download)


def _dataset_folder(name, data_dir):
    """Where torchvision keeps the dataset inside ``data_dir``."""
    folders = {"cifar10": "cifar-10-batches-py", "mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
    return os.path.join(data_dir, folders[name])


def _local_files(name, data_dir, train):
    """The dataset's files in ``data_dir`` when all of them are there, else []."""
    if name == "cifar10":
        folder = _dataset_folder(name, data_dir)
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    else:
        folder = os.path.join(_dataset_folder(name, data_dir), "raw")
        prefix = "train" if train else "t10k"
        names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    paths = [os.path.join(folder, n) for n in names]
    return paths if all(os.path.isfile(p) for p in paths) else []


def _outermost_missing(path):
    """The outermost of ``path`` and its ancestors that does not exist yet (None when ``path`` exists)."""
    path, missing = os.path.abspath(path), None
    while not os.path.exists(path):
        path, missing = os.path.dirname(path), path
    return missing


def _reason(e):
    return str(e).splitlines()[0] if str(e) else type(e).__name__


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
    has_torchvision_copy = any(_local_files("fashion_mnist", data_dir, train) for train in (True, False))
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
