"""Sweeps run as Slurm array jobs: a grid as data, one run directory per cell, finished cells skipped, interrupted
ones resumed, and the finished runs collected into one table.

A sweep script describes itself with a ``Sweep`` (its grid, size presets, an ``analyze`` step and the agent's
``train``/``Args``) and hands it to ``main``. Its command line, the same for every sweep script:

    python <sweep>.py --list                          # one line per cell: index, name
    python <sweep>.py --task-id N [--preset cpu]      # run cell N (default: $SLURM_ARRAY_TASK_ID)
    python <sweep>.py --tasks 0-15,32 [--preset cpu]  # run several cells one after another in one process
    python <sweep>.py --seeds-per-task 4 --task-id N  # task N trains a cell's next 4 seeds in lockstep (--num-seeds)
    python <sweep>.py analyze --runs-dir DIR          # read the finished runs, write numbers and figures

Cell N lives in ``<runs-dir>/<grid name>/<cell name>``. A task first locks its cells' directories (another
process's cell: exit 73 at the end, the cell left to it). A cell whose ``summary.json`` says ``completed`` (or
``diverged``) is never rerun or moved aside, whatever files beside it were deleted; one with a ``checkpoint.pt``
continues from it (``train(args)`` with ``resume=True``); a directory with neither (a run killed before its first
checkpoint) is moved aside to ``<cell>.stale-<time>`` (``common.analysis.results`` never reads it) and restarted.
With ``--seeds-per-task K`` a task is a pack of up to K cells that differ only in their seed (the last axis,
labelled ``seed<N>``, consecutive seeds): each cell continues from where it is, and consecutive cells in the same
state (fresh, or resuming from the same step) train in one ``train`` with ``num_seeds``, each seed in its own
cell directory; ``--list`` then shows the packs. The exit status follows the run contract: 0 completed,
3 diverged, 75 interrupted (the sbatch script requeues the task), 73 a cell held by another process, 2 usage error.
"""
import argparse
import contextlib
import dataclasses
import io
import itertools
import os
import re
import shlex
import shutil
import sys
import time
import typing
from dataclasses import dataclass
from typing import Callable, Optional

from common.analysis import results, validity
from common.errors import (EXIT_COMPLETED, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_STATUS, EXIT_USAGE,
                           UsageError, check)
from common.runtime import early_signals, run as run_module
from common.runtime.rundir import split_seed_run_dir
from common.science.probe import PROBES

# What the sweeps of dqn_classification_mdp.py (falsification.py, interventions_sweep.py) share: their --datasets,
# their test preset and the flags of their analyses (add_analysis_arguments).
DATASETS = {
    "paper": ("cifar10", "mnist"),  # Sec 3.2, Fig 3 and Fig 8-13 use CIFAR-10 and MNIST observations
    "offline": ("mnist", "fashion_mnist"),  # without internet CIFAR-10 cannot be fetched: a deviation
}
TEST_PRESET = {  # seconds per cell, for the tests only: its 5-step probe fits nothing (unfit for results)
    "cuda": False, "num_images": 1_000, "width": 16, "total_steps": 40, "learning_starts": 32, "buffer_size": 1_000,
    "target_period": 10, "log_every": 10, "probe_every": 20, "probe_steps": 5, "probe_targets": 2, "probe_inputs": 64,
    "probe_batch_size": 16,
}


def add_analysis_arguments(parser):
    """The flags of both classification sweeps: the paper preset's datasets, and which probe's runs to analyse."""
    parser.add_argument("--datasets", choices=tuple(DATASETS), default="paper",
                        help="observation spaces of the paper preset: paper = CIFAR-10 and MNIST (needs internet "
                             "once), offline = MNIST and Fashion-MNIST")
    parser.add_argument("--probe", choices=tuple(PROBES), default="paper",
                        help="the probe analysed: paper = the agent's own optimizer and loss (Sec 3.1), reference = "
                             "one optimizer, rate and loss for every arm (the agent's --ref-probe: the runs must "
                             "record it)")
    parser.add_argument("--min-initial-fit", type=float, default=validity.MIN_INITIAL_FIT,
                        help="analyse only runs whose fresh network fits at least this fraction of the probe's "
                             "variance, P(theta_0) / b (see common.analysis.validity.MIN_INITIAL_FIT; a negative "
                             "value keeps every run with finite fits)")


def values(field_name, items, label=str):
    """An axis whose labels each set one Args field: ``values("arch", ["mlp", "cnn"])``."""
    return {label(v): {field_name: v} for v in items}


@dataclass(frozen=True)
class Cell:
    index: int
    name: str
    """the axis labels joined by "__": the run directory's name"""
    labels: dict
    """axis name -> label"""
    overrides: dict
    """Args field -> value"""


@dataclass
class Grid:
    """Named axes, each a dict ``{label: {Args field: value}}``; the cells are their product, the last axis varying
    fastest, less every cell that matches all the ``{axis: label}`` pairs of one entry of ``exclude``."""

    name: str
    axes: dict
    exclude: tuple = ()

    def __post_init__(self):
        for rule in self.exclude:
            for axis, label in rule.items():
                assert axis in self.axes and label in self.axes[axis], f"exclusion {rule} names no axis value"

    def cells(self):
        cells = []
        for labels in itertools.product(*self.axes.values()):
            labels = dict(zip(self.axes, labels))
            if any(all(labels[a] == v for a, v in rule.items()) for rule in self.exclude):
                continue
            overrides = {}
            for axis, label in labels.items():
                overrides.update(self.axes[axis][label])
            cells.append(Cell(len(cells), "__".join(labels.values()), labels, overrides))
        return cells

    def varied_fields(self):
        return {f for axis in self.axes.values() for overrides in axis.values() for f in overrides}


@dataclass
class Sweep:
    """What a sweep script gives ``main``."""

    make_grid: Callable
    """options (the parsed command line) -> Grid; lets a flag such as --datasets change the grid"""
    presets: dict
    """preset name -> {Args field: value}, applied before the cell's own values; the first is the default"""
    analyze: Callable
    """(runs_dir, options) -> None: read the finished runs, write numbers and figures into runs_dir"""
    train: Callable
    """the agent's train(args) -> summary"""
    args_cls: type
    """the agent's Args dataclass"""
    add_arguments: Optional[Callable] = None
    """parser -> None: the sweep's own flags (used by make_grid or analyze)"""
    description: str = ""


def tasks(grid, seeds_per_task=1):
    """The grid's cells in tasks: one cell each, or packs of up to ``seeds_per_task`` cells that differ only in their
    consecutive seeds (the seed axis must be the last, labelled ``seed<N>``: the run directories of
    ``--num-seeds``)."""
    cells = grid.cells()
    if seeds_per_task == 1:
        return [[cell] for cell in cells]
    check(list(grid.axes)[-1:] == ["seed"], "--seeds-per-task needs a grid whose last axis is the seed")
    groups = {}
    for cell in cells:
        groups.setdefault(tuple(v for k, v in cell.labels.items() if k != "seed"), []).append(cell)
    packs = []
    for group in groups.values():
        for i in range(0, len(group), seeds_per_task):
            pack = group[i:i + seeds_per_task]
            seeds = [cell.overrides["seed"] for cell in pack]
            check(seeds == list(range(seeds[0], seeds[0] + len(pack))) and
                  all(split_seed_run_dir(cell.name)[1] == seed for cell, seed in zip(pack, seeds)),
                  f"--seeds-per-task needs consecutive seeds labelled seed<N>; got {[c.name for c in pack]}")
            packs.append(pack)
    return packs


def parse_tasks(spec, num_cells):
    """Slurm-style task ranges ``0-15,32`` -> a sorted list of cell indices, each checked against the grid."""
    indices = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        check(match, f"--tasks {spec!r}: give ranges like 0-15,32")
        first, last = int(match[1]), int(match[2] or match[1])
        check(first <= last, f"--tasks {spec!r}: the range {first}-{last} is reversed; give {last}-{first}")
        indices.update(range(first, last + 1))
    for i in sorted(indices):
        check(0 <= i < num_cells, f"task {i} is outside the grid's cells 0-{num_cells - 1} (see --list)")
    return sorted(indices)


# Fields the sweep sets itself: per cell, per pack of seeds (--seeds-per-task), or for the cell's run directory.
SWEEP_OWNS = ("run_dir", "resume", "exp_name", "seed", "num_seeds")


def parse_set(items, args_cls, varied):
    """``--set total_steps=500`` -> {field: value}, parsed by tyro as the agent's own command line parses it
    (``--set cuda=False``, ``--set hidden_sizes="256 256"``); a value tyro refuses is a one-line error naming the
    field's type."""
    fields = {f.name for f in dataclasses.fields(args_cls)}
    types = typing.get_type_hints(args_cls)
    parsed = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        check(sep and key in fields, f"--set {item!r}: give FIELD=VALUE with a field of {args_cls.__name__}")
        check(key not in set(varied) | set(SWEEP_OWNS),
              f"--set {key}: the sweep sets this field itself (per cell, per pack of seeds, or for its run "
              f"directory); use the grid's axes, --seeds-per-task or --runs-dir")
        parsed[key] = parse_value(args_cls, key, types[key], text)
    return parsed


def parse_value(args_cls, key, field_type, text):
    """One Args field's value from its text, as tyro parses ``--<field> <text>`` (a tuple's items are separate
    words); ``UsageError`` naming the field's type when tyro refuses it."""
    import tyro

    sequence = typing.get_origin(field_type) in (tuple, list)
    if field_type is bool and text.lower() in ("true", "false"):
        text = text.capitalize()  # tyro spells them True and False
    argv = [f"--{key.replace('_', '-')}", *(shlex.split(text) if sequence else [text])]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return getattr(tyro.cli(args_cls, args=argv, console_outputs=False,
                                    config=(tyro.conf.FlagConversionOff,)), key)
    except SystemExit:  # tyro's way of refusing a value, after its own report (not shown: it names no --set)
        raise UsageError(f"--set {key}={text}: not a value of {args_cls.__name__}.{key}, "
                         f"{type_name(field_type)}") from None


def type_name(field_type):
    """An Args field's type as a user reads it: ``int``, ``Optional[str]``, ``Tuple[int, ...]``."""
    return field_type.__name__ if isinstance(field_type, type) else str(field_type).replace("typing.", "")


def read_summary(run_dir):
    """A cell's summary.json, or {} when it has none or it is unreadable (then the cell counts as not finished)."""
    try:
        summary = results.read_json(os.path.join(run_dir, "summary.json"))
    except results.Unreadable:
        return {}
    return summary if isinstance(summary, dict) else {}


def cell_args(sweep, grid, cell, options, overrides=None):
    """The cell's Args: defaults < preset < --set (``overrides``: ``parse_set``'s, parsed here when not given) < the
    cell's axis values; its run directory under runs-dir."""
    if overrides is None:
        overrides = parse_set(options.set, sweep.args_cls, grid.varied_fields())
    base = {**sweep.presets[options.preset], **overrides}
    run_dir = os.path.join(options.runs_dir, grid.name, cell.name)
    return sweep.args_cls(**{**base, **cell.overrides, "exp_name": grid.name, "run_dir": run_dir})


def cell_state(args):
    """What a cell's directory holds: "completed" or "diverged" (never moved aside or retrained, whatever files
    beside summary.json were deleted), ("resume", checkpoint step), or "fresh" (nothing to continue). A completed
    run with a checkpoint resumes where ``args`` raise the total its summary.json names (``raised_total``)."""
    summary = read_summary(args.run_dir)
    has_checkpoint = os.path.exists(os.path.join(args.run_dir, "checkpoint.pt"))
    if summary.get("status") == "diverged":
        return "diverged"
    if summary.get("status") == "completed" and not (has_checkpoint and raised_total(summary, args)):
        return "completed"
    return ("resume", run_module.checkpoint_step(args.run_dir)) if has_checkpoint else "fresh"


def move_aside(run_dir):
    """Move a cell directory that holds a run with nothing to continue (killed before its first checkpoint) to
    ``<cell>.stale-<time>`` (which ``common.analysis.results`` never reads), and lock its fresh directory instead."""
    stale, n = f"{run_dir}.stale-{int(time.time())}", 1
    while os.path.exists(stale):
        n += 1
        stale = f"{run_dir}.stale-{int(time.time())}_{n}"
    with run_module.deferred_signals():
        os.replace(run_dir, stale)
        run_module.unlock(run_dir)
        os.makedirs(run_dir)
        run_module.lock(run_dir)
    return stale


def describe(cells):
    first = cells[0]
    if len(cells) == 1:
        return f"cell {first.index} {first.name}"
    return f"cells {first.index}-{cells[-1].index} ({len(cells)} seeds from {first.name})"


def run_group(sweep, all_args, cells, state):
    """Train cells in one state (consecutive seeds, all fresh or all resuming from one step) in one ``train``:
    ``num_seeds`` = their number, whose run directories ``<base>__seed<N>`` are the cells' own."""
    resume = state != "fresh"
    for args in all_args:
        if not resume and run_module.holds_a_run(args.run_dir):
            print(f"{args.run_dir}: no summary and no checkpoint; moved aside to {move_aside(args.run_dir)}")
    step = f" (step {state[1]:,})" if resume and state[1] is not None else ""
    print(f"{describe(cells)}: " + (f"resuming from checkpoint.pt{step}" if resume else "starting") +
          (" in lockstep" if len(cells) > 1 else ""), flush=True)
    args = dataclasses.replace(all_args[0], resume=resume)
    if len(cells) > 1:
        base = split_seed_run_dir(args.run_dir)[0]
        args = dataclasses.replace(args, run_dir=base, num_seeds=len(cells))
    return EXIT_STATUS[sweep.train(args)["status"]]


def raised_total(summary, args):
    """``(field, value)`` where ``args`` asks a completed run to train further than it did (a raised --total-steps,
    say: the field its summary.json names), else None."""
    total = run_module.trained_total(summary)
    if total is None or getattr(args, total[0]) <= total[1]:
        return None
    return total[0], getattr(args, total[0])


def finished_message(state, args):
    summary = read_summary(args.run_dir)
    steps = summary.get("steps", 0)
    if state == "diverged":
        return f"diverged at step {steps:,}, skipped (delete {args.run_dir} to rerun it)"
    raised = raised_total(summary, args)  # but no checkpoint to go on from
    return f"completed ({steps:,} steps), skipped" + (f" (no checkpoint.pt to train on to {raised[0]} "
                                                       f"{raised[1]:,}: delete {args.run_dir} to rerun it)"
                                                       if raised else "")


def run_pack(sweep, all_args, cells):
    """Run a task: one cell, or a pack of cells that differ only in their consecutive seeds. Every cell's directory
    is locked first (``Locked`` when another process holds one). Each cell continues from where it is: completed
    and diverged cells are skipped, the others train in groups of consecutive cells in the same state (fresh, or
    resuming from the same step), in lockstep."""
    with contextlib.ExitStack() as held:
        for args in all_args:
            os.makedirs(args.run_dir, exist_ok=True)
            held.enter_context(run_module.locked(args.run_dir))
        states = [cell_state(args) for args in all_args]
        codes = []
        for state, group in itertools.groupby(range(len(cells)), key=lambda k: states[k]):
            group = list(group)
            if state in ("completed", "diverged"):
                for k in group:
                    print(f"{describe([cells[k]])}: {finished_message(state, all_args[k])}")
                codes.append(EXIT_DIVERGED if state == "diverged" else EXIT_COMPLETED)
                continue
            codes.append(run_group(sweep, [all_args[k] for k in group], [cells[k] for k in group], state))
            if codes[-1] == EXIT_INTERRUPTED:
                return EXIT_INTERRUPTED
    return EXIT_DIVERGED if EXIT_DIVERGED in codes else EXIT_COMPLETED


def run_tasks(sweep, grid, indices, options):
    """Run tasks (cells, or packs of seeds) one after another. A signal stops the range with status 75. A task
    whose directory another process holds is left to it (status 73 at the end, not requeued); otherwise 3 when
    any cell diverged, else 0."""
    packs = tasks(grid, options.seeds_per_task)
    overrides = parse_set(options.set, sweep.args_cls, grid.varied_fields())  # usage errors first
    all_args = [[cell_args(sweep, grid, cell, options, overrides) for cell in packs[i]] for i in indices]
    codes = []
    for i, args in zip(indices, all_args):
        if run_module.signal_received():
            print(f"{run_module.signal_received()} before task {i}: stopping; the same command continues from here")
            return EXIT_INTERRUPTED
        try:
            codes.append(run_pack(sweep, args, packs[i]))
        except run_module.Locked as e:
            print(f"task {i}: {e}", file=sys.stderr)
            codes.append(EXIT_LOCKED)
        if codes[-1] == EXIT_INTERRUPTED:
            return EXIT_INTERRUPTED
    return next((code for code in (EXIT_LOCKED, EXIT_DIVERGED) if code in codes), EXIT_COMPLETED)


def build_parser(sweep):
    parser = argparse.ArgumentParser(description=sweep.description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("run", "analyze"), default="run",
                        help="run cells (default) or analyze the finished runs under --runs-dir")
    parser.add_argument("--list", action="store_true", help="print one line per cell: its index and name")
    parser.add_argument("--task-id", type=int, default=None,
                        help="the cell to run (default: $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--tasks", default=None, help="cells to run in this process, e.g. 0-15,32")
    parser.add_argument("--runs-dir", default="runs", help="cells run in <runs-dir>/<sweep>/<cell name>")
    parser.add_argument("--preset", choices=tuple(sweep.presets), default=next(iter(sweep.presets)),
                        help="run sizes (Args values) for every cell")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one Args field for every cell, e.g. --set total_steps=20000 (repeatable)")
    parser.add_argument("--seeds-per-task", type=int, default=1, metavar="K",
                        help="train up to K consecutive seeds of a cell in one process, in lockstep (the agent's "
                             "--num-seeds); task N is then the N-th pack (--list shows them)")
    if sweep.add_arguments:
        sweep.add_arguments(parser)
    return parser


def task_indices(options, num_tasks):
    """The tasks to run: ``--tasks``, or ``--task-id``, or ``$SLURM_ARRAY_TASK_ID``. ``--tasks`` with either of the
    others is refused: passed to an array, every task would run the same cells."""
    array_id = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
    check(not array_id or array_id.isdigit(), f"SLURM_ARRAY_TASK_ID={array_id!r} is not a task number: submit an "
                                              f"array (sbatch --array=0-N) or unset it")
    if options.tasks is not None:
        check(options.task_id is None, "--tasks and --task-id: give one of them")
        check(not array_id, f"--tasks in an array task (SLURM_ARRAY_TASK_ID={array_id}) would run the same cells in "
                            f"every task: drop --tasks (the array index picks the task), or unset SLURM_ARRAY_TASK_ID")
        return parse_tasks(options.tasks, num_tasks)
    check(options.task_id is None or not array_id or int(array_id) == options.task_id,
          f"--task-id {options.task_id} in array task {array_id}: drop --task-id (the array index picks the task)")
    task_id = options.task_id if options.task_id is not None else int(array_id) if array_id else None
    check(task_id is not None, "say which cells to run: --task-id N, --tasks 0-15, or --list to see them")
    return parse_tasks(str(task_id), num_tasks)


def run(sweep, argv=None):
    """Parse the command line and do what it asks; returns the exit status. A signal from the first line on
    stops it with 75; the same command then continues."""
    held = early_signals.hold()  # the script's install() has listened while it imported
    with run_module.listening():
        hint, run_module.RESUME_HINT = run_module.RESUME_HINT, "the same sweep command (it resumes this cell)"
        try:
            early_signals.release(held)
            options = build_parser(sweep).parse_args(argv)
            if options.command == "analyze":
                check(os.path.isdir(options.runs_dir), f"--runs-dir {options.runs_dir} is not a directory")
                started = time.time()
                sweep.analyze(options.runs_dir, options)
                remove_earlier_protocols(options.runs_dir, started)
                return EXIT_COMPLETED
            grid = sweep.make_grid(options)
            check(options.seeds_per_task >= 1, f"--seeds-per-task must be positive, got {options.seeds_per_task}")
            packs = tasks(grid, options.seeds_per_task)
            if options.list:
                for index, pack in enumerate(packs):
                    print(index, " ".join(cell.name for cell in pack))
                return EXIT_COMPLETED
            return run_tasks(sweep, grid, task_indices(options, len(packs)), options)
        except UsageError as e:
            run_module.abandon_unfinished()
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except run_module.Interrupted as e:
            run_module.abandon_unfinished()
            print(f"{e}: stopped; run the same command again to continue", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            run_module.RESUME_HINT = hint


def remove_earlier_protocols(out_dir, since):
    """Remove the ``protocol-<id>`` folders (``common.analysis.validity``) that an earlier analysis wrote into ``out_dir`` and
    the one that ended now did not (their ``protocol_<id>.json`` is older than ``since``): results of runs that are
    gone or now pooled otherwise would stand beside the new ones. A folder without that file is not ours."""
    for name in sorted(os.listdir(out_dir)):
        match, path = re.fullmatch(r"protocol-(\w+)", name), os.path.join(out_dir, name)
        fields = match and os.path.join(path, f"protocol_{match[1]}.json")
        if fields and os.path.isfile(fields) and os.path.getmtime(fields) < since:
            shutil.rmtree(path)
            print(f"removed {path}: an earlier analysis's protocol, not among the runs now")


def main(sweep, argv=None):
    sys.exit(run(sweep, argv))
