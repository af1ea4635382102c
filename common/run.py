"""The lifecycle of one run, the same in every script: claim the run directory, resume, signals, divergence, summary.

A script's ``train(args)`` reads::

    run = Run(args, total="total_steps")        # checks --run-dir / --resume / --track; claims the directory
    if run.finished:                             # --resume of a finished run: nothing to do
        return run.finished
    ...build everything...
    state = run.load_checkpoint(device)          # None for a fresh run; restores the global RNGs
    run.start(step)                              # args.json, metrics.jsonl (rows after `step` dropped), signals
    while step < total and not run.stopping:     # SIGTERM / SIGUSR1 / SIGINT set run.interrupted
        ...
        run.log(step, metrics)                   # a non-finite value sets run.diverged
        with run.measurement(generator):         # a signal abandons a probe at once (redone after resume)
            result = probe()
    if not run.diverged:
        run.save_checkpoint(state, step)
    return run.finish(step, done=step >= total, metrics=...)

``common.cli.main`` maps the summary's status to the exit status (0 completed, 3 diverged, 75 interrupted).
"""
import contextlib
import dataclasses
import importlib.util
import json
import os
import random
import signal
import threading
import time

import numpy as np
import torch

from common.errors import UsageError, check
from common.logger import RunLogger, atomic_torch_save, default_run_name, is_finite

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# Fields that cannot change what a run computes: these may differ between a run and its resumption.
MAY_CHANGE_ON_RESUME = ("run_dir", "resume", "cuda", "track", "data_dir", "log_every", "checkpoint_every")
_active = None  # the Run of this process that has not finished, for abandon_active()


class Interrupted(Exception):
    """Raised by a signal inside ``Run.measurement()``: the measurement is abandoned and redone after resume."""


def _as_json(value):
    """``value`` as args.json holds it (tuples become lists, other objects strings)."""
    return json.loads(json.dumps(value, default=str))


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise UsageError(f"{path} is corrupt ({e}): start afresh with another --run-dir") from None


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
    check(not os.path.isdir(run_dir) or not os.listdir(run_dir),
          f"--run-dir {run_dir} already holds a run: pass --resume to continue it, or choose another --run-dir")
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
        self.finished, self.resumes, self.wall_time_before = None, [], 0.0
        self.start_time, self.logger, self._previous_handlers, self.created = time.time(), None, {}, False
        if args.resume:
            self.run_dir = args.run_dir
            self._check_resume(may_change)
        elif args.run_dir:
            self.run_dir = args.run_dir
            self.created = _claim_named_dir(args.run_dir)
        else:
            self.run_dir, self.created = _claim_default_dir(args.exp_name, args.seed), True
        self.checkpoint_path = os.path.join(self.run_dir, "checkpoint.pt")
        global _active
        _active = None if self.finished else self
        if not self.finished:
            print(f"run directory {self.run_dir}" + (" (resuming)" if args.resume else ""), flush=True)

    def _check_resume(self, may_change):
        run_dir, args = self.run_dir, self.args
        check(os.path.isdir(run_dir), f"--run-dir {run_dir} does not exist: start without --resume")
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
        check(self.finished or os.path.exists(os.path.join(run_dir, "checkpoint.pt")),
              f"no checkpoint.pt in --run-dir {run_dir} to resume: start afresh in another --run-dir")

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
        _set_rng_state(lifecycle["rng"])
        # the segment that wrote summary.json also spent time after its last checkpoint (its figures, say)
        summary = _read_json(os.path.join(self.run_dir, "summary.json")) or {}
        self.wall_time_before = max(lifecycle["wall_time_s"], summary.get("wall_time_s", 0.0))
        self.resumes = lifecycle["resumes"] + [lifecycle["step"]]
        return ckpt

    def start(self, step=0):
        """Open the logger at ``step`` (the checkpoint's on resume) and turn signals into ``run.interrupted``."""
        self.logger = RunLogger(self.run_dir, self.args, track=self.args.track,
                                resume_step=step if self.args.resume else None)
        if threading.current_thread() is threading.main_thread():  # signal handlers only work there
            self._previous_handlers = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        if self.args.resume:
            print(f"resuming at step {step:,} (resume {len(self.resumes)})", flush=True)

    def _on_signal(self, signum, frame):
        self.interrupted, self.signal = True, signal.Signals(signum).name
        if self._measuring:
            raise Interrupted

    @property
    def stopping(self):
        return self.interrupted or self.diverged

    @contextlib.contextmanager
    def measurement(self, *generators):
        """A probe or curvature measurement that a signal abandons at once. On abandoning, the global RNGs and
        ``generators`` are put back as they were, so the measurement redone after resume draws the same numbers."""
        states = _get_rng_state(), [g.get_state() for g in generators]
        try:
            if self.interrupted:
                raise Interrupted
            self._measuring = True
            yield
        except Interrupted:
            _set_rng_state(states[0])
            for g, s in zip(generators, states[1]):
                g.set_state(s)
            raise
        finally:
            self._measuring = False

    def log(self, step, metrics):
        """Log ``metrics`` at ``step``; the returned row holds Python numbers. A non-finite value sets ``diverged``."""
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
        lifecycle = {"step": int(step), "wall_time_s": self.wall_time(), "resumes": self.resumes,
                     "rng": _get_rng_state()}
        atomic_torch_save({**state, "lifecycle": lifecycle}, self.checkpoint_path)

    def save_figure(self, make_figure, name):
        """Save ``make_figure()``; a figure that fails on a diverged or interrupted run's data is only reported."""
        try:
            return self.logger.save_figure(make_figure(), name)
        except Exception as e:
            if not self.stopping:
                raise
            print(f"figure {name} not drawn from this run's data ({type(e).__name__}: {e})", flush=True)

    def figure_path(self, name):
        return self.logger.figure_path(name)

    def _restore_handlers(self):
        global _active
        _active = None
        previous, self._previous_handlers = self._previous_handlers, {}
        for s, handler in previous.items():
            signal.signal(s, handler)
        # A signal that came after the last step (during the final checkpoint or figures) ends nothing early, but
        # whoever listened before this run (a sweep between cells) must still hear it. Python's own Ctrl-C handler
        # is left out: it would raise KeyboardInterrupt in the middle of writing the summary.
        signum = signal.Signals[self.signal] if self.signal else None
        handler = previous.get(signum)
        if self.interrupted and callable(handler) and handler is not signal.default_int_handler:
            handler(signum, None)

    def finish(self, step, done, metrics=None, **extra):
        """Write summary.json: status diverged, else completed when ``done``, else interrupted."""
        self._restore_handlers()
        status = "diverged" if self.diverged else "completed" if done else "interrupted"
        summary = self.logger.finish(status, step, metrics, wall_time_s=self.wall_time(), resumes=self.resumes,
                                     total={self.total: getattr(self.args, self.total)}, run_dir=self.run_dir,
                                     **extra)
        if status == "interrupted":
            print(f"{self.signal}: interrupted at step {step:,}, checkpoint written; continue with --resume "
                  f"--run-dir {self.run_dir}", flush=True)
        else:
            print(f"run {status} at step {step:,} in {summary['wall_time_s']:.0f} s: {self.run_dir}", flush=True)
        return summary

    def abandon(self):
        """After an error before ``start``: restore signal handlers and remove the directory if this run made it and
        it is still empty."""
        self._restore_handlers()
        if self.created and self.logger is None:
            with contextlib.suppress(OSError):
                os.rmdir(self.run_dir)


def abandon_active():
    """``Run.abandon`` for the run of this process that has not finished, if any (``common.cli.main`` on errors)."""
    if _active is not None:
        _active.abandon()


def _get_rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def share_signals(runs):
    """One signal handler for several runs in one process (``--num-seeds``): a signal interrupts them all, and
    abandons the measurement they are in. Call after every run's ``start``; ``finish`` them in reverse order,
    so that each puts back the handler it found and the last one the process's own."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum, frame):
        abandon = False
        for run in runs:  # every run hears it before the measurement under way (one or several runs') is abandoned
            try:
                run._on_signal(signum, frame)
            except Interrupted:
                abandon = True
        if abandon:
            raise Interrupted

    for s in SIGNALS:
        signal.signal(s, on_signal)


def combined_summary(summaries):
    """One run's summary, or several runs' (``--num-seeds``) under the worst status: interrupted (requeue), then
    diverged, then completed."""
    if len(summaries) == 1:
        return summaries[0]
    statuses = {s["status"] for s in summaries}
    status = next(s for s in ("interrupted", "diverged", "completed") if s in statuses)
    return {"status": status, "runs": summaries}
