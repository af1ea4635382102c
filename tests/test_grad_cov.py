"""common.science.grad_cov against brute force: a Python loop of backward passes and explicit cosines."""
import torch
from torch import nn

from common.science.grad_cov import (gradient_covariance, interference, interference_summary, kmeans_order,
                                     per_example_grads)


def td_loss(q, actions, targets):
    """A DQN-style per-batch loss, used as is for single examples."""
    return ((q.gather(1, actions[:, None]).squeeze(1) - targets) ** 2).mean()


def model_and_batch(batch_norm=False, k=12):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3)]
    if batch_norm:
        layers.insert(1, nn.BatchNorm1d(7))
    model = nn.Sequential(*layers).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(k, 6, generator=g, dtype=torch.float64)
    actions = torch.randint(3, (k,), generator=g)
    targets = torch.randn(k, generator=g, dtype=torch.float64)
    return model, x, actions, targets


def loop_grads(model, x, actions, targets):
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        td_loss(model(x[i:i + 1]), actions[i:i + 1], targets[i:i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad]))
    return torch.stack(rows)


def test_per_example_grads_match_a_loop():
    model, x, actions, targets = model_and_batch()
    grads = per_example_grads(model, td_loss, x, actions, targets)
    assert grads.shape == (12, sum(p.numel() for p in model.parameters()))
    assert torch.allclose(grads, loop_grads(model, x, actions, targets), atol=1e-12)
    chunked = per_example_grads(model, td_loss, x, actions, targets, chunk_size=5)
    assert torch.allclose(chunked, grads, atol=1e-12)


def test_per_example_grads_with_batch_norm_and_frozen_parameters():
    model, x, actions, targets = model_and_batch(batch_norm=True)
    with torch.no_grad():
        model(2 * x + 1)  # running statistics away from (0, 1)
    model[0].bias.requires_grad_(False)
    grads = per_example_grads(model, td_loss, x, actions, targets)
    assert model.training
    model.eval()
    assert grads.shape[1] == sum(p.numel() for p in model.parameters()) - 7
    assert torch.allclose(grads, loop_grads(model, x, actions, targets), atol=1e-12)


def test_gradient_covariance_matches_brute_force_cosines():
    g = torch.randn(9, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    C = gradient_covariance(g)
    for i in range(9):
        for j in range(9):
            cosine = torch.dot(g[i], g[j]) / (g[i].norm() * g[j].norm())
            assert abs(C[i, j] - cosine) < 1e-12


def test_gradient_covariance_of_long_float32_gradients_has_a_unit_diagonal_on_any_blas():
    """A float32 dot product over millions of terms is 1 only up to the BLAS's summation order; the accumulation in
    float64 makes the diagonal exactly 1 and the matrix exactly symmetric once rounded to float32."""
    generator = torch.Generator().manual_seed(0)
    g = torch.randn(4, 3_000_000, generator=generator) * torch.logspace(-3, 3, 3_000_000)
    C = gradient_covariance(g)
    assert C.dtype == torch.float32
    assert torch.equal(C.diagonal(), torch.ones(4)) and torch.equal(C, C.T)
    reference = g.double() @ g.double().T
    reference /= reference.diagonal().sqrt()[:, None] * reference.diagonal().sqrt()[None, :]
    torch.testing.assert_close(C, reference.float(), rtol=0, atol=1e-7)


def test_interference_statistics():
    C = torch.tensor([[1.0, -0.5, 0.2], [-0.5, 1.0, -0.1], [0.2, -0.1, 1.0]])
    fraction, mean = interference(C)
    assert abs(fraction.item() - 4 / 6) < 1e-7 and abs(mean.item() - (-0.3)) < 1e-7
    fraction, mean = interference(torch.eye(3))
    assert fraction.item() == 0 and mean.item() == 0
    summary = interference_summary(C)  # by hand: off-diagonal entries -0.5, 0.2, -0.1 twice each
    assert abs(summary["grad_cov_offdiag_mean"].item() - (-0.4 / 3)) < 1e-7
    assert abs(summary["grad_cov_neg_fraction"].item() - 4 / 6) < 1e-7
    assert abs(summary["grad_cov_neg_mean"].item() - (-0.3)) < 1e-7


def test_kmeans_order_recovers_planted_blocks():
    """Gradients from 3 well separated directions, shuffled: the ordering makes C block diagonal."""
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(3, 50, generator=g)
    labels = torch.tensor([0] * 20 + [1] * 12 + [2] * 8)[torch.randperm(40, generator=g)]
    grads = directions[labels] + 0.05 * torch.randn(40, 50, generator=g)
    order = kmeans_order(gradient_covariance(grads), k=3)
    assert sorted(order.tolist()) == list(range(40))
    assert labels[order].tolist() == [labels[order[0]].item()] * 20 + [labels[order[20]].item()] * 12 + \
        [labels[order[32]].item()] * 8  # largest cluster first, each contiguous
