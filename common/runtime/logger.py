"""The run-directory contract (README.md, "Run directory"): args.json, TensorBoard events, metrics.jsonl,
summary.json, figures/.

Values may be tensors: they are converted only when ``log`` is called, so callers log every N steps and the
inner loop never syncs with the device.
"""
import dataclasses
import json
import math
import os
import time

import torch

from common.errors import UsageError
from common.runtime.rundir import Unreadable, read_metrics


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` so that a reader never sees a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj, path):
    """``torch.save`` through a temporary file and a rename: a preempted job leaves the old checkpoint intact."""
    os.replace(torch_save_staged(obj, path), path)


def torch_save_staged(obj, path):
    """``torch.save`` to a temporary file beside ``path``, on disk; ``os.replace(tmp, path)`` commits it."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: figures are files, drawn without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_python(rows):
    """``rows`` (dicts) with every tensor value as Python: a one-element tensor as a number of its kind (float, int,
    bool), all of them read in one host sync; a larger one as a list."""
    scalars = [v for row in rows for v in row.values() if isinstance(v, torch.Tensor) and v.numel() == 1]
    values = iter(torch.stack([t.detach().reshape(()).to(torch.float64) for t in scalars]).tolist() if scalars else [])

    def convert(v):
        if not isinstance(v, torch.Tensor):
            return v
        if v.numel() != 1:
            return v.tolist()
        value = next(values)
        return value if v.is_floating_point() else bool(value) if v.dtype == torch.bool else int(value)

    return [{key: convert(v) for key, v in row.items()} for row in rows]


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf; keep them readable
    return value


def is_finite(value):
    """False for a non-finite float (or such a string, as metrics.jsonl stores it); True for everything else."""
    if isinstance(value, str):
        return value not in ("nan", "inf", "-inf")
    return not isinstance(value, float) or math.isfinite(value)


def default_run_name(exp_name, seed):
    """CleanRL's run name: ``<exp_name>__<seed>__<unix time>``."""
    return f"{exp_name}__{seed}__{int(time.time())}"


class RunLogger:
    """Owns one run directory: ``RunLogger(run_dir, args)`` then ``log(step, {...})`` and ``finish(...)``.

    ``resume_step``: continue a run whose checkpoint is at that step, and ``resume_rows``: how many rows of
    metrics.jsonl that checkpoint covers (None: every row up to its step). args.json keeps the original arguments,
    and the rows logged after the checkpoint (by a segment that was killed) are dropped from metrics.jsonl and
    TensorBoard, so the resumed segment does not log them twice. Counting rows rather than steps also drops a row
    at the checkpoint's own step that the killed segment logged after it (a measurement it redid).
    """

    def __init__(self, run_dir, args, track=False, project="plasticity", resume_step=None, resume_rows=None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.start_time = time.time()
        os.makedirs(os.path.join(run_dir, "figures"), exist_ok=True)
        args_dict = dataclasses.asdict(args) if dataclasses.is_dataclass(args) else dict(args)
        metrics_path = os.path.join(run_dir, "metrics.jsonl")
        kept = []
        if resume_step is None:
            atomic_write_text(os.path.join(run_dir, "args.json"), json.dumps(args_dict, indent=2, default=str))
            open(metrics_path, "w").close()
        else:  # a torn last row (the killed segment's last write) is dropped with the others after the checkpoint
            try:
                rows = read_metrics(metrics_path)
                kept = [row for row in rows[:resume_rows] if row["step"] <= resume_step]
            except (Unreadable, KeyError, TypeError) as e:
                raise UsageError(f"{metrics_path} cannot be resumed ({e or 'a row without a step'}): start afresh "
                                 f"with another --run-dir") from None
            atomic_write_text(metrics_path, "".join(json.dumps(row) + "\n" for row in kept))
        self.rows = len(kept)  # rows in metrics.jsonl: what a checkpoint written now covers
        # TensorBoard can only drop whole steps: everything from the checkpoint's step on, whose kept rows are
        # then written again
        self.writer = SummaryWriter(run_dir, purge_step=resume_step)
        if not resume_step:
            self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" +
                                 "\n".join(f"|{k}|{v}|" for k, v in args_dict.items()))
        for row in kept:
            if row["step"] == resume_step:
                self._add_scalars(row)
        self.metrics_file = open(metrics_path, "a")
        self.wandb = None
        if track:  # optional, as in CleanRL; imported lazily so that wandb is not a dependency
            import wandb

            self.wandb = wandb.init(project=project, config=args_dict, name=os.path.basename(run_dir),
                                    sync_tensorboard=True, resume="allow")

    def log(self, step, metrics):
        """Write scalar metrics (floats or one-element tensors) at ``step`` to TensorBoard and metrics.jsonl.

        Returns the row with Python numbers (non-finite floats stay floats; only the file spells them as strings).
        """
        row = {"step": int(step), **to_python([metrics])[0]}
        self._add_scalars(row)
        self.metrics_file.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        self.metrics_file.flush()
        self.rows += 1
        return row

    def _add_scalars(self, row):
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["step"])

    def figure_path(self, name):
        return os.path.join(self.run_dir, "figures", name)

    def save_figure(self, fig, name):
        """Save a matplotlib figure to ``figures/<name>`` and close it."""
        plt = pyplot()
        path = self.figure_path(name)
        tmp = f"{path}.tmp{os.getpid()}"
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=os.path.splitext(name)[1][1:] or "png")
        os.replace(tmp, path)
        plt.close(fig)
        return path

    def finish(self, status, steps, metrics=None, wall_time_s=None, **extra):
        """Write summary.json atomically: status (completed/diverged/interrupted), steps, final metrics, wall time."""
        assert status in ("completed", "diverged", "interrupted"), status
        summary = {"status": status, "steps": int(steps),
                   "wall_time_s": time.time() - self.start_time if wall_time_s is None else wall_time_s,
                   "metrics": {k: _jsonable(v) for k, v in to_python([metrics or {}])[0].items()}, **extra}
        atomic_write_text(os.path.join(self.run_dir, "summary.json"), json.dumps(summary, indent=2))
        self.writer.close()
        self.metrics_file.close()
        if self.wandb is not None:
            self.wandb.finish()
        return summary
