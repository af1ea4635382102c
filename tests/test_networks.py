import pytest
import torch
from torch import nn

from common.science.networks import (ARCHITECTURES, SpectralNorm, TwoHot, build_network, draw_masks, dropout_calls,
                                     supplied_masks)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_shapes_head_and_features(arch, shape):
    net = build_network(arch, shape, 10, width=32).eval()  # eval: no dropout, fixed BatchNorm statistics
    x = torch.randint(0, 256, (2,) + shape, dtype=torch.uint8)
    assert net(x).shape == (2, 10)
    assert isinstance(net.head, nn.Linear) and net.features(x).shape == (2, net.head.in_features)
    assert torch.allclose(net.head(net.features(x)), net(x))


def test_mlp_and_cnn_follow_a2():
    mlp = build_network("mlp", (1, 28, 28), 10)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [512, 512, 10]
    cnn = build_network("cnn", (1, 28, 28), 10)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels) for c in convs] == [((5, 5), 64), ((3, 3), 64)]
    assert [m.out_features for m in cnn.modules() if isinstance(m, nn.Linear)] == [256, 256, 10]


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_layer_norm_after_each_hidden_layer(arch):
    net = build_network(arch, (1, 12, 12), 10, width=16, layer_norm=True)
    layers = list(net.torso)
    norms = [i for i, m in enumerate(layers) if isinstance(m, (nn.LayerNorm, nn.GroupNorm))]
    hidden = [i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert [i + 1 for i in hidden] == norms and all(isinstance(layers[i + 1], nn.ReLU) for i in norms)


def test_resnet_layer_norm_replaces_batch_norm():
    net = build_network("resnet18", (3, 32, 32), 10, layer_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in net.modules()) == 20


def test_spectral_norm_converges_to_the_largest_singular_value():
    net = build_network("mlp", (1, 8, 8), 10, width=32, spectral_norm=True)
    layer = next(m for m in net.modules() if isinstance(m, SpectralNorm))
    x = torch.rand(4, 1, 8, 8)
    for _ in range(100):  # power iteration: one step per training forward
        net(x)
    weight = layer.layer.weight
    u = layer.u
    v = nn.functional.normalize(weight.T @ u, dim=0)
    estimate = (u @ weight @ v).item()
    assert estimate == pytest.approx(torch.linalg.matrix_norm(weight, ord=2).item(), rel=1e-3)
    effective = layer.layer.weight / estimate
    assert torch.linalg.matrix_norm(effective, ord=2).item() == pytest.approx(1.0, rel=1e-3)


def test_two_hot_encode_decode():
    two_hot = TwoHot(-2.0, 3.0, 11)
    y = torch.tensor([-2.0, -1.3, 0.0, 0.25, 2.99, 3.0, 7.0])
    probs = two_hot.encode(y)
    assert torch.allclose(probs.sum(-1), torch.ones(7)) and ((probs > 0).sum(-1) <= 2).all()
    assert torch.allclose(probs @ two_hot.support, y.clamp(-2, 3), atol=1e-6)  # expectation is y (clipped)
    assert torch.allclose(two_hot.decode(probs.clamp_min(1e-12).log()), y.clamp(-2, 3), atol=1e-5)
    assert probs[3].nonzero().flatten().tolist() == [4, 5]  # 0.25 sits between support points 0.0 and 0.5


def test_two_hot_network_outputs_logits_and_values():
    net = build_network("mlp", (1, 8, 8), 10, width=16, two_hot=TwoHot(-1, 1, 21))
    out = net(torch.rand(3, 1, 8, 8))
    assert out.shape == (3, 10, 21) and net.values(out).shape == (3, 10)
    assert net.loss(out, torch.zeros(3, 10)).shape == (3, 10)


@pytest.mark.parametrize("width, channels, dense", [(512, 64, 256), (16, 2, 8), (1024, 128, 512), (200, 25, 100)])
def test_cnn_width_scales_channels_and_dense_layers(width, channels, dense):
    cnn = build_network("cnn", (1, 10, 10), 10, width=width)
    assert [m.out_channels for m in cnn.modules() if isinstance(m, nn.Conv2d)] == [channels, channels]
    assert [m.out_features for m in cnn.modules() if isinstance(m, nn.Linear)] == [dense, dense, 10]
    assert cnn.torso[5].in_features == channels * 4 * 4 and cnn(torch.rand(2, 1, 10, 10)).shape == (2, 10)


def test_vit_dropout_takes_supplied_masks_drawn_from_a_generator():
    """The ViT's five dropout calls are found without drawing random numbers; masks drawn from a generator and
    supplied reproduce the forward exactly (the same generator state gives the same output), and p = 0.1 zeroes
    about a tenth of each mask, scaling the rest by 1 / 0.9."""
    torch.manual_seed(0)
    vit, x = build_network("vit", (1, 9, 9), 4), torch.rand(6, 1, 9, 9)
    rng = torch.get_rng_state()
    calls = dropout_calls(vit, x)
    assert torch.equal(torch.get_rng_state(), rng) and len(calls) == 5
    assert calls[0][0] == (6, 10, 256) and {p for _, _, p in calls} == {0.1}
    outputs = []
    for _ in range(2):
        masks = draw_masks(calls, torch.Generator().manual_seed(3))
        with supplied_masks(masks):
            outputs.append(vit.train()(x))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(torch.get_rng_state(), rng)
    values = torch.cat([m.flatten() for m in masks])
    assert values.unique().tolist() == pytest.approx([0.0, 1 / 0.9])
    assert 0.08 < (values == 0).float().mean() < 0.12
    assert not torch.equal(outputs[0], vit.eval()(x))  # eval mode: no dropout
