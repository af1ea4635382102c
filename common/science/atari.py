"""The Arcade Learning Environment pipeline of ddqn_atari_layernorm.py: the emulators in C++ threads under DQN Zoo's
protocol (VectorAtari) with DQN Zoo's frames made on the device, the one-environment Python pipeline they are
tested against (make_env, DQNZooPreprocessing), game ids and the human-normalisation score table, evaluation videos,
and the replay that stores each frame once."""
import csv
import os

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

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
    """Raise a UsageError unless env_id is a registered ALE id (any version: make_env sets the protocol) of a game
    with random and human scores in atari_scores.csv: the experiment's scores are human-normalised (Fig 7), and a
    game without them has no score that its evaluations, the divergence check or `aggregate` could use."""
    import ale_py

    gym.register_envs(ale_py)
    check(env_id in gym.registry and gym.registry[env_id].entry_point.startswith("ale_py"),
          f"unknown Atari env id {env_id!r}: use an ALE id such as ALE/Breakout-v5 (common.science.atari.atari_env_ids())")
    check(game_name(env_id) in load_atari_scores(), f"{env_id} has no random and human scores in "
          f"common/science/atari_scores.csv, so no human-normalised score: use one of the 57 games of "
          f"common.science.atari.atari_env_ids()")


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
    env, in Python: the reference VectorAtari is tested against. 1 to noop_max no-op frames after each reset (drawn
    with the env's np_random); each step repeats the action for 4 frames, sums the rewards, takes the pixel-wise max
    of the last two RGB frames and returns its 84x84 luminance. The reset frame is returned alone (DQN Zoo: max
    with zeros). An episode that ends within a repeat returns the max of its last two frames (its last if it has
    one); DQN Zoo pools zero padding there instead (a black frame, or the last frame alone), but a terminal state is
    never bootstrapped from. Truncation by max_num_frames_per_episode comes from the ALE, which counts no-op frames too."""

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


def write_video(frames, path):
    """An mp4 of RGB frames rendered once per agent step (15 per second of play)."""
    import cv2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 60 // 4, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


# ---------------------------------------------------------------------------------------------------- vector env
def rom_name(env_id):
    """'ALE/Breakout-v5' -> 'breakout', the ROM that ale_py's AtariVectorEnv takes."""
    import ale_py

    gym.register_envs(ale_py)
    return gym.registry[env_id].kwargs["game"]


def luminance_84x84_torch(rgb):
    """DQN Zoo's frame on the device, as luminance_84x84 computes it with numpy and PIL: (n, 210, 160, 3) uint8 ->
    (n, 84, 84) uint8. The luminance is computed in float64 and truncated to uint8 as DQN Zoo's rgb2y does (float32
    misses exact integers); PIL's bilinear downscale is a triangle filter as wide as the scale, horizontal pass
    first and each pass rounded to 8 bits, which torch's antialiased bilinear interpolation computes in floating
    point (PIL's fixed-point weights differ by at most one grey level; tests/test_atari_vector.py)."""
    weights = torch.tensor([0.299, 0.587, 1 - (0.299 + 0.587)], dtype=torch.float64, device=rgb.device)
    y = (rgb.double() @ weights).floor_()[:, None].float()
    y = F.interpolate(y, size=(y.shape[2], 84), mode="bilinear", antialias=True, align_corners=False)
    y = y.round_().clamp_(0, 255)
    y = F.interpolate(y, size=(84, 84), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)[:, 0]


class VectorAtari:
    """``num_envs`` emulators stepped in C++ threads (ale_py's AtariVectorEnv) under DQN Zoo's protocol: the
    minimal action set, no sticky actions, no fire reset, each action repeated for 4 frames with the max of the last
    two RGB frames; 1 to noop_max no-op frames after each reset; raw rewards and lives (clipping and life loss are
    the learner's). With preprocessing "dqn_zoo" the frames come as RGB and the luminance and the 84x84 resize run on
    the device (luminance_84x84_torch); with "gymnasium" the emulator threads return ALE grey frames resized with
    INTER_AREA, as gymnasium's AtariPreprocessing.

    Resume: the vector env cannot save an emulator, so ``state_dict`` holds what rebuilds each one bit for bit.
    An emulator draws its no-ops at each reset from its own generator, which only a seeded reset (a ROM reload, about
    0.2 s) sets; so env k is reseeded, from this object's generator, at its first reset and after every
    RESEED_EVERY resets, and ``state_dict`` holds its last seed, its resets since, and its actions since its last
    reset; ``load_state_dict`` repeats those resets and replays those actions. The emulator draws 0 to noop_max
    no-ops; a reset that draws none is repeated, which gives DQN Zoo's 1 to noop_max uniformly.

    Differences from DQNZooPreprocessing, none of which reaches a target the agent bootstraps from:
    - the episode cap ends the agent step during which the episode's frame count, no-ops included, reaches
      max_episode_frames (a truncation), so the last step repeats its action all 4 frames and its frame is a
      proper max of two; DQNZooPreprocessing stops the repeat at the cap's frame (up to 3 frames earlier);
    - the frame of a step that ends the game is the previous step's pooled frame maxed with the frames seen
      before the end (the emulator stops capturing): a terminal state, never bootstrapped from.
    """

    RESEED_EVERY = 64  # resets between seeded ones: bounds the resets a resume repeats

    def __init__(self, env_id, num_envs, noop_max, max_episode_frames, seed, device, preprocessing="dqn_zoo",
                 num_threads=0):
        from ale_py.vector_env import AtariVectorEnv

        self.rgb = preprocessing == "dqn_zoo"
        size = dict(img_height=210, img_width=160, grayscale=False) if self.rgb else dict(grayscale=True)
        self.env = AtariVectorEnv(
            rom_name(env_id), num_envs, **size, stack_num=1, frameskip=4, maxpool=True,
            noop_max=noop_max + 1 if noop_max else 0, use_fire_reset=False, episodic_life=False,
            reward_clipping=False, repeat_action_probability=0.0, full_action_space=False,
            max_num_frames_per_episode=max_episode_frames + 32,  # never reached: the cap is applied below
            autoreset_mode="NextStep", num_threads=num_threads)
        self.num_envs, self.noop_max, self.max_episode_frames = num_envs, noop_max, max_episode_frames
        self.num_actions = self.env.single_action_space.n
        self.device = device
        self.seed(seed)
        self.last_rgb = None  # the newest RGB frames (num_envs, 210, 160, 3), for videos
        self.noops = np.zeros(num_envs, np.int64)  # each env's no-op frames at its last reset

    def seed(self, seed):
        """Restart the stream of reseeding seeds; every env is reseeded at its next reset."""
        self.rng = np.random.default_rng(seed)
        self.seeds = np.zeros(self.num_envs, np.int64)  # each env's last reseeding seed
        self.resets = np.full(self.num_envs, self.RESEED_EVERY, np.int64)  # each env's resets since
        self.actions = [[] for _ in range(self.num_envs)]  # each env's actions since its last reset

    def _frames(self, obs):
        """The vector env's (k, 1, H, W[, 3]) uint8 array as (k, 84, 84) uint8 frames on the device."""
        obs = torch.from_numpy(obs[:, 0]).to(self.device, non_blocking=True)
        return luminance_84x84_torch(obs) if self.rgb else obs

    def _reset(self, envs, seeds=None):
        """One reset of ``envs`` (seeded when ``seeds`` is given): every env's observations and info."""
        mask = np.zeros(self.num_envs, bool)
        mask[envs] = True
        return self.env.reset(seed=None if seeds is None else np.asarray(seeds, np.int64),
                              options={"reset_mask": mask})

    def _reset_once(self, envs):
        """Reseed the envs that are due and reset the others; count the resets. Their no-op frames."""
        reseed = envs[self.resets[envs] >= self.RESEED_EVERY]
        plain = envs[self.resets[envs] < self.RESEED_EVERY]
        obs = info = None
        for group, seeds in ((reseed, self.rng.integers(2**31 - 1, size=len(reseed))), (plain, None)):
            if len(group):
                obs, info = self._reset(group, seeds)
                if seeds is not None:
                    self.seeds[group], self.resets[group] = seeds, -1
                self.resets[group] += 1
        return obs, info

    def reset(self, envs=None):
        """Reset ``envs`` (host indices; all by default): their (k, 84, 84) frames and lives."""
        envs = np.arange(self.num_envs) if envs is None else np.asarray(envs)
        todo = envs
        while len(todo):
            obs, info = self._reset_once(todo)
            todo = todo[(info["episode_frame_number"][todo] == 0) & (self.noop_max > 0)]  # no no-op: again
        for k in envs:
            self.actions[k] = []
        self.noops[envs] = info["episode_frame_number"][envs]
        if self.rgb:
            self.last_rgb = obs[:, 0]
        return self._frames(obs[envs]), info["lives"][envs].astype(np.int64)

    def step(self, actions):
        """Step every env with ``actions`` (numpy ints): (frames, rewards, terminated, truncated, lives); frames on
        the device, the rest numpy. An env that ends must be reset before the next step."""
        obs, rewards, terminated, truncated, info = self.env.step(np.asarray(actions, np.int32))
        for k, action in enumerate(actions):
            self.actions[k].append(int(action))
        truncated = (truncated | (info["episode_frame_number"] >= self.max_episode_frames)) & ~terminated
        if self.rgb:
            self.last_rgb = obs[:, 0]
        return self._frames(obs), rewards.astype(np.float64), terminated, truncated, info["lives"].astype(np.int64)

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "seeds": self.seeds.copy(), "resets": self.resets.copy(),
                "actions": [np.array(a, np.uint8) for a in self.actions]}

    def load_state_dict(self, state):
        """Rebuild every emulator: env k starts when the longest episode has as many steps left as its own (so one
        pass of vector steps brings all of them to where they were) with its last seeded reset and the resets
        since, then replays its actions."""
        self.rng.bit_generator.state = state["rng"]
        self.seeds, self.resets = state["seeds"].copy(), state["resets"].copy()
        self.actions = [list(map(int, a)) for a in state["actions"]]
        lengths = np.array([len(a) for a in self.actions])
        longest = int(lengths.max())
        self._reset(np.arange(self.num_envs), self.seeds)  # the vector env's first reset must reset them all
        actions = np.zeros(self.num_envs, np.int32)
        for t in range(longest + 1):
            starting = np.flatnonzero(longest - lengths == t)
            if len(starting):
                self._reset(starting, self.seeds[starting])
                for r in range(int(self.resets[starting].max())):
                    self._reset(starting[self.resets[starting] > r])
            if t == longest:
                break
            for k in range(self.num_envs):
                position = t - (longest - lengths[k])
                actions[k] = self.actions[k][position] if position >= 0 else 0
            self.env.step(actions)

    def close(self):
        self.env.close()


# ---------------------------------------------------------------------------------------------------- replay
class FrameReplay:
    """Uniform replay that stores each 84x84 frame once, on the device, and rebuilds 4-frame stacks when sampled.

    It holds ``lanes`` frame streams of capacity // lanes slots each, one per environment of a vector env, written
    in step (one frame per lane per step, and a second one in a lane whose episode ended). In a lane, slot i holds
    frame s_i and, once the agent has acted, (a_i, r_i, terminal_i); the transition's next state ends at slot i+1.
    When an episode ends (terminated or truncated) its real final frame gets a slot of its own that never starts a
    transition, and the reset frame goes into the next slot: so the next state of the last transition is the final
    observation, never the reset frame (the bug of the memory-optimised buffers of SB3 and CleanRL). Stacks do not
    cross episode starts. The first history-1 stacks of an episode are padded as DQN Zoo pads them with zero_pad
    (processors.atari: Deque, then trailing_zero_pad): the episode's frames come first and zeros fill the rest
    (A000, AB00, ABC0, then ABCD, BCDE); without zero_pad earlier positions repeat the episode's first frame (AAAA,
    AAAB, ...), as gymnasium's FrameStackObservation does. `episode_start` and `pos` hold absolute frame numbers
    (frames ever written to the lane); `pos` is kept on the host and on the device, so nothing here syncs.
    """

    def __init__(self, capacity, history=4, frame_shape=(84, 84), zero_pad=True, device="cpu", lanes=1):
        check(capacity % lanes == 0, f"the replay capacity {capacity} must be a multiple of its {lanes} lanes")
        self.capacity, self.history, self.zero_pad, self.device = capacity // lanes, history, zero_pad, device
        self.lanes = lanes
        shape = (lanes, self.capacity)
        # One flat store of every lane's frames and, last, a black frame that the zero padding points at.
        self.frame_store = torch.zeros((lanes * self.capacity + 1, *frame_shape), dtype=torch.uint8, device=device)
        self.frames = self.frame_store[:-1].view(*shape, *frame_shape)
        self.actions = torch.zeros(shape, dtype=torch.uint8, device=device)
        self.rewards = torch.zeros(shape, dtype=torch.float32, device=device)
        self.terminals = torch.zeros(shape, dtype=torch.bool, device=device)
        self.valid = torch.zeros(shape, dtype=torch.bool, device=device)  # slot starts a complete transition
        self.episode_start = torch.zeros(shape, dtype=torch.int64, device=device)
        self.offsets = torch.arange(-history + 1, 1, device=device)  # a stack ending at its newest frame
        self.positions = torch.arange(history, device=device)  # a stack starting at its oldest frame
        self.all_lanes = torch.arange(lanes, device=device)
        self.pos = np.zeros(lanes, np.int64)  # frames ever written per lane; the newest is at pos - 1
        self.pos_device = torch.zeros(lanes, dtype=torch.int64, device=device)

    def _write(self, lanes, lanes_device, frames, episode_start):
        pos = self.pos_device[lanes_device]
        slot = pos % self.capacity
        self.frames[lanes_device, slot] = frames
        self.episode_start[lanes_device, slot] = episode_start
        self.valid[lanes_device, slot] = False
        # The overwritten frame was the oldest; the next history-1 slots lose it from their stacks.
        later = (slot[:, None] + self.positions[1:]) % self.capacity
        lane = lanes_device[:, None]
        self.valid[lane, later] &= self.episode_start[lane, later] > (pos - self.capacity)[:, None]
        self.pos[lanes] += 1
        self.pos_device[lanes_device] += 1

    def start_episodes(self, frames, lanes=None):
        """The first frames (k, 84, 84) of new episodes in ``lanes`` (host indices; all lanes by default)."""
        if lanes is None:
            lanes, lanes_device = np.arange(self.lanes), self.all_lanes
        else:
            lanes = np.asarray(lanes)
            lanes_device = torch.as_tensor(lanes, device=self.device)
        self._write(lanes, lanes_device, frames, self.pos_device[lanes_device])

    def add(self, actions, rewards, terminals, next_frames):
        """Complete every lane's newest slot with (action, reward, terminal), each (lanes,) on the device, and
        append the next frames (lanes, 84, 84). A lane whose episode ended must next get start_episodes: the final
        frame's slot is never sampled."""
        slot = (self.pos_device - 1) % self.capacity
        lanes = self.all_lanes
        self.actions[lanes, slot], self.rewards[lanes, slot], self.terminals[lanes, slot] = (
            actions.to(torch.uint8), rewards.float(), terminals)
        self.valid[lanes, slot] = True
        self._write(np.arange(self.lanes), lanes, next_frames, self.episode_start[lanes, slot])

    def _stack(self, lanes, index, starts):
        """(n, history, 84, 84) stacks ending at absolute frame numbers `index` of `lanes`, padded at the
        episode starts."""
        lanes = lanes[:, None] * self.capacity
        if self.zero_pad:
            frame_ids = torch.maximum(index - self.history + 1, starts)[:, None] + self.positions
            black = len(self.frame_store) - 1
            flat_ids = torch.where(frame_ids <= index[:, None], lanes + frame_ids % self.capacity, black)
        else:
            flat_ids = lanes + torch.maximum(index[:, None] + self.offsets, starts[:, None]) % self.capacity
        # one index_select of whole frames: several times faster on the CPU than advanced indexing
        return self.frame_store.index_select(0, flat_ids.flatten()).view(*flat_ids.shape, *self.frames.shape[2:])

    def latest(self):
        """Every lane's current observation, (lanes, history, 84, 84)."""
        newest = self.pos_device - 1
        return self._stack(self.all_lanes, newest, self.episode_start[self.all_lanes, newest % self.capacity])

    def sample(self, batch_size, generator=None):
        """Uniform over complete transitions: (obs, actions, rewards, terminals, next_obs), no host sync."""
        flat = torch.multinomial(self.valid.view(-1).float(), batch_size, replacement=True, generator=generator)
        return self.transitions(flat // self.capacity, flat % self.capacity)

    def transitions(self, lanes, slots):
        newest = self.pos_device[lanes] - 1
        index = newest - (newest - slots) % self.capacity  # absolute frame number held in each slot
        starts = self.episode_start[lanes, slots]  # the next frame belongs to the same episode
        return (self._stack(lanes, index, starts), self.actions[lanes, slots].long(), self.rewards[lanes, slots],
                self.terminals[lanes, slots].float(), self._stack(lanes, index + 1, starts))

    def state_dict(self):
        names = ("frames", "actions", "rewards", "terminals", "valid", "episode_start")
        return {"pos": self.pos.copy(), **{name: getattr(self, name) for name in names}}

    def load_state_dict(self, state):
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                getattr(self, name).copy_(value)  # in place: frames is a view of frame_store
        self.pos = np.asarray(state["pos"], np.int64).copy()
        self.pos_device = torch.tensor(self.pos, device=self.device)  # a copy: as_tensor would share the memory
