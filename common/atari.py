"""The Arcade Learning Environment pipeline of ddqn_atari_layernorm.py: environment construction and preprocessing,
game ids and the human-normalisation score table, evaluation videos and
the replay that stores each frame once."""
import csv
import os

import gymnasium as gym
import numpy as np
import torch

from common.errors import check

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
def atari_env_ids():
    """{ALE name: env id} for the 57 games of the score table: their v5 ids, the only ones ale-py 0.12 registers for
    all 57 (Surround has no NoFrameskip-v4 id). make_env overrides v5's frame skip and sticky actions."""
    return {name: f"ALE/{name}-v5" for name in load_atari_scores()}


def check_env_id(env_id):
    """Raise a UsageError unless env_id is a registered ALE id (any version: make_env sets the protocol)."""
    import ale_py

    gym.register_envs(ale_py)
    check(env_id in gym.registry and gym.registry[env_id].entry_point.startswith("ale_py"),
          f"unknown Atari env id {env_id!r}: use an ALE id such as ALE/Breakout-v5 (common.atari.atari_env_ids())")


def make_env(env_id, noop_max, max_episode_frames, preprocessing="dqn_zoo", render=False):
    """One agent step per step: 1 to noop_max no-op frames at reset, action repeat 4 with the max over the last two
    frames, 84x84 grey. Every game runs under DQN Zoo's emulator settings (gym_atari.py): frameskip 1 in the
    emulator, no sticky actions, the minimal action set. `preprocessing` is "dqn_zoo" (DQNZooPreprocessing, the
    default) or "gymnasium" (gymnasium's AtariPreprocessing). Raw rewards; clipping and life loss are handled by the
    learner, and frames are stacked from the replay, so that each frame is stored once."""
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(env_id, obs_type="rgb", frameskip=1, repeat_action_probability=0.0, full_action_space=False,
                   max_num_frames_per_episode=max_episode_frames, render_mode="rgb_array" if render else None)
    if preprocessing == "gymnasium":
        return gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=4, screen_size=84,
                                               terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    return DQNZooPreprocessing(env, noop_max)


def luminance_84x84(rgb):
    """DQN Zoo's processors.rgb2y then processors.resize: Y = 0.299 R + 0.587 G + 0.114 B truncated to uint8, then
    PIL's bilinear resize to 84x84 (a triangle filter as wide as the scale: every source pixel counts)."""
    from PIL import Image

    y = np.tensordot(rgb, [0.299, 0.587, 1 - (0.299 + 0.587)], (-1, 0)).astype(np.uint8)
    return np.array(Image.fromarray(y).resize((84, 84), Image.BILINEAR))


class DQNZooPreprocessing(gym.Wrapper):
    """DQN Zoo's Atari pipeline (gym_atari.RandomNoopsEnvironmentWrapper and processors.atari) on a frameskip-1 RGB
    env: 1 to noop_max no-op frames after each reset (their count drawn with the env's np_random, so env_state
    restores it); each step repeats the action for 4 frames, sums the rewards, takes the pixel-wise max of the last
    two RGB frames and returns its 84x84 luminance. The reset frame is returned alone (DQN Zoo: max with zeros).
    An episode that ends within a repeat returns the max of its last two frames (its last if it has one); DQN Zoo
    pools zero padding there instead (a black frame, or the last frame alone), but a terminal state is never
    bootstrapped from. Truncation by max_num_frames_per_episode comes from the ALE, which counts no-op frames too."""

    def __init__(self, env, noop_max, frame_skip=4):
        super().__init__(env)
        self.noop_max, self.frame_skip = noop_max, frame_skip
        self.observation_space = gym.spaces.Box(0, 255, (84, 84), np.uint8)

    def reset(self, *, seed=None, options=None):
        rgb, info = self.env.reset(seed=seed, options=options)
        noops = self.env.unwrapped.np_random.integers(1, self.noop_max + 1) if self.noop_max > 0 else 0
        for _ in range(noops):
            rgb, _, terminated, truncated, info = self.env.step(0)  # action 0 is NOOP in every minimal action set
            if terminated or truncated:
                rgb, info = self.env.reset()
        return luminance_84x84(rgb), info

    def step(self, action):
        last_two, total_reward = [], 0.0
        for _ in range(self.frame_skip):
            rgb, reward, terminated, truncated, info = self.env.step(action)
            last_two = [*last_two[-1:], rgb]
            total_reward += reward
            if terminated or truncated:
                break
        return luminance_84x84(np.maximum(last_two[0], last_two[-1])), total_reward, terminated, truncated, info


def env_state(env):
    """The emulator (with its RNG) and the no-op RNG: enough to continue an episode bit for bit."""
    return {"ale": env.unwrapped.clone_state(include_rng=True),
            "np_random": env.unwrapped.np_random.bit_generator.state}


def restore_env_state(env, state):
    env.unwrapped.restore_state(state["ale"])
    env.unwrapped.np_random.bit_generator.state = state["np_random"]
    env.lives = env.unwrapped.ale.lives()  # for gymnasium's AtariPreprocessing; DQNZooPreprocessing keeps none


def write_video(frames, path):
    """An mp4 of RGB frames rendered once per agent step (15 per second of play)."""
    import cv2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 60 // 4, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


# ---------------------------------------------------------------------------------------------------- replay
class FrameReplay:
    """Uniform replay that stores each 84x84 frame once, on the device, and rebuilds 4-frame stacks when sampled.

    Slot i holds frame s_i and, once the agent has acted, (a_i, r_i, terminal_i); the transition's next state
    ends at slot i+1. When an episode ends (terminated or truncated) its real final frame gets a slot of its own
    that never starts a transition, and the reset frame goes into the next slot: so the next state of the last
    transition is the final observation, never the reset frame (the bug of the memory-optimised buffers of SB3 and
    CleanRL). Stacks do not cross episode starts. The first history-1 stacks of an episode are padded as DQN Zoo
    pads them with zero_pad (processors.atari: Deque, then trailing_zero_pad): the episode's frames come first and
    zeros fill the rest (A000, AB00, ABC0, then ABCD, BCDE); without zero_pad earlier positions repeat the
    episode's first frame (AAAA, AAAB, ...), as gymnasium's FrameStackObservation does. `episode_start` holds
    absolute frame numbers (frames ever written).
    """

    def __init__(self, capacity, history=4, frame_shape=(84, 84), zero_pad=True, device="cpu"):
        self.capacity, self.history, self.zero_pad, self.device = capacity, history, zero_pad, device
        self.frames = torch.zeros((capacity, *frame_shape), dtype=torch.uint8, device=device)
        self.actions = torch.zeros(capacity, dtype=torch.uint8, device=device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.terminals = torch.zeros(capacity, dtype=torch.bool, device=device)
        self.valid = torch.zeros(capacity, dtype=torch.bool, device=device)  # slot starts a complete transition
        self.episode_start = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.offsets = torch.arange(-history + 1, 1, device=device)  # a stack ending at its newest frame
        self.positions = torch.arange(history, device=device)  # a stack starting at its oldest frame
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
        """(n, history, 84, 84) stacks ending at absolute frame numbers `index`, padded at the episode starts."""
        if self.zero_pad:
            frame_ids = torch.maximum(index - self.history + 1, starts)[:, None] + self.positions
            return self.frames[frame_ids % self.capacity] * (frame_ids <= index[:, None])[:, :, None, None]
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
