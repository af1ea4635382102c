"""The classification problems: image datasets as uint8 tensors on the device (MNIST, Fashion-MNIST, CIFAR-10), their
seeded random relabelling, and the classification MDPs of Sec 3.2 whose observations are those images.

MNIST and Fashion-MNIST come through torchvision (``download=True`` is the real path for users with internet;
an existing ``<data-dir>/MNIST/raw`` is used as is). CIFAR-10 is downloaded through torchvision and read from
its ``cifar-10-batches-py`` pickles here, so a small file in the same format loads through the same code.
Fashion-MNIST also loads from Debian's ``dataset-fashion-mnist`` package when it is installed.

``ClassificationMDP`` is a ten-state block MDP whose state emits an image of its class. It steps ``num_envs``
copies at once, entirely on the device: observations are indices into the image tensor (the replay stores
indices, not images), and sampling uses a torch.Generator on that device.

Variants (Sec 3.2):
- ``true_label``: the state s emits an image of class s; reward 1[a = s]; the next state is uniformly random.
- ``random_label``: as true_label, but classes are a seeded random relabelling of the images.
- ``sparse_reward``: true_label's observations; reward 1[a = s = 9]; the next state is s + 1 if a = s, else a
  uniformly random state. At s = 9 with a = 9 (the rewarded step) s + 1 would leave the state space: we wrap to
  state 0, so the agent must walk the chain 0..9 again to earn the next reward (the paper leaves this open).
The MDP is continuing: it never terminates. The gymnasium registration truncates episodes for single-env use.
"""
import gzip
import os
import pickle
import shutil

import gymnasium as gym
import numpy as np
import torch

from common.errors import UsageError

DATASETS = ("mnist", "fashion_mnist", "cifar10")
NUM_CLASSES = 10
VARIANTS = ("true_label", "random_label", "sparse_reward")
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


# -------------------------------------------------------------------------------------------------- the MDPs of Sec 3.2
class ClassificationMDP:
    """``num_envs`` independent copies of one classification MDP, batched on the device of ``images``."""

    def __init__(self, images, labels, variant, num_envs, num_classes=NUM_CLASSES, seed=0):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        self.images, self.variant, self.num_envs, self.num_classes = images, variant, num_envs, num_classes
        self.device = images.device
        if variant == "random_label":
            labels = random_relabel(labels, num_classes, seed)
        self.labels = labels
        # Images grouped by class: class c owns order[start[c] : start[c] + count[c]].
        self.order = torch.argsort(labels, stable=True)
        self.count = torch.bincount(labels, minlength=num_classes)
        if (self.count == 0).any():
            raise ValueError(f"every class needs at least one image; counts {self.count.tolist()}")
        self.start = torch.cumsum(self.count, 0) - self.count
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.state = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    def reset(self):
        """Draw uniform initial states; return their observations (image indices, shape ``(num_envs,)``)."""
        self.state = self._random_states()
        return self._observe(self.state)

    def step(self, actions):
        """Apply ``actions`` (shape ``(num_envs,)``); return ``(next_observations, rewards)``."""
        correct = actions == self.state
        if self.variant == "sparse_reward":
            rewards = (correct & (self.state == self.num_classes - 1)).float()
            advanced = (self.state + 1) % self.num_classes  # the wrap at state 9: see the module docstring
            self.state = torch.where(correct, advanced, self._random_states())
        else:
            rewards = correct.float()
            self.state = self._random_states()
        return self._observe(self.state), rewards

    def _random_states(self):
        return torch.randint(self.num_classes, (self.num_envs,), generator=self.generator, device=self.device)

    def _observe(self, states):
        """A uniformly drawn image index of each state's class."""
        u = torch.rand(states.shape, generator=self.generator, device=self.device)
        offset = (u * self.count[states]).long().clamp_max_(self.count[states] - 1)
        return self.order[self.start[states] + offset]

    def state_dict(self):
        return {"state": self.state, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.state = state["state"].to(self.device)
        self.generator.set_state(state["generator"])


class ClassificationMDPEnv(gym.Env):
    """One ClassificationMDP on the CPU as a gymnasium env: uint8 image observations, ``Discrete(10)`` actions.

    Make it with ``gymnasium.make("plasticity/ClassificationMDP-v0", images=..., labels=..., variant=...)``.
    ``info["state"]`` holds the latent state.
    """

    metadata = {"render_modes": []}

    def __init__(self, images, labels, variant="true_label", num_classes=NUM_CLASSES):
        images, labels = torch.as_tensor(images).cpu(), torch.as_tensor(labels).cpu()
        self._args = (images, labels, variant, 1, num_classes)
        self.mdp = ClassificationMDP(*self._args)
        self.observation_space = gym.spaces.Box(0, 255, tuple(images.shape[1:]), np.uint8)
        self.action_space = gym.spaces.Discrete(num_classes)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.mdp = ClassificationMDP(*self._args, seed=seed)
        obs = self.mdp.reset()
        return self._image(obs), {"state": int(self.mdp.state[0])}

    def step(self, action):
        obs, reward = self.mdp.step(torch.tensor([int(action)]))
        return self._image(obs), float(reward[0]), False, False, {"state": int(self.mdp.state[0])}

    def _image(self, obs):
        return self.mdp.images[obs[0]].numpy().copy()  # a fresh array: callers may keep it


gym.register("plasticity/ClassificationMDP-v0", entry_point=ClassificationMDPEnv, max_episode_steps=1000)
