"""brownian_vs_gd.py: the coupling of the two processes, and a tiny end-to-end run on real MNIST."""
import json
import os
import subprocess
import sys

import torch
from torch import nn

import brownian_vs_gd
from brownian_vs_gd import Args, coupled_step, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_random_walk_step_norm_equals_sgd_step_norm():
    torch.manual_seed(0)
    gd_net = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    walk_net = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    walk_net.load_state_dict(gd_net.state_dict())
    gd, walk = list(gd_net.parameters()), list(walk_net.parameters())
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        before_gd = torch.cat([p.detach().reshape(-1) for p in gd])
        before_walk = torch.cat([p.detach().reshape(-1) for p in walk])
        loss = gd_net(torch.randn(16, 7)).square().mean()
        grads = torch.autograd.grad(loss, gd)
        flat_grad = torch.cat([g.reshape(-1) for g in grads])
        norm = coupled_step(gd, walk, grads, 0.1, generator)
        gd_step = torch.cat([p.detach().reshape(-1) for p in gd]) - before_gd
        walk_step = torch.cat([p.detach().reshape(-1) for p in walk]) - before_walk
        assert torch.allclose(gd_step, -0.1 * flat_grad, atol=1e-7)
        assert abs(norm - 0.1 * flat_grad.norm()) < 1e-6
        assert abs(walk_step.norm() - gd_step.norm()) < 1e-6 * gd_step.norm()
        assert abs(torch.dot(walk_step, gd_step)) < 0.9 * gd_step.norm() ** 2  # a different direction


def test_tiny_run_writes_the_run_directory(tmp_path, data_dir):
    args = Args(cuda=False, run_dir=str(tmp_path / "run"), data_dir=data_dir, num_images=2_000, width=16,
                total_steps=40, batch_size=32, target_period=20, eval_every=20, log_every=10, hessian_inputs=64,
                lanczos_iters=12, num_grad_samples=32, num_clusters=4)
    summary = train(args)
    run = tmp_path / "run"
    assert summary["status"] == "completed" and summary["steps"] == 40
    for name in ("args.json", "metrics.jsonl", "summary.json", "curvature.pt", "figures/fig2_brownian_vs_gd.png"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    checkpoints = [r for r in rows if "curvature/gd/top_eigenvalue" in r]
    assert [r["step"] for r in checkpoints] == [0, 20, 40]
    start, end = checkpoints[0], checkpoints[-1]
    for key in ("top_eigenvalue", "min_eigenvalue", "grad_cov_neg_fraction", "grad_cov_neg_mean"):
        assert start[f"curvature/gd/{key}"] == start[f"curvature/walk/{key}"]  # one initialisation
    assert end["curvature/gd/top_eigenvalue"] != end["curvature/walk/top_eigenvalue"]
    assert 0 <= end["curvature/gd/grad_cov_neg_fraction"] <= 1
    assert end["curvature/gd/distance_from_init"] > 0 and end["curvature/walk/distance_from_init"] > 0
    assert all("losses/td_loss" in r for r in rows if r["step"] % 10 == 0 and "charts/SPS" in r)
    saved = torch.load(run / "curvature.pt", weights_only=False)
    assert saved["steps"] == [0, 20, 40] and saved["gd"][-1]["C"].shape == (32, 32)
    assert abs(saved["walk"][0]["weights"].sum().item() - 1) < 1e-9


def test_bad_argument_is_a_one_line_error():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "brownian_vs_gd.py"), "--num-grad-samples", "600",
                             "--hessian-inputs", "512"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --num-grad-samples (600) cannot exceed --hessian-inputs (512)"]


def test_probe_loss_gradient_is_the_eps_weighted_jacobian():
    """Sec 4.2's loss ||f(X) - sg(f(X)) + eps||^2 has gradient (2 / N) sum_i J_i^T eps_i at every theta (its value
    is ||eps||^2 whatever f is, so only the gradient tells a right stop-gradient from a flipped or missing one).
    For f(x) = W x + c: dW = (2 / N) eps^T X and dc = (2 / N) sum_i eps_i."""
    generator = torch.Generator().manual_seed(0)
    x, eps = torch.randn(6, 4, generator=generator), torch.randn(6, 3, generator=generator)
    layer = torch.nn.Linear(4, 3)
    brownian_vs_gd.probe_loss(layer(x), eps).backward()
    torch.testing.assert_close(layer.weight.grad, 2 / len(x) * eps.T @ x)
    torch.testing.assert_close(layer.bias.grad, 2 / len(x) * eps.sum(0))
