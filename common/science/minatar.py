"""MinAtar (Young & Tian 2019) for ddqn_atari_layernorm.py: the game ids, the protocol's defaults, the vectorised
games, and the random-policy scores that normalise their returns.

The protocol is Young & Tian's examples/dqn.py (github.com/kenjyoung/MinAtar, the DQN of their paper): its
constants are MINATAR_DEFAULTS. The games are minatar's own ``Environment`` objects, stepped in a Python loop
(a game step costs microseconds): sticky actions with probability 0.1 (the package's and dqn.py's default), no
frame skip (a frame is an agent step), and the action set of the id: ``-v1`` the game's minimal set, ``-v0`` all 6
actions (dqn.py and the paper's results). Observations are (10, 10, C) bool; they reach the agent channels-first as
uint8 0/1 and the replay stores each one once (common.science.atari.FrameReplay with a history of 1).
"""
import csv
import os
import pickle

import numpy as np
import torch

from common.errors import check

PREFIX = "MinAtar/"
GAMES = {"Asterix": "asterix", "Breakout": "breakout", "Freeway": "freeway", "Seaquest": "seaquest",
         "SpaceInvaders": "space_invaders"}  # id name -> minatar's module name (minatar.gym.register_envs)
RANDOM_SCORES_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minatar_scores.csv")

# Young & Tian's examples/dqn.py constants, as ddqn_atari_layernorm.Args fields. Its target network is copied
# every 1,000 updates, one update per step: every 1,000 agent steps. Its RMSProp is torch's (eps 0.01 outside the
# square root); the agent keeps the paper's RMSProp (eps inside the root) with eps 0.01**2, the same floor on the
# denominator. Its Huber loss (smooth_l1, mean over the batch) is the agent's at batch 32 with grad_error_bound
# 1/32. Its target is DQN's max over the target network; the agent keeps the paper's Double-Q target.
MINATAR_DEFAULTS = dict(
    total_frames=5_000_000,  # NUM_FRAMES (a frame is an agent step)
    train_frequency=1,  # TRAINING_FREQ
    target_network_frequency=1_000,  # TARGET_NETWORK_UPDATE_FREQ (updates, one per step)
    rmsprop_eps=0.01**2,  # MIN_SQUARED_GRAD = 0.01, as the floor of the denominator
    epsilon_start=1.0,  # EPSILON, annealed from the replay start ...
    epsilon_decay_steps=100_000,  # ... over FIRST_N_FRAMES to END_EPSILON = 0.1 (the Args default)
    eval_frames=125_000,  # dqn.py has no evaluation: the agent steps of DQN Zoo's (500,000 frames / 4)
    noop_max=0,  # no no-op starts (an ALE protocol; dqn.py has none)
)
# Unchanged Args defaults that are dqn.py's too: buffer_size 100,000 (REPLAY_BUFFER_SIZE), learning starts at
# 5,000 (REPLAY_START_SIZE), batch_size 32, gamma 0.99, learning_rate 2.5e-4 (STEP_SIZE), rmsprop_decay 0.95
# (SQUARED_GRAD_MOMENTUM), epsilon_end 0.1 (END_EPSILON). max_abs_reward 1 clips nothing: MinAtar rewards are 0/1.


def is_minatar(env_id):
    return isinstance(env_id, str) and env_id.startswith(PREFIX)


def game_module(env_id):
    """'MinAtar/SpaceInvaders-v1' -> 'space_invaders'; a UsageError for an unknown game or version."""
    name, _, version = env_id.removeprefix(PREFIX).partition("-")
    check(name in GAMES and version in ("v0", "v1"),
          f"unknown MinAtar env id {env_id!r}: use MinAtar/<Game>-v1 (minimal actions) or -v0 (all 6), "
          f"<Game> one of {', '.join(GAMES)}")
    return GAMES[name]


def check_minatar_args(args):
    """A UsageError for an unknown MinAtar game, or for an ALE-only flag given with a MinAtar id."""
    game_module(args.env_id)
    for flag, given in (("--noop-max", args.noop_max != 0), ("--preprocessing", args.preprocessing is not None),
                        ("--capture-video", args.capture_video), ("--env-threads", args.env_threads != 0)):
        check(not given, f"{flag} applies to the ALE only: drop it with --env-id {args.env_id}")


def minatar_env_ids():
    """{game: env id} for the five games, minimal action sets."""
    return {name: f"{PREFIX}{name}-v1" for name in GAMES}


class VectorMinAtar:
    """``num_envs`` MinAtar games stepped in one Python loop, with VectorAtari's interface: ``reset(envs)`` and
    ``step(actions)`` return (k, C, 10, 10) uint8 frames on the device and numpy rest; lives are always 0 (MinAtar
    has none). An episode reaching max_episode_frames steps is truncated. Each game draws its sticky actions and its
    dynamics from its own RandomState, seeded from ``seed``; ``state_dict`` pickles the games whole, so a resumed run
    continues them exactly."""

    def __init__(self, env_id, num_envs, max_episode_frames, seed, device, sticky_action_prob=0.1):
        from minatar import Environment

        module = game_module(env_id)
        self.envs = [Environment(module, sticky_action_prob=sticky_action_prob) for _ in range(num_envs)]
        minimal = env_id.endswith("-v1")
        self.action_set = np.array(self.envs[0].minimal_action_set() if minimal else range(6), np.int64)
        self.num_envs, self.num_actions, self.max_episode_frames = num_envs, len(self.action_set), max_episode_frames
        self.frame_shape = tuple(np.roll(self.envs[0].state_shape(), 1))  # channels first
        self.device = device
        self.last_rgb = None  # no videos
        self.episode_steps = np.zeros(num_envs, np.int64)
        self.seed(seed)

    def seed(self, seed):
        """Reseed every game (env k from the k-th child of ``seed``); each starts anew at its next reset."""
        for env, child in zip(self.envs, np.random.SeedSequence(seed).spawn(self.num_envs)):
            env.seed(int(child.generate_state(1)[0]))

    def _frames(self, envs):
        states = np.stack([self.envs[k].state() for k in envs]).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(states, dtype=np.uint8)).to(self.device)

    def reset(self, envs=None):
        """Reset ``envs`` (host indices; all by default): their frames and lives (zeros)."""
        envs = np.arange(self.num_envs) if envs is None else np.asarray(envs)
        for k in envs:
            self.envs[k].reset()
        self.episode_steps[envs] = 0
        return self._frames(envs), np.zeros(len(envs), np.int64)

    def step(self, actions):
        """Step every game: (frames, rewards, terminated, truncated, lives). A game that ends must be reset."""
        rewards, terminated = np.zeros(self.num_envs), np.zeros(self.num_envs, bool)
        for k, action in enumerate(self.action_set[np.asarray(actions)]):
            rewards[k], terminated[k] = self.envs[k].act(action)
        self.episode_steps += 1
        truncated = (self.episode_steps >= self.max_episode_frames) & ~terminated
        return (self._frames(range(self.num_envs)), rewards, terminated, truncated,
                np.zeros(self.num_envs, np.int64))

    def state_dict(self):
        return {"envs": np.frombuffer(pickle.dumps(self.envs), np.uint8).copy(),
                "episode_steps": self.episode_steps.copy()}

    def load_state_dict(self, state):
        self.envs = pickle.loads(np.asarray(state["envs"]).tobytes())
        self.episode_steps = np.asarray(state["episode_steps"]).copy()

    def close(self):
        pass


# ---------------------------------------------------------------------------------------------------- scores
def random_policy_score(env_id, episodes, seed=0):
    """Mean return of the uniformly random policy over ``episodes`` episodes (sticky actions as in training)."""
    envs = VectorMinAtar(env_id, 1, 108_000, seed, "cpu")
    rng = np.random.default_rng(seed)
    returns = []
    for _ in range(episodes):
        envs.reset()
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = envs.step(rng.integers(envs.num_actions, size=1))
            total += reward[0]
            done = terminated[0] or truncated[0]
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns) / np.sqrt(episodes))


def load_random_scores():
    """{game: mean return of the random policy} (common/science/minatar_scores.csv, made by ``python -m common.science.minatar``)."""
    with open(RANDOM_SCORES_CSV) as f:
        return {row["game"]: float(row["random"]) for row in csv.DictReader(f)}


if __name__ == "__main__":  # python -m common.science.minatar: measure the random-policy scores into minatar_scores.csv
    rows = []
    for game, env_id in minatar_env_ids().items():
        mean, sem = random_policy_score(env_id, episodes=1_000)
        rows.append({"game": game, "env_id": env_id, "random": round(mean, 4), "random_sem": round(sem, 4),
                     "episodes": 1_000})
        print(rows[-1], flush=True)
    with open(RANDOM_SCORES_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
