import pytest
import torch

from common.science.networks import TwoHot, build_network
from common.science.optim import Adam, make_optimizer
from common.science.probe import PROBES, make_targets, predict_values, probe_key, run_probe, run_probes


def _setup(dtype=torch.float32, **net_kwargs):
    make = lambda: build_network("mlp", (1, 6, 6), 4, width=24, **net_kwargs).to(dtype)  # noqa: E731
    torch.manual_seed(0)
    network = make()
    inputs = torch.rand(96, 1, 6, 6, dtype=dtype)
    return network, make, inputs


def adam(params):
    return Adam(params, lr=3e-3, eps_root=1e-8)


def test_vectorised_probe_equals_sequential_fits():
    network, make, inputs = _setup()
    kwargs = dict(num_targets=4, steps=40, batch_size=16, seed=7)
    vectorised = run_probe(network, make, inputs, adam, **kwargs)
    sequential = run_probe(network, make, inputs, adam, vectorized=False, **kwargs)
    torch.testing.assert_close(vectorised.curves, sequential.curves, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vectorised.final_losses, sequential.final_losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vectorised.plasticity, sequential.plasticity)


@pytest.mark.parametrize("net_kwargs", [dict(layer_norm=True, spectral_norm=True), dict(two_hot=TwoHot(-3, 3, 13))])
def test_vectorised_probe_equals_sequential_with_options_in_float64(net_kwargs):
    network, make, inputs = _setup(torch.float64, **net_kwargs)
    kwargs = dict(num_targets=3, steps=25, batch_size=8, seed=3)
    vectorised = run_probe(network, make, inputs, adam, **kwargs)
    sequential = run_probe(network, make, inputs, adam, vectorized=False, **kwargs)
    torch.testing.assert_close(vectorised.curves, sequential.curves, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vectorised.final_losses, sequential.final_losses, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,hyperparameters", [("rmsprop", {}), ("sgd", dict(momentum=0.9))])
def test_probe_copies_any_optimizer_with_weight_decay(name, hyperparameters):
    """The probe builds the agent's optimizer (here with an L2 term) for K stacked copies: equal to K separate fits,
    and the weight decay changes the fits."""
    network, make, inputs = _setup(torch.float64)
    kwargs = dict(num_targets=3, steps=20, batch_size=8, seed=5)
    decayed = lambda p: make_optimizer(name, p, 1e-2, weight_decay=0.1, **hyperparameters)  # noqa: E731
    vectorised = run_probe(network, make, inputs, decayed, **kwargs)
    sequential = run_probe(network, make, inputs, decayed, vectorized=False, **kwargs)
    torch.testing.assert_close(vectorised.curves, sequential.curves, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vectorised.final_losses, sequential.final_losses, rtol=1e-10, atol=1e-12)
    plain = run_probe(network, make, inputs, lambda p: make_optimizer(name, p, 1e-2, **hyperparameters), **kwargs)
    assert not torch.allclose(plain.final_losses, vectorised.final_losses)


def test_targets_follow_eq_4_with_the_mean_prediction_as_offset():
    network, make, inputs = _setup()
    targets = make_targets(network, make, inputs, num_targets=3, seed=1)
    offset = predict_values(network.eval(), inputs).mean()
    assert targets.shape == (3, 96, 4)
    for k in range(3):
        with torch.random.fork_rng():
            torch.manual_seed(1 * 1_000_003 + k)
            fresh = make()
        torch.testing.assert_close(targets[k], offset + torch.sin(1e5 * fresh(inputs)))
    assert not torch.allclose(targets[0], targets[1])


def test_probe_leaves_the_network_unchanged_and_learns():
    network, make, inputs = _setup()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    result = run_probe(network, make, inputs, lambda p: make_optimizer("adam", p, 3e-3), num_targets=3,
                       steps=300, batch_size=32)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    targets = make_targets(network, make, inputs, num_targets=3, seed=0)
    torch.testing.assert_close(result.baseline, targets.flatten(1).var(1).mean())
    assert result.curves.shape == (3, 300)
    assert (result.final_losses < 0.7 * result.baseline).all()  # a fresh network fits much of the random targets
    torch.testing.assert_close(result.plasticity, result.baseline - result.final_losses.mean())


@pytest.mark.parametrize("arch,net_kwargs", [("mlp", dict(layer_norm=True)), ("cnn", dict(two_hot=TwoHot(-3, 3, 13)))])
def test_probes_of_several_networks_at_once_equal_each_networks_own_probe(arch, net_kwargs):
    """run_probes (the seeds of --num-seeds: N x K fits in one lockstep) gives each network the result of its own
    run_probe, with its own inputs and seed, in float64 to rounding."""
    make = lambda: build_network(arch, (1, 8, 8), 4, width=16, **net_kwargs).to(torch.float64)  # noqa: E731
    torch.manual_seed(0)
    networks = [make() for _ in range(3)]
    inputs = torch.rand(3, 40, 1, 8, 8, dtype=torch.float64)
    kwargs = dict(num_targets=2, steps=15, batch_size=8)
    together = run_probes(networks, make, inputs, adam, seeds=[11, 12, 13], **kwargs)
    for network, x, seed, result in zip(networks, inputs, (11, 12, 13), together):
        alone = run_probe(network, make, x, adam, seed=seed, **kwargs)
        torch.testing.assert_close(result.curves, alone.curves, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(result.final_losses, alone.final_losses, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(result.plasticity, alone.plasticity, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(together[0].curves, together[1].curves)


def test_value_loss_fits_predicted_values_by_squared_error_whatever_the_head():
    """The reference probe's loss: for a regression head it is the head's own; for a two-hot head the squared
    error of the expected values, vectorised equal to sequential, and a different fit from the cross-entropy's."""
    network, make, inputs = _setup(torch.float64)
    kwargs = dict(num_targets=3, steps=20, batch_size=8, seed=5)
    own, value = (run_probe(network, make, inputs, adam, value_loss=v, **kwargs) for v in (False, True))
    torch.testing.assert_close(own.curves, value.curves, rtol=1e-12, atol=1e-14)
    network, make, inputs = _setup(torch.float64, two_hot=TwoHot(-3, 3, 13))
    vectorised = run_probe(network, make, inputs, adam, value_loss=True, **kwargs)
    sequential = run_probe(network, make, inputs, adam, value_loss=True, vectorized=False, **kwargs)
    torch.testing.assert_close(vectorised.curves, sequential.curves, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vectorised.final_losses, sequential.final_losses, rtol=1e-10, atol=1e-12)
    cross_entropy = run_probe(network, make, inputs, adam, **kwargs)
    targets = make_targets(network, make, inputs, num_targets=3, seed=5)
    assert not torch.allclose(cross_entropy.curves, vectorised.curves)
    # the first step's loss is the squared error of the untouched network's values on its minibatch
    idx = torch.randint(len(inputs), (1, 3, 8), generator=torch.Generator().manual_seed(5))[0]
    expected = torch.stack([(predict_values(network.train(), inputs[i]) - targets[k, i]).square().mean()
                            for k, i in enumerate(idx)])
    torch.testing.assert_close(vectorised.curves[:, 0], expected, rtol=1e-10, atol=1e-12)


def test_probe_key_names_each_probes_metrics():
    assert probe_key("paper", "initial_fit") == "probe/initial_fit"
    assert probe_key("reference", "plasticity_loss") == "probe_ref/plasticity_loss"
    assert set(PROBES) == {"paper", "reference"}
