"""N independent copies of one agent trained in lockstep, one process (issue 13).

Each seed keeps everything a single run has: its own initialisation, environment copies, replay, generator,
global-RNG stream, target network and optimizer state. What is shared is the arithmetic: the copies' parameters
are stacked along a leading seed axis (``torch.func.stack_module_state``), the forward and backward are one
``vmap``-ed call, and one elementwise optimizer (``common.optim``) steps the stacked tensors, which is exactly N
independent optimizers.

``SeedStack`` also keeps, per seed, an ordinary ``nn.Module`` whose parameters and buffers are views into the
stacked tensors. Code written for one network (interventions, statistics, the probe, ``state_dict``) runs on
``stack.modules[k]`` unchanged, and what it writes in place lands in the stack.

Random numbers: whatever a single run draws from its own ``torch.Generator`` (actions, replay minibatches) is
drawn per seed from that seed's generator, and whatever it draws from the global torch RNG (initialisation,
interventions) is drawn inside ``global_rng(states, k, device)``, which swaps in seed k's own global-RNG state.
Dropout in the training forward (the ViT) draws seed k's masks from ``stack.dropout_generators[k]`` before the
vmapped call and supplies them (``common.networks.supplied_masks``); a single run draws and supplies its masks the
same way, so a ViT seed equals its single run too.
"""
import contextlib
import copy
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from common.networks import draw_masks, dropout_calls, supplied_masks


class SeedStack:
    """``len(networks)`` networks of one architecture as stacked leaves (``params``, ``buffers``) plus per-seed
    modules (``modules[k]``) that view them. ``networks`` are consumed: they become the views."""

    def __init__(self, networks):
        self.template = copy.deepcopy(networks[0])  # the structure vmap calls with stacked tensors
        self.params, self.buffers = stack_module_state(networks)
        self.modules = networks
        for k, network in enumerate(networks):
            for name, stacked in self.params.items():
                owner, leaf = _owner(network, name)
                owner._parameters[leaf] = nn.Parameter(stacked.detach()[k])
            for name, stacked in self.buffers.items():
                owner, leaf = _owner(network, name)
                owner._buffers[leaf] = stacked[k]
        self.dropout_generators = None  # one per seed, set by the caller: seed k's dropout masks come from its own
        self._dropout_calls = {}  # input shape -> the dropout calls of one seed's training forward

    def __len__(self):
        return len(self.modules)

    def call(self, x, train):
        """The forward of every seed on ``x`` of shape ``(N, batch, ...)``, in train or eval mode: one vmapped call,
        or for one seed a plain call (vmap's batched matrix products cost twice a plain one's on the CPU, and a
        single run should not pay for the stacking; the two round differently, so seeds in lockstep equal single
        runs to float64 rounding rather than bit for bit)."""
        self.template.train(train)
        masks = self._dropout_masks(x) if train else []  # (N, ...) each; none without dropout

        def forward(p, b, x, masks):
            with supplied_masks(masks) if masks else contextlib.nullcontext():
                return functional_call(self.template, (p, b), (x,))

        if len(self) == 1:
            params, buffers = ({name: v[0] for name, v in d.items()} for d in (self.params, self.buffers))
            return forward(params, buffers, x[0], [m[0] for m in masks]).unsqueeze(0)
        return vmap(forward, randomness="different")(self.params, self.buffers, x, masks)

    def _dropout_masks(self, x):
        """Each seed's dropout masks for a training forward on ``x``, from its own generator, stacked per call."""
        if self.dropout_generators is None:
            return []
        key = tuple(x.shape[1:])
        if key not in self._dropout_calls:
            self._dropout_calls[key] = dropout_calls(self.template, x[0])
        calls = self._dropout_calls[key]
        return [torch.stack(masks) for masks in zip(*(draw_masks(calls, g) for g in self.dropout_generators))]

    @torch.no_grad()
    def copy_from(self, other):
        """``self <- other`` for every parameter and buffer (the target-network update)."""
        torch._foreach_copy_(list(self.params.values()), list(other.params.values()))
        if self.buffers:
            torch._foreach_copy_(list(self.buffers.values()), list(other.buffers.values()))

    def state_dict(self, k):
        """Seed k's ``state_dict``, detached from the stack (saving a view would save all seeds)."""
        return {name: value.clone() for name, value in self.modules[k].state_dict().items()}

    def seed_parameters(self, k):
        """``{stacked tensor: seed k's view}`` in parameter order."""
        return dict(zip(self.params.values(), self.modules[k].parameters(), strict=True))


def _owner(network, name):
    path, _, leaf = name.rpartition(".")
    return network.get_submodule(path), leaf


@contextlib.contextmanager
def global_rng(states, k, device):
    """Run the block on seed k's own global torch RNG state ``states[k]`` (None: the current state), and keep the
    state it leaves for that seed; the process's global RNG is put back afterwards."""
    cuda = device.type == "cuda"
    saved = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)
    if states[k] is not None:
        torch.set_rng_state(states[k][0])
        if cuda:
            torch.cuda.set_rng_state(states[k][1], device)
    try:
        yield
    finally:
        states[k] = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)
        torch.set_rng_state(saved[0])
        if cuda:
            torch.cuda.set_rng_state(saved[1], device)


def dropout_generator(seed, device):
    """Seed ``seed``'s dropout stream for its training forwards (the ViT), apart from its action and replay one."""
    entropy = np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1)[0]
    return torch.Generator(device).manual_seed(int(entropy))


def per_seed(generators, draw):
    """``torch.stack([draw(g) for g in generators])``: each seed's random numbers from its own generator."""
    return torch.stack([draw(g) for g in generators])


def optimizer_state(optimizer, stack, k):
    """Seed k's share of an elementwise optimizer over ``stack.params``, as the ``state_dict`` of the optimizer a
    single run builds over ``stack.modules[k].parameters()``."""
    state = optimizer.state_dict()
    return {"state": {i: {n: v[k].clone() if _is_stacked(v, stack, i) else v for n, v in s.items()}
                      for i, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def load_optimizer_states(optimizer, states):
    """Load the seeds' single-run optimizer ``state_dict``s into the stacked optimizer (inverse of the above)."""
    first = states[0]
    stacked = {i: {n: torch.stack([s["state"][i][n] for s in states]) if isinstance(v, torch.Tensor) and
                   v.dim() > 0 else v for n, v in entry.items()} for i, entry in first["state"].items()}
    optimizer.load_state_dict({"state": stacked, "param_groups": first["param_groups"]})


def _is_stacked(value, stack, index):
    param = list(stack.params.values())[index]
    return isinstance(value, torch.Tensor) and value.shape == param.shape


def optimizer_view(optimizer, stack, k):
    """An object with ``.state`` keyed by seed k's parameter views and holding views of the stacked moments, so
    that in-place per-element edits (ReDo's ``_zero_moments``) reach the stacked optimizer."""
    state = {}
    for stacked, view in stack.seed_parameters(k).items():
        if stacked in optimizer.state:
            state[view] = {n: v[k] if isinstance(v, torch.Tensor) and v.shape == stacked.shape else v
                           for n, v in optimizer.state[stacked].items()}
    return SimpleNamespace(state=state)


class StackedReplay:
    """N circular replays of (observation index, action, reward, next observation index), filled in lockstep
    (so position and size are shared Python ints); ``view(k)`` is seed k's, with a single replay's interface."""

    KEYS = ("obs", "actions", "rewards", "next_obs")

    def __init__(self, num_seeds, capacity, device):
        self.capacity, self.pos, self.size = capacity, 0, 0  # Python ints: sampling needs no host sync
        self.obs = torch.zeros(num_seeds, capacity, dtype=torch.long, device=device)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros_like(self.obs)
        self.rewards = torch.zeros(num_seeds, capacity, dtype=torch.float32, device=device)  # as the env gives them

    def add(self, obs, actions, rewards, next_obs):
        """Each argument ``(N, num_envs)``."""
        slots = (self.pos + torch.arange(obs.shape[1], device=obs.device)) % self.capacity
        self.obs[:, slots], self.actions[:, slots], self.rewards[:, slots], self.next_obs[:, slots] = (
            obs, actions, rewards, next_obs)
        self.pos = (self.pos + obs.shape[1]) % self.capacity
        self.size = min(self.size + obs.shape[1], self.capacity)

    def sample(self, batch_size, generators):
        """``(obs, actions, rewards, next_obs)``, each ``(N, batch_size)``, seed k's indices from ``generators[k]``."""
        idx = per_seed(generators, lambda g: torch.randint(self.size, (batch_size,), generator=g,
                                                           device=self.obs.device))
        return tuple(getattr(self, key).gather(1, idx) for key in self.KEYS)

    def view(self, k):
        """Seed k's replay (views of its rows) with ``sample(batch_size, generator)``, ``size`` and ``obs``."""
        return SeedReplay(self, k)

    def state_dict(self, k):
        return {"pos": self.pos, "size": self.size, **{key: getattr(self, key)[k].clone() for key in self.KEYS}}

    def load_state_dicts(self, states):
        self.pos, self.size = states[0]["pos"], states[0]["size"]
        for key in self.KEYS:
            getattr(self, key).copy_(torch.stack([s[key] for s in states]))


class SeedReplay:
    def __init__(self, replay, k):
        self.size, self.capacity = replay.size, replay.capacity
        self.obs, self.actions, self.rewards, self.next_obs = (getattr(replay, key)[k] for key in replay.KEYS)

    def sample(self, batch_size, generator):
        idx = torch.randint(self.size, (batch_size,), generator=generator, device=self.obs.device)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx]
