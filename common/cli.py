"""Command-line entry point shared by every script: tyro parsing, and one-line errors instead of tracebacks."""
import signal
import sys

import tyro


class UsageError(ValueError):
    """A bad argument or missing input; the message says how to fix it."""


def check(condition, message):
    """Raise ``UsageError(message)`` unless ``condition`` holds."""
    if not condition:
        raise UsageError(message)


def main(train, args_cls):
    """``train(tyro.cli(args_cls))``; a ``UsageError`` prints one line to stderr and exits with status 2."""
    args = tyro.cli(args_cls)
    try:
        return train(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def select_device(cuda=True):
    """The GPU when ``cuda`` is set and one exists, else the CPU (CleanRL's ``--cuda``)."""
    import torch

    return torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")


def seed_everything(seed):
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Preemption:
    """Turns SIGTERM / SIGUSR1 (Slurm preemption) into a flag the loop checks between iterations."""

    def __init__(self):
        self.requested, self.signal = False, None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def _handle(self, signum, frame):
        self.requested, self.signal = True, signum

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
