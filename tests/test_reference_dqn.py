"""An independent reference for dqn_classification_mdp.train: a deliberately plain single-agent DQN written here
(nn.Modules, a Python list as the replay, the project's Adam, one network called plainly; no SeedStack, no run
group) that draws the same random numbers in the same order. ``train`` with one seed and each seed of three
seeds in lockstep must match it in float64 over a few hundred steps: weights, TD losses and probe results."""
import json
import os

import numpy as np
import pytest
import torch

import dqn_classification_mdp as dqn
from common.science.classification import ClassificationMDP
from common.science.optim import Adam
from common.science.probe import run_probe

CONFIG = dict(total_steps=240, num_envs=2, learning_starts=20, buffer_size=300, batch_size=8, width=16, gamma=0.9,
              epsilon=0.3, target_period=25, log_every=40, probe_every=120, probe_steps=5, probe_targets=3,
              probe_inputs=16, probe_batch_size=4, stats=False, hessian=False, num_images=300, cuda=False)


class ListReplay:
    """A circular replay of (obs, action, reward, next_obs) tuples in a Python list."""

    def __init__(self, capacity):
        self.capacity, self.items, self.pos = capacity, [], 0

    def add(self, transition):
        if len(self.items) < self.capacity:
            self.items.append(transition)
        else:
            self.items[self.pos] = transition
        self.pos = (self.pos + 1) % self.capacity

    def batch(self, indices):
        return [torch.stack([torch.as_tensor(self.items[i][field]) for i in indices.tolist()]) for field in range(4)]


def eval_values(network, x):
    with torch.no_grad():
        network.eval()
        values = network(x)
        network.train()
        return values


def reference_run(args, images, labels):
    """Sec 3.2's DQN for one seed, as plainly as it can be written. Returns its final networks, its log windows'
    mean TD losses and its probes ``{step: ProbeResult}``."""
    np.random.seed(args.seed)  # seed_everything
    torch.manual_seed(args.seed)
    env = ClassificationMDP(images, labels, args.variant, args.num_envs, seed=args.seed)
    q_network = dqn.build_q_network(args, tuple(images.shape[1:]))
    target_network = dqn.build_q_network(args, tuple(images.shape[1:]))
    target_network.load_state_dict(q_network.state_dict())
    optimizer = Adam(q_network.parameters(), lr=args.learning_rate, betas=(args.adam_b1, args.adam_b2),
                     eps=args.adam_eps)
    generator = torch.Generator().manual_seed(args.seed)
    replay = ListReplay(args.buffer_size)

    def store(obs, actions, rewards, next_obs):
        for transition in zip(obs, actions, rewards, next_obs):
            replay.add(transition)

    def probe(step):
        inputs_seed, _, fit_seed = np.random.SeedSequence([args.seed, step]).generate_state(3).tolist()
        pick = torch.randint(len(replay.items), (args.probe_inputs,), generator=torch.Generator().manual_seed(
            inputs_seed))
        inputs = images[torch.stack([replay.items[i][0] for i in pick.tolist()])]
        return run_probe(q_network, lambda: dqn.build_q_network(args, tuple(images.shape[1:])), inputs,
                         lambda params: Adam(params, lr=args.learning_rate), num_targets=args.probe_targets,
                         steps=args.probe_steps, batch_size=args.probe_batch_size, seed=fit_seed, vectorized=False)

    obs = env.reset()
    for _ in range(args.learning_starts):
        actions = torch.randint(10, (args.num_envs,), generator=generator)
        next_obs, rewards = env.step(actions)
        store(obs, actions, rewards, next_obs)
        obs = next_obs
    probes, td_losses, window = {0: probe(0)}, [], 0.0
    for step in range(1, args.total_steps + 1):
        random_actions = torch.randint(10, (args.num_envs,), generator=generator)
        explore = torch.rand(args.num_envs, generator=generator) < args.epsilon
        actions = torch.where(explore, random_actions, eval_values(q_network, images[obs]).argmax(1))
        next_obs, rewards = env.step(actions)
        store(obs, actions, rewards, next_obs)
        obs = next_obs

        batch_obs, batch_actions, batch_rewards, batch_next = replay.batch(
            torch.randint(len(replay.items), (args.batch_size,), generator=generator))
        next_values = eval_values(target_network, images[batch_next])
        greedy = eval_values(q_network, images[batch_next]).argmax(1, keepdim=True)
        targets = batch_rewards + args.gamma * next_values.gather(1, greedy).squeeze(1)
        taken = q_network(images[batch_obs]).gather(1, batch_actions[:, None]).squeeze(1)
        loss = (taken - targets).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        window += loss.item()

        if step % args.target_period == 0:
            target_network.load_state_dict(q_network.state_dict())
        if step % args.log_every == 0:
            td_losses.append(window / args.log_every)
            window = 0.0
        if step % args.probe_every == 0:
            probes[step] = probe(step)
    return q_network, target_network, td_losses, probes


def _compare(run_dir, reference):
    q_network, target_network, td_losses, probes = reference
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    for name, network in (("q_network", q_network), ("target_network", target_network)):
        for key, value in network.state_dict().items():
            torch.testing.assert_close(checkpoint[name][key], value, rtol=1e-9, atol=1e-12, msg=f"{name} {key}")
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    logged = [row["losses/td_loss"] for row in rows if "losses/td_loss" in row]
    np.testing.assert_allclose(logged, td_losses, rtol=1e-9)
    probe_rows = {row["step"]: row for row in rows if "probe/plasticity" in row}
    assert sorted(probe_rows) == sorted(probes) == [0, 120, 240]
    for step, result in probes.items():
        for key, value in (("probe/plasticity", result.plasticity), ("probe/baseline", result.baseline),
                           ("probe/final_loss", result.final_losses.mean())):
            assert probe_rows[step][key] == pytest.approx(value.item(), rel=1e-9, abs=1e-12), (step, key)


@pytest.mark.parametrize("num_seeds", [1, 3])
def test_train_matches_a_plain_single_agent_dqn(tmp_path, data_dir, num_seeds):
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        args = dqn.Args(data_dir=data_dir, run_dir=str(tmp_path / "run"), num_seeds=num_seeds, seed=7, **CONFIG)
        summary = dqn.train(args)
        assert summary["status"] == "completed"
        images, labels = dqn.load_images(args, torch.device("cpu"))
        for k in range(num_seeds):
            seed_args = dqn.Args(**{**vars(args), "num_seeds": 1, "seed": 7 + k})
            run_dir = str(tmp_path / "run") + (f"__seed{7 + k}" if num_seeds > 1 else "")
            _compare(run_dir, reference_run(seed_args, images, labels))
    finally:
        torch.set_default_dtype(default)
