"""Command-line entry point shared by every script: tyro parsing, one-line errors instead of tracebacks, and the
exit status of a run (for Slurm arrays and shell loops: requeue only on EXIT_INTERRUPTED)."""
import sys

import tyro

from common.errors import EXIT_COMPLETED, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_STATUS, EXIT_USAGE, UsageError
from common.runtime import early_signals, run


STOPPED = "before the run trained: nothing lost; run the same command again to continue"


def main(train, args_cls, stopped=STOPPED):
    """``train(tyro.cli(args_cls))`` and exit with the status of the returned summary (``EXIT_STATUS``).

    Signals are honoured from the first line on (``common.runtime.run.listening``): one that comes before the run trains
    stops the process with ``EXIT_INTERRUPTED``, nothing lost, and the same command continues. A ``UsageError``
    prints one line to stderr and exits with ``EXIT_USAGE`` (``EXIT_LOCKED`` when another process holds the run
    directory); a run directory created for the run and still empty is removed. ``stopped`` ends the line printed
    on a signal before the run trained (a command that trains no run says what it had not done).
    """
    summary = None
    held = early_signals.hold()  # the script's install() has listened while it imported
    with run.listening():
        try:
            early_signals.release(held)
            summary = train(tyro.cli(args_cls))
        except UsageError as e:
            run.abandon_unfinished()
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_LOCKED if isinstance(e, run.Locked) else EXIT_USAGE)
        except run.Interrupted as e:
            if summary is None:  # else the run had finished: its summary's status stands
                run.abandon_unfinished()
                print(f"{e} {stopped}", file=sys.stderr)
                sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_STATUS[summary["status"]] if isinstance(summary, dict) and "status" in summary else EXIT_COMPLETED)


def select_device(cuda=True):
    """The GPU when ``cuda`` is set and one exists, else the CPU (CleanRL's ``--cuda``)."""
    import torch

    return torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")

