"""Statistics of a network put to the test as explanations of plasticity loss (Sec 5.2, Fig 3).

Every function returns tensors on the network's device, so a caller logs them with everything else in one
transfer; the only synchronisations are those torch.linalg's SVD makes on CUDA (error checking), once per call. ``plasticity_statistics`` gathers them all into
``{"stats/<name>": tensor}``.

Definitions (the paper names the quantities but not their formulas; these are the cited works'):

- ``srank(M, delta)``: Kumar et al. (2020), "Implicit under-parameterization": the smallest k such that the k
  largest singular values hold at least ``1 - delta`` of their sum. (Sometimes called "stable rank"; it is not
  ``||M||_F^2 / ||M||_2^2``.) 0 for the zero matrix.
- ``effective_rank(M)``: Roy & Vetterli (2007): ``exp(H(p))`` with ``p = s / sum(s)`` the normalised singular
  values. 0 for the zero matrix.
- A *unit* is one output feature of an activation module (``nn.ReLU``, ``nn.GELU``) of the network: a
  dense unit, a convolution channel (all its spatial positions together) or a feed-forward feature of the ViT
  (all tokens together). A module called twice (torchvision's ResNet blocks reuse their ReLU) counts as two layers.
  Statistics use eval mode (no dropout; BatchNorm running statistics).
- ``dead_units``: the fraction of all units whose activation is exactly zero on every input (and position).
- ``dormant_units``: ReDo (Sokar et al., 2023): unit i of layer l scores ``s_i = mean_x |h_i(x)| / mean_k
  mean_x |h_k(x)|`` (the mean over positions too for a convolution), and is dormant when ``s_i <= tau``; the
  fraction of all units. A layer whose activations are all zero is all dormant.
- ``feature_sparsity``: the fraction of exactly zero entries of ``network.features(inputs)``.
"""
import torch
from torch import nn

from common.science.networks import eval_mode

ACTIVATIONS = (nn.ReLU, nn.GELU)
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


def singular_values(matrix):
    """Descending singular values; a wide matrix is transposed first (the SVD of the tall one is the cheaper)."""
    matrix = matrix.detach().float()
    return torch.linalg.svdvals(matrix.mT if matrix.shape[-2] < matrix.shape[-1] else matrix)


def srank(matrix, delta=0.01):
    """Kumar et al. (2020)'s srank of ``matrix`` (``(..., m, n)``; batched), an integer tensor."""
    s = singular_values(matrix)
    total = s.sum(-1, keepdim=True)
    k = (s.cumsum(-1) < (1 - delta) * total).sum(-1) + 1
    return torch.where(total.squeeze(-1) > 0, k, torch.zeros_like(k))


def effective_rank(matrix):
    """Roy & Vetterli (2007)'s effective rank ``exp(entropy(s / sum(s)))`` of ``matrix`` (batched)."""
    s = singular_values(matrix)
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(s.dtype).tiny)
    entropy = -torch.special.xlogy(p, p).sum(-1)  # xlogy: 0 log 0 = 0
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy))


def weight_layers(network):
    """``(name, module)`` of the Linear and Conv2d layers, the head included."""
    return [(name, m) for name, m in network.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def weight_norm(network):
    """The L2 norm of all parameters together."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach()) for p in network.parameters()]))


def layer_weight_norms(network):
    """``{layer name: L2 norm of its weight}`` for each Linear and Conv2d layer."""
    return {name: torch.linalg.vector_norm(m.weight.detach()) for name, m in weight_layers(network)}


def distance_from(network, initial_parameters):
    """The L2 norm of ``theta - theta_0`` over all parameters; ``initial_parameters`` in ``parameters()`` order."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach() - p0) for p, p0 in
                                                 zip(network.parameters(), initial_parameters, strict=True)]))


def weight_rank(network, delta=0.01):
    """The mean srank over the Linear and Conv2d weights (a kernel reshaped to ``out x in*k*k``), head included."""
    ranks = [srank(m.weight.flatten(1), delta) for _, m in weight_layers(network)]
    return torch.stack(ranks).float().mean()


def _unit_dims(activation):
    """Dimensions to reduce over so that one value per unit remains: a conv channel is dim 1 of (N, C, H, W); a
    dense unit or a token feature is the last dim."""
    return (0, 2, 3) if activation.dim() == 4 else tuple(range(activation.dim() - 1))


@torch.no_grad()
def activation_summary(network, inputs, chunk=512):
    """One forward pass in eval mode over ``inputs`` (in chunks). Returns ``(features, layers)``: the penultimate
    features ``(N, d)`` and, per activation call, ``(max_abs, mean_abs)`` per unit over inputs and positions."""
    sums, maxima, counts, calls = [], [], [], [0]

    def hook(module, args, output):
        a = output.detach().abs()  # reduced at once: torchvision's in-place ReLUs may overwrite it later
        dims = _unit_dims(a)
        i, calls[0] = calls[0], calls[0] + 1
        if i == len(sums):
            sums.append(a.sum(dims)), maxima.append(a.amax(dims)), counts.append(0)
        else:
            sums[i] += a.sum(dims)
            maxima[i] = torch.maximum(maxima[i], a.amax(dims))
        counts[i] += a.numel() // a.shape[1 if a.dim() == 4 else -1]

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, ACTIVATIONS)]
    forward = getattr(network, "features", network)  # a plain nn.Sequential has no features: its outputs stand in
    try:
        with eval_mode(network):
            features = []
            for start in range(0, len(inputs), chunk):
                calls[0] = 0
                features.append(forward(inputs[start:start + chunk]))
    finally:
        for handle in handles:
            handle.remove()
    layers = [(maximum, total / count) for maximum, total, count in zip(maxima, sums, counts)]
    return torch.cat(features), layers


def _dead_fraction(layers):
    return torch.cat([(maximum == 0) for maximum, _ in layers]).float().mean()


def dead_fractions(network, inputs):
    """Per activation call, the fraction of its units that are zero on every input (and every position)."""
    return [(maximum == 0).float().mean() for maximum, _ in activation_summary(network, inputs)[1]]


def _dormant(layers, tau):
    # s_i = mean_i / layer mean; an all-zero layer (0 / 0) is all dormant.
    return [torch.where(mean.mean() > 0, mean / mean.mean() <= tau, True) for _, mean in layers]


def dormant_masks(network, inputs, tau=0.1):
    """Per activation call, a boolean mask of its ReDo-dormant units (``s_i <= tau``)."""
    return _dormant(activation_summary(network, inputs)[1], tau)


def dead_units(network, inputs):
    """The fraction of units that are exactly zero on every input (and every position)."""
    return _dead_fraction(activation_summary(network, inputs)[1])


def dormant_units(network, inputs, tau=0.1):
    """The fraction of ReDo tau-dormant units (Sokar et al. 2023 use tau = 0.1 in most experiments)."""
    return torch.cat(dormant_masks(network, inputs, tau)).float().mean()


def feature_rank(network, inputs, delta=0.01):
    """srank of the penultimate features ``network.features(inputs)`` (an ``N x d`` matrix)."""
    features, _ = activation_summary(network, inputs)
    return srank(features, delta)


def gradient_norm(loss, parameters):
    """The L2 norm of the gradient of ``loss`` with respect to ``parameters`` (leaves ``.grad`` untouched)."""
    grads = torch.autograd.grad(loss, list(parameters), allow_unused=True)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))


def plasticity_statistics(network, inputs, *, delta=0.01, tau=0.1, initial_parameters=None, loss_fn=None):
    """All statistics as ``{"stats/<name>": tensor}`` from one forward pass over ``inputs``.

    ``initial_parameters`` (the parameters at initialisation, in ``parameters()`` order) adds
    ``stats/distance_from_init``; ``loss_fn()`` (e.g. the TD loss on a fixed batch, evaluated here in eval mode)
    adds ``stats/grad_norm``.
    Per-layer weight norms are ``stats/weight_norm/<layer name>``.
    """
    features, layers = activation_summary(network, inputs)
    stats = {
        "stats/weight_norm": weight_norm(network),
        "stats/weight_rank": weight_rank(network, delta),
        "stats/feature_rank": srank(features, delta),
        "stats/feature_effective_rank": effective_rank(features),
        "stats/feature_sparsity": (features == 0).float().mean(),
        "stats/dead_units": _dead_fraction(layers),
        "stats/dormant_units": torch.cat(_dormant(layers, tau)).float().mean(),
    }
    if initial_parameters is not None:
        stats["stats/distance_from_init"] = distance_from(network, initial_parameters)
    if loss_fn is not None:
        with eval_mode(network):
            stats["stats/grad_norm"] = gradient_norm(loss_fn(), network.parameters())
    stats.update({f"stats/weight_norm/{name}": norm for name, norm in layer_weight_norms(network).items()})
    return stats
