"""The one reader of run directories: runs into a pandas table, and every directory it leaves out with its reason.

    from common.analysis.results import read_runs
    runs = read_runs("runs/falsification")                     # completed runs only
    print(runs.report())                                        # what was read and what was skipped, and why
    runs.table["probe/plasticity_loss"]                        # one row per run
    curves = runs.load("probe_curves.pt")                       # {run_dir: object}; unreadable ones become skips
    curves, failed = read_each(run_dirs, "probe_curves.pt")     # any run directories; failed: {run_dir: reason}

A file that is missing, truncated or corrupt never raises: the run is skipped with a one-line reason. A directory
that a sweep moved aside (``<cell>.stale-<time>``, see ``common.analysis.sweep``) is a stale copy and never read, and so is
any copied, moved or renamed run directory (``X.bak``, ``X.stale``): its summary.json names the directory the run
was written in, and a directory of another name is skipped as a copy.
"""
import os
import re

from common.runtime.rundir import Unreadable, read_json, read_metrics, read_torch

STATUSES = ("completed", "diverged", "interrupted")
STALE = re.compile(r"\.stale-\d+(_\d+)?$")  # the name common.analysis.sweep gives a directory it moves aside


def is_stale(path):
    return bool(STALE.search(os.path.basename(os.path.normpath(path))))


def read_file(path):
    """Any run-directory file by its kind: ``.json``, ``.jsonl`` (metrics rows) or a torch file."""
    if path.endswith(".jsonl"):
        return read_metrics(path)
    if path.endswith(".json"):
        return read_json(path)
    return read_torch(path)


def read_each(run_dirs, name):
    """``({run_dir: contents}, {run_dir: reason})``: the file ``name`` of each run directory (``read_file``), and
    a one-line reason for each whose file is missing or unreadable."""
    loaded, failed = {}, {}
    for run_dir in run_dirs:
        try:
            loaded[run_dir] = read_file(os.path.join(run_dir, name))
        except Unreadable as e:
            failed[run_dir] = str(e)
    return loaded, failed


def _numeric(value):
    """Final metrics hold numbers, and non-finite floats as the strings "nan", "inf", "-inf"."""
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return value


def _same_dir(written_for, run_dir):
    """The directory a run was written in is ``run_dir``: the same name (the runs' tree may have moved whole),
    or the same directory by another path (a symbolic link)."""
    name = lambda path: os.path.basename(os.path.normpath(path))  # noqa: E731
    return name(written_for) == name(run_dir) or os.path.realpath(written_for) == os.path.realpath(run_dir)


def read_run(run_dir):
    """One run directory as a table row; ``Unreadable`` when its args.json or summary.json cannot be read."""
    args, summary = read_json(os.path.join(run_dir, "args.json")), None
    try:
        summary = read_json(os.path.join(run_dir, "summary.json"))
    except Unreadable as e:
        if str(e) == "no summary.json":
            raise Unreadable("no summary.json (running, or killed before its first summary)") from None
        raise
    if not isinstance(args, dict) or not isinstance(summary, dict) or summary.get("status") not in STATUSES:
        raise Unreadable("args.json or summary.json is not a run's (no status)")
    written_for = summary.get("run_dir")  # the directory the run wrote (summaries of older code lack it)
    if isinstance(written_for, str) and not _same_dir(written_for, run_dir):
        raise Unreadable(f"a copy or a moved run: its summary.json was written in "
                         f"{os.path.basename(os.path.normpath(written_for))}, not here")
    row = {"run_dir": run_dir, "status": summary["status"], "steps": summary.get("steps"),
           "wall_time_s": summary.get("wall_time_s")}
    row.update({f"args.{k}": v for k, v in args.items()})
    # the length the run trained to: a resume may raise it above args.json's (which keeps the original arguments)
    total = summary.get("total")
    if isinstance(total, dict):
        row.update({f"args.{k}": v for k, v in total.items() if k in args})
    metrics, probes = summary.get("metrics") or {}, summary.get("probes") or []
    if not isinstance(metrics, dict) or not isinstance(probes, list) or not all(isinstance(p, dict) for p in probes):
        raise Unreadable("summary.json is corrupt (its metrics or probes are not a run's)")
    row.update({k: _numeric(v) for k, v in metrics.items()})
    row["probes"] = probes
    return row


def find_run_dirs(runs_dir):
    """Every directory under ``runs_dir`` holding args.json or summary.json (a run holds no other runs), sorted."""
    found = []
    for path, subdirs, files in os.walk(runs_dir):
        subdirs.sort()
        if "args.json" in files or "summary.json" in files or is_stale(path):
            found.append(path)
            subdirs.clear()
    return found


class RunTable:
    """``table``: a pandas DataFrame, one row per run read (columns ``run_dir``, ``status``, ``steps``,
    ``wall_time_s``, ``args.<field>`` for every args.json field, every final metric of summary.json under its own
    key, ``probes``: the run's per-probe rows). ``skipped``: ``(run_dir, reason)`` for every directory not read."""

    def __init__(self, runs_dir, rows, skipped, include):
        import pandas as pd

        self.runs_dir, self.include, self.skipped = runs_dir, tuple(include), list(skipped)
        self.table = pd.DataFrame(rows, columns=None if rows else ["run_dir", "status", "steps", "wall_time_s",
                                                                    "probes"])
        for column in self.table.columns:
            if "/" in column:  # metric keys: group/name
                self.table[column] = pd.to_numeric(self.table[column], errors="coerce")

    def __len__(self):
        return len(self.table)

    def skip(self, run_dirs, reason):
        """Drop these runs from the table, each as skipped with ``reason`` (``reason`` may be a {run_dir: reason})."""
        run_dirs = set(run_dirs)
        if not run_dirs:
            return
        self.skipped += [(d, reason[d] if isinstance(reason, dict) else reason) for d in sorted(run_dirs)]
        self.table = self.table[~self.table["run_dir"].isin(run_dirs)].reset_index(drop=True)

    def load(self, name):
        """``{run_dir: contents}`` of the file ``name`` in every run of the table (json, jsonl or torch); runs whose
        file is missing or unreadable are moved from the table to ``skipped``."""
        loaded, failed = read_each(self.table["run_dir"], name)
        self.skip(failed, failed)
        return loaded

    def reasons(self):
        """{reason: number of runs skipped for it}."""
        counts = {}
        for _, reason in self.skipped:
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def report(self):
        """One paragraph: how many runs were read, and how many were skipped for each reason."""
        read = f"{len(self.table)} {'/'.join(self.include)} runs read under {self.runs_dir}"
        if not self.skipped:
            return read + ", none skipped"
        reasons = "; ".join(f"{n} {reason}" for reason, n in sorted(self.reasons().items(), key=lambda x: -x[1]))
        return f"{read}; skipped {len(self.skipped)}: {reasons}"


def read_runs(runs_dir, *, include=("completed",), exp_name=None):
    """Every run under ``runs_dir`` whose status is in ``include`` as a ``RunTable``. With ``exp_name``, runs of
    other experiments are skipped too."""
    bad = set(include) - set(STATUSES)
    if bad:
        raise ValueError(f"include: {sorted(bad)} is not a run status; use some of {STATUSES}")
    rows, skipped = [], []
    for run_dir in find_run_dirs(runs_dir):
        if is_stale(run_dir):
            skipped.append((run_dir, "a stale copy the sweep moved aside"))
            continue
        try:
            row = read_run(run_dir)
        except Unreadable as e:
            skipped.append((run_dir, str(e)))
            continue
        if exp_name is not None and row.get("args.exp_name") != exp_name:
            skipped.append((run_dir, f"another experiment (exp_name is not {exp_name})"))
        elif row["status"] not in include:
            skipped.append((run_dir, f"status {row['status']}"))
        else:
            rows.append(row)
    return RunTable(runs_dir, rows, skipped, include)
