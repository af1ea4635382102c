"""The Arcade Learning Environment pipeline of ddqn_atari_layernorm.py: environment construction and preprocessing,
game ids and the human-normalisation score table, and the replay that stores each frame once."""
import csv
import os

import gymnasium as gym
import torch

from common.cli import check

SCORES_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "atari_scores.csv")


# ---------------------------------------------------------------------------------------------------- scores
def game_name(env_id):
    """'BreakoutNoFrameskip-v4' or 'ALE/Breakout-v5' -> 'Breakout' (the ALE name in atari_scores.csv)."""
    return env_id.split("/")[-1].split("-")[0].removesuffix("NoFrameskip").removesuffix("Deterministic")


def load_atari_scores():
    """{ALE name: (random, human)} for the 57 games (DQN Zoo's atari_data)."""
    with open(SCORES_CSV) as f:
        return {row["ale_name"]: (float(row["random"]), float(row["human"])) for row in csv.DictReader(f)}


def human_normalized(score, game, scores):
    random_score, human_score = scores.get(game, (float("nan"), float("nan")))
    return (score - random_score) / (human_score - random_score)


# ---------------------------------------------------------------------------------------------------- environment
def make_env(env_id, noop_max, max_episode_frames, render=False):
    """One frame per step: up to noop_max no-ops at reset, action repeat 4 with max-pooling of the last two frames,
    84x84 grey (gymnasium's AtariPreprocessing). Raw rewards; clipping and life loss are handled by the learner,
    and frames are stacked from the replay, so that each frame is stored once."""
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(env_id, max_num_frames_per_episode=max_episode_frames, repeat_action_probability=0.0,
                   render_mode="rgb_array" if render else None)
    return gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=4, screen_size=84,
                                           terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)


def check_env_id(env_id):
    """Raise a UsageError unless env_id is an ALE id that leaves frame skipping to make_env."""
    import ale_py

    gym.register_envs(ale_py)
    check(env_id in gym.registry and gym.registry[env_id].entry_point.startswith("ale_py"),
          f"unknown Atari env id {env_id!r}: use an ALE id such as BreakoutNoFrameskip-v4")
    check("NoFrameskip" in env_id or gym.registry[env_id].kwargs.get("frameskip") == 1,
          f"{env_id} skips frames itself: use the NoFrameskip-v4 id (frame skip and max-pooling happen here)")


def env_state(env):
    """The emulator (with its RNG) and the no-op RNG: enough to continue an episode bit for bit."""
    return {"ale": env.unwrapped.clone_state(include_rng=True),
            "np_random": env.unwrapped.np_random.bit_generator.state}


def restore_env_state(env, state):
    env.unwrapped.restore_state(state["ale"])
    env.unwrapped.np_random.bit_generator.state = state["np_random"]
    env.lives = env.unwrapped.ale.lives()


# ---------------------------------------------------------------------------------------------------- replay
class FrameReplay:
    """Uniform replay that stores each 84x84 frame once, on the device, and rebuilds 4-frame stacks when sampled.

    Slot i holds frame s_i and, once the agent has acted, (a_i, r_i, terminal_i); the transition's next state
    ends at slot i+1. When an episode ends (terminated or truncated) its real final frame gets a slot of its own
    that never starts a transition, and the reset frame goes into the next slot: so the next state of the last
    transition is the final observation, never the reset frame (the bug of the memory-optimised buffers of SB3 and
    CleanRL). Stacks do not cross episode starts: earlier positions repeat the episode's first frame, as
    gymnasium's FrameStackObservation does. `episode_start` holds absolute frame numbers (frames ever written).
    """

    def __init__(self, capacity, history=4, frame_shape=(84, 84), device="cpu"):
        self.capacity, self.history, self.device = capacity, history, device
        self.frames = torch.zeros((capacity, *frame_shape), dtype=torch.uint8, device=device)
        self.actions = torch.zeros(capacity, dtype=torch.uint8, device=device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.terminals = torch.zeros(capacity, dtype=torch.bool, device=device)
        self.valid = torch.zeros(capacity, dtype=torch.bool, device=device)  # slot starts a complete transition
        self.episode_start = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.offsets = torch.arange(-history + 1, 1, device=device)
        self.pos = 0  # frames ever written; the newest is at absolute index pos - 1

    def _write(self, frame, episode_start):
        slot = self.pos % self.capacity
        self.frames[slot] = torch.as_tensor(frame, device=self.device)
        self.episode_start[slot] = episode_start
        self.valid[slot] = False
        # The overwritten frame was the oldest; the next history-1 slots lose it from their stacks.
        later = (slot + torch.arange(1, self.history, device=self.device)) % self.capacity
        self.valid[later] &= self.episode_start[later] > self.pos - self.capacity
        self.pos += 1

    def start_episode(self, frame):
        """The first frame of an episode (after reset)."""
        self._write(frame, self.pos)

    def add(self, action, reward, terminal, next_frame):
        """Complete the newest slot with (action, reward, terminal) and append the next frame. After an episode
        ends the next call must be start_episode: the final frame's slot is never sampled."""
        slot = (self.pos - 1) % self.capacity
        self.actions[slot], self.rewards[slot], self.terminals[slot] = action, reward, terminal
        self.valid[slot] = True
        self._write(next_frame, self.episode_start[slot])

    def _stack(self, index, starts):
        """(n, history, 84, 84) stacks ending at absolute frame numbers `index`, clamped to the episode starts."""
        frame_ids = torch.maximum(index[:, None] + self.offsets, starts[:, None])
        return self.frames[frame_ids % self.capacity]

    def latest(self):
        """The agent's current observation, (1, history, 84, 84)."""
        newest = (self.pos - 1) % self.capacity
        return self._stack(torch.tensor([self.pos - 1], device=self.device), self.episode_start[newest:newest + 1])

    def sample(self, batch_size, generator=None):
        """Uniform over complete transitions: (obs, actions, rewards, terminals, next_obs), no host sync."""
        slots = torch.multinomial(self.valid.float(), batch_size, replacement=True, generator=generator)
        return self.transitions(slots)

    def transitions(self, slots):
        newest = self.pos - 1
        index = newest - (newest - slots) % self.capacity  # absolute frame number held in each slot
        starts = self.episode_start[slots]  # the next frame belongs to the same episode
        return (self._stack(index, starts), self.actions[slots].long(), self.rewards[slots],
                self.terminals[slots].float(), self._stack(index + 1, starts))

    def state_dict(self):
        names = ("frames", "actions", "rewards", "terminals", "valid", "episode_start")
        return {"pos": self.pos, **{name: getattr(self, name) for name in names}}

    def load_state_dict(self, state):
        for name, value in state.items():
            setattr(self, name, value.to(self.device) if isinstance(value, torch.Tensor) else value)
