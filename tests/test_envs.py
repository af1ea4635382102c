import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from common.science.classification import ClassificationMDP, random_relabel


@pytest.fixture(scope="module")
def tiny_dataset():
    labels = torch.arange(10).repeat_interleave(7)  # 7 images per class
    images = torch.randint(0, 256, (70, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return images, labels


@pytest.mark.parametrize("variant", ["true_label", "random_label"])
def test_dense_variants_reward_the_state_and_jump_uniformly(tiny_dataset, variant):
    images, labels = tiny_dataset
    env = ClassificationMDP(images, labels, variant, num_envs=4000, seed=1)
    emitted_labels = random_relabel(labels, seed=1) if variant == "random_label" else labels
    obs = env.reset()
    assert torch.equal(emitted_labels[obs], env.state)  # each state emits an image of its (possibly random) class
    states = env.state.clone()
    actions = torch.randint(10, (4000,))
    next_obs, rewards = env.step(actions)
    assert torch.equal(rewards, (actions == states).float())
    assert torch.equal(emitted_labels[next_obs], env.state)
    counts = torch.bincount(env.state, minlength=10)
    assert counts.min() > 320 and counts.max() < 480  # uniform over 10 states, independent of the action


def test_sparse_reward_walks_the_chain_and_wraps_at_nine(tiny_dataset):
    images, labels = tiny_dataset
    env = ClassificationMDP(images, labels, "sparse_reward", num_envs=3000, seed=2)
    env.reset()
    for _ in range(3):
        states = env.state.clone()
        correct = torch.rand(3000) < 0.5
        actions = torch.where(correct, states, (states + 1 + torch.randint(9, (3000,))) % 10)
        _, rewards = env.step(actions)
        assert torch.equal(rewards, (correct & (states == 9)).float())  # reward only for a = s = 9
        assert torch.equal(env.state[correct], (states[correct] + 1) % 10)  # s + 1, and 9 wraps to 0
        wrong_next = torch.bincount(env.state[~correct], minlength=10)
        assert wrong_next.min() > 100  # a wrong action jumps to a uniformly random state


def test_same_seed_same_trajectory_on_device(tiny_dataset):
    images, labels = tiny_dataset
    runs = []
    for _ in range(2):
        env = ClassificationMDP(images, labels, "true_label", num_envs=8, seed=5)
        trajectory = [env.reset()] + [env.step(torch.zeros(8, dtype=torch.long))[0] for _ in range(5)]
        runs.append(torch.stack(trajectory))
    assert torch.equal(*runs) and runs[0].device == images.device


def test_bad_arguments(tiny_dataset):
    images, labels = tiny_dataset
    with pytest.raises(ValueError, match="unknown variant"):
        ClassificationMDP(images, labels, "hard", num_envs=1)
    with pytest.raises(ValueError, match="every class"):
        ClassificationMDP(images[:7], labels[:7], "true_label", num_envs=1)


def test_gymnasium_registration_passes_the_env_checker(tiny_dataset):
    images, labels = tiny_dataset
    env = gym.make("plasticity/ClassificationMDP-v0", images=images, labels=labels, variant="sparse_reward")
    check_env(env.unwrapped)
    obs, info = env.reset(seed=3)
    assert obs.shape == (1, 6, 6) and labels[(images == torch.from_numpy(obs)).flatten(1).all(1)][0] == info["state"]
    _, reward, terminated, truncated, info = env.step(info["state"])
    assert reward == 0.0 or info["state"] == 0
