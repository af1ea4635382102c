"""benchmarks/reprobe.py: the final network probed again, as it is and with a fresh head."""
import json
import os
import sys

import pytest

import dqn_classification_mdp as dqn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import reprobe  # noqa: E402


def test_reprobe_as_is_repeats_the_runs_last_probes_and_a_fresh_head_changes_them(tmp_path, data_dir):
    run_dir = str(tmp_path / "run")
    dqn.train(dqn.Args(data_dir=data_dir, run_dir=run_dir, total_steps=40, learning_starts=20, buffer_size=500,
                       batch_size=8, width=16, log_every=10, target_period=10, probe_every=20, probe_steps=6,
                       probe_targets=2, probe_inputs=32, ref_probe_inputs=48, probe_batch_size=8, num_images=500,
                       two_hot=True, stats=False, hessian=False, cuda=False))
    step, fits = reprobe.reprobe(run_dir)
    last = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if '"probe/fit"' in line][-1]
    assert step == last["step"] == 40
    assert fits["paper", "as is"] == pytest.approx(last["probe/fit"], rel=1e-5)
    assert fits["reference", "as is"] == pytest.approx(last["probe_ref/fit"], rel=1e-5)
    assert fits["paper", "fresh head"] != fits["paper", "as is"]
    assert fits["reference", "fresh head"] != fits["reference", "as is"]
