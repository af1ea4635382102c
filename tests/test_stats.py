import math

import numpy as np
import pytest
import torch
from torch import nn

from common.science.networks import ARCHITECTURES, build_network
from common.science.stats import (activation_summary, dead_units, distance_from, dormant_masks, dormant_units,
                                  effective_rank, feature_rank, gradient_norm, layer_weight_norms,
                                  plasticity_statistics, srank, weight_norm, weight_rank)


def matrix_with_spectrum(singular_values, rows, cols, seed=0):
    """``U diag(s) V^T`` with random orthonormal U, V: a matrix whose singular values we chose."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=generator, dtype=torch.float64))
    s = torch.zeros(rows, cols, dtype=torch.float64)
    s[range(len(singular_values)), range(len(singular_values))] = torch.tensor(singular_values, dtype=torch.float64)
    return (u @ s @ v.T).float()


def srank_by_hand(singular_values, delta):
    s = sorted(singular_values, reverse=True)
    for k in range(1, len(s) + 1):
        if sum(s[:k]) >= (1 - delta) * sum(s):
            return k


@pytest.mark.parametrize("delta, expected", [(0.01, 4), (0.15, 3), (0.35, 2), (0.65, 1)])
def test_srank_of_a_chosen_spectrum(delta, expected):
    matrix = matrix_with_spectrum([4.0, 3.0, 2.0, 1.0], 7, 5)  # cumulative shares 0.4, 0.7, 0.9, 1.0
    assert srank_by_hand([4, 3, 2, 1], delta) == expected
    assert srank(matrix, delta).item() == expected


def test_srank_ignores_a_tail_below_delta_and_is_not_the_numerical_rank():
    spectrum = [10.0] * 3 + [0.001] * 5  # full rank 8, but the tail holds 0.02% of the sum
    matrix = matrix_with_spectrum(spectrum, 8, 8)
    assert torch.linalg.matrix_rank(matrix).item() == 8 and srank(matrix).item() == 3


def test_srank_batched_agrees_with_numpy_brute_force():
    matrices = torch.randn(6, 20, 12) * torch.logspace(0, -3, 12)  # decaying column scales: varied sranks
    singular = np.linalg.svd(matrices.double().numpy(), compute_uv=False)
    for delta in (0.01, 0.1, 0.3):
        expected = [srank_by_hand(list(s), delta) for s in singular]
        assert srank(matrices, delta).tolist() == expected
    assert srank(torch.zeros(4, 3)).item() == 0


def test_effective_rank_against_the_entropy_formula():
    assert effective_rank(matrix_with_spectrum([2.0] * 4, 6, 4)).item() == pytest.approx(4.0, rel=1e-5)
    s = [3.0, 1.0]
    p = [x / sum(s) for x in s]
    expected = math.exp(-sum(q * math.log(q) for q in p))
    matrix = matrix_with_spectrum(s, 5, 3)
    assert effective_rank(matrix).item() == pytest.approx(expected, rel=1e-5)
    assert effective_rank(7.0 * matrix).item() == pytest.approx(expected, rel=1e-5)  # scale-free
    assert effective_rank(torch.zeros(3, 3)).item() == 0


def tiny_mlp(width=6):
    return build_network("mlp", (1, 2, 2), 3, width=width)


def test_weight_norms_rank_and_distance():
    net = tiny_mlp()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert weight_norm(net).item() == pytest.approx(flat.norm().item(), rel=1e-6)
    norms = layer_weight_norms(net)
    assert list(norms) == ["torso.1", "torso.3", "head"]
    assert norms["head"].item() == pytest.approx(net.head.weight.norm().item())
    initial = [p.detach().clone() for p in net.parameters()]
    assert distance_from(net, initial).item() == 0
    with torch.no_grad():
        net.head.bias += 3.0  # moves 3 parameters by 3: distance 3 sqrt(3)
    assert distance_from(net, initial).item() == pytest.approx(3 * math.sqrt(3), rel=1e-6)
    with torch.no_grad():  # weights with chosen spectra: sranks 2 (4x6), 3 (6x6) and 1 (3x6)
        net.torso[1].weight.copy_(matrix_with_spectrum([1.0, 1.0], 6, 4))
        net.torso[3].weight.copy_(matrix_with_spectrum([5.0, 5.0, 5.0, 1e-4], 6, 6))
        net.head.weight.copy_(matrix_with_spectrum([1.0], 3, 6))
    assert weight_rank(net).item() == pytest.approx(2.0)


def test_conv_kernel_is_reshaped_to_out_by_in_k_k():
    net = build_network("cnn", (1, 8, 8), 3, width=64)  # width 64: 8 channels, dense 32
    conv = net.torso[0]
    with torch.no_grad():
        conv.weight.copy_(matrix_with_spectrum([1.0] * 5, 8, 25).view(8, 1, 5, 5))
    assert srank(conv.weight.flatten(1)).item() == 5


def mlp_with_hand_set_dead_units():
    """Width-6 MLP on non-negative 2x2 inputs: positive weights and biases keep every unit alive, except layer 1's
    units 0, 1 and layer 2's unit 5 (weights 0, bias -1: zero on every input), and layer 1's unit 2, which
    is zero exactly when the first pixel is 0 (alive: nonzero on some inputs)."""
    net = tiny_mlp()
    first, second = net.torso[1], net.torso[3]
    with torch.no_grad():
        for layer in (first, second):
            layer.weight.uniform_(0.1, 1.0)
            layer.bias.fill_(0.5)
        first.weight[:2], first.bias[:2] = 0.0, -1.0
        second.weight[5], second.bias[5] = 0.0, -1.0
        first.weight[2] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        first.bias[2] = 0.0
    return net


def test_dead_units_set_by_hand():
    net = mlp_with_hand_set_dead_units()
    x = torch.rand(64, 1, 2, 2)
    x[::2, 0, 0, 0] = 0.0  # unit 2 of layer 1 is zero on half of the inputs
    assert dead_units(net, x).item() == pytest.approx(3 / 12)
    _, layers = activation_summary(net, x, chunk=5)  # chunking does not change the per-unit statistics
    assert [(m == 0).nonzero().flatten().tolist() for m, _ in layers] == [[0, 1], [5]]
    assert dormant_units(net, x, tau=0.0).item() == pytest.approx(3 / 12)  # tau 0: dormant = dead
    assert plasticity_statistics(net, x)["stats/dead_units"].item() == pytest.approx(3 / 12)


def test_dormant_units_against_a_brute_force_score():
    net = mlp_with_hand_set_dead_units()
    with torch.no_grad():
        net.torso[1].weight[3] *= 0.02  # a weak but live unit
        net.torso[1].bias[3] = 0.01
    x = torch.rand(50, 1, 2, 2)
    h1 = torch.relu(net.torso[1](x.flatten(1)))
    h2 = torch.relu(net.torso[3](h1))
    expected = []
    for h in (h1, h2):
        mean_abs = [sum(abs(h[n, i].item()) for n in range(len(x))) / len(x) for i in range(h.shape[1])]
        layer_mean = sum(mean_abs) / len(mean_abs)
        expected.append([score / layer_mean <= 0.1 for score in mean_abs])
    masks = dormant_masks(net, x, tau=0.1)
    assert [m.tolist() for m in masks] == expected and expected[0][3]  # the weak unit is dormant, not dead
    assert dormant_units(net, x, 0.1).item() == pytest.approx(sum(map(sum, expected)) / 12)


def test_conv_dead_channel_counts_every_position():
    net = build_network("cnn", (1, 8, 8), 3, width=64).eval()
    conv = net.torso[0]
    with torch.no_grad():
        conv.weight[3], conv.bias[3] = 0.0, -1.0  # channel 3: zero at every position on every input
        conv.weight[4], conv.bias[4] = 0.0, 0.0
        conv.weight[4, 0, 0, 0] = 1.0  # channel 4: reads one pixel; zero except where that pixel is lit
    x = torch.zeros(4, 1, 8, 8)
    x[0, 0, 0, 0] = 1.0  # lit at one position of one input: channel 4 is alive
    _, layers = activation_summary(net, x)
    assert [m.shape[0] for m, _ in layers] == [8, 8, 32, 32]
    assert layers[0][0][3] == 0 and layers[0][0][4] > 0


def test_all_dead_units_in_resnet_with_its_reused_relus():
    net = build_network("resnet18", (3, 8, 8), 3)
    with torch.no_grad():
        net.torso.bn1.weight.zero_()
        net.torso.bn1.bias.fill_(-1.0)  # the stem's ReLU outputs zero; with zero inputs every later unit is too
    x = torch.rand(3, 3, 8, 8)
    _, layers = activation_summary(net, x)
    assert len(layers) == 17  # the stem and two per block: each block's ReLU module runs twice
    assert sum(m.numel() for m, _ in layers) == 64 + 4 * (64 + 128 + 256 + 512)
    assert dead_units(net, x).item() == 1.0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_plasticity_statistics_for_every_architecture(arch):
    shape = (1, 12, 12) if arch != "resnet18" else (3, 8, 8)
    net = build_network(arch, shape, 4, width=32)
    initial = [p.detach().clone() for p in net.parameters()]
    x = torch.randint(0, 256, (16,) + shape, dtype=torch.uint8)
    loss_fn = lambda: net(x).square().mean()  # noqa: E731
    stats = plasticity_statistics(net, x, initial_parameters=initial, loss_fn=loss_fn)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in stats.values())
    for name in ("dead_units", "dormant_units", "feature_sparsity"):
        assert 0 <= stats[f"stats/{name}"].item() <= 1
    with torch.no_grad(), torch.random.fork_rng():
        features = net.eval().features(x)
    assert stats["stats/feature_rank"].item() == srank(features).item() == feature_rank(net, x).item()
    assert stats["stats/distance_from_init"].item() == 0
    if arch == "vit":  # GELU units are never exactly zero, and its features are LayerNorm outputs
        assert stats["stats/dead_units"].item() == 0 and stats["stats/feature_sparsity"].item() == 0
    net.zero_grad()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        loss_fn().backward()
    grad = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        assert gradient_norm(loss_fn(), net.parameters()).item() == pytest.approx(grad.norm().item(), rel=1e-3)  # float32 conv paths
    assert "stats/weight_norm/head" in stats


def test_statistics_leave_the_network_unchanged_and_in_its_mode():
    net = build_network("vit", (1, 9, 9), 4).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    plasticity_statistics(net, torch.rand(5, 1, 9, 9))
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks for m in net.modules())
    assert isinstance(next(m for m in net.modules() if isinstance(m, nn.GELU)), nn.GELU)
