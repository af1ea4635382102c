"""adam_instability_mnist.py: relabelling, dead-unit counting, the Adam step statistics, and a smoke run."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import adam_instability_mnist as exp
from common.science.optim import Adam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_relabel_keeps_inputs_and_changes_labels():
    inputs = torch.rand(2000, 784)
    labels = torch.randint(10, (2000,))
    new_inputs, new_labels = exp.relabel(inputs.clone(), labels, seed=3)
    assert torch.equal(new_inputs, inputs)
    assert new_labels.shape == labels.shape and new_labels.dtype == labels.dtype
    assert 0 <= new_labels.min() and new_labels.max() <= 9
    assert 0.8 < (new_labels != labels).float().mean() < 0.98  # independent uniform labels differ 90% of the time
    assert torch.bincount(new_labels, minlength=10).min() > 150  # all ten classes, roughly uniform
    _, again = exp.relabel(inputs, labels, seed=4)
    assert (again != new_labels).float().mean() > 0.8  # each iteration's seed gives a fresh labelling


def test_dead_units_of_a_hand_built_network():
    """Inputs are non-negative; a unit with non-positive weights and bias never fires, any other unit here does."""
    model = exp.make_mlp(width=4, in_features=3)
    first, second = model[1], model[3]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0, 0], [-1, -1, -1], [0, 0, 1], [0, -2, 0]]))
        first.bias.copy_(torch.tensor([0.0, 0, 0, -0.5]))  # units 1 and 3 of layer 1 are dead
        second.weight.copy_(torch.tensor([[1.0, 1, 1, 1], [-1, 0, -1, 0], [0, 0, 0, 0], [0, 0, 1, 0]]))
        second.bias.copy_(torch.tensor([0.0, 0, 0, 0]))  # units 1 and 2 of layer 2 are dead
    # unit 0 of layer 1 fires only on the first input, unit 2 only on the second: both alive
    inputs = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])
    accuracy, loss, dead = exp.evaluate(model, inputs, torch.tensor([0, 1, 2]))
    assert [float(d) for d in dead] == [0.5, 0.5]
    assert 0 <= float(accuracy) <= 1 and torch.isfinite(loss)
    first.bias.data[3] = 5.0  # revive one unit: the count must follow
    assert [float(d) for d in exp.evaluate(model, inputs, torch.tensor([0, 1, 2]))[2]] == [0.25, 0.5]


def test_adam_step_stats_match_the_parameter_change():
    """The update norm computed from Adam's state equals the norm of the actual parameter change."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    optimizer = Adam(model.parameters(), lr=1e-2, **exp.ADAM_CONFIGS["tuned"])
    for _ in range(3):
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        model(torch.randn(8, 5)).square().sum().backward()
        optimizer.step()
        update_norm, max_ratio = exp.adam_step_stats(optimizer)
        change = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
        torch.testing.assert_close(update_norm, change.norm(), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(max_ratio, change.abs().max() / 1e-2, rtol=1e-4, atol=1e-7)


def test_smoke_run_writes_the_run_directory(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    args = exp.Args(data_dir=data_dir, run_dir=str(run_dir), cuda=False, num_images=64, width=16, batch_size=16,
                    steps_per_iteration=5, num_iterations=2, eval_size=32, stats_window=2)
    summary = exp.train(args)

    assert summary["status"] == "completed" and summary["steps"] == 10
    assert json.loads((run_dir / "args.json").read_text())["num_iterations"] == 2
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 5, 10]
    assert rows[0]["losses/loss/default"] == rows[0]["losses/loss/tuned"]  # paired: the same initial network
    for name in ("default", "tuned"):
        for key in ("charts/accuracy", "losses/loss", "stats/dead_fraction_layer1", "stats/dead_fraction_layer2"):
            assert all(0 <= rows[i][f"{key}/{name}"] < float("inf") for i in range(3)), key
        for key in ("losses/train_loss_mean", "adam/update_norm", "adam/update_norm_after_reset",
                    "adam/max_ratio", "adam/max_ratio_after_reset"):
            assert rows[-1][f"{key}/{name}"] > 0, key
    assert len(summary["iterations"]) == 3
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))
    assert (run_dir / "figures" / "fig1_adam_instability.png").stat().st_size > 10_000


def test_single_optimizer_run(tmp_path, data_dir):
    args = exp.Args(data_dir=data_dir, run_dir=str(tmp_path), cuda=False, optimizer="tuned", num_images=32,
                    width=8, batch_size=8, steps_per_iteration=2, num_iterations=1, eval_size=16)
    metrics = exp.train(args)["metrics"]
    assert "charts/accuracy/tuned" in metrics and not any(k.endswith("/default") for k in metrics)


@pytest.mark.parametrize("flag, message", [(["--optimizer", "foo"], "--optimizer"),
                                           (["--steps-per-iteration", "0"], "--steps-per-iteration")])
def test_bad_argument_is_a_one_line_error(tmp_path, flag, message):
    result = subprocess.run([sys.executable, "adam_instability_mnist.py", "--run-dir", str(tmp_path), *flag],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def test_non_finite_loss_stops_the_run_as_diverged(tmp_path, data_dir):
    args = exp.Args(data_dir=data_dir, run_dir=str(tmp_path), cuda=False, learning_rate=1e30, num_images=32,
                    width=8, batch_size=8, steps_per_iteration=3, num_iterations=3, eval_size=16)
    summary = exp.train(args)
    assert summary["status"] == "diverged" and summary["steps"] < 9
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"
