"""Errors and exit statuses shared by every script (a leaf module: it imports nothing of the project).

Exit statuses are for Slurm arrays and shell loops: requeue only on ``EXIT_INTERRUPTED``.
"""

EXIT_COMPLETED = 0
EXIT_CRASH = 1  # an uncaught exception: Python's own status, with its traceback
EXIT_USAGE = 2  # a bad argument or missing input (tyro uses 2 as well)
EXIT_DIVERGED = 3
EXIT_LOCKED = 73  # EX_CANTCREAT: another process holds the run directory; not requeued
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: a signal stopped the run after a checkpoint; requeue with --resume
EXIT_STATUS = {"completed": EXIT_COMPLETED, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED}


class UsageError(ValueError):
    """A bad argument or missing input; the message says how to fix it."""


def check(condition, message):
    """Raise ``UsageError(message)`` unless ``condition`` holds."""
    if not condition:
        raise UsageError(message)
