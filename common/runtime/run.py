"""The lifecycle of one run, the same in every script: claim and lock the run directory, resume, signals,
divergence, summary.

A script's ``train(args)`` reads::

    run = Run(args, total="total_steps")        # checks --run-dir / --resume / --track; claims and locks the directory
    if run.finished:                             # --resume of a finished run: nothing to do
        return run.finished
    ...build everything...
    state = run.load_checkpoint(device)          # None for a fresh run; restores the global RNGs
    run.start(step)                              # args.json, metrics.jsonl (rows after `step` dropped), signals
    while step < total and not run.stopping:     # SIGTERM / SIGUSR1 / SIGINT set run.interrupted
        ...
        run.log(step, metrics)                   # a non-finite value sets run.diverged
        result = run.measure("probe", step, probe, generator)  # a signal abandons it; a resume redoes it
    if not run.diverged:
        run.save_checkpoint(state, step)
    return run.finish(step, done=step >= total and not run.pending, metrics=...)

``common.runtime.cli.main`` listens for signals from its first line (one before ``run.start`` stops the process at once:
nothing is lost) and maps the summary's status to the exit status (0 completed, 3 diverged, 75 interrupted; 73 when
another process holds the run directory). One process writes a run directory: ``<run_dir>/.lock`` is ``flock``ed
(re-entrant within the process, dropped by the kernel when it dies) and names its holder.
"""
import contextlib
import dataclasses
import fcntl
import importlib.util
import json
import os
import random
import re
import shlex
import signal
import socket
import sys
import threading
import time
import zipfile

import numpy as np
import torch

from common.errors import UsageError, check
from common.runtime.logger import RunLogger, default_run_name, is_finite, torch_save_staged
from common.runtime.rundir import Unreadable, read_json

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# Fields that cannot change what a run computes: these may differ between a run and its resumption.
MAY_CHANGE_ON_RESUME = ("run_dir", "resume", "cuda", "track", "data_dir", "log_every", "checkpoint_every")
LOCK_FILE = ".lock"  # in every run directory: its flock is held by the one process that writes there
ORPHAN = re.compile(r"\.(tmp|write_test)(\d+)$")  # a file being written by process <pid> (common.runtime.logger, here)
RESUME_HINT = None  # what an interrupted run tells the user to run; None: its own command with --resume
_unfinished = []  # the Runs of this process that have neither finished nor been abandoned
_locks = {}  # real path of a run directory -> [its open lock file, how many holders in this process]


class Interrupted(BaseException):
    """A signal: raised inside ``Run.measurement()`` (the measurement is abandoned and redone after resume), and
    anywhere while no run of the process is training (setting up, between runs), where nothing is lost by stopping.
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` mistakes it for a failure."""


class Locked(UsageError):
    """Another process holds the run directory: exit with ``EXIT_LOCKED`` (not requeued)."""


# ---------------------------------------------------------------------------------------------------------- signals
class _Listener:
    """The process's one handler of SIGTERM, SIGUSR1 and SIGINT, from ``listening()`` (``common.runtime.cli.main``, a
    sweep's main) on, or from ``Run.start`` for a run called in-process. A signal interrupts every run that is training (they checkpoint and
    stop), abandons the measurement under way, and otherwise, while no run trains, raises ``Interrupted`` at once
    (or at the end of a ``deferred_signals()`` block). The outermost ``leave`` restores the handlers that were there
    and passes a signal it took on to a Python-level one (a sweep's, a test's)."""

    def __init__(self):
        self.depth, self.previous, self.received, self.deferred, self.pending = 0, {}, None, 0, False

    def enter(self):
        if self.depth == 0:
            self.received, self.pending = None, False
            if threading.current_thread() is threading.main_thread():  # signal handlers only work there
                self.previous = {s: signal.signal(s, self.handle) for s in SIGNALS}
        self.depth += 1

    def leave(self):
        self.depth -= 1
        if self.depth > 0:
            return
        self.deferred += 1  # a signal while the handlers are put back is only recorded
        previous, self.previous = self.previous, {}
        for s, handler in previous.items():
            signal.signal(s, handler)
        self.deferred -= 1
        # Python's own Ctrl-C handler is left out: it would raise KeyboardInterrupt where the caller goes on
        handler = previous.get(signal.Signals[self.received]) if self.received else None
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signal.Signals[self.received], None)

    def handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        training = [run for run in _unfinished if run.logger is not None]
        for run in training:
            run.interrupted, run.signal = True, self.received
        if any(run._measuring for run in training):
            raise Interrupted(self.received)
        if not training:
            if self.deferred:
                self.pending = True
            else:
                raise Interrupted(self.received)


_listener = _Listener()


@contextlib.contextmanager
def listening():
    """Honour SIGTERM, SIGUSR1 and SIGINT from here on (a script's or a sweep's whole process)."""
    _listener.enter()
    try:
        yield
    finally:
        _listener.leave()


@contextlib.contextmanager
def deferred_signals(raise_pending=True):
    """A block that a signal must not cut short (a lock taken, a directory moved): while no run trains, the signal
    raises ``Interrupted`` at the end of the block instead of inside it (or only is recorded)."""
    _listener.deferred += 1
    try:
        yield
    finally:
        _listener.deferred -= 1
    if not _listener.deferred and _listener.pending:
        _listener.pending = False
        if raise_pending:
            raise Interrupted(_listener.received)


def signal_received():
    """The name of the last signal this process got while listening, or None."""
    return _listener.received


# ------------------------------------------------------------------------------------------------------------ locks
def lock(run_dir):
    """Take the run directory's lock for this process (it must exist); raise ``Locked``, naming the holder, when
    another process holds it. Re-entrant within a process; the kernel drops it when the process dies."""
    key = os.path.realpath(run_dir)
    if key in _locks:
        _locks[key][1] += 1
        return
    path = os.path.join(run_dir, LOCK_FILE)
    with deferred_signals():
        file = open(path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "a process that is just starting"
            file.close()
            raise Locked(f"{run_dir} is being written by {holder}: one process at a time writes a run "
                         f"directory; wait for it to end (rerunning then skips or resumes it)") from None
        if not os.path.exists(path) or os.stat(path).st_ino != os.fstat(file.fileno()).st_ino:
            file.close()  # the directory was moved aside or removed while this process took the lock
            raise Locked(f"{run_dir} was moved or removed by another process while this one locked it")
        file.truncate(0)
        file.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        file.flush()
        _locks[key] = [file, 1]


def check_lock(run_dir):
    """Raise ``Locked`` when ``<run_dir>/.lock`` is no longer the file this process locked: deleted or replaced by
    hand, or the directory moved, another process may be writing the run now, so this one must write no more."""
    entry = _locks.get(os.path.realpath(run_dir))
    if entry is None:
        return
    held = os.fstat(entry[0].fileno())
    try:
        now = os.stat(os.path.join(run_dir, LOCK_FILE))
        same = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
    except OSError:
        same = False
    if not same:
        raise Locked(f"{os.path.join(run_dir, LOCK_FILE)} was deleted or replaced while this process wrote the run "
                     f"(another process may be writing it now): this process stops without writing more; never "
                     f"delete a run's lock file by hand (the kernel drops the lock when its holder dies)")


def unlock(run_dir):
    """Give back one hold of ``lock(run_dir)``; the last one releases the lock."""
    entry = _locks.get(os.path.realpath(run_dir))
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _locks[os.path.realpath(run_dir)]
        entry[0].close()


@contextlib.contextmanager
def locked(run_dir):
    lock(run_dir)
    try:
        yield
    finally:
        unlock(run_dir)


def remove_orphans(run_dir):
    """Remove the temporary files that writes cut short by a kill left (``<file>.tmp<pid>``, in the run directory
    and figures/), except this process's own: under the run directory's lock no other process is writing them."""
    for folder in (run_dir, os.path.join(run_dir, "figures")):
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            match = ORPHAN.search(name)
            if match and int(match.group(2)) != os.getpid():
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))


def holds_a_run(run_dir):
    """True when ``run_dir`` holds anything besides its lock file."""
    return any(name != LOCK_FILE for name in os.listdir(run_dir))


def checkpoint_step(run_dir):
    """The step of a run directory's checkpoint.pt (its tensors memory-mapped, not read); None when unreadable."""
    try:
        return torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False,
                          mmap=True)["lifecycle"]["step"]
    except Exception:  # a truncated or foreign file: its resume says so in one line
        return None


def trained_total(summary):
    """``(field, value)`` from a run's summary.json: the field that sets the run's length (``Run``'s ``total``) and
    the value the run trained to; None for a summary that names none."""
    total = summary.get("total")
    return next(iter(total.items())) if isinstance(total, dict) and len(total) == 1 else None


def _as_json(value):
    """``value`` as args.json holds it (tuples become lists, other objects strings)."""
    return json.loads(json.dumps(value, default=str))


def _read_json(path):
    """The run's own file for resuming: None when missing; a one-line error when half-written or corrupt."""
    if not os.path.exists(path):
        return None
    try:
        return read_json(path)
    except Unreadable as e:
        raise UsageError(f"{os.path.dirname(path)}: {e}: start afresh with another --run-dir") from None


def _claim_default_dir(exp_name, seed):
    """``runs/<exp_name>__<seed>__<time>``, with a suffix when taken: ``os.mkdir`` is atomic, so two runs started
    in the same second never share a directory."""
    os.makedirs("runs", exist_ok=True)
    base = os.path.join("runs", default_run_name(exp_name, seed))
    for n in range(1, 10_000):
        path = base if n == 1 else f"{base}_{n}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise UsageError(f"could not create a fresh run directory next to {base}: pass --run-dir")


def _claim_named_dir(run_dir):
    """Create ``run_dir`` (or accept it empty) and check it is writable; a one-line error otherwise."""
    check(not os.path.exists(run_dir) or os.path.isdir(run_dir),
          f"--run-dir {run_dir} is a file, not a directory: choose another --run-dir")
    created = not os.path.exists(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write_test{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"--run-dir {run_dir} is not writable ({e.strerror}): choose another --run-dir") from None
    return created


class Run:
    """One run directory and the lifecycle around a script's training loop (see the module docstring).

    ``total`` names the field that sets the run's length (it may be raised on resume); ``may_change`` adds fields
    that may differ on resume to ``MAY_CHANGE_ON_RESUME``.
    """

    def __init__(self, args, total, may_change=()):
        check(args.seed >= 0, f"--seed must be non-negative, got {args.seed}")
        check(not args.track or importlib.util.find_spec("wandb") is not None,
              "--track needs wandb: `.venv/bin/pip install wandb`, or drop --track")
        check(not args.resume or args.run_dir, "--resume needs --run-dir pointing at the run to continue")
        self.args, self.total = args, total
        self.interrupted = self.diverged = self._measuring = False
        self.signal = None  # the name of the signal that interrupted the run
        self.measured, self.pending = {}, set()  # a measurement's last step; those due and not made (``measure``)
        self.finished, self.resumes, self.wall_time_before, self.checkpoint_rows = None, [], 0.0, None
        self.start_time, self.logger, self.created, self.run_dir = time.time(), None, False, None
        try:
            with deferred_signals():
                self._claim(may_change)
        except BaseException:
            self._discard()
            raise
        self.checkpoint_path = os.path.join(self.run_dir, "checkpoint.pt")
        if self.finished:
            self._release()
        else:
            _unfinished.append(self)
            print(f"run directory {self.run_dir}" + (" (resuming)" if args.resume else ""), flush=True)

    def _claim(self, may_change):
        """Create or find the run directory, take its lock, then check what it holds (under the lock: a second
        process learns that the directory is taken, not what it looks like half-written)."""
        args = self.args
        if args.resume:
            check(os.path.isdir(args.run_dir), f"--run-dir {args.run_dir} does not exist: start it without --resume"
                                               + _command_hint(args, args.run_dir))
            self.run_dir = args.run_dir
        elif args.run_dir:
            self.created = _claim_named_dir(args.run_dir)
            self.run_dir = args.run_dir
        else:
            self.run_dir, self.created = _claim_default_dir(args.exp_name, args.seed), True
        lock(self.run_dir)
        if args.resume:
            self._check_resume(may_change)
            if not self.finished:
                remove_orphans(self.run_dir)
        else:
            check(not holds_a_run(self.run_dir), f"--run-dir {self.run_dir} already holds a run: pass --resume to "
                                                 f"continue it, or choose another --run-dir")

    def _check_resume(self, may_change):
        run_dir, args = self.run_dir, self.args
        original = _read_json(os.path.join(run_dir, "args.json"))
        check(original is not None, f"no run in --run-dir {run_dir} to resume (no args.json): start without --resume")
        allowed = set(MAY_CHANGE_ON_RESUME) | {self.total} | set(may_change)
        # a field that args.json lacks (added to the script later) must have its default
        defaults = {f.name: _as_json(f.default) for f in dataclasses.fields(args)}
        new = _as_json(dataclasses.asdict(args))
        changed = sorted(k for k in new if k not in allowed and original.get(k, defaults[k]) != new[k])
        check(not changed, f"--resume with arguments that differ from the run's args.json: "
                           f"{', '.join('--' + k.replace('_', '-') for k in changed)}; resume with the original "
                           f"values, or start a new run with another --run-dir")
        summary = _read_json(os.path.join(run_dir, "summary.json"))
        if summary and summary["status"] == "diverged":
            print(f"run {run_dir} diverged at step {summary['steps']:,}: nothing to resume", flush=True)
            self.finished = summary
        elif summary and summary["status"] == "completed":
            reached = summary.get("total", {}).get(self.total, original.get(self.total))
            if getattr(args, self.total) <= reached:
                print(f"run {run_dir} already completed ({self.total} {reached:,}): nothing to do; raise "
                      f"--{self.total.replace('_', '-')} to train further", flush=True)
                self.finished = summary
        if self.finished:
            return
        every = getattr(args, "checkpoint_every", 0)
        restart = f"move it aside (mv {run_dir} {run_dir}.stale) and start it again without --resume"
        checkpoint = os.path.join(run_dir, "checkpoint.pt")
        check(os.path.exists(checkpoint),
              f"--run-dir {run_dir} has no checkpoint.pt to resume (the run stopped before its first checkpoint"
              + (f", every --checkpoint-every {every:,} steps," if every else "") + " or it was deleted): "
              + restart + _command_hint(args, run_dir))
        try:  # a torch.save file is a zip archive: a truncated one has no central directory (checked before any
            with zipfile.ZipFile(checkpoint) as archive:  # run of a seed group trains)
                archive.namelist()
        except (OSError, zipfile.BadZipFile):
            raise UsageError(f"{checkpoint} is corrupt or truncated: start afresh with another --run-dir, or "
                             + restart + _command_hint(args, run_dir)) from None

    def load_checkpoint(self, device):
        """The script's state saved by ``save_checkpoint`` (None for a fresh run); restores the global RNGs."""
        if not self.args.resume:
            return None
        try:
            ckpt = torch.load(self.checkpoint_path, map_location=device, weights_only=False)
            lifecycle = ckpt.pop("lifecycle")
        except Exception as e:  # a truncated zip, a pickle error, a missing key: all mean the file is unusable
            raise UsageError(f"{self.checkpoint_path} is corrupt, truncated or from an older version of this code "
                             f"({type(e).__name__}); start afresh "
                             f"with another --run-dir (or delete {self.run_dir})") from None
        set_global_rng_state(lifecycle["rng"])
        # the segment that wrote summary.json also spent time after its last checkpoint (its figures, say)
        summary = _read_json(os.path.join(self.run_dir, "summary.json")) or {}
        self.wall_time_before = max(lifecycle["wall_time_s"], summary.get("wall_time_s", 0.0))
        self.resumes = lifecycle["resumes"] + [lifecycle["step"]]
        self.checkpoint_rows = lifecycle.get("rows")  # None from a checkpoint that predates the count
        self.measured = lifecycle.get("measured", {})
        return ckpt

    def start(self, step=0):
        """Open the logger at ``step`` (the checkpoint's on resume) and turn signals into ``run.interrupted``."""
        self.logger = RunLogger(self.run_dir, self.args, track=self.args.track,
                                resume_step=step if self.args.resume else None, resume_rows=self.checkpoint_rows)
        _listener.enter()  # a process's main listens from its start; a run called in-process listens from here
        if _listener.received:  # a signal while setting up that no one raised on (it came in a deferred block)
            self.interrupted, self.signal = True, _listener.received
        if self.args.resume:
            print(f"resuming at step {step:,} (resume {len(self.resumes)})", flush=True)

    @property
    def stopping(self):
        return self.interrupted or self.diverged

    @contextlib.contextmanager
    def measurement(self, *generators):
        """A probe or curvature measurement that a signal abandons at once. On abandoning, the global RNGs and
        ``generators`` are put back as they were, so the measurement redone after resume draws the same numbers."""
        states = global_rng_state(), [g.get_state() for g in generators]
        try:
            if self.interrupted:
                raise Interrupted
            self._measuring = True
            yield
        except Interrupted:
            set_global_rng_state(states[0])
            for g, s in zip(generators, states[1]):
                g.set_state(s)
            raise
        finally:
            self._measuring = False

    def measure(self, name, step, fn, *generators):
        """The measurement ``name`` due at ``step``: ``fn()`` in ``measurement(*generators)``, unless it was made at
        ``step`` already (``measured``, which checkpoints keep: a resumed run redoes only what a signal abandoned).
        A signal abandons it, or skips it once the run is interrupted; until it is made it is ``pending``, and a run
        that stops with one pending is not done. Returns ``fn()``'s result, or None where it made nothing."""
        if self.measured.get(name, -1) >= step:
            return None
        self.pending.add(name)
        try:
            with self.measurement(*generators):
                result = fn()
        except Interrupted:
            return None
        self.measured[name] = step
        self.pending.discard(name)
        return result

    def log(self, step, metrics):
        """Log ``metrics`` at ``step``; the returned row holds Python numbers. A non-finite value sets ``diverged``."""
        check_lock(self.run_dir)
        row = self.logger.log(step, metrics)
        bad = [k for k, v in row.items() if not is_finite(v)]
        if bad and not self.diverged:
            self.diverged = True
            print(f"step {step:,}: non-finite {', '.join(bad)}: the run diverged", flush=True)
        return row

    def wall_time(self):
        return self.wall_time_before + time.time() - self.start_time

    def save_checkpoint(self, state, step):
        """Write ``state`` and the lifecycle's own (step, wall time, resumes, global RNGs) atomically."""
        os.replace(self.stage_checkpoint(state, step), self.checkpoint_path)

    def stage_checkpoint(self, state, step):
        """``save_checkpoint``'s file, written beside checkpoint.pt but not yet in its place: its path, which
        ``os.replace(path, run.checkpoint_path)`` commits. Runs that resume together (a seed group) write all
        theirs first, so that a kill can leave them at different steps only between two renames."""
        # "rows": the metrics.jsonl rows this checkpoint covers; a resume drops the rest, even at its own step
        check_lock(self.run_dir)
        lifecycle = {"step": int(step), "wall_time_s": self.wall_time(), "resumes": self.resumes,
                     "rows": self.logger.rows, "rng": global_rng_state(), "measured": dict(self.measured)}
        return torch_save_staged({**state, "lifecycle": lifecycle}, self.checkpoint_path)

    def save_figure(self, make_figure, name):
        """Save ``make_figure()``; a figure that fails on a diverged or interrupted run's data is only reported."""
        try:
            return self.logger.save_figure(make_figure(), name)
        except Exception as e:
            if not self.stopping:
                raise
            print(f"figure {name} not drawn from this run's data ({type(e).__name__}: {e})", flush=True)

    def _release(self):
        """Leave the process's list of unfinished runs, the run directory's lock and the signal listener."""
        if self in _unfinished:
            _unfinished.remove(self)
        if self.run_dir and os.path.realpath(self.run_dir) in _locks:
            unlock(self.run_dir)
        if self.logger is not None:  # started: it listened
            _listener.leave()

    def finish(self, step, done, metrics=None, **extra):
        """Write summary.json: status diverged, else completed when ``done``, else interrupted."""
        status = "diverged" if self.diverged else "completed" if done else "interrupted"
        check_lock(self.run_dir)
        summary = self.logger.finish(status, step, metrics, wall_time_s=self.wall_time(), resumes=self.resumes,
                                     total={self.total: getattr(self.args, self.total)}, run_dir=self.run_dir,
                                     **extra)
        remove_orphans(self.run_dir)
        with deferred_signals(raise_pending=False):  # the summary is written: a signal now stops only what follows
            self._release()
        if status == "interrupted":
            print(f"{self.signal}: interrupted at step {step:,}, checkpoint written; continue with: "
                  f"{RESUME_HINT or resume_command(self.args, self.run_dir)}", flush=True)
        else:
            print(f"run {status} at step {step:,} in {summary['wall_time_s']:.0f} s: {self.run_dir}", flush=True)
        return summary

    def abandon(self):
        """After an error or a signal before ``start``: give back the lock and remove the directory if this run
        made it and it is still empty."""
        if self in _unfinished:
            self._discard()

    def _discard(self):
        holds_lock = self.run_dir and os.path.realpath(self.run_dir) in _locks  # never another process's lock file
        if self.created and self.logger is None and holds_lock and not holds_a_run(self.run_dir):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.run_dir, LOCK_FILE))
                os.rmdir(self.run_dir)
        self._release()


def abandon_unfinished():
    """``Run.abandon`` for every run of this process that has not finished (``common.runtime.cli.main`` on errors)."""
    for run in list(reversed(_unfinished)):
        run.abandon()


def _command_hint(args, run_dir):
    """``: <the command that starts this run afresh>`` (for one seed of a group: that seed alone), or nothing in a
    process that gives its own hints (a sweep)."""
    return "" if RESUME_HINT else ": " + resume_command(args, run_dir, resume=False)


def resume_command(args, run_dir, resume=True):
    """The command that continues this run (``resume=False``: that starts it afresh): the process's own command
    line with the run's own ``--seed``, ``--run-dir`` and ``--resume`` (and ``--num-seeds 1`` where it named several seeds: each seed's directory
    resumes on its own, or all of them with the original command and ``--resume``)."""
    own = ("--seed", "--run-dir", "--run_dir", "--num-seeds", "--num_seeds")
    flags = ("--resume", "--no-resume")
    words, kept, i = sys.argv[1:], [], 0
    while i < len(words):
        name = words[i].split("=", 1)[0]
        if name in flags or (name in own and "=" in words[i]):
            i += 1
        elif name in own:
            i += 2
        else:
            kept.append(words[i])
            i += 1
    seeds = ["--num-seeds", "1"] if any(w.split("=", 1)[0] in own[3:] for w in words) else []
    return shlex.join([sys.executable, sys.argv[0], *kept, "--seed", str(args.seed), *seeds, "--run-dir",
                       run_dir, *["--resume"] * resume])


def seed_everything(seed):
    """Seed Python's, NumPy's and torch's global RNGs (CleanRL's seeding); ``global_rng_state`` captures them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_rng_state():
    """The process's global RNG states (torch's CPU and CUDA ones, NumPy's, Python's): what a checkpoint restores,
    and what each seed of a group keeps as its own (``common.runtime.seeds``)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state):
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def combined_summary(summaries):
    """One run's summary, or several runs' (``--num-seeds``) under the worst status: interrupted (requeue), then
    diverged, then completed."""
    if len(summaries) == 1:
        return summaries[0]
    statuses = {s["status"] for s in summaries}
    status = next(s for s in ("interrupted", "diverged", "completed") if s in statuses)
    return {"status": status, "runs": summaries}
