"""A run directory's records stay true through kills, resumes, copies and corrupt files: rows logged once, one
writer, no leftovers, and readers that skip what they cannot read. Tiny configurations, in-process where a kill
can be simulated exactly."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import adam_instability_mnist as adam
import common.runtime.logger
import common.runtime.run
import ddqn_atari_layernorm as atari
import dqn_classification_mdp as dqn
from common.analysis import atari_stats, validity
from common.analysis.results import read_runs
from common.errors import EXIT_USAGE, UsageError
from test_lifecycle import ADAM, ATARI, DATA, DQN, ROOT, _kill_self_on_call, argv, files, read_rows


class Killed(BaseException):
    """SIGKILL in-process: nothing after it runs (no checkpoint, no summary)."""


def _die_after_row(monkeypatch, key):
    """Make the process die (``Killed``) right after it logs the first row holding ``key``, as SIGKILL would, with
    the row on disk in metrics.jsonl and TensorBoard."""
    original = common.runtime.logger.RunLogger.log

    def log(self, step, metrics):
        row = original(self, step, metrics)
        if key in row:
            self.writer.flush()
            raise Killed
        return row

    monkeypatch.setattr(common.runtime.logger.RunLogger, "log", log)


def _killed(train, args):
    with pytest.raises(Killed):
        train(args)
    common.runtime.run.abandon_unfinished()  # what the kernel does for a killed process: the lock is dropped


def _scalars(run_dir):
    """{tag: [(step, value)]} as TensorBoard shows the run (orphaned steps purged), charts/SPS left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
            if tag != "charts/SPS"}


def _without_sps(run_dir):
    return [{k: v for k, v in row.items() if k != "charts/SPS"} for row in read_rows(run_dir)]


# ------------------------------------------------------------------------------- a redone measurement is logged once
def test_dqn_a_probe_redone_after_resume_and_then_killed_is_logged_once(tmp_path, monkeypatch, data_dir):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    dqn.train(dqn.Args(data_dir=data_dir, run_dir=straight, **DQN))
    with monkeypatch.context() as m:
        _kill_self_on_call(m, dqn, "probe_plasticity", call=2)  # SIGTERM in the probe at step 20
        assert dqn.train(dqn.Args(data_dir=data_dir, run_dir=split, **DQN))["steps"] == 20
    with monkeypatch.context() as m:
        _die_after_row(m, "probe/plasticity")  # the redone probe at step 20 is logged, then SIGKILL
        _killed(dqn.train, dqn.Args(data_dir=data_dir, run_dir=split, resume=True, **DQN))
    assert dqn.train(dqn.Args(data_dir=data_dir, run_dir=split, resume=True, **DQN))["status"] == "completed"
    assert _without_sps(split) == _without_sps(straight)
    assert _scalars(split) == _scalars(straight)


def test_atari_a_hessian_redone_after_resume_and_then_killed_is_logged_once(tmp_path, monkeypatch):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    atari.train(atari.Args(run_dir=straight, **ATARI))
    with monkeypatch.context() as m:
        _kill_self_on_call(m, atari, "td_loss_hessian", call=1)  # SIGTERM in the Hessian at step 80
        assert atari.train(atari.Args(run_dir=split, **ATARI))["steps"] == 80
    with monkeypatch.context() as m:
        _die_after_row(m, "curvature/hessian_top_eigenvalue")
        _killed(atari.train, atari.Args(run_dir=split, resume=True, **ATARI))
    assert atari.train(atari.Args(run_dir=split, resume=True, **ATARI))["status"] == "completed"
    assert _without_sps(split) == _without_sps(straight)
    assert _scalars(split) == _scalars(straight)


def test_a_signal_in_one_seeds_final_evaluation_leaves_every_seed_of_the_group_interrupted(tmp_path, monkeypatch):
    """SIGTERM in seed 1's evaluation at the last step: that evaluation is abandoned and seed 2's, due at the same
    step, is not made either; both runs are interrupted (not completed without their final score), and the resumed
    group makes both evaluations once and completes."""
    group = str(tmp_path / "group")
    config = {**ATARI, "total_frames": 4 * 80, "eval_every": 40, "grad_cov_every": 0, "hessian_every": 0,
              "num_seeds": 2}
    with monkeypatch.context() as m:
        _kill_self_on_call(m, atari, "evaluate", call=3)  # step 40: seeds 1 and 2; step 80: seed 1
        first = atari.train(atari.Args(run_dir=group, **config))
    assert [(r["status"], r["steps"]) for r in first["runs"]] == [("interrupted", 80)] * 2
    assert atari.train(atari.Args(run_dir=group, resume=True, **config))["status"] == "completed"
    for seed in (1, 2):
        assert [r["step"] for r in read_rows(f"{group}__seed{seed}") if "eval/episodes" in r] == [40, 80]


# ------------------------------------------------------------------------------------------------ one writer per run
def test_a_run_whose_lock_file_is_deleted_stops_before_writing_more(tmp_path, monkeypatch, data_dir):
    run_dir = str(tmp_path / "run")
    original = common.runtime.logger.RunLogger.log

    def log(self, step, metrics):
        row = original(self, step, metrics)
        if step == 10:  # a user deletes the lock; a second process then takes a new one
            os.remove(os.path.join(run_dir, ".lock"))
            open(os.path.join(run_dir, ".lock"), "w").close()
        return row

    monkeypatch.setattr(common.runtime.logger.RunLogger, "log", log)
    with pytest.raises(common.runtime.run.Locked, match="deleted or replaced"):
        dqn.train(dqn.Args(data_dir=data_dir, run_dir=run_dir, **DQN))
    common.runtime.run.abandon_unfinished()
    assert max(r["step"] for r in read_rows(run_dir)) == 10
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))
    assert not os.path.exists(os.path.join(run_dir, "checkpoint.pt"))  # the first is due at step 20


# -------------------------------------------------------------------------------------------------- no leftovers
def test_orphan_temporary_files_of_a_killed_writer_are_removed_on_resume(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    adam.train(adam.Args(data_dir=data_dir, run_dir=str(run_dir), **{**ADAM, "num_iterations": 1}))
    dead = 2**22 + 1  # above Linux's largest pid: no process has it
    orphans = [run_dir / f"checkpoint.pt.tmp{dead}", run_dir / f"summary.json.tmp{dead}",
               run_dir / "figures" / f"fig1_adam_instability.png.tmp{dead}"]
    for path in orphans:
        path.write_bytes(b"half a file")
    assert adam.train(adam.Args(data_dir=data_dir, run_dir=str(run_dir), resume=True, **ADAM))["status"] == "completed"
    assert not [p for p in orphans if p.exists()]
    assert not [name for _, _, names in os.walk(run_dir) for name in names if ".tmp" in name]


# ---------------------------------------------------------------------------------------------- seed groups resume
def test_a_group_resume_with_one_truncated_checkpoint_trains_no_seed(tmp_path):
    group = str(tmp_path / "group")
    config = {**ATARI, "total_frames": 4 * 80, "num_seeds": 2}
    assert atari.train(atari.Args(run_dir=group, **config))["status"] == "completed"
    checkpoint = os.path.join(f"{group}__seed2", "checkpoint.pt")
    with open(checkpoint, "r+b") as f:
        f.truncate(os.path.getsize(checkpoint) // 2)
    before = files(f"{group}__seed1")
    with pytest.raises(UsageError, match="corrupt or truncated"):
        atari.train(atari.Args(run_dir=group, resume=True, **{**config, "total_frames": 4 * 160}))
    assert files(f"{group}__seed1") == before


@pytest.mark.parametrize("damage", ["the seed's directory", "its checkpoint"])
def test_the_advice_for_a_damaged_seed_of_a_group_works_when_followed(tmp_path, damage):
    group = str(tmp_path / "group")
    command = [sys.executable, "dqn_classification_mdp.py", "--data-dir", DATA, "--num-seeds", "2",
               "--run-dir", group, *argv({**DQN, "total_steps": 20})]
    assert subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
    seed2 = f"{group}__seed2"
    if damage == "the seed's directory":
        shutil.rmtree(seed2)
    else:
        os.remove(os.path.join(seed2, "checkpoint.pt"))
    error = subprocess.run(command + ["--resume", "--total-steps", "40"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert error.returncode == EXIT_USAGE and len(error.stderr.strip().splitlines()) == 1, error.stderr
    advice = error.stderr.strip()
    move = re.search(r"\(mv (\S+) (\S+)\)", advice)
    if move:
        os.replace(move.group(1), move.group(2))
    fix = advice.rsplit(": ", 1)[1]
    assert "--num-seeds 1" in fix and "--resume" not in fix, advice
    followed = subprocess.run(fix, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert followed.returncode == 0, followed.stderr
    assert json.load(open(os.path.join(seed2, "summary.json")))["status"] == "completed"
    # and the group's own command then finishes the other seed
    again = subprocess.run(command + ["--resume", "--total-steps", "40"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.load(open(os.path.join(f"{group}__seed1", "summary.json")))["steps"] == 40


# ----------------------------------------------------------------------------------------------------- readers
def _completed_run(root, name, args, summary):
    run = root / name
    run.mkdir()
    (run / "args.json").write_text(json.dumps(args))
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 1, "wall_time_s": 1.0,
                                                  "metrics": {}, **summary}))
    return run


def test_copies_and_moved_run_directories_are_skipped_with_a_reason(tmp_path, data_dir):
    run_dir = tmp_path / "runs" / "run"
    adam.train(adam.Args(data_dir=data_dir, run_dir=str(run_dir), **{**ADAM, "num_iterations": 1}))
    for suffix in (".copy", ".bak", ".stale"):
        shutil.copytree(run_dir, f"{run_dir}{suffix}")
    runs = read_runs(str(tmp_path / "runs"))
    assert list(runs.table["run_dir"]) == [str(run_dir)]
    assert len(runs.skipped) == 3 and all("a copy or a moved run" in reason for _, reason in runs.skipped)
    # the whole tree moved keeps its runs
    shutil.move(str(tmp_path / "runs"), str(tmp_path / "moved"))
    assert list(read_runs(str(tmp_path / "moved")).table["run_dir"]) == [str(tmp_path / "moved" / "run")]


@pytest.mark.parametrize("summary", [{"metrics": [1]}, {"metrics": "x"}, {"probes": [None]}, {"probes": [5]},
                                     {"probes": {"a": 1}}])
def test_a_summary_that_parses_but_is_not_a_runs_is_skipped(tmp_path, summary):
    _completed_run(tmp_path, "good", {"seed": 1}, {})
    _completed_run(tmp_path, "bad", {"seed": 2}, summary)
    runs = read_runs(str(tmp_path))
    assert list(runs.table["run_dir"]) == [str(tmp_path / "good")]
    assert runs.skipped == [(str(tmp_path / "bad"), "summary.json is corrupt (its metrics or probes are not a run's)")]


@pytest.mark.parametrize("probes", [[None], [5], [None, {"probe/plasticity": 1.0, "probe/baseline": 2.0}], "x"])
def test_probe_fits_never_raise_on_a_corrupt_probe_list(probes):
    initial, final, baseline = validity.probe_fits({"probes": probes})
    assert all(isinstance(v, float) for v in (initial, final, baseline))


# --------------------------------------------------------------------------------------------------- protocols
def test_a_run_extended_on_resume_counts_under_the_length_it_trained(tmp_path, data_dir):
    runs = tmp_path / "runs"
    extended, long, short = (str(runs / name) for name in ("extended", "long", "short"))
    adam.train(adam.Args(data_dir=data_dir, run_dir=extended, **{**ADAM, "num_iterations": 1}))
    adam.train(adam.Args(data_dir=data_dir, run_dir=extended, resume=True, **ADAM))
    adam.train(adam.Args(data_dir=data_dir, run_dir=long, **ADAM))
    adam.train(adam.Args(data_dir=data_dir, run_dir=short, **{**ADAM, "num_iterations": 1}))
    table = read_runs(str(runs)).table
    protocols = validity.split_protocols(table, varied=())
    assert [sorted(runs["run_dir"]) for _, _, runs in protocols] == [[extended, long], [short]]
    assert validity.differing_fields(protocols) == ["num_iterations"]


def test_an_atari_run_extended_on_resume_is_not_pooled_with_shorter_ones(tmp_path):
    args = {"env_id": "ALE/Pong-v5", "layer_norm": True, "seed": 1, "total_frames": 640}
    _completed_run(tmp_path, "short", args, {"metrics": {"eval/episodic_return": 1.0}})
    _completed_run(tmp_path, "extended", args, {"metrics": {"eval/episodic_return": 1.0},
                                                "total": {"total_frames": 960}})
    groups, differing = atari_stats.protocols(atari_stats.final_scores(read_runs(str(tmp_path))))
    assert sorted(label for _, label, _, _ in groups) == ["total_frames=640", "total_frames=960"]


def test_the_atari_protocol_is_every_args_field_but_the_axes_seeds_and_paths():
    base = json.loads(json.dumps(dataclasses.asdict(atari.Args()), default=str))
    changes = [{"eval_envs": 1}, {"seed": 2, "run_dir": "elsewhere", "env_threads": 4, "compile": True,
                                  "capture_video": True, "cuda": False, "log_every": 10, "checkpoint_every": 10}]
    rows = pd.DataFrame([{f"args.{k}": v for k, v in {**base, **change}.items()} for change in [{}, *changes]])
    groups, differing = atari_stats.protocols(rows.assign(run_dir=["a", "b", "c"]))
    assert differing == ["eval_envs"] and sorted(len(g) for _, _, _, g in groups) == [1, 2]
    fields = groups[0][2]
    expected = set(base) - set(atari_stats.AXES) - set(validity.NOT_PROTOCOL)
    assert set(fields) == expected and {"eval_envs", "total_frames", "eval_frames", "num_envs"} <= expected
