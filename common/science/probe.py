"""The plasticity probe of Sec 2.2 / 3.1 (eq. 4-5).

From the current parameters, fit K random target functions ``g_k(x) = a + sin(1e5 f(x; w0_k))`` on inputs X
drawn from the agent's replay, where ``w0_k`` is a fresh initialisation of the same architecture and ``a`` the
network's mean prediction on X, with the agent's optimizer (fresh state) for ``steps`` minibatch steps. Then
``b`` is the targets' variance and plasticity ``P = b - mean_k final_loss_k``.

The K fits are independent copies trained in lockstep: parameters stacked with ``torch.func.stack_module_state``,
one ``vmap``-ed forward, one backward of the summed losses (each copy's gradient is its own loss's), and one
elementwise optimizer over the stacked tensors. ``run_probes`` does the same for the N seeds of ``--num-seeds``:
N x K copies, each seed's from its own network, inputs and seed. ``fit_sequential`` is the plain reference: same
draws, one fit after another.

Modes (dropout and BatchNorm behave differently in train and eval mode):
- the offset ``a`` is the network's mean prediction in eval mode, the mode the agent acts and bootstraps in
  (no dropout, BatchNorm on the agent's running statistics);
- each target network ``f(x; w0_k)`` is evaluated in eval mode, so that ``g_k`` is a fixed function of ``x``
  alone: no dropout, and BatchNorm on its initial running statistics, the same for every input;
- the fit trains in train mode, as the agent trains: dropout on, BatchNorm on each minibatch's statistics. The
  copies' BatchNorm layers keep no running statistics (updating them cannot be vmapped). Dropout masks come from
  the generator seeded with the probe's ``seed`` (after its minibatch indices), K copies' at a time, so a seed's
  probe is the same alone or in lockstep with other seeds';
- the final loss is measured in eval mode, so that it scores the fitted function rather than a dropout sample.
  With no running statistics left, BatchNorm there normalises each chunk of X (hundreds of inputs) by its own
  statistics, an estimate of X's.

Choices the paper leaves open: minibatches are drawn uniformly with replacement from X; the final loss is the
mean squared error of the predicted values on all of X; with a two-hot head the fit minimises the two-hot
cross-entropy, and its curves record that loss. ``value_loss=True`` fits the predicted values by squared error
whatever the head: the reference probe (``PROBES``) measures every arm with one loss as well as one optimizer.
The caller draws X and seeds the probe; the classification agent
gives each probe its own generator so that probing never changes the agent's trajectory.
"""
import contextlib
import copy
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, stack_module_state, vmap

from common.science.networks import draw_masks, dropout_calls, eval_mode, supplied_masks


# The probes an agent runs, by the name analyses take (--probe), and the prefix of their metric keys: the paper's
# (Sec 3.1: the agent's own optimizer and loss) and the reference (one optimizer, rate and loss for every arm).
PROBES = {"paper": "probe", "reference": "probe_ref"}


def probe_key(probe, name):
    """The metric key of ``name`` (e.g. ``plasticity``, ``initial_fit``) for the probe ``probe`` in ``PROBES``:
    ``probe_key("reference", "initial_fit") == "probe_ref/initial_fit"``."""
    return f"{PROBES[probe]}/{name}"


@dataclass
class ProbeResult:
    final_losses: torch.Tensor  # (K,) mean squared error of each fit on all of X after the last step
    curves: torch.Tensor  # (K, steps) minibatch training loss at each step (Fig 4)
    baseline: torch.Tensor  # () b: the targets' variance, averaged over targets
    plasticity: torch.Tensor  # () P = b - mean final loss (eq. 5)


@torch.no_grad()
def make_targets(network, make_network, inputs, num_targets, seed=0, chunk=512):
    """``(K, N, num_outputs)`` probe targets ``a + sin(1e5 f(x; w0_k))`` for the N ``inputs``."""
    with eval_mode(network):
        offset = predict_values(network, inputs, chunk).mean()
    targets = []
    for k in range(num_targets):
        with torch.random.fork_rng(devices=[inputs.device] if inputs.is_cuda else []):
            torch.manual_seed(seed * 1_000_003 + k)  # one fresh, reproducible initialisation per target
            fresh = make_network().to(inputs.device).eval()
        targets.append(offset + torch.sin(1e5 * predict_values(fresh, inputs, chunk)))
    return torch.stack(targets)


def predict_values(network, inputs, chunk=512):
    return torch.cat([network.values(network(inputs[i:i + chunk])) for i in range(0, len(inputs), chunk)])


def _probe_copy(network):
    model = copy.deepcopy(network).train()
    replace_all_batch_norm_modules_(model)  # batch statistics only: running-stat updates cannot be vmapped
    return model


def _draw_batches(num_inputs, num_targets, steps, batch_size, generator):
    return torch.randint(num_inputs, (steps, num_targets, batch_size), generator=generator, device=generator.device)


def _fit_loss(model, value_loss):
    """Per-example training loss of the fits: the head's own, or squared error of the predicted values."""
    if value_loss:
        return lambda out, y: (model.values(out) - y).square().flatten(1).mean(1)
    return model.loss


def fit_vectorized(networks, inputs, targets, make_optimizer, steps, batch_size, seeds, value_loss=False):
    """Fit K targets for each of N networks (the seeds of ``--num-seeds``; one network: N = 1), all N x K copies
    in lockstep. ``inputs`` is ``(N, num_inputs, ...)``, ``targets`` ``(N, K, num_inputs, outputs)``, and copy
    ``(n, k)`` starts from ``networks[n]`` and draws its minibatches from ``seeds[n]`` exactly as network n's probe
    alone would. Returns ``(model, stacked params, stacked buffers, curves (N, K, steps))``; copy ``(n, k)`` is
    row ``n * K + k`` of the stacked tensors."""
    num_seeds, num_targets, num_inputs = targets.shape[:3]
    starts = [_probe_copy(network) for network in networks]
    model = starts[0]  # the structure vmap calls with stacked tensors
    params, buffers = stack_module_state([start for start in starts for _ in range(num_targets)])
    params = {name: p.detach() for name, p in params.items()}  # gradients come from torch.func, not .backward()
    device = inputs.device
    # Each network's minibatch indices drawn from its own seed, as its probe alone draws them: (steps, N * K, B).
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    batches = torch.cat([_draw_batches(num_inputs, num_targets, steps, batch_size, g) for g in generators], dim=1)
    calls = dropout_calls(model, inputs[0, :batch_size])  # the ViT's; none for the other networks
    inputs, targets = inputs.flatten(0, 1), targets.flatten(0, 1)  # (N * I, ...) and (N * K, I, outputs)
    rows = torch.arange(num_seeds * num_targets, device=device).unsqueeze(1)
    offsets = rows // num_targets * num_inputs  # copy (n, k) reads network n's inputs, rows n * I .. n * I + I - 1

    loss = _fit_loss(model, value_loss)

    def copy_loss(p, b, x, y, masks):
        with supplied_masks(masks) if masks else contextlib.nullcontext():
            return loss(functional_call(model, (p, b), (x,)), y).mean()

    def summed_loss(p, b, x, y, masks):
        losses = vmap(copy_loss)(p, b, x, y, masks)
        return losses.sum(), losses  # the copies share nothing, so each gets exactly its own gradient

    grads_and_losses = grad(summed_loss, has_aux=True)
    curves = torch.empty(num_seeds * num_targets, steps, dtype=targets.dtype, device=device)
    optimizer = None
    for step in range(steps):
        idx = batches[step]  # (N * K, B)
        masks = [torch.cat(m) for m in zip(*(draw_masks(calls, g, (num_targets,)) for g in generators))] if calls \
            else []  # (N * K, ...) per dropout call, each seed's K from its own generator
        grads, losses = grads_and_losses(params, buffers, inputs[idx + offsets], targets[rows, idx], masks)
        if optimizer is None:
            # Keep each stacked parameter in the memory layout its gradient comes in (a stacked Linear weight's
            # gradient is the transpose of a contiguous batched matmul's output), so that the optimizer's
            # elementwise updates, the largest memory traffic of a step, read matching layouts and nothing is copied.
            params = {name: torch.empty_like(grads[name]).copy_(p) for name, p in params.items()}
            optimizer = make_optimizer(list(params.values()))
        for name, p in params.items():
            p.grad = grads[name]
        optimizer.step()
        curves[:, step] = losses
    return model, params, buffers, curves.unflatten(0, (num_seeds, num_targets))


@torch.no_grad()
def _final_losses_vectorized(model, params, buffers, inputs, targets, chunk=256):
    """``(N, K)`` mean squared error of each copy on all of its network's inputs, in eval mode."""
    model.eval()
    num_seeds, num_targets = targets.shape[:2]
    values = vmap(lambda p, b, x: model.values(functional_call(model, (p, b), (x,))), in_dims=(0, 0, None))
    final = []
    for n in range(num_seeds):
        rows = slice(n * num_targets, (n + 1) * num_targets)
        p, b = ({name: v[rows] for name, v in d.items()} for d in (params, buffers))
        errors = [(values(p, b, inputs[n, i:i + chunk]) - targets[n, :, i:i + chunk]).square()
                  for i in range(0, inputs.shape[1], chunk)]
        final.append(torch.cat(errors, dim=1).flatten(1).mean(1))
    return torch.stack(final)


def fit_sequential(network, inputs, targets, make_optimizer, steps, batch_size, seed=0, value_loss=False):
    """The reference: the same K fits with the same minibatches, one after another. Returns ``(final, curves)``.
    Its dropout (the ViT) draws from the global RNG, not the probe's generator: it is the reference for networks
    without dropout."""
    num_targets = targets.shape[0]
    batches = _draw_batches(len(inputs), num_targets, steps, batch_size,
                            torch.Generator(inputs.device).manual_seed(seed))
    curves = torch.empty(num_targets, steps, dtype=targets.dtype, device=inputs.device)
    final = torch.empty(num_targets, dtype=targets.dtype, device=inputs.device)
    for k in range(num_targets):
        model = _probe_copy(network)
        optimizer = make_optimizer(list(model.parameters()))
        fit_loss = _fit_loss(model, value_loss)
        for step in range(steps):
            idx = batches[step, k]
            loss = fit_loss(model(inputs[idx]), targets[k, idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            curves[k, step] = loss.detach()
        with torch.no_grad():
            final[k] = (predict_values(model.eval(), inputs) - targets[k]).square().mean()
    return final, curves


def run_probe(network, make_network, inputs, make_optimizer, *, num_targets=10, steps=2000, batch_size=32,
              seed=0, vectorized=True, value_loss=False):
    """Measure the plasticity of ``network`` on ``inputs`` (eq. 5); ``network`` itself is left unchanged.

    ``make_network()`` builds a freshly initialised network of the same architecture (for the targets);
    ``make_optimizer(params)`` builds the agent's optimizer with fresh state (the reference probe: its own);
    ``value_loss`` fits the predicted values by squared error instead of the head's loss.
    """
    if vectorized:
        return run_probes([network], make_network, inputs[None], make_optimizer, num_targets=num_targets,
                          steps=steps, batch_size=batch_size, seeds=[seed], value_loss=value_loss)[0]
    targets = make_targets(network, make_network, inputs, num_targets, seed)
    final, curves = fit_sequential(network, inputs, targets, make_optimizer, steps, batch_size, seed, value_loss)
    return _result(final, curves, targets)


def run_probes(networks, make_network, inputs, make_optimizer, *, num_targets=10, steps=2000, batch_size=32,
               seeds=None, value_loss=False):
    """``run_probe`` for N networks of one architecture at once (the seeds of ``--num-seeds``): all N x K fits in
    one lockstep. ``inputs`` is ``(N, num_inputs, ...)``, network n's probe inputs; ``seeds[n]`` seeds network n's
    targets and minibatches. Network n's result equals its own ``run_probe`` (to rounding: the vmapped batch is
    larger). Returns a list of N ``ProbeResult``s."""
    seeds = list(range(len(networks))) if seeds is None else seeds
    targets = torch.stack([make_targets(network, make_network, x, num_targets, seed)
                           for network, x, seed in zip(networks, inputs, seeds, strict=True)])
    model, params, buffers, curves = fit_vectorized(networks, inputs, targets, make_optimizer, steps, batch_size,
                                                    seeds, value_loss)
    final = _final_losses_vectorized(model, params, buffers, inputs, targets)
    return [_result(*parts) for parts in zip(final, curves, targets)]


def _result(final, curves, targets):
    baseline = targets.flatten(1).var(dim=1).mean()
    return ProbeResult(final, curves, baseline, baseline - final.mean())
