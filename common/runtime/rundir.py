"""A run directory's name in a group of seeds, and its files read back: a file that is missing, truncated or corrupt
raises ``Unreadable`` with a one-line reason (the run machinery turns it into a usage error, ``common.analysis.results`` into
a skipped run)."""
import json
import os

SEED_SUFFIX = "__seed"


def seed_run_dir(run_dir, seed):
    """Seed ``seed``'s directory in a group of seeds named ``run_dir`` (``--num-seeds``, a sweep's seed cells)."""
    return f"{run_dir}{SEED_SUFFIX}{seed}"


def split_seed_run_dir(run_dir):
    """``(D, seed)`` for ``seed_run_dir(D, seed)``; ``(run_dir, None)`` for a directory not named for a seed."""
    head, sep, tail = run_dir.rpartition(SEED_SUFFIX)
    return (head, int(tail)) if sep and tail.isdigit() else (run_dir, None)


class Unreadable(Exception):
    """A run-directory file that is missing, truncated or corrupt; the message is a one-line reason."""


def read_json(path):
    """The parsed JSON file; ``Unreadable`` when it is missing or half-written."""
    name = os.path.basename(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise Unreadable(f"no {name}") from None
    except (OSError, ValueError) as e:
        raise Unreadable(f"{name} is truncated or corrupt ({type(e).__name__})") from None


def read_metrics(path):
    """The rows of a metrics.jsonl. A torn last line (a write cut short by a kill) is dropped; a corrupt line
    before it makes the file ``Unreadable``."""
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise Unreadable(f"no {os.path.basename(path)}" if isinstance(e, FileNotFoundError) else
                         f"{os.path.basename(path)} is unreadable ({e.strerror})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number == len(lines):  # no newline after it: the last write did not finish
                break
            raise Unreadable(f"{os.path.basename(path)} line {number} is corrupt") from None
    return rows


def read_torch(path):
    """A file written by ``torch.save`` (loaded on the CPU); ``Unreadable`` when missing, truncated or corrupt."""
    import torch

    name = os.path.basename(path)
    if not os.path.exists(path):
        raise Unreadable(f"no {name}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated zip, a pickle error: both mean the file is unusable
        raise Unreadable(f"{name} is truncated or corrupt ({type(e).__name__})") from None
