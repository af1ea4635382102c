"""A run directory's records stay true through kills, resumes, copies and corrupt files: rows logged once, one
writer, no leftovers, and readers that skip what they cannot read. Tiny configurations, in-process where a kill
can be simulated exactly."""
import json
import os

import pytest
import torch

import common.logger
import common.run
import ddqn_atari_layernorm as atari
import dqn_classification_mdp as dqn
from test_lifecycle import ATARI, DQN, _kill_self_on_call, read_rows


class Killed(BaseException):
    """SIGKILL in-process: nothing after it runs (no checkpoint, no summary)."""


def _die_after_row(monkeypatch, key):
    """Make the process die (``Killed``) right after it logs the first row holding ``key``, as SIGKILL would, with
    the row on disk in metrics.jsonl and TensorBoard."""
    original = common.logger.RunLogger.log

    def log(self, step, metrics):
        row = original(self, step, metrics)
        if key in row:
            self.writer.flush()
            raise Killed
        return row

    monkeypatch.setattr(common.logger.RunLogger, "log", log)


def _killed(train, args):
    with pytest.raises(Killed):
        train(args)
    common.run.abandon_unfinished()  # what the kernel does for a killed process: the lock is dropped


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
