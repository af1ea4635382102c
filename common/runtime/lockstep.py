"""Several seeds of one agent trained in lockstep in one process (``--num-seeds``), each equal to its single run.

The agent's training loop is a generator that leaves its updates to ``train``: it yields its online and target
networks and receives their optimizer, then yields each minibatch it learns on and receives that update's
``(loss, q_values)``. For one seed, ``train`` makes each update as a plain loop would (``loss.backward()``, one
optimizer step). For several, it stacks the seeds' networks (``common.runtime.seeds.SeedStack``: each seed's modules become
views of the stacked tensors), makes the seeds' updates one vmapped forward and backward, and steps one
elementwise optimizer on the stacked parameters, which is exactly one optimizer per seed. Everything else stays each
seed's own: its environments, replay, exploration and sampling generators, run directory, measurements and
checkpoints, in its own loop, which runs between its updates on its own global RNG state. A seed therefore equals
its single run to the rounding of the vmapped arithmetic (float64 tests hold it to 1e-9).
"""
import dataclasses
import random
import signal
import threading
from functools import partial

import numpy as np
import torch
from torch.func import functional_call, vmap

from common.errors import UsageError
from common.runtime.run import SIGNALS, combined_summary
from common.runtime.rundir import seed_run_dir
from common.runtime.seeds import SeedStack


def seed_args(args):
    """Each seed's single-run Args: seeds seed .. seed+N-1, num_seeds 1, and with --run-dir D the run directory
    D__seed<seed> (no --run-dir: each seed's default name). One seed is ``args`` itself."""
    if args.num_seeds == 1:
        return [args]
    return [dataclasses.replace(args, seed=args.seed + k, num_seeds=1,
                                run_dir=args.run_dir and seed_run_dir(args.run_dir, args.seed + k))
            for k in range(args.num_seeds)]


def train(args, open_run, agent, build_optimizer, loss_fn, compile=False):
    """Train ``agent(seed_args, open_run(seed_args))`` for every seed of ``args``; ``build_optimizer(params)`` makes
    the (elementwise) optimizer, ``loss_fn(q_net, target_net, batch)`` one seed's ``(loss, q_values)``. With
    ``compile``, the loss's forward and backward (vmapped over the seeds) go through ``torch.compile``; the
    optimizer step stays eager. Returns the summary of the run, with several seeds ``{"status": the worst of
    theirs, "runs": [summaries]}``."""
    runs = []
    try:
        for seed_run_args in seed_args(args):
            runs.append(open_run(seed_run_args))
    except UsageError:
        for run in runs:
            run.abandon()
        raise
    agents = [agent(run.args, run) for run in runs]
    if len(agents) == 1:
        return _single(agents[0], build_optimizer, torch.compile(loss_fn) if compile else loss_fn)
    handlers = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        return combined_summary(_lockstep(agents, runs, build_optimizer, loss_fn, compile))
    finally:
        if threading.current_thread() is threading.main_thread():  # the seeds finish in any order
            for s, handler in handlers.items():
                signal.signal(s, handler)


def _single(agent, build_optimizer, loss_fn):
    """One seed: each update exactly as the plain loop makes it."""
    try:
        q_net, target_net = next(agent)
        optimizer = build_optimizer(q_net.parameters())
        batch = agent.send(optimizer)
        while True:
            loss, q_values = loss_fn(q_net, target_net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            batch = agent.send((loss, q_values))
    except StopIteration as stop:
        return stop.value


def _lockstep(agents, runs, build_optimizer, loss_fn, compile):
    """Several seeds: one stacked update per round, each seed's loop resumed in turn to its next minibatch."""
    summaries, rng_states = [None] * len(agents), [None] * len(agents)
    training = set(range(len(agents)))

    def resume(k, value):
        """Seed k's loop up to its next yield, on its own global RNGs; None once it has returned its summary."""
        saved = _global_rng()
        if rng_states[k] is not None:
            _set_global_rng(rng_states[k])
        try:
            return agents[k].send(value)
        except StopIteration as stop:
            summaries[k] = stop.value
            training.discard(k)
            return None
        finally:
            rng_states[k] = _global_rng()
            _set_global_rng(saved)
            _spread_signal(runs)

    try:  # setting up: a seed's bad checkpoint stops them all
        networks = {k: resume(k, None) for k in range(len(agents))}
        live = [k for k, nets in networks.items() if nets is not None]  # not finished before
        if not live:
            return summaries
        q_stack, target_stack = (SeedStack([networks[k][i] for k in live]) for i in (0, 1))
        for stack in (q_stack, target_stack):
            stack.template.memory_format = torch.contiguous_format  # vmap lacks channels_last
            for module in stack.modules:  # a seed's state_dict (checkpoint, target update) holds only its own
                module.register_state_dict_post_hook(_detach_from_stack)
        optimizer = build_optimizer(q_stack.params.values())
        batches = {k: resume(k, SeedOptimizer(optimizer, q_stack, i)) for i, k in enumerate(live)}
    except UsageError:
        for run in runs:
            run.abandon()
        raise

    def seed_loss(params, target_params, batch):
        return loss_fn(partial(functional_call, q_stack.template, params),
                       partial(functional_call, target_stack.template, target_params), batch)

    seeds_loss = torch.compile(vmap(seed_loss)) if compile else vmap(seed_loss)

    while any(batch is not None for batch in batches.values()):
        # a finished seed's slot learns on another seed's batch: its numbers are never read again
        spare = next(batch for batch in batches.values() if batch is not None)
        stacked = [torch.stack(parts) for parts in zip(*(batches[k] or spare for k in live))]
        losses, q_values = seeds_loss(q_stack.params, target_stack.params, stacked)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # the seeds share nothing: each gets exactly its own gradient
        optimizer.step()
        losses, q_values = losses.detach(), q_values.detach()
        for i, k in enumerate(live):
            if batches[k] is not None:
                batches[k] = resume(k, (losses[i], q_values[i]))
    return summaries


class SeedOptimizer:
    """Seed k's share of an elementwise optimizer over ``stack.params``: ``state_dict`` is that of the optimizer
    its single run builds over its own network, and ``load_state_dict`` takes one."""

    def __init__(self, optimizer, stack, k):
        self.optimizer, self.params, self.k = optimizer, list(stack.params.values()), k

    def _stacked(self, i, value):
        return torch.is_tensor(value) and value.shape == self.params[i].shape

    def state_dict(self):
        state = self.optimizer.state_dict()
        return {"state": {i: {name: value[self.k].clone() if self._stacked(i, value) else value
                              for name, value in entry.items()} for i, entry in state["state"].items()},
                "param_groups": state["param_groups"]}

    def load_state_dict(self, state_dict):
        for i, entry in state_dict["state"].items():
            state = self.optimizer.state[self.params[i]]
            for name, value in entry.items():
                if torch.is_tensor(value) and value.shape == self.params[i].shape[1:]:
                    state.setdefault(name, torch.zeros_like(self.params[i]))[self.k].copy_(value)
                else:
                    state[name] = value


def _detach_from_stack(module, state_dict, prefix, local_metadata):
    for name, value in state_dict.items():
        state_dict[name] = value.clone()  # a view would save, and keep alive, every seed's tensors


def _spread_signal(runs):
    """A signal that reached one seed (before all had started, when each run still had its own handler) stops all."""
    signalled = next((run for run in runs if run.interrupted), None)
    for run in runs:
        if signalled and not run.interrupted:
            run.interrupted, run.signal = True, signalled.signal


def _global_rng():
    """The CPU's global RNGs (torch, numpy, Python); on the device the loop draws only from its own generators."""
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_global_rng(state):
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])
