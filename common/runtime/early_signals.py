"""Signals while a script imports its libraries (seconds: torch, numpy, tyro). Each script's ``__main__`` path
calls ``install()`` before those imports; SIGTERM, SIGUSR1 or SIGINT then ends the process at once with
``EXIT_INTERRUPTED`` (75) and one line, nothing having been written, as a signal before the run trains does, so
that a Slurm script requeues it. ``hold()`` and ``release()`` give the signals to the process's real listener
(``common.runtime.run.listening``) without a moment in which one would kill the process.

A leaf module that imports only builtins (``_signal``, not ``signal``, whose ``enum`` takes tens of milliseconds on a
loaded machine): the time before ``install()`` takes effect is the interpreter's own start-up, which no script can
cover."""
import _signal
import os

EXIT_INTERRUPTED = 75  # common.errors.EXIT_INTERRUPTED, not imported: this module comes first
SIGNALS = {_signal.SIGTERM: "SIGTERM", _signal.SIGUSR1: "SIGUSR1", _signal.SIGINT: "SIGINT"}
_original = {}  # the handlers the process started with, while install()'s are in place


def _stop(signum, frame):
    os.write(2, f"{SIGNALS[signum]} while the script started: nothing written; run the same command again\n".encode())
    os._exit(EXIT_INTERRUPTED)  # no Python-level unwinding inside a half-finished import


def install():
    """From here until ``hold()``, a signal ends the process with ``EXIT_INTERRUPTED``."""
    for s in SIGNALS:
        _original.setdefault(s, _signal.signal(s, _stop))


def hold():
    """Block the signals and take ``install()``'s handlers away, before the real listener is installed; returns
    what ``release`` needs. A signal that comes meanwhile waits instead of killing the process."""
    held = _signal.pthread_sigmask(_signal.SIG_BLOCK, list(SIGNALS))
    for s, handler in list(_original.items()):
        _signal.signal(s, handler)
        del _original[s]
    return held


def release(held):
    """Unblock the signals ``hold`` blocked: a signal that waited reaches the real listener now (call it where that
    listener's ``Interrupted`` is caught)."""
    _signal.pthread_sigmask(_signal.SIG_SETMASK, held)
