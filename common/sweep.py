"""Sweeps run as Slurm array jobs: a grid as data, one run directory per cell, finished cells skipped, interrupted
ones resumed, and the finished runs collected into one table.

A sweep script describes itself with a ``Sweep`` (its grid, size presets, an ``analyze`` step and the agent's
``train``/``Args``) and hands it to ``main``. Its command line, the same for every sweep script:

    python <sweep>.py --list                          # one line per cell: index, name
    python <sweep>.py --task-id N [--preset cpu]      # run cell N (default: $SLURM_ARRAY_TASK_ID)
    python <sweep>.py --tasks 0-15,32 [--preset cpu]  # run several cells one after another in one process
    python <sweep>.py --seeds-per-task 4 --task-id N  # task N trains a cell's next 4 seeds in lockstep (--num-seeds)
    python <sweep>.py analyze --runs-dir DIR          # read the finished runs, write numbers and figures

Cell N lives in ``<runs-dir>/<grid name>/<cell name>``. Running a cell whose ``summary.json`` says ``completed``
does nothing; one with a ``checkpoint.pt`` continues from it (``train(args)`` with ``resume=True``); a directory
with neither (a run killed before its first checkpoint) is moved aside to ``<cell>.stale-<time>`` and restarted.
With ``--seeds-per-task K`` a task is a pack of up to K cells that differ only in their seed (the last axis,
labelled ``seed<N>``, consecutive seeds): one ``train`` with ``num_seeds`` K writes each seed's own cell directory,
so skipping, resuming and collecting are unchanged; ``--list`` then shows the packs. The exit status follows the
run contract: 0 completed, 3 diverged, 75 interrupted (the sbatch script requeues
the task), 2 usage error.
"""
import argparse
import dataclasses
import itertools
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

from common.errors import (EXIT_COMPLETED, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_STATUS, EXIT_USAGE, UsageError,
                           check)


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
                  all(cell.name.endswith(f"__seed{seed}") for cell, seed in zip(pack, seeds)),
                  f"--seeds-per-task needs consecutive seeds labelled seed<N>; got {[c.name for c in pack]}")
            packs.append(pack)
    return packs


def parse_tasks(spec, num_cells):
    """Slurm-style task ranges ``0-15,32`` -> a sorted list of cell indices, each checked against the grid."""
    indices = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        check(match, f"--tasks {spec!r}: give ranges like 0-15,32")
        indices.update(range(int(match[1]), int(match[2] or match[1]) + 1))
    for i in sorted(indices):
        check(0 <= i < num_cells, f"task {i} is outside the grid's cells 0-{num_cells - 1} (see --list)")
    return sorted(indices)


def parse_set(items, args_cls, varied):
    """``--set total_steps=500`` -> {field: value}, typed like the field's default."""
    fields = {f.name: f for f in dataclasses.fields(args_cls)}
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        check(sep and key in fields, f"--set {item!r}: give FIELD=VALUE with a field of {args_cls.__name__}")
        check(key not in varied | {"run_dir", "resume", "exp_name"},
              f"--set {key}: the sweep sets this field itself (per cell or for its run directory)")
        default = fields[key].default
        try:
            if isinstance(default, bool):
                check(text.lower() in ("true", "false", "1", "0"), f"--set {key}: give true or false")
                value = text.lower() in ("true", "1")
            elif isinstance(default, (int, float)):
                value = type(default)(text)
            else:
                value = None if text.lower() == "none" else text
        except ValueError:
            raise UsageError(f"--set {item!r}: {text!r} is not a {type(default).__name__}") from None
        overrides[key] = value
    return overrides


def read_json(path):
    """The parsed file, or None when it is missing or unreadable (a half-written file never exists: atomic)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cell_args(sweep, grid, cell, options):
    """The cell's Args: defaults < preset < --set < the cell's axis values; its run directory under runs-dir."""
    base = {**sweep.presets[options.preset], **parse_set(options.set, sweep.args_cls, grid.varied_fields())}
    run_dir = os.path.join(options.runs_dir, grid.name, cell.name)
    return sweep.args_cls(**{**base, **cell.overrides, "exp_name": grid.name, "run_dir": run_dir})


def run_cell(sweep, args, cell):
    """Run (or skip, or resume) one cell; returns its exit status."""
    run_dir = args.run_dir
    summary = read_json(os.path.join(run_dir, "summary.json")) or {}
    status, steps = summary.get("status"), summary.get("steps", 0)
    if status == "completed" and steps >= args.total_steps:
        print(f"cell {cell.index} {cell.name}: completed ({steps:,} steps), skipped")
        return EXIT_COMPLETED
    if status == "diverged":
        print(f"cell {cell.index} {cell.name}: diverged at step {steps:,}, skipped (delete {run_dir} to rerun)")
        return EXIT_DIVERGED
    if os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
        print(f"cell {cell.index} {cell.name}: resuming from {run_dir}/checkpoint.pt")
        args = dataclasses.replace(args, resume=True)
    elif os.path.isdir(run_dir) and os.listdir(run_dir):
        stale = f"{run_dir}.stale-{int(time.time())}"
        os.replace(run_dir, stale)
        print(f"cell {cell.index} {cell.name}: no summary and no checkpoint; moved aside to {stale}, restarting")
    else:
        print(f"cell {cell.index} {cell.name}: starting")
    summary = sweep.train(args)
    return EXIT_STATUS[summary["status"]]


def run_pack(sweep, all_args, cells):
    """Run (or skip, or resume) a pack of cells that differ only in their consecutive seeds, in lockstep: one
    ``train`` with ``num_seeds``, whose run directories ``<base>__seed<N>`` are the cells' own."""
    if len(cells) == 1:
        return run_cell(sweep, all_args[0], cells[0])
    summaries = [read_json(os.path.join(args.run_dir, "summary.json")) or {} for args in all_args]
    done = [s.get("status") == "diverged" or (s.get("status") == "completed" and s.get("steps", 0) >= a.total_steps)
            for s, a in zip(summaries, all_args)]
    names = f"cells {cells[0].index}-{cells[-1].index} ({len(cells)} seeds)"
    if all(done):
        print(f"{names}: finished, skipped")
        return EXIT_DIVERGED if any(s.get("status") == "diverged" for s in summaries) else EXIT_COMPLETED
    resume = any(os.path.exists(os.path.join(a.run_dir, "checkpoint.pt")) for a in all_args)
    if not resume:
        for args in all_args:
            if os.path.isdir(args.run_dir) and os.listdir(args.run_dir):
                stale = f"{args.run_dir}.stale-{int(time.time())}"
                os.replace(args.run_dir, stale)
                print(f"{args.run_dir}: no summary and no checkpoint; moved aside to {stale}")
    print(f"{names}: {'resuming from their checkpoint.pt' if resume else 'starting'} in lockstep")
    base = all_args[0].run_dir[:-len(f"__seed{all_args[0].seed}")]
    summary = sweep.train(dataclasses.replace(all_args[0], run_dir=base, num_seeds=len(cells), resume=resume))
    return EXIT_STATUS[summary["status"]]


class StopRequests:
    """Slurm's SIGTERM / SIGUSR1 between cells: start no new cell. While a cell runs, train's own handlers take
    over (and restore these when the cell ends)."""

    def __enter__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGUSR1)}
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def run_tasks(sweep, grid, indices, options):
    """Run tasks (cells, or packs of seeds) one after another. An interruption stops the range with status 75;
    otherwise 3 when any cell diverged, else 0."""
    packs = tasks(grid, options.seeds_per_task)
    all_args = [[cell_args(sweep, grid, cell, options) for cell in packs[i]] for i in indices]  # usage errors first
    codes = []
    with StopRequests() as stop:
        for i, args in zip(indices, all_args):
            if stop.requested:
                print(f"signalled before task {i}: stopping; the requeued task continues from here")
                return EXIT_INTERRUPTED
            codes.append(run_pack(sweep, args, packs[i]))
            if codes[-1] == EXIT_INTERRUPTED:
                return EXIT_INTERRUPTED
    return EXIT_DIVERGED if EXIT_DIVERGED in codes else EXIT_COMPLETED


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


def run(sweep, argv=None):
    """Parse the command line and do what it asks; returns the exit status."""
    options = build_parser(sweep).parse_args(argv)
    try:
        if options.command == "analyze":
            check(os.path.isdir(options.runs_dir), f"--runs-dir {options.runs_dir} is not a directory")
            sweep.analyze(options.runs_dir, options)
            return EXIT_COMPLETED
        grid = sweep.make_grid(options)
        check(options.seeds_per_task >= 1, f"--seeds-per-task must be positive, got {options.seeds_per_task}")
        cells = tasks(grid, options.seeds_per_task)
        if options.list:
            for index, pack in enumerate(cells):
                print(index, " ".join(cell.name for cell in pack))
            return EXIT_COMPLETED
        if options.tasks is not None:
            indices = parse_tasks(options.tasks, len(cells))
        else:
            task_id = options.task_id
            if task_id is None and os.environ.get("SLURM_ARRAY_TASK_ID"):
                task_id = int(os.environ["SLURM_ARRAY_TASK_ID"])
            check(task_id is not None, "say which cells to run: --task-id N, --tasks 0-15, or --list to see them")
            indices = parse_tasks(str(task_id), len(cells))
        return run_tasks(sweep, grid, indices, options)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C outside a run's own handlers (between cells, or while one starts)
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(sweep, argv=None):
    sys.exit(run(sweep, argv))


def collect_runs(runs_dir, exp_name=None):
    """Every completed run under ``runs_dir`` as a pandas table, one row per run: ``run`` (its path relative to
    runs_dir), ``steps``, ``wall_time_s``, the fields of args.json and the final metrics of summary.json (numbers;
    non-finite values as NaN). Also returns ``{reason: count}`` for the runs left out. With ``exp_name``, runs of
    other experiments are left out too."""
    import pandas as pd

    rows, skipped = [], Counter()
    for path, subdirs, files in os.walk(runs_dir):
        if "args.json" not in files and "summary.json" not in files:
            continue
        subdirs.clear()  # a run directory holds no other runs
        args, summary = read_json(os.path.join(path, "args.json")), read_json(os.path.join(path, "summary.json"))
        if args is None:
            skipped["no readable args.json"] += 1
        elif exp_name is not None and args.get("exp_name") != exp_name:
            skipped[f"another experiment (exp_name is not {exp_name})"] += 1
        elif summary is None:
            skipped["no summary.json (running, or killed before it finished)"] += 1
        elif summary.get("status") != "completed":
            skipped[f"status {summary.get('status')}"] += 1
        else:
            rows.append({"run": os.path.relpath(path, runs_dir), "steps": summary.get("steps"),
                         "wall_time_s": summary.get("wall_time_s"), **args, **summary.get("metrics", {})})
    table = pd.DataFrame(rows)
    for column in table.columns:
        if "/" in column:  # metric keys: group/name
            table[column] = pd.to_numeric(table[column], errors="coerce")
    return table, dict(skipped)


def describe_skipped(num_used, skipped):
    """One line: how many runs were used and how many left out, and why."""
    if not skipped:
        return f"{num_used} completed runs, none left out"
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    return f"{num_used} completed runs; left out {sum(skipped.values())}: {reasons}"
