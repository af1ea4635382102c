import copy

import pytest
import torch
from torch import nn

from common.science.interventions import redo, reset_last_layer, reset_optimizer_state, shrink_perturb
from common.science.networks import build_network
from common.science.optim import Adam, RMSProp
from common.science.stats import dormant_masks


def train_a_little(net, optimizer, steps=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(8, 1, 8, 8, generator=generator)
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()


def snapshot(net, optimizer=None):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    if optimizer is not None:
        state.update({(id(p), k): v.clone() for p, s in optimizer.state.items() for k, v in s.items()
                      if isinstance(v, torch.Tensor)})
    return state


def test_reset_last_layer_draws_the_default_initialisation_and_changes_nothing_else():
    net = build_network("mlp", (1, 8, 8), 4, width=16)
    optimizer = Adam(net.parameters())
    train_a_little(net, optimizer)
    before = snapshot(net)
    torch.manual_seed(7)
    reset_last_layer(net, optimizer)
    torch.manual_seed(7)
    expected = nn.Linear(16, 4)  # nn.Linear's constructor draws its default initialisation, as reset does
    assert torch.equal(net.head.weight, expected.weight) and torch.equal(net.head.bias, expected.bias)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items() if not k.startswith("head"))
    assert not any(p in optimizer.state for p in net.head.parameters())
    assert all(p in optimizer.state for p in net.torso.parameters())


def test_shrink_perturb_is_the_stated_formula_on_parameters_only():
    net = build_network("cnn", (1, 8, 8), 4, width=64, spectral_norm=True)
    fresh = build_network("cnn", (1, 8, 8), 4, width=64, spectral_norm=True)
    net(torch.rand(2, 1, 8, 8))  # one power-iteration step: the SpectralNorm buffer differs from fresh's
    before = {k: v.clone() for k, v in net.named_parameters()}
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    shrink_perturb(net, fresh, shrink=0.3, perturb=0.01)
    fresh_params = dict(fresh.named_parameters())
    for name, p in net.named_parameters():
        torch.testing.assert_close(p, 0.3 * before[name] + 0.01 * fresh_params[name], rtol=1e-6, atol=1e-9)
    assert all(torch.equal(v, dict(net.named_buffers())[k]) for k, v in buffers.items())
    with pytest.raises(ValueError):
        shrink_perturb(net, build_network("mlp", (1, 8, 8), 4, width=16), 0.3, 0.01)


@pytest.mark.parametrize("make", [lambda p: Adam(p, lr=0.01), lambda p: RMSProp(p, lr=0.01),
                                  lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
                                  lambda p: torch.optim.Adam(p, lr=0.01)])
def test_reset_optimizer_state_then_a_step_equals_a_fresh_optimizers(make):
    net = build_network("mlp", (1, 8, 8), 4, width=16)
    optimizer = make(net.parameters())
    train_a_little(net, optimizer)
    copy_net = copy.deepcopy(net)
    reset_optimizer_state(optimizer)
    train_a_little(net, optimizer, steps=2, seed=1)
    train_a_little(copy_net, make(copy_net.parameters()), steps=2, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), copy_net.parameters()))


def mlp_with_dormant_units():
    """Width-8 MLP with all-positive weights on non-negative inputs: layer 1's units 1 and 6 are dead and unit 3
    is weak (dormant, alive); layer 2's unit 4 is dead; every other unit is far above tau = 0.1."""
    net = build_network("mlp", (1, 2, 2), 3, width=8)
    first, second = net.torso[1], net.torso[3]
    with torch.no_grad():
        for layer in (first, second):
            layer.weight.uniform_(0.5, 1.0)
            layer.bias.fill_(0.5)
        first.weight[[1, 6]], first.bias[[1, 6]] = 0.0, -1.0
        first.weight[3], first.bias[3] = 0.001, 0.0
        second.weight[4], second.bias[4] = 0.0, -1.0
    return net, [[1, 3, 6], [4]]


def test_redo_recycles_exactly_the_dormant_units():
    net, dormant = mlp_with_dormant_units()
    optimizer = Adam(net.parameters())
    x = torch.rand(32, 1, 2, 2)
    train_a_little_on = lambda: (optimizer.zero_grad(), net(x).square().mean().backward(), optimizer.step())  # noqa
    masks = dormant_masks(net, x)
    assert [m.nonzero().flatten().tolist() for m in masks] == dormant
    # One Adam step with tiny lr leaves the dormant pattern as set; gives the optimizer moments to reset.
    for group in optimizer.param_groups:
        group["lr"] = 1e-9
    train_a_little_on()
    before = snapshot(net, optimizer)
    first, second, head = net.torso[1], net.torso[3], net.head
    torch.manual_seed(3)
    assert redo(net, optimizer, x, tau=0.1).item() == 4
    for layer, rows, live_inputs in ((first, dormant[0], range(4)), (second, dormant[1], [0, 2, 4, 5, 7])):
        keep = [i for i in range(8) if i not in rows]
        bound = layer.in_features ** -0.5  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        old = before[f"torso.{list(net.torso).index(layer)}.weight"]
        assert torch.equal(layer.weight[keep][:, live_inputs], old[keep][:, live_inputs])
        assert (layer.weight[rows].abs() <= bound).all() and (layer.bias[rows] == 0).all()  # dopamine's ReDo
        assert torch.equal(layer.bias[keep], before[f"torso.{list(net.torso).index(layer)}.bias"][keep])
        assert not torch.equal(layer.weight[rows], old[rows])
        state = optimizer.state[layer.weight]
        assert (state["exp_avg"][rows] == 0).all() and (state["exp_avg_sq"][rows] == 0).all()
        old_moment = before[(id(layer.weight), "exp_avg")]
        assert torch.equal(state["exp_avg"][keep][:, live_inputs], old_moment[keep][:, live_inputs])
    # Outgoing weights are zero, except in rows that were themselves recycled (a wholly fresh row).
    assert (second.weight[[0, 1, 2, 3, 5, 6, 7]][:, dormant[0]] == 0).all() and (head.weight[:, dormant[1]] == 0).all()
    assert (optimizer.state[head.weight]["exp_avg"][:, dormant[1]] == 0).all()
    other_columns = [i for i in range(8) if i not in dormant[1]]
    assert torch.equal(head.weight[:, other_columns], before["head.weight"][:, other_columns])
    assert torch.equal(head.bias, before["head.bias"])
    assert optimizer.state[first.weight]["step"] == 1  # step counts are per tensor: kept


def test_redo_on_a_cnn_zeroes_a_channels_flattened_columns():
    net = build_network("cnn", (1, 8, 8), 3, width=32, layer_norm=True)  # 4 channels, dense 16, 2x2 positions
    conv2, norm2, dense = net.torso[3], net.torso[4], net.torso[7]
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():  # the second conv's normalised channels: constant 1, except 2 (dead) and 1 (constant 3)
        norm2.weight.fill_(0.0)
        norm2.bias.copy_(torch.tensor([1.0, 3.0, -1.0, 1.0]))
    before = snapshot(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    masks = dormant_masks(net, x)
    assert masks[1].nonzero().flatten().tolist() == [2]
    redo(net, optimizer, x)
    kept_rows = ~masks[2]  # dense units that were not recycled themselves
    assert norm2.weight[2] == 1 and norm2.bias[2] == 0 and norm2.weight[1] == 0 and norm2.bias[1] == 3
    assert (dense.weight[kept_rows, 8:12] == 0).all()  # channel 2 owns flattened columns 2*4 .. 2*4+3
    assert torch.equal(dense.weight[kept_rows, :8], before["torso.7.weight"][kept_rows, :8])
    assert not torch.equal(conv2.weight[2], before["torso.3.weight"][2])
    assert torch.equal(conv2.weight[[0, 1, 3]], before["torso.3.weight"][[0, 1, 3]])


def test_redo_refuses_architectures_without_a_sequential_torso():
    with pytest.raises(ValueError, match="mlp and cnn"):
        redo(build_network("vit", (1, 9, 9), 3), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1), None)
