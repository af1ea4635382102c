"""common.science.hessian against independent references: eigvalsh of explicit matrices and of exact Hessians."""
import torch
from torch import nn
from torch.func import functional_call

import common.science.hessian
from common.science.hessian import hessian_matvec, hvp, lanczos, lanczos_batched, spectral_density, top_eigenvalue
from common.science.networks import eval_mode


def tiny_mlp(sizes=(5, 8, 5), seed=0, batch_norm=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(sizes[0], sizes[1]), nn.Tanh(), nn.Linear(sizes[1], sizes[2])]
    if batch_norm:
        layers.insert(1, nn.BatchNorm1d(sizes[1]))
    return nn.Sequential(*layers).double()


def regression_batch(model, n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model[0].in_features, generator=g, dtype=torch.float64)
    y = torch.randn(n, model[-1].out_features, generator=g, dtype=torch.float64)
    return x, y


def exact_hessian(model, x, y):
    """The dense Hessian of the mean squared error by torch.autograd.functional.hessian on flat parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = dict(model.named_buffers())

    def loss(theta):
        chunks = theta.split([s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return ((functional_call(model, (params, buffers), (x,)) - y) ** 2).mean()

    return torch.autograd.functional.hessian(loss, flat, vectorize=True)


def mlp_matvec(model, x, y):
    return hessian_matvec(lambda: ((model(x) - y) ** 2).mean(), list(model.parameters()))


def random_symmetric(dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eigenvalues = torch.cat([torch.linspace(-3, 10, dim - 2, dtype=torch.float64),
                             torch.tensor([25.0, 60.0], dtype=torch.float64)])  # outliers, as in Hessians
    return q @ torch.diag(eigenvalues) @ q.T


def test_lanczos_full_run_recovers_all_eigenvalues_of_explicit_matrix():
    A = random_symmetric(60)
    nodes, weights = lanczos(lambda v: A @ v, 60, 60)
    expected = torch.linalg.eigvalsh(A)
    assert torch.allclose(nodes, expected, rtol=0, atol=1e-6 * expected.abs().max())
    assert abs(weights.sum().item() - 1) < 1e-12


def test_lanczos_weights_are_squared_projections_of_start_vector():
    """Gaussian quadrature: weight_i = <u_i, v_0>^2 for the eigenvectors u_i of A (distinct eigenvalues)."""
    A = random_symmetric(40, seed=3)
    seen = []

    def matvec(v):
        seen.append(v.clone())
        return A @ v

    nodes, weights = lanczos(matvec, 40, 40, seed=5)
    eigenvalues, eigenvectors = torch.linalg.eigh(A)
    assert torch.allclose(nodes, eigenvalues, atol=1e-9)
    assert torch.allclose(weights, (eigenvectors.T @ seen[0]) ** 2, atol=1e-9)


def test_lanczos_matches_exact_hessian_of_tiny_mlp():
    model = tiny_mlp()
    x, y = regression_batch(model)
    matvec, dim = mlp_matvec(model, x, y)
    expected = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    assert dim == 93  # more than the 90 steps below
    scale = expected.abs().max()
    nodes, _ = lanczos(matvec, dim, dim)  # every eigenvalue when num_iters equals the dimension
    assert torch.allclose(nodes, expected, rtol=0, atol=1e-6 * scale)
    nodes, _ = lanczos(matvec, dim, 90)  # the accuracy target: extremes of a 90-step run to 1e-8
    assert abs(nodes[-1] - expected[-1]) <= 1e-8 * scale
    assert abs(nodes[0] - expected[0]) <= 1e-8 * scale
    assert abs(top_eigenvalue(matvec, dim, 40) - expected[-1]) <= 1e-8 * scale


def test_lanczos_float32_model_is_close():
    model = tiny_mlp().float()
    x, y = regression_batch(model)
    expected = torch.linalg.eigvalsh(exact_hessian(model.double(), x, y))
    model.float()
    matvec, dim = mlp_matvec(model, x.float(), y.float())
    nodes, _ = lanczos(matvec, dim, 60)
    assert abs(nodes[-1] - expected[-1]) <= 1e-5 * expected.abs().max()


def test_lanczos_invariant_subspace_gives_finite_nodes():
    nodes, weights = lanczos(lambda v: 2 * v, 10, 10)
    assert torch.isfinite(nodes).all() and torch.allclose(nodes, torch.full_like(nodes, 2.0))
    assert abs(weights.sum().item() - 1) < 1e-12
    nodes, weights = lanczos(lambda v: torch.zeros_like(v), 10, 5)
    assert nodes.tolist() == [0.0] and weights.tolist() == [1.0]


def test_hvp_matches_exact_hessian_times_vector():
    model = tiny_mlp()
    x, y = regression_batch(model)
    H = exact_hessian(model, x, y)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = list(model.parameters())
    loss_fn = lambda: ((model(x) - y) ** 2).mean()  # noqa: E731
    assert torch.allclose(hvp(loss_fn, params, v), H @ v, atol=1e-12)
    as_list = hvp(loss_fn, params, [c.view_as(p) for c, p in zip(v.split([p.numel() for p in params]), params)])
    assert torch.allclose(torch.cat([h.reshape(-1) for h in as_list]), H @ v, atol=1e-12)
    matvec, _ = mlp_matvec(model, x, y)
    for _ in range(2):  # the reused graph gives the same product every time
        assert torch.allclose(matvec(v), H @ v, atol=1e-12)


def test_hvp_with_batch_norm_in_eval_mode():
    model = tiny_mlp(batch_norm=True)
    x, y = regression_batch(model)
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from (0, 1)
            model(3 * x + 1)
    with eval_mode(model):
        H = exact_hessian(model, x, y)
        matvec, dim = mlp_matvec(model, x, y)
    assert model.training
    v = torch.randn(dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(matvec(v), H @ v, atol=1e-12)
    nodes, _ = lanczos(matvec, dim, dim)
    expected = torch.linalg.eigvalsh(H)
    assert torch.allclose(nodes, expected, rtol=0, atol=1e-6 * expected.abs().max())


def test_spectral_density_integrates_to_one():
    A = random_symmetric(50)
    nodes, weights = lanczos(lambda v: A @ v, 50, 30)
    sigma2 = 1e-5 * (nodes[-1] - nodes[0]) ** 2
    grid = torch.linspace(nodes[0] - 1, nodes[-1] + 1, 20001, dtype=torch.float64)
    density = spectral_density(nodes, weights, grid, sigma2)
    assert abs(torch.trapezoid(density, grid).item() - 1) < 1e-6
    two_runs = spectral_density(torch.stack([nodes, nodes]), torch.stack([weights, weights]), grid, sigma2)
    assert torch.allclose(two_runs, density)
    # a single node of weight 1 is the normal density itself
    single = spectral_density(torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([0.5]), 0.04)
    assert abs(single.item() - 1 / (0.2 * (2 * torch.pi) ** 0.5)) < 1e-12


def test_batched_lanczos_equals_single_runs():
    A = random_symmetric(80, seed=6)
    nodes, weights = lanczos_batched(lambda V: V @ A, 80, 50, num_runs=3, seed=4)
    assert nodes.shape == weights.shape == (3, 50)
    for r in range(3):
        single_nodes, single_weights = lanczos(lambda v: A @ v, 80, 50, seed=4 + r)
        assert torch.allclose(nodes[r], single_nodes, rtol=0, atol=1e-10 * 60)
        assert torch.allclose(weights[r], single_weights, rtol=0, atol=1e-10)
    assert not torch.allclose(nodes[0], nodes[1])  # different start vectors


def test_batched_lanczos_pads_an_early_breakdown_with_zero_weights():
    nodes, weights = lanczos_batched(lambda V: 2 * V, 10, 6, num_runs=2)
    assert torch.allclose(nodes, torch.full((2, 6), 2.0, dtype=torch.float64))
    assert torch.allclose(weights.sum(1), torch.ones(2, dtype=torch.float64))
    assert (weights[:, 1:] == 0).all()


def test_batched_hessian_products_equal_single_products():
    model = tiny_mlp()
    x, y = regression_batch(model)
    matvec, dim = mlp_matvec(model, x, y)
    V = torch.randn(4, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    H = exact_hessian(model, x, y)
    assert torch.allclose(matvec(V), V @ H, atol=1e-12)
    assert torch.allclose(matvec(V)[2], matvec(V[2]), atol=1e-14)


def test_partial_reorthogonalisation_skips_steps_and_leaves_no_ghosts(monkeypatch):
    """Outliers converge fast and make plain Lanczos lose orthogonality (ghost copies of the top eigenvalue);
    the estimated loss triggers reorthogonalisation at some steps only, and the nodes match a run that
    reorthogonalises at every step and the exact extremes."""
    dim = 400
    g = torch.Generator().manual_seed(9)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eigenvalues = torch.cat([torch.linspace(-1, 1, dim - 3, dtype=torch.float64),
                             torch.tensor([30.0, 60.0, 100.0], dtype=torch.float64)])
    A = (q * eigenvalues) @ q.T
    decisions = []
    lost = common.science.hessian._Orthogonality.lost

    def recording(self, *args):
        decisions.append(lost(self, *args))
        return decisions[-1]

    monkeypatch.setattr(common.science.hessian._Orthogonality, "lost", recording)
    nodes, weights = lanczos(lambda v: A @ v, dim, 90, seed=1)
    assert 0 < sum(map(len, decisions)) < 90
    monkeypatch.setattr(common.science.hessian._Orthogonality, "lost", lambda self, *args: [0])
    full_nodes, full_weights = lanczos(lambda v: A @ v, dim, 90, seed=1)
    assert torch.allclose(nodes, full_nodes, rtol=0, atol=1e-8 * 100)
    assert torch.allclose(weights, full_weights, rtol=0, atol=1e-8)
    assert abs(nodes[-1] - 100) < 1e-8 * 100 and abs(nodes[-2] - 60) < 1e-8 * 100
    assert ((nodes - 100).abs() < 1).sum() == 1  # one copy of the top eigenvalue, not ghosts
