import numpy as np
import pytest
import torch

from common.science.optim import Adam, RMSProp, make_optimizer


def _quadratic_grads(steps, shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) * 10.0 ** rng.integers(-4, 2) for _ in range(steps)]


def _run(optimizer_cls, grads, start, **kwargs):
    p = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    opt = optimizer_cls([p], **kwargs)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy()


def optax_adam(grads, start, lr, b1, b2, eps, eps_root):
    """Hand-written optax.adam followed by the -lr scaling: eq. 6 of the paper."""
    p, m, v = start.copy(), np.zeros_like(start), np.zeros_like(start)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat + eps_root) + eps)
    return p


@pytest.mark.parametrize("eps_root", [0.0, 1e-3])
def test_adam_matches_hand_written_optax_formula(eps_root):
    grads, start = _quadratic_grads(25, (7,)), np.linspace(-1, 1, 7)
    expected = optax_adam(grads, start, lr=1e-2, b1=0.9, b2=0.9, eps=1e-9, eps_root=eps_root)
    got = _run(Adam, grads, start, lr=1e-2, betas=(0.9, 0.9), eps=1e-9, eps_root=eps_root)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_eps_root_changes_the_update():
    grads, start = _quadratic_grads(5, (7,)), np.zeros(7)
    assert not np.allclose(_run(Adam, grads, start, eps_root=0.0), _run(Adam, grads, start, eps_root=1e-3))


def test_adam_equals_torch_adam_when_eps_root_is_zero():
    grads, start = _quadratic_grads(30, (4, 3)), np.ones((4, 3))
    got = _run(Adam, grads, start, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, eps_root=0.0)
    expected = _run(torch.optim.Adam, grads, start, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)


def test_adam_weight_decay_is_an_l2_gradient_term():
    grads, start = _quadratic_grads(10, (5,)), np.linspace(1, 2, 5)
    got = _run(Adam, grads, start, lr=1e-2, weight_decay=0.1)
    expected = _run(torch.optim.Adam, grads, start, lr=1e-2, weight_decay=0.1)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("centered,weight_decay", [(False, 0.0), (True, 0.0), (True, 0.3)])
def test_rmsprop_matches_optax_formula(centered, weight_decay):
    grads, start = _quadratic_grads(25, (6,)), np.linspace(-1, 1, 6)
    lr, decay, eps = 2.5e-4, 0.95, (0.01 / 32) ** 2
    p, v, m = start.copy(), np.zeros(6), np.zeros(6)
    for g in grads:
        g = g + weight_decay * p  # optax.add_decayed_weights before optax.rmsprop
        v = decay * v + (1 - decay) * g**2
        m = decay * m + (1 - decay) * g
        p = p - lr * g / np.sqrt(v - (m**2 if centered else 0) + eps)  # eps inside the root (DQN Zoo)
    got = _run(RMSProp, grads, start, lr=lr, decay=decay, eps=eps, centered=centered, weight_decay=weight_decay)
    np.testing.assert_allclose(got, p, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["adam", "rmsprop", "sgd"])
def test_weight_decay_is_the_same_l2_gradient_term_for_every_optimizer(name):
    """make_optimizer(weight_decay=wd) on gradients g equals weight_decay 0 on gradients g + wd * p."""
    grads, start, wd = _quadratic_grads(15, (5,), seed=2), np.linspace(-1, 2, 5), 0.5
    with_decay = _run(lambda params: make_optimizer(name, params, 1e-2, weight_decay=wd), grads, start)
    p = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    opt = make_optimizer(name, [p], 1e-2)
    for g in grads:
        p.grad = torch.tensor(g) + wd * p.detach()
        opt.step()
    np.testing.assert_allclose(with_decay, p.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert not np.allclose(with_decay, _run(lambda params: make_optimizer(name, params, 1e-2), grads, start))


def test_make_optimizer_gives_rmsprop_dqn_zoo_defaults_and_refuses_foreign_hyperparameters():
    p = [torch.nn.Parameter(torch.zeros(1))]
    group = make_optimizer("rmsprop", p, 2.5e-4).param_groups[0]
    assert (group["eps"], group["decay"], group["centered"]) == (0.01 / 32**2, 0.95, True)
    assert make_optimizer("adam", p, 1e-3).param_groups[0]["eps"] == 1e-8
    with pytest.raises(TypeError):
        make_optimizer("rmsprop", p, 1e-3, eps_root=1e-8)  # an Adam hyperparameter is not silently dropped
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lamb", p, 1e-3)


@pytest.mark.parametrize("cls,kwargs", [(Adam, dict(lr=1e-2, eps_root=1e-3)), (RMSProp, dict(lr=1e-2))])
def test_stacked_parameters_are_independent_optimizers(cls, kwargs):
    """One optimizer over (K, ...) stacked tensors equals K optimizers over the slices."""
    k, grads = 3, _quadratic_grads(12, (3, 4, 2), seed=1)
    start = np.arange(24, dtype=float).reshape(3, 4, 2) / 24
    stacked = _run(cls, grads, start, **kwargs)
    separate = np.stack([_run(cls, [g[i] for g in grads], start[i], **kwargs) for i in range(k)])
    np.testing.assert_allclose(stacked, separate, rtol=0, atol=0)


def test_invalid_hyperparameters_raise():
    p = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError):
        Adam(p, lr=-1)
    with pytest.raises(ValueError):
        RMSProp(p, decay=1.5)


def _transposed(t):
    """The same values stored in the transposed layout (non-contiguous, dense), as the probe's stacked weights."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("param_layout,grad_layout", [(_transposed, _transposed), (_transposed, torch.clone),
                                                      (torch.clone, _transposed)])
@pytest.mark.parametrize("eps_root,weight_decay", [(0.0, 0.0), (0.0, 0.1), (1e-3, 0.1)])
def test_adam_is_independent_of_memory_layout(param_layout, grad_layout, eps_root, weight_decay):
    """The fused path (eps_root = 0, one shared dense layout) and the elementwise path give the hand-written
    update whatever the strides; mismatched layouts must not be fed to the fused kernel, which would mix up
    elements."""
    grads = _quadratic_grads(6, (3, 5, 7), seed=2)
    start = np.random.default_rng(3).normal(size=(3, 5, 7))
    p = torch.nn.Parameter(param_layout(torch.tensor(start)))
    opt = Adam([p], lr=1e-2, eps_root=eps_root, weight_decay=weight_decay)
    for g in grads:
        p.grad = grad_layout(torch.tensor(g))
        opt.step()
    if weight_decay == 0:
        expected = optax_adam(grads, start, 1e-2, 0.9, 0.999, 1e-8, eps_root)
    else:  # the L2 term depends on the running parameters: compare with the contiguous run
        expected = _run(Adam, grads, start, lr=1e-2, eps_root=eps_root, weight_decay=weight_decay)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def _per_tensor_rmsprop(params, grads, states, lr, decay, eps, centered, weight_decay):
    """One RMSProp step written per tensor with single-tensor ops: the arithmetic the foreach step must equal."""
    for p, g, (v, m) in zip(params, grads, states):
        g = g if weight_decay == 0 else g.add(p, alpha=weight_decay)
        v.mul_(decay).addcmul_(g, g, value=1 - decay)
        if centered:
            m.lerp_(g, 1 - decay)
        p.addcdiv_(g, (v.addcmul(m, m, value=-1) if centered else v).add(eps).sqrt_(), value=-lr)


@pytest.mark.parametrize("centered,weight_decay", [(False, 0.0), (True, 0.0), (True, 0.3)])
def test_rmsprop_over_many_parameters_equals_per_tensor_arithmetic_bit_for_bit(centered, weight_decay):
    """The step updates every parameter of a group at once (foreach); each must get exactly what stepping it alone
    with single-tensor ops gives, and a parameter without a gradient is left alone."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 4, 3, 3), (16,), (128, 1024), (128,), (6, 128)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    frozen = torch.nn.Parameter(torch.randn(5, generator=gen))
    expected = [p.detach().clone() for p in params]
    states = [(torch.zeros(s), torch.zeros(s)) for s in shapes]
    kwargs = dict(lr=2.5e-4, decay=0.95, eps=0.01 / 32**2, centered=centered, weight_decay=weight_decay)
    optimizer = RMSProp([*params, frozen], **kwargs)
    before = frozen.detach().clone()
    for _ in range(5):
        grads = [torch.randn(s, generator=gen) * 10.0 for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        _per_tensor_rmsprop(expected, grads, states, **kwargs)
    for p, e in zip(params, expected):
        assert torch.equal(p.detach(), e)
    assert torch.equal(frozen.detach(), before)
