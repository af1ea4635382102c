"""Command-line entry point shared by every script: tyro parsing, one-line errors instead of tracebacks, and the
exit status of a run (for Slurm arrays and shell loops: requeue only on EXIT_INTERRUPTED)."""
import sys

import tyro

from common import run
from common.errors import (EXIT_COMPLETED, EXIT_CRASH, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_LOCKED,  # noqa: F401
                           EXIT_STATUS, EXIT_USAGE, UsageError, check)


def main(train, args_cls):
    """``train(tyro.cli(args_cls))`` and exit with the status of the returned summary (``EXIT_STATUS``).

    A ``UsageError`` prints one line to stderr and exits with ``EXIT_USAGE``; a run directory created for the run
    and still empty is removed. Ctrl-C before the run has started exits with ``EXIT_INTERRUPTED``.
    """
    args = tyro.cli(args_cls)
    try:
        summary = train(args)
    except UsageError as e:
        run.abandon_active()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        run.abandon_active()
        print("interrupted before the run started: nothing to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_STATUS[summary["status"]] if isinstance(summary, dict) and "status" in summary else EXIT_COMPLETED)


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
