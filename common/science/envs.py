"""The classification MDPs of Sec 3.2: a ten-state block MDP whose observations are images of its state's class.

``ClassificationMDP`` steps ``num_envs`` copies at once, entirely on the device: observations are indices into
the image tensor (the replay stores indices, not images), and sampling uses a torch.Generator on that device.

Variants (Sec 3.2):
- ``true_label``: the state s emits an image of class s; reward 1[a = s]; the next state is uniformly random.
- ``random_label``: as true_label, but classes are a seeded random relabelling of the images.
- ``sparse_reward``: true_label's observations; reward 1[a = s = 9]; the next state is s + 1 if a = s, else a
  uniformly random state. At s = 9 with a = 9 (the rewarded step) s + 1 would leave the state space: we wrap to
  state 0, so the agent must walk the chain 0..9 again to earn the next reward (the paper leaves this open).
The MDP is continuing: it never terminates. The gymnasium registration truncates episodes for single-env use.
"""
import gymnasium as gym
import numpy as np
import torch

from common.science.data import NUM_CLASSES, random_relabel

VARIANTS = ("true_label", "random_label", "sparse_reward")


class ClassificationMDP:
    """``num_envs`` independent copies of one classification MDP, batched on the device of ``images``."""

    def __init__(self, images, labels, variant, num_envs, num_classes=NUM_CLASSES, seed=0):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        self.images, self.variant, self.num_envs, self.num_classes = images, variant, num_envs, num_classes
        self.device = images.device
        if variant == "random_label":
            labels = random_relabel(labels, num_classes, seed)
        self.labels = labels
        # Images grouped by class: class c owns order[start[c] : start[c] + count[c]].
        self.order = torch.argsort(labels, stable=True)
        self.count = torch.bincount(labels, minlength=num_classes)
        if (self.count == 0).any():
            raise ValueError(f"every class needs at least one image; counts {self.count.tolist()}")
        self.start = torch.cumsum(self.count, 0) - self.count
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.state = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    def reset(self):
        """Draw uniform initial states; return their observations (image indices, shape ``(num_envs,)``)."""
        self.state = self._random_states()
        return self._observe(self.state)

    def step(self, actions):
        """Apply ``actions`` (shape ``(num_envs,)``); return ``(next_observations, rewards)``."""
        correct = actions == self.state
        if self.variant == "sparse_reward":
            rewards = (correct & (self.state == self.num_classes - 1)).float()
            advanced = (self.state + 1) % self.num_classes  # the wrap at state 9: see the module docstring
            self.state = torch.where(correct, advanced, self._random_states())
        else:
            rewards = correct.float()
            self.state = self._random_states()
        return self._observe(self.state), rewards

    def _random_states(self):
        return torch.randint(self.num_classes, (self.num_envs,), generator=self.generator, device=self.device)

    def _observe(self, states):
        """A uniformly drawn image index of each state's class."""
        u = torch.rand(states.shape, generator=self.generator, device=self.device)
        offset = (u * self.count[states]).long().clamp_max_(self.count[states] - 1)
        return self.order[self.start[states] + offset]

    def state_dict(self):
        return {"state": self.state, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.state = state["state"].to(self.device)
        self.generator.set_state(state["generator"])


class ClassificationMDPEnv(gym.Env):
    """One ClassificationMDP on the CPU as a gymnasium env: uint8 image observations, ``Discrete(10)`` actions.

    Make it with ``gymnasium.make("plasticity/ClassificationMDP-v0", images=..., labels=..., variant=...)``.
    ``info["state"]`` holds the latent state.
    """

    metadata = {"render_modes": []}

    def __init__(self, images, labels, variant="true_label", num_classes=NUM_CLASSES):
        images, labels = torch.as_tensor(images).cpu(), torch.as_tensor(labels).cpu()
        self._args = (images, labels, variant, 1, num_classes)
        self.mdp = ClassificationMDP(*self._args)
        self.observation_space = gym.spaces.Box(0, 255, tuple(images.shape[1:]), np.uint8)
        self.action_space = gym.spaces.Discrete(num_classes)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.mdp = ClassificationMDP(*self._args, seed=seed)
        obs = self.mdp.reset()
        return self._image(obs), {"state": int(self.mdp.state[0])}

    def step(self, action):
        obs, reward = self.mdp.step(torch.tensor([int(action)]))
        return self._image(obs), float(reward[0]), False, False, {"state": int(self.mdp.state[0])}

    def _image(self, obs):
        return self.mdp.images[obs[0]].numpy().copy()  # a fresh array: callers may keep it


gym.register("plasticity/ClassificationMDP-v0", entry_point=ClassificationMDPEnv, max_episode_steps=1000)
