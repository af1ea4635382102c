"""common/analysis/results.py: the one reader of run directories, against real run directories and real truncated files."""
import json
import os
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from common.analysis import results
from common.runtime.run import Run


@dataclass
class Args:
    exp_name: str = "toy"
    seed: int = 1
    run_dir: Optional[str] = None
    resume: bool = False
    track: bool = False
    total_steps: int = 4


def make_run(run_dir, status="completed", seed=1, exp_name="toy", steps=4):
    """A run directory written by the project's own Run: args.json, metrics.jsonl, checkpoint.pt, probe_curves.pt,
    summary.json."""
    run = Run(Args(exp_name=exp_name, seed=seed, run_dir=str(run_dir)), total="total_steps")
    run.start(0)
    probes = []
    for step in range(steps):
        run.log(step, {"losses/td_loss": torch.tensor(1.0 / (step + 1))})
        probes.append({"step": step, "probe/plasticity_loss": 0.1 * step})
    run.save_checkpoint({"weights": torch.arange(1000.0)}, steps)
    torch.save({"steps": [0, 1], "curves": torch.ones(2, 5)}, os.path.join(run.run_dir, "probe_curves.pt"))
    if status == "diverged":
        run.diverged = True
    final = {"probe/plasticity_loss": float("nan") if status == "diverged" else 0.3, "stats/weight_norm": 2.0 + seed}
    run.finish(steps, done=status == "completed", metrics=final, probes=probes)
    return str(run_dir)


def truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def test_completed_runs_become_rows_with_args_metrics_and_probes(tmp_path):
    a = make_run(tmp_path / "g" / "a", seed=1)
    make_run(tmp_path / "g" / "b", status="interrupted", seed=2)
    c = make_run(tmp_path / "g" / "c", status="diverged", seed=3)
    runs = results.read_runs(str(tmp_path))
    assert list(runs.table["run_dir"]) == [a]
    row = runs.table.iloc[0]
    assert (row["status"], row["steps"], row["args.seed"], row["args.exp_name"]) == ("completed", 4, 1, "toy")
    assert row["probe/plasticity_loss"] == 0.3 and row["stats/weight_norm"] == 3.0 and row["wall_time_s"] > 0
    assert [p["probe/plasticity_loss"] for p in row["probes"]] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert sorted(reason for _, reason in runs.skipped) == ["status diverged", "status interrupted"]
    both = results.read_runs(str(tmp_path), include=("completed", "diverged"))
    assert list(both.table["run_dir"]) == [a, c]
    assert both.table["probe/plasticity_loss"].isna().tolist() == [False, True]  # "nan" in summary.json -> NaN
    assert "2 completed/diverged runs read" in both.report() and "1 status interrupted" in both.report()
    with pytest.raises(ValueError):
        results.read_runs(str(tmp_path), include=("finished",))


@pytest.mark.parametrize("name", ["summary.json", "args.json"])
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_a_truncated_json_file_is_skipped_with_its_reason(tmp_path, name, keep):
    good = make_run(tmp_path / "good")
    bad = make_run(tmp_path / "bad", seed=2)
    truncate(os.path.join(bad, name), keep)
    runs = results.read_runs(str(tmp_path))
    assert list(runs.table["run_dir"]) == [good]
    assert runs.skipped == [(bad, f"{name} is truncated or corrupt (JSONDecodeError)")]
    assert "skipped 1" in runs.report() and name in runs.report()


def test_missing_files_and_other_experiments_are_skipped(tmp_path):
    make_run(tmp_path / "a")
    running = make_run(tmp_path / "running", seed=2)
    os.remove(os.path.join(running, "summary.json"))
    other = make_run(tmp_path / "other", exp_name="other")
    runs = results.read_runs(str(tmp_path), exp_name="toy")
    assert len(runs) == 1
    assert dict(runs.skipped) == {running: "no summary.json (running, or killed before its first summary)",
                                  other: "another experiment (exp_name is not toy)"}


def test_a_stale_copy_moved_aside_is_never_read(tmp_path):
    """The sweep moves a cell it cannot resume aside; its copy holds a full run that must not count twice."""
    cell = make_run(tmp_path / "g" / "a__seed1")
    stale = f"{cell}.stale-1764633600"
    os.rename(cell, stale)
    make_run(tmp_path / "g" / "a__seed1")
    os.makedirs(f"{cell}.stale-1764633601_2/inner")  # nested, and suffixed as a second copy in the same second
    runs = results.read_runs(str(tmp_path))
    assert list(runs.table["run_dir"]) == [cell]
    assert [r for _, r in runs.skipped] == ["a stale copy the sweep moved aside"] * 2


def test_metrics_with_a_torn_last_line_keep_every_whole_row(tmp_path):
    run_dir = make_run(tmp_path / "a")
    path = os.path.join(run_dir, "metrics.jsonl")
    whole = results.read_metrics(path)
    assert [r["step"] for r in whole] == [0, 1, 2, 3]
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[:-5])  # the last row cut short, without its newline
    assert results.read_metrics(path) == whole[:3]
    with open(path, "w") as f:
        f.write(text.replace('"step": 1', '"step: 1'))  # a corrupt row in the middle is not a torn write
    with pytest.raises(results.Unreadable, match="line 2 is corrupt"):
        results.read_metrics(path)


@pytest.mark.parametrize("name", ["probe_curves.pt", "checkpoint.pt", "metrics.jsonl"])
def test_load_skips_runs_whose_file_is_truncated_or_missing(tmp_path, name):
    good = make_run(tmp_path / "good")
    bad = make_run(tmp_path / "bad", seed=2)
    gone = make_run(tmp_path / "gone", seed=3)
    if name == "metrics.jsonl":
        with open(os.path.join(bad, name), "a") as f:
            f.write('{"step": 4}\n{"step": 5, "losses/td_loss": 0.')  # a corrupt row, then a torn one
        text = open(os.path.join(bad, name)).read().replace('{"step": 4}', '{"step": 4')
        open(os.path.join(bad, name), "w").write(text)
    else:
        truncate(os.path.join(bad, name))
    os.remove(os.path.join(gone, name))
    runs = results.read_runs(str(tmp_path))
    each, failed = results.read_each(sorted(runs.table["run_dir"]), name)  # any directories; the table untouched
    assert list(each) == [good] and sorted(failed) == sorted([bad, gone]) and len(runs) == 3
    loaded = runs.load(name)
    assert dict(runs.skipped) == failed  # the same reader and reasons
    assert list(loaded) == [good] and list(runs.table["run_dir"]) == [good]
    reasons = dict(runs.skipped)
    assert reasons[gone] == f"no {name}"
    assert reasons[bad].startswith(name) and ("truncated or corrupt" in reasons[bad] or "corrupt" in reasons[bad])
    if name == "checkpoint.pt":
        assert torch.equal(loaded[good]["weights"], torch.arange(1000.0))


def test_an_empty_or_missing_runs_dir_reads_nothing(tmp_path):
    runs = results.read_runs(str(tmp_path / "nothing"))
    assert len(runs) == 0 and list(runs.table.columns)[:2] == ["run_dir", "status"]
    assert runs.report().startswith("0 completed runs read") and runs.skipped == []


def test_a_summary_without_a_status_is_not_a_run(tmp_path):
    run_dir = make_run(tmp_path / "a")
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump([1, 2], f)
    runs = results.read_runs(str(tmp_path))
    assert len(runs) == 0 and "no status" in runs.skipped[0][1]
