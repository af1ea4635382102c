"""Tests of the vectorised ALE pipeline (common.science.atari.VectorAtari, luminance_84x84_torch, the lanes of FrameReplay)
against today's one-environment DQNZooPreprocessing and against single-lane replays."""
import numpy as np
import pytest
import torch

from common.science.atari import FrameReplay, VectorAtari, luminance_84x84, make_env


def noop_frames(venv, k):
    """Env k's no-op frames at its last reset (its episode frame count before any step)."""
    return int(venv.noops[k])


@pytest.mark.parametrize("env_id", ["ALE/Pong-v5", "ALE/MsPacman-v5"])
def test_vector_frames_match_dqn_zoo_preprocessing_within_one_grey_level(env_id):
    """The same episode (same no-ops, same actions) through the C++ vector env with the luminance and resize on
    the device, and through DQNZooPreprocessing (numpy and PIL): rewards and lives equal, pooled RGB frames equal,
    grey frames within one level (PIL's fixed-point filter weights), most pixels equal."""
    venv = VectorAtari(env_id, 2, noop_max=30, max_episode_frames=108_000, seed=3, device="cpu")
    frames, lives = venv.reset()
    noops = noop_frames(venv, 1)
    assert 1 <= noops <= 30
    reference = make_env(env_id, noop_max=0, max_episode_frames=108_000)
    reference.reset(seed=0)
    for _ in range(noops):
        rgb = reference.unwrapped.step(0)[0]
    differences = [frames[1].numpy().astype(int) - luminance_84x84(rgb)]
    rng = np.random.default_rng(0)
    for _ in range(150):
        action = int(rng.integers(venv.num_actions))
        frames, rewards, terminated, truncated, lives = venv.step(np.array([0, action]))
        obs, reward, *_, info = reference.step(action)
        assert rewards[1] == reward and lives[1] == info["lives"] and not terminated[1]
        differences.append(frames[1].numpy().astype(int) - obs)
    differences = np.abs(np.stack(differences))
    assert differences.max() <= 1
    assert (differences == 0).mean() > 0.95
    assert differences.max() == 1 or env_id == "ALE/Breakout-v5"  # the test sees a difference when there is one


def test_device_luminance_matches_numpy_and_pil_on_recorded_frames():
    """Frames recorded from the emulator (and pure colours): the device pipeline against luminance_84x84."""
    env = make_env("ALE/Seaquest-v5", noop_max=0, max_episode_frames=108_000)
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    recorded = [env.unwrapped.step(int(rng.integers(env.action_space.n)))[0] for _ in range(60)]
    recorded += [np.full((210, 160, 3), c, np.uint8) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255), (1, 1, 1))]
    recorded.append(rng.integers(0, 256, (210, 160, 3), dtype=np.uint8))  # noise: every filter weight counts
    from common.science.atari import luminance_84x84_torch

    ours = luminance_84x84_torch(torch.from_numpy(np.stack(recorded))).numpy().astype(int)
    reference = np.stack([luminance_84x84(rgb) for rgb in recorded]).astype(int)
    assert np.abs(ours - reference).max() <= 1
    assert (ours == reference).mean() > 0.95
    assert (ours[-5:-1] == reference[-5:-1]).all()  # pure colours: truncation, not rounding (149.7 -> 149)


def test_noops_are_one_to_noop_max_and_resets_are_reproducible():
    venv = VectorAtari("ALE/Breakout-v5", 4, noop_max=3, max_episode_frames=108_000, seed=0, device="cpu")
    venv.RESEED_EVERY = 4  # reseeded and plain resets both
    counts = set()
    for _ in range(10):
        venv.reset()
        counts |= {noop_frames(venv, k) for k in range(4)}
    assert counts == {1, 2, 3}  # DQN Zoo's 1 to noop_max: no episode without a no-op


def test_truncation_at_the_frame_cap_counts_no_op_frames():
    venv = VectorAtari("ALE/Breakout-v5", 2, noop_max=30, max_episode_frames=100, seed=0, device="cpu")
    venv.reset()
    noops = [noop_frames(venv, k) for k in range(2)]
    steps = np.zeros(2, int)
    ended = np.zeros(2, bool)
    for _ in range(30):
        _, _, terminated, truncated, _ = venv.step(np.zeros(2, int))  # NOOP: Breakout never ends by itself
        assert not terminated.any()
        steps += ~ended
        ended |= truncated
        if ended.all():
            break
    # the agent step during which the frame count (no-ops included) reaches the cap ends the episode
    assert list(steps) == [-(-(100 - n) // 4) for n in noops]


def test_resumed_vector_env_continues_bit_for_bit():
    """load_state_dict replays each env's episode from its seed: the continuation equals the uninterrupted one."""
    kwargs = dict(noop_max=30, max_episode_frames=200, device="cpu")
    original = VectorAtari("ALE/Breakout-v5", 3, seed=5, **kwargs)
    original.RESEED_EVERY = 2  # resumed after a reseeding and after plain resets
    original.reset()
    rng = np.random.default_rng(0)
    for step in range(70):
        _, _, terminated, truncated, _ = original.step(rng.integers(original.num_actions, size=3))
        if (terminated | truncated).any():
            original.reset(np.flatnonzero(terminated | truncated))
    copy = VectorAtari("ALE/Breakout-v5", 3, seed=99, **kwargs)
    copy.RESEED_EVERY = 2
    copy.load_state_dict(original.state_dict())
    assert len({len(a) for a in original.actions}) > 1  # the envs are at different points of episodes
    resets = 0
    for _ in range(150):
        actions = rng.integers(original.num_actions, size=3)
        ours, theirs = original.step(actions), copy.step(actions)
        for a, b in zip(ours, theirs):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        done = ours[2] | ours[3]
        if done.any():
            assert torch.equal(original.reset(np.flatnonzero(done))[0], copy.reset(np.flatnonzero(done))[0])
            resets += done.sum()
    assert resets >= 6  # later episodes too: the emulators' no-op generators were restored


def test_lanes_equal_independent_single_lane_replays():
    """A 3-lane replay, fed in step with episodes ending at different times, holds exactly what 3 single-lane
    replays hold; its samples are the single lanes' transitions."""
    lanes, capacity = 3, 30
    replay = FrameReplay(lanes * capacity, lanes=lanes)
    singles = [FrameReplay(capacity) for _ in range(lanes)]
    rng = np.random.default_rng(0)
    frame = lambda: torch.from_numpy(rng.integers(0, 256, (lanes, 84, 84), dtype=np.uint8))
    first = frame()
    replay.start_episodes(first)
    for k in range(lanes):
        singles[k].start_episodes(first[k:k + 1])
    for _ in range(100):
        actions, rewards = torch.from_numpy(rng.integers(0, 4, lanes)), torch.from_numpy(rng.normal(size=lanes))
        terminals, frames = torch.from_numpy(rng.random(lanes) < 0.1), frame()
        replay.add(actions, rewards, terminals, frames)
        for k in range(lanes):
            singles[k].add(actions[k:k + 1], rewards[k:k + 1], terminals[k:k + 1], frames[k:k + 1])
        ended = np.flatnonzero(terminals.numpy() | (rng.random(lanes) < 0.05))
        if len(ended):
            reset = frame()[: len(ended)]
            replay.start_episodes(reset, ended)
            for i, k in enumerate(ended):
                singles[k].start_episodes(reset[i:i + 1])
        for k in range(lanes):
            assert torch.equal(replay.latest()[k], singles[k].latest()[0])
    assert len(set(replay.pos)) > 1  # the lanes drifted apart
    for name, value in replay.state_dict().items():
        for k in range(lanes):
            assert np.array_equal(np.asarray(value[k]), np.asarray(singles[k].state_dict()[name][0]))
    batch = replay.sample(64, torch.Generator().manual_seed(0))
    flat = torch.multinomial(replay.valid.view(-1).float(), 64, replacement=True,
                             generator=torch.Generator().manual_seed(0))
    for i, (lane, slot) in enumerate(zip(flat // capacity, flat % capacity)):
        single = singles[lane].transitions(torch.tensor([0]), slot[None])
        for got, expected in zip(batch, single):
            assert torch.equal(got[i], expected[0])
