"""Interventions of Sec 6.2 and B.1, and ReDo (Sokar et al., 2023).

- ``reset_last_layer(network)``: re-initialise ``network.head`` (a simplified variant of Nikishin et al., 2022).
- ``shrink_perturb(network, fresh_network, shrink, perturb)``: ``theta <- shrink * theta + perturb * theta_fresh``
  (Ash & Adams, 2020, with a fresh initialisation as the perturbation, as Sec 6.2 describes it).
- ``reset_optimizer_state(optimizer)``: forget the optimizer's moments (and step counts).
- ``redo(network, optimizer, inputs, tau)``: recycle dormant units (Sokar et al., 2023).

Each changes the parameters in place, under ``torch.no_grad``; re-initialisations draw from the global torch RNG
with each layer's own default initialiser (the one the network was built with).
"""
import copy

import torch
from torch import nn

from common.science.stats import dormant_masks


@torch.no_grad()
def reset_last_layer(network, optimizer=None):
    """Re-initialise ``network.head`` with its default initialiser; with ``optimizer``, also forget its state for
    the head's parameters (their moments belong to the old weights)."""
    network.head.reset_parameters()
    if optimizer is not None:
        reset_optimizer_state(optimizer, network.head.parameters())


@torch.no_grad()
def shrink_perturb(network, fresh_network, shrink, perturb):
    """``theta <- shrink * theta + perturb * theta_fresh`` for every parameter (buffers are left alone).

    ``fresh_network`` is a newly initialised network of the same architecture (Sec 6.2: "a perturbation equal to
    the weights of a randomly initialized network").
    """
    pairs = list(zip(network.parameters(), fresh_network.parameters(), strict=True))
    if any(p.shape != fresh.shape for p, fresh in pairs):
        raise ValueError("shrink_perturb needs a fresh network of the same architecture")
    for p, fresh in pairs:
        p.mul_(shrink).add_(fresh, alpha=perturb)


def reset_optimizer_state(optimizer, params=None):
    """Forget the optimizer's state (moments, step counts) for ``params`` (default: all). The next step then acts
    as a fresh optimizer's would. Works for ``common.science.optim.Adam``/``RMSProp`` and torch's optimizers."""
    if params is None:
        optimizer.state.clear()
    else:
        for p in params:
            optimizer.state.pop(p, None)


def _zero_moments(optimizer, param, index):
    """Zero the optimizer's per-element state of ``param`` at ``index`` (step counts are per tensor: kept)."""
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value[index] = 0


def _redo_layers(network):
    """``(incoming layer, its normalisation or None, outgoing layer)`` for each activation of a Sequential torso."""
    if not isinstance(network.torso, nn.Sequential):
        raise ValueError("redo supports the mlp and cnn architectures (a Sequential torso): in ResNet-18 and the ViT "
                         "a unit's outgoing weights are not one layer's")
    modules = [getattr(m, "layer", m) for m in network.torso] + [network.head]  # unwrap SpectralNorm
    weights = [i for i, m in enumerate(modules) if isinstance(m, (nn.Linear, nn.Conv2d))]
    layers = []
    for i, m in enumerate(modules):
        if isinstance(m, (nn.ReLU, nn.GELU)):
            incoming = max(j for j in weights if j < i)
            norm = modules[i - 1] if isinstance(modules[i - 1], (nn.LayerNorm, nn.GroupNorm)) else None
            layers.append((modules[incoming], norm, modules[min(j for j in weights if j > i)]))
    return layers


@torch.no_grad()
def redo(network, optimizer, inputs, tau=0.1):
    """ReDo (Sokar et al., 2023) on the mlp and cnn architectures: for each tau-dormant unit on ``inputs``
    (``common.science.stats.dormant_masks``), re-initialise its incoming weights from the layer's initialiser, zero its
    bias and its outgoing weights (as dopamine's ``labs/redo/weight_recyclers.py`` does), reset its
    normalisation's gain and bias to 1 and 0, and zero the optimizer's moments of all of these (dopamine keeps the
    bias's moments; zeroed here with the bias they belong to). Layers are processed input to output, so a recycled unit's new incoming row is
    wholly fresh, also where it reads from units recycled below it. Returns the number of recycled units."""
    layers = _redo_layers(network)
    masks = dormant_masks(network, inputs, tau)
    assert len(masks) == len(layers), "one activation call per layer in a Sequential torso"
    for (incoming, norm, outgoing), mask in zip(layers, masks):
        fresh = copy.deepcopy(incoming)
        fresh.reset_parameters()
        incoming.weight[mask] = fresh.weight[mask]
        _zero_moments(optimizer, incoming.weight, mask)
        if incoming.bias is not None:
            incoming.bias[mask] = 0.0
            _zero_moments(optimizer, incoming.bias, mask)
        if norm is not None and norm.weight is not None:
            norm.weight[mask], norm.bias[mask] = 1.0, 0.0
            _zero_moments(optimizer, norm.weight, mask), _zero_moments(optimizer, norm.bias, mask)
        weight = outgoing.weight
        # A conv channel feeding a dense layer through Flatten owns a block of H*W consecutive input columns.
        columns = mask.repeat_interleave(weight.shape[1] // len(mask)) if weight.dim() == 2 else mask
        weight[:, columns] = 0
        _zero_moments(optimizer, weight, (slice(None), columns))
    return sum(mask.sum() for mask in masks)
