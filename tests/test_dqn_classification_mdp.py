import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import dqn_classification_mdp as dqn
from common.cli import EXIT_INTERRUPTED
from test_data import write_tiny_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(total_steps=40, learning_starts=20, buffer_size=500, batch_size=8, width=16, log_every=10,
            target_period=10, probe_every=20, probe_steps=6, probe_targets=2, probe_inputs=32,
            probe_batch_size=8, num_images=500, cuda=False)


def test_double_q_target_against_a_hand_computation():
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1)  # observation i is the scalar i
    online = torch.tensor([[1.0, 2.0], [5.0, 1.0], [0.0, 3.0]])  # Q-values per observation
    target = torch.tensor([[0.5, 0.5], [7.0, 9.0], [4.0, 6.0]])

    class Table(torch.nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = torch.nn.Parameter(table.clone())

        def forward(self, x):
            return self.table[x.flatten().long()]

        values = staticmethod(lambda out: out)
        loss = staticmethod(lambda out, y: (out - y) ** 2)

    batch = (torch.tensor([0, 0]), torch.tensor([1, 0]), torch.tensor([1.0, 0.0]), torch.tensor([1, 2]))
    loss, _ = dqn.td_loss(Table(online), Table(target), images, batch, gamma=0.5, double_q=True)
    # next obs 1: online argmax is action 0, target value 7 -> 1 + 0.5 * 7 = 4.5; Q(0, 1) = 2
    # next obs 2: online argmax is action 1, target value 6 -> 0 + 0.5 * 6 = 3.0; Q(0, 0) = 1
    assert loss.item() == pytest.approx(((2 - 4.5) ** 2 + (1 - 3.0) ** 2) / 2)
    loss, _ = dqn.td_loss(Table(online), Table(target), images, batch, gamma=0.5, double_q=False)
    assert loss.item() == pytest.approx(((2 - (1 + 0.5 * 9)) ** 2 + (1 - 0.5 * 6) ** 2) / 2)


def _check_run_directory(run_dir, steps):
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["status"] == "completed" and summary["steps"] == steps
    assert json.load(open(os.path.join(run_dir, "args.json")))["total_steps"] == steps
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    logged = {k for row in rows for k in row}
    assert {"losses/td_loss", "losses/q_values", "charts/accuracy", "charts/reward_rate", "charts/SPS",
            "probe/final_loss", "probe/baseline", "probe/plasticity"} <= logged
    assert [r["step"] for r in rows if "probe/plasticity" in r] == list(range(0, steps + 1, 20))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))
    assert os.path.getsize(os.path.join(run_dir, "figures", "fig4_probe_curves.png")) > 10_000
    assert os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
    return summary


def test_smoke_run_on_real_mnist(tmp_path, data_dir):
    args = dqn.Args(data_dir=data_dir, run_dir=str(tmp_path / "run"), variant="sparse_reward", **TINY)
    summary = dqn.train(args)
    assert summary == _check_run_directory(str(tmp_path / "run"), 40)
    assert math.isfinite(summary["metrics"]["probe/plasticity_loss"])


def test_smoke_run_on_a_tiny_cifar_file(tmp_path):
    data = write_tiny_cifar10(str(tmp_path / "data"))
    args = dqn.Args(data_dir=data, dataset="cifar10", layer_norm=True, two_hot=True,
                    run_dir=str(tmp_path / "run"), **{**TINY, "num_images": 0})
    dqn.train(args)
    _check_run_directory(str(tmp_path / "run"), 40)


def test_resumed_run_is_identical_to_an_uninterrupted_one(tmp_path, data_dir):
    common = dict(data_dir=data_dir, **{**TINY, "total_steps": 40})
    straight = tmp_path / "straight"
    dqn.train(dqn.Args(run_dir=str(straight), **common))
    split = tmp_path / "split"
    dqn.train(dqn.Args(run_dir=str(split), **{**common, "total_steps": 20}))
    dqn.train(dqn.Args(run_dir=str(split), resume=True, **common))
    a, b = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (straight, split))
    assert a["step"] == b["step"] == 40
    for key in a["q_network"]:
        assert torch.equal(a["q_network"][key], b["q_network"][key]), key
    assert all(torch.equal(a["replay"][k], b["replay"][k]) for k in ("obs", "actions", "rewards", "next_obs"))


def _cli(*argv, **kwargs):
    return subprocess.run([sys.executable, "dqn_classification_mdp.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, **kwargs)


@pytest.mark.parametrize("argv,flag", [(["--variant", "hard"], "--variant"), (["--arch", "mlp2"], "--arch"),
                                       (["--total-steps", "0"], "--total-steps"),
                                       (["--dataset", "mnist", "--data-dir", "/nonexistent-data"], "--data-dir")])
def test_bad_input_is_a_one_line_error(argv, flag):
    result = _cli(*argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0], result.stderr


def test_help_documents_every_field():
    help_text = _cli("--help").stdout
    for field in dqn.Args.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in help_text, field


def test_sigterm_checkpoints_and_resume_finishes(tmp_path, data_dir):
    run_dir = str(tmp_path / "run")
    argv = ["--data-dir", data_dir, "--run-dir", run_dir, "--no-cuda", "--width", "16", "--num-images", "500",
            "--learning-starts", "20", "--batch-size", "8", "--log-every", "10", "--probe-every", "0"]
    process = subprocess.Popen([sys.executable, "dqn_classification_mdp.py", *argv, "--total-steps", "10000000"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + 90
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == EXIT_INTERRUPTED, process.stderr.read()
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    assert summary["status"] == "interrupted" and checkpoint["step"] == summary["steps"] > 0
    resumed = _cli(*argv, "--resume", "--total-steps", str(summary["steps"] + 10))
    assert resumed.returncode == 0, resumed.stderr
    assert json.load(open(os.path.join(run_dir, "summary.json")))["steps"] == summary["steps"] + 10


def test_divergence_is_recorded_and_the_run_exits_cleanly(tmp_path, data_dir):
    args = dqn.Args(data_dir=data_dir, run_dir=str(tmp_path / "run"), optimizer="sgd", learning_rate=1e12,
                    **{**TINY, "probe_every": 0, "total_steps": 200})
    summary = dqn.train(args)
    assert summary["status"] == "diverged" and summary["steps"] < 200
    assert json.load(open(tmp_path / "run" / "summary.json"))["status"] == "diverged"
