"""N independent copies of one agent trained in lockstep in one process, behind a leading seed axis.

Seed k keeps everything its single run has: its own initialisation, environment copies, replay, generators,
global-RNG stream, target network, optimizer state and run directory. What is shared is the arithmetic: the
copies' parameters are stacked along a leading axis (``torch.func.stack_module_state``), the forward is one
``vmap``-ed call on a GPU and one plain call per seed on the CPU, the backward is one, and one elementwise optimizer
(``common.science.optim``) steps the stacked tensors, which is exactly N independent optimizers. With N = 1 the same
code is the plain single run.

The parts, each with ``state_dict(k)`` (seed k's, as its single run saves it) and ``load_state_dicts(states)``:

- ``SeedStack``: N networks as stacked tensors plus per-seed modules (``modules[k]``) that view them, so code
  written for one network (interventions, statistics, the probe) runs on ``modules[k]`` and writes into the stack;
- ``StackedEnvs``: N tensor environments stepped with ``(N, ...)`` actions; ``StackedReplay``: N replays;
- ``PerSeed``: what stays each seed's own object (emulators, a replay per seed, NumPy generators, records);
- ``StackedOptimizer``: the elementwise optimizer over a stack, saved per seed as a single run's optimizer;
- ``Generators``: one ``torch.Generator`` per seed (actions, minibatches, dropout masks): draws stack along the
  seed axis; ``GlobalRNGs``: each seed's own global RNG states (``common.runtime.run.global_rng_state``), swapped
  in where a single run draws from the global RNGs (initialisation, interventions) and saved as its checkpoint's;
- ``RunGroup``: the N runs (``common.runtime.run.Run``), which start, log, probe, checkpoint, diverge and finish per seed.

Dropout in the training forward (the ViT) draws seed k's masks from ``stack.dropout_generators[k]`` before the
vmapped call and supplies them (``common.science.networks.supplied_masks``); a single run draws and supplies its masks the
same way, so a ViT seed equals its single run too.
"""
import contextlib
import copy
import dataclasses
import os
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from common.errors import UsageError, check
from common.runtime.logger import to_python
from common.runtime.run import Run, combined_summary, global_rng_state, seed_everything, set_global_rng_state
from common.runtime.rundir import seed_run_dir
from common.runtime.sync import allowed_sync
from common.science.networks import draw_masks, dropout_calls, in_mode, supplied_masks


class SeedStack:
    """``len(networks)`` networks of one architecture as stacked leaves (``params``, ``buffers``) plus per-seed
    modules (``modules[k]``) that view them. ``networks`` are consumed: they become the views."""

    vmap_on_cpu = False
    """take the GPU's path, one vmapped call, on the CPU too (the tests check that path without a GPU)"""

    def __init__(self, networks):
        self.template = copy.deepcopy(networks[0])  # the structure vmap calls with stacked tensors
        if len(networks) > 1 and hasattr(self.template, "memory_format"):
            self.template.memory_format = torch.contiguous_format  # vmap lacks channels_last
        self.params, self.buffers = stack_module_state(networks)
        for name, param in networks[0].named_parameters():  # seed k's view keeps its network's memory layout
            if param.dim() == 4 and not param.is_contiguous() and param.is_contiguous(memory_format=torch.channels_last):
                stacked = self.params[name]
                self.params[name] = stacked.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3).detach()
                self.params[name].requires_grad_(stacked.requires_grad)
        self.modules = networks
        for k, network in enumerate(networks):
            for name, stacked in self.params.items():
                owner, leaf = _owner(network, name)
                owner._parameters[leaf] = nn.Parameter(stacked.detach()[k])
            for name, stacked in self.buffers.items():
                owner, leaf = _owner(network, name)
                owner._buffers[leaf] = stacked[k]
        self._slots = [[_owner(network, name) for name in self.params] for network in networks]  # where seed k's
        # module holds each parameter
        self.dropout_generators = None  # one per seed, set by the caller: seed k's dropout masks come from its own
        self._dropout_calls = {}  # input shape -> the dropout calls of one seed's training forward

    def __len__(self):
        return len(self.modules)

    def parameters(self):
        """The stacked parameters, ``(N, ...)`` each: what the optimizer steps."""
        return list(self.params.values())

    def call(self, x, train=True):
        """The forward of every seed on ``x`` of shape ``(N, batch, ...)``, in train or eval mode. On a GPU one
        vmapped call (one seed: a plain call); on the CPU one plain call of each seed's module, as vmap's batched
        products cost more there than the plain calls. So on the CPU seeds in lockstep equal their single runs bit
        for bit, and on a GPU to float64 rounding (the vmapped call rounds differently)."""
        masks = self._dropout_masks(x) if train else []  # (N, ...) each; none without dropout
        if len(self) == 1 or not (x.is_cuda or self.vmap_on_cpu):
            return self._call_each(x, train, masks)
        self.template.train(train)

        def forward(p, b, x, masks):
            with supplied_masks(masks) if masks else contextlib.nullcontext():
                return functional_call(self.template, (p, b), (x,))

        return vmap(forward, randomness="different")(self.params, self.buffers, x, masks)

    def _call_each(self, x, train, masks):
        """Each seed's module on its ``x[k]``, stacked. With gradients its parameters for the call are views of
        the stacked leaves, so that the gradient reaches them (one seed: ``squeeze``, whose backward is a view;
        several: ``unbind``, one backward step per leaf that stacks the seeds' gradients). Without gradients the
        modules' own parameters serve: they share the stacked leaves' memory. A plain call, as ``functional_call``'s
        bookkeeping costs as much as a small network's forward."""
        swap = torch.is_grad_enabled()
        views = [stacked.unbind(0) if len(self) > 1 else (stacked.squeeze(0),)
                 for stacked in self.params.values()] if swap else []
        outputs = []
        for k, (module, slots) in enumerate(zip(self.modules, self._slots)):
            own = [owner._parameters[leaf] for owner, leaf in slots]
            was_training = module.training
            if was_training != train:
                module.train(train)
            if swap:
                for (owner, leaf), seeds in zip(slots, views):
                    owner._parameters[leaf] = seeds[k]
            try:
                with supplied_masks([m[k] for m in masks]) if masks else contextlib.nullcontext():
                    outputs.append(module(x[k]))
            finally:
                if swap:
                    for (owner, leaf), param in zip(slots, own):
                        owner._parameters[leaf] = param
                if was_training != train:
                    module.train(was_training)
        return stack_seeds(outputs)

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

    def load_state_dicts(self, states):
        for module, state in zip(self.modules, states, strict=True):
            module.load_state_dict(state)

    def seed_parameters(self, k):
        """``{stacked tensor: seed k's view}`` in parameter order."""
        return dict(zip(self.params.values(), self.modules[k].parameters(), strict=True))


def _owner(network, name):
    path, _, leaf = name.rpartition(".")
    return network.get_submodule(path), leaf


class OneSeed:
    """One plain network behind ``SeedStack``'s calling convention (a leading seed axis of one), so that code
    written for stacks runs on one seed's module, e.g. ``stack.modules[k]`` (the probe's statistics)."""

    def __init__(self, network):
        self.template = network

    def call(self, x, train=True):
        with in_mode(self.template, train):
            return self.template(x[0]).unsqueeze(0)


class GlobalRNGs:
    """Each seed's own global RNG states (``global_rng_state``): what a single run draws from the global RNGs
    (initialisation, interventions) seed k draws inside ``each`` or ``of(k)``, on its own states."""

    def __init__(self, states):
        self.states = list(states)

    @contextlib.contextmanager
    def of(self, k):
        """Run the block on seed k's global RNG states and keep those it leaves for that seed; the process's own
        are put back afterwards."""
        saved = global_rng_state()
        set_global_rng_state(self.states[k])
        try:
            yield
        finally:
            self.states[k] = global_rng_state()
            set_global_rng_state(saved)

    def each(self, *per_seed):
        """``zip(*per_seed)``, seed k's tuple yielded while seed k's global RNG states are in place."""
        for k, items in enumerate(zip(*per_seed, strict=True)):
            with self.of(k):
                yield items


class Generators:
    """One ``torch.Generator`` per seed; a draw is each seed's own, stacked along the seed axis."""

    def __init__(self, generators):
        self.generators = list(generators)

    def __iter__(self):
        return iter(self.generators)

    def __len__(self):
        return len(self.generators)

    def randint_like(self, x, high):
        """Uniform integers in ``[0, high)`` of ``x``'s shape, row k (seed k's) from generator k."""
        return per_seed(self, lambda g: torch.randint(high, x.shape[1:], generator=g, device=g.device))

    def rand_like(self, x):
        """Uniform floats in ``[0, 1)`` of ``x``'s shape, row k from generator k."""
        return per_seed(self, lambda g: torch.rand(x.shape[1:], generator=g, device=g.device))

    def state_dict(self, k):
        return self.generators[k].get_state()

    def load_state_dicts(self, states):
        for generator, state in zip(self.generators, states, strict=True):
            generator.set_state(state.cpu())


def dropout_generator(seed, device):
    """Seed ``seed``'s dropout stream for its training forwards (the ViT), apart from its action and replay one."""
    entropy = np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1)[0]
    return torch.Generator(device).manual_seed(int(entropy))


def stack_seeds(tensors):
    """``torch.stack(tensors)`` along a new seed axis; for one seed a view of its tensor rather than a copy."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def per_seed(generators, draw):
    """``stack_seeds([draw(g) for g in generators])``: each seed's random numbers from its own generator."""
    return stack_seeds([draw(g) for g in generators])


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


class StackedOptimizer:
    """An elementwise optimizer over a ``SeedStack``'s stacked parameters: N independent optimizers, each saved
    and loaded as its single run's. ``state`` is the optimizer's, so ``reset_optimizer_state`` works on it."""

    def __init__(self, optimizer, stack):
        self.optimizer, self.stack = optimizer, stack

    @property
    def state(self):
        return self.optimizer.state

    def zero_grad(self, set_to_none=True):
        """torch's ``zero_grad``; dropping the gradients is done here, without its profiler bookkeeping, which
        costs as much as a small network's optimizer step."""
        if not set_to_none:
            return self.optimizer.zero_grad(set_to_none=False)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        self.optimizer.step()

    def views(self):
        """Per seed, an optimizer-like view of seed k's moments keyed by ``stack.modules[k]``'s parameters."""
        return [optimizer_view(self.optimizer, self.stack, k) for k in range(len(self.stack))]

    def state_dict(self, k):
        return optimizer_state(self.optimizer, self.stack, k)

    def load_state_dicts(self, states):
        load_optimizer_states(self.optimizer, states)


class PerSeed(list):
    """Seed k's own object at ``[k]``, not stacked (its emulators, its replay, its NumPy generator, its records),
    saved and loaded as its single run saves it: a module's or an environment's ``state_dict``, a generator's
    state, a dict of records as it is."""

    def state_dict(self, k):
        item = self[k]
        if isinstance(item, np.random.Generator):
            return item.bit_generator.state
        if isinstance(item, torch.Generator):
            return item.get_state()
        return item if isinstance(item, dict) else item.state_dict()

    def load_state_dicts(self, states):
        for item, state in zip(self, states, strict=True):
            if isinstance(item, np.random.Generator):
                item.bit_generator.state = state
            elif isinstance(item, torch.Generator):
                item.set_state(state.cpu())
            elif isinstance(item, dict):
                item.clear()
                item.update(state)
            else:
                item.load_state_dict(state)


class StackedEnvs:
    """N environments (seed k's with its own generator) stepped in lockstep; observations, actions and rewards
    are ``(N, num_envs)``. ``obs`` is the current observation, saved with each seed's environment."""

    def __init__(self, envs):
        self.envs, self.obs = list(envs), None

    def stack(self, name):
        """``torch.stack`` of an attribute of every environment (e.g. each seed's labels)."""
        return torch.stack([getattr(env, name) for env in self.envs])

    def reset(self):
        self.obs = torch.stack([env.reset() for env in self.envs])
        return self.obs

    def step(self, actions):
        steps = [env.step(a) for env, a in zip(self.envs, actions, strict=True)]
        self.obs = torch.stack([obs for obs, _ in steps])
        return self.obs, torch.stack([rewards for _, rewards in steps])

    def state_dict(self, k):
        return {"env": self.envs[k].state_dict(), "obs": self.obs[k].clone()}

    def load_state_dicts(self, states):
        for env, state in zip(self.envs, states, strict=True):
            env.load_state_dict(state["env"])
        self.obs = torch.stack([state["obs"] for state in states])


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


def seed_state(part, k):
    """Seed k's share of a stacked part: its ``state_dict(k)``, row k of a tensor, or of each tensor of a dict."""
    if isinstance(part, torch.Tensor):
        return part[k].clone()
    if isinstance(part, dict):
        return {name: seed_state(value, k) for name, value in part.items()}
    return part.state_dict(k)


def load_seed_states(part, states):
    """The inverse of ``seed_state``, in place."""
    if isinstance(part, torch.Tensor):
        part.copy_(torch.stack(states))
    elif isinstance(part, dict):
        for name, value in part.items():
            load_seed_states(value, [state[name] for state in states])
    else:
        part.load_state_dicts(states)


def stack_parts(parts):
    """One part from N seeds' own: networks into a ``SeedStack``, tensors into one tensor, anything else into a
    ``PerSeed`` list."""
    first = parts[0]
    if isinstance(first, nn.Module):
        return SeedStack(list(parts))
    if isinstance(first, torch.Tensor):
        return torch.stack(list(parts))
    return PerSeed(parts)


def seed_args(args, k):
    """The Args of seed k's single run: its seed, its run directory, one seed. With --num-seeds N > 1, --run-dir D
    gives D__seed<seed> for each seed (no --run-dir: each seed's own default name)."""
    seed = args.seed + k
    run_dir = args.run_dir and (seed_run_dir(args.run_dir, seed) if args.num_seeds > 1 else args.run_dir)
    return dataclasses.replace(args, seed=seed, num_seeds=1, run_dir=run_dir or None)


@dataclasses.dataclass
class Seed:
    """One seed's run and its records."""
    index: int  # its row in every stacked part
    run: Run
    probes: list = dataclasses.field(default_factory=list)  # the rows of its probes (summary.json's trajectories)
    curves: list = dataclasses.field(default_factory=list)  # (step, learning curve) of each probe (Fig 4)
    last_log: dict = dataclasses.field(default_factory=dict)
    steps: int = 0  # steps done; a diverged seed's count stops where it diverged

    @property
    def seed(self):
        return self.run.args.seed


class RunGroup:
    """The runs of ``--num-seeds`` N seeds trained in lockstep, seed k's the single run ``seed_args(args, k)``:
    each claims its own directory, logs, probes, checkpoints, diverges and finishes as that run would. The loop
    runs while any seed lives (not diverged); a diverged seed keeps its slot in the stacks and its numbers are
    never read. A signal interrupts every seed (the process's one handler interrupts every run).

    ``total`` and ``may_change`` are ``Run``'s; ``total_steps`` is the run's length in loop steps (default the
    ``total`` field's value). ``env_steps_per_step`` scales ``charts/SPS`` (environment steps per optimizer step);
    ``probe_seed_batch`` seeds probe in one lockstep at a time (0: all)."""

    def __init__(self, args, total, may_change=(), total_steps=None, env_steps_per_step=1, probe_seed_batch=0):
        self.seeds = []
        try:
            for k in range(args.num_seeds):
                self.seeds.append(Seed(k, Run(seed_args(args, k), total=total, may_change=may_change)))
        except UsageError:  # a seed's directory is taken or not resumable: give back those claimed
            for s in self.seeds:
                s.run.abandon()
            raise
        self.total = getattr(args, total) if total_steps is None else total_steps
        self.env_steps_per_step, self.probe_seed_batch = env_steps_per_step, probe_seed_batch
        self.active = [s for s in self.seeds if not s.run.finished]  # these train, log and save
        self.global_rngs, self._window = None, (0, time.time())

    def __len__(self):
        return len(self.seeds)

    @property
    def finished(self):
        return not self.active

    def summary(self):
        return combined_summary([s.run.finished for s in self.seeds])

    @contextlib.contextmanager
    def setting_up(self):
        """Set-up that may fail with a ``UsageError``: then every run is abandoned (its empty directory removed)."""
        try:
            yield
        except UsageError:
            for s in self.seeds:
                s.run.abandon()
            raise

    def build(self, make, device):
        """``make(seed)`` for each seed after seeding the global RNGs with it (as its single run does), stacked
        part by part (``stack_parts``); each seed's global RNG state afterwards becomes its own
        (``self.global_rngs``)."""
        parts, states = [], []
        for s in self.seeds:
            seed_everything(s.seed)
            parts.append(make(s.seed))
            states.append(global_rng_state())
        self.global_rngs = GlobalRNGs(states)
        return tuple(stack_parts(seed_parts) for seed_parts in zip(*parts))

    def generators(self, device):
        """Each seed's generator, seeded with its seed, as its single run seeds its own."""
        return Generators(torch.Generator(device).manual_seed(s.seed) for s in self.seeds)

    def dropout_generators(self, device):
        """Each seed's dropout stream for its training forwards (the ViT), apart from its action and replay one."""
        return Generators(dropout_generator(s.seed, device) for s in self.seeds)

    def resume(self, state, device):
        """With --resume, load each seed's checkpoint into the stacked parts of ``state`` (``{name: part}``) and
        return its step; None for a fresh run. A seed that diverged before fills its slot with a live seed's
        state."""
        if not self.seeds[0].run.args.resume:
            return None
        loaded = {}
        for s in self.active:  # each checkpoint's global RNG states, restored by its load, are its seed's own
            loaded[s.index] = s.run.load_checkpoint(device)
            self.global_rngs.states[s.index] = global_rng_state()
            if "seed_rng" in loaded[s.index]:  # a checkpoint that kept them apart: its torch state is the seed's
                torch_state, cuda_state = loaded[s.index]["seed_rng"]
                self.global_rngs.states[s.index]["torch"] = torch_state.cpu()
                if cuda_state is not None:
                    self.global_rngs.states[s.index]["cuda"] = [cuda_state.cpu()]
        ckpts = [loaded.get(s.index, loaded[self.active[0].index]) for s in self.seeds]
        try:
            step = ckpts[self.active[0].index]["step"]
            check(all(loaded[s.index]["step"] == step for s in self.active), "the seeds' checkpoints are at "
                  "different steps: resume each seed's run directory on its own (--num-seeds 1)")
            for name, part in state.items():
                load_seed_states(part, [ckpt[name] for ckpt in ckpts])
            for s, ckpt in zip(self.seeds, ckpts):
                s.probes, s.curves = ckpt["probes"], ckpt["probe_curves"]
                if s.probes:  # from a checkpoint that predates ``measured``, the last probe's step
                    s.run.measured.setdefault("probe", s.probes[-1]["step"])
        except KeyError as e:
            raise UsageError(f"{self.active[0].run.checkpoint_path} lacks {e} (from an older version of this code): "
                             f"start afresh with another --run-dir") from None
        return step

    def start(self, step):
        for s in self.active:
            s.run.start(step)
            s.steps = step
        self._window = (step, time.time())

    @property
    def live(self):
        """The seeds that train: not finished before, not diverged."""
        return [s for s in self.active if not s.run.diverged]

    @property
    def stopping(self):
        """Every seed diverged, or a signal came."""
        return not self.live or self.active[0].run.interrupted

    def log(self, step, metrics):
        """Log ``metrics`` (``{key: (N,) tensor}``) and ``charts/SPS`` at ``step`` for every live seed."""
        with allowed_sync():
            rows = torch.stack(list(metrics.values()), dim=1).tolist()  # the one host sync per log window
        start_step, start_time = self._window
        sps = (step - start_step) * self.env_steps_per_step / (time.time() - start_time)
        for s in self.live:
            s.steps = step
            s.last_log = s.run.log(step, {**dict(zip(metrics, rows[s.index])), "charts/SPS": sps})
            print(f"step {step:>8,}/{self.total:,}  seed {s.seed}  " + "  ".join(
                f"{key.split('/')[-1]} {value:.4g}" for key, value in s.last_log.items() if key != "step"))
        self._window = (step, time.time())

    def probe(self, step, measure):
        """The probes of the live seeds not yet probed at ``step``: ``measure(seeds, step)`` returns, per seed, its
        ``(metrics, learning curve)``, for ``probe_seed_batch`` seeds in one lockstep at a time. The probe is each
        run's measurement "probe", kept as ``Run.measure`` keeps one (``measured``, ``pending``), made for several
        runs at once: a signal abandons the one under way (``Interrupted``), and the resumed run redoes it. Its
        time is left out of SPS. Returns whether any seed was due."""
        due = [s for s in self.live if s.run.measured.get("probe", -1) < step]
        for s in due:
            s.run.pending.add("probe")
        due = [s for s in due if not s.run.stopping]
        chunk, started = self.probe_seed_batch or max(len(due), 1), time.time()
        try:
            for group in (due[i:i + chunk] for i in range(0, len(due), chunk)):
                with contextlib.ExitStack() as measuring:
                    for s in group:
                        measuring.enter_context(s.run.measurement())
                    results = measure(group, step)
                    with allowed_sync():  # the one host sync of these probes' results
                        rows, curves = to_python([metrics for metrics, _ in results]), [c.cpu() for _, c in results]
                for s, row, curve in zip(group, rows, curves):
                    s.probes.append(s.run.log(step, row))
                    s.curves.append((step, curve))
                    s.run.measured["probe"] = step
                    s.run.pending.discard("probe")
                    print(f"step {step:>8,}  seed {s.seed}  " + "  ".join(
                        f"{key} {value:.4f}" for key, value in row.items() if key.startswith("probe/")))
        finally:
            start_step, start_time = self._window
            self._window = (start_step, start_time + time.time() - started)
        return bool(due)

    @property
    def probe_pending(self):
        """A probe due at this step is not logged for some live seed (a signal skipped or abandoned it)."""
        return any("probe" in s.run.pending for s in self.live)

    def save_checkpoint(self, step, state):
        """Checkpoint every live seed that is not stopping: its share of each part of ``state`` and its records."""
        self._save([s for s in self.live if not s.run.stopping], step, state)

    def _save(self, seeds, step, state):
        """Write every seed's checkpoint, then put them all in place: the group resumes only from one step."""
        staged = []
        for s in seeds:
            parts = {name: seed_state(part, s.index) for name, part in state.items()}
            with self.global_rngs.of(s.index):  # the checkpoint's global RNG states are the seed's own
                staged.append(s.run.stage_checkpoint({**parts, "step": step, "probes": s.probes,
                                                      "probe_curves": s.curves}, step))
        for s, path in zip(seeds, staged):
            os.replace(path, s.run.checkpoint_path)

    def finish(self, step, state, save_outputs=None, final_metrics=None, extra=None):
        """Finish every run: a checkpoint (unless diverged; also after completion, so that a raised total
        continues from it), ``save_outputs(seed)`` (figures), and summary.json with the last log's and the last
        probe's metrics plus ``final_metrics(seed)``, and the fields ``extra(seed)`` (default: the probes). A run
        is done when it reached the total with no measurement pending. Returns the combined summary."""
        summaries = [s.run.finished for s in self.seeds]
        saving = [s for s in self.active if not s.run.diverged]
        for s in saving:
            s.steps = step
        self._save(saving, step, state)
        for s in reversed(self.active):  # reversed: each run puts back the signal handler it found
            if save_outputs is not None:
                save_outputs(s)
            final = {key: v for key, v in s.last_log.items() if key != "step"}
            if s.probes:
                final.update({key: v for key, v in s.probes[-1].items() if key != "step"})
            final.update(final_metrics(s) if final_metrics is not None else {})
            done = s.steps >= self.total and not s.run.pending
            fields = extra(s) if extra is not None else {"probes": s.probes}
            summaries[s.index] = s.run.finish(s.steps, done=done, metrics=final, **fields)
        return combined_summary(summaries)
