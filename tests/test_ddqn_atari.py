"""Tests of ddqn_atari_layernorm.py: the double-Q target, DQN Zoo's TD-error gradient clipping, the frame-store
replay against a naive stacked-frame buffer, checkpoint/resume, aggregation, and a tiny CPU run on Breakout."""
import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from common.errors import EXIT_USAGE, UsageError
from common.runtime.seeds import OneSeed
from common.science.atari import (FrameReplay, VectorAtari, atari_env_ids, game_name, load_atari_scores,
                                  luminance_84x84, make_env, rom_name)
from common.science.grad_cov import gradient_covariance
from ddqn_atari_layernorm import Args, QNetwork, double_q_targets, epsilon_at, td_error_grads, td_loss, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These small CNN steps ran several times faster with one thread on the shared 2-core test machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_double_q_target_matches_hand_computation():
    rewards = torch.tensor([1.0, 0.5, -1.0])
    terminals = torch.tensor([0.0, 1.0, 0.0])
    next_q_online = torch.tensor([[1.0, 3.0], [2.0, 0.0], [5.0, 4.0]])  # argmax: 1, 0, 0
    next_q_target = torch.tensor([[50.0, 20.0], [30.0, 40.0], [7.0, 9.0]])  # the target net's own max differs
    targets = double_q_targets(rewards, terminals, 0.99, next_q_online, next_q_target)
    # 1 + 0.99 * 20 (not 50: the online net selects); 0.5 (terminal, no bootstrap); -1 + 0.99 * 7
    torch.testing.assert_close(targets, torch.tensor([20.8, 0.5, 5.93]))


@pytest.mark.parametrize("batch_size", [32, 8])
def test_td_loss_gradient_is_dqn_zoo_clipped_td_error(batch_size):
    """DQN Zoo: loss = mean(0.5 td^2) with each TD error's gradient clipped to +-1/32; ours: a Huber loss."""
    torch.manual_seed(0)
    net, target_net = QNetwork(4, layer_norm=True), QNetwork(4, layer_norm=True)
    frames = lambda: torch.randint(0, 256, (batch_size, 4, 84, 84), dtype=torch.uint8)
    batch = (frames(), torch.randint(0, 4, (batch_size,)), 5 * torch.randn(batch_size),  # large TD errors: clipped
             (torch.rand(batch_size) < 0.3).float(), frames())
    bound = 1 / 32
    loss, _ = td_loss(OneSeed(net), OneSeed(target_net), [part[None] for part in batch], 0.99,
                      huber_delta=batch_size * bound)  # one seed's: the seeds are the leading axis
    ours = torch.autograd.grad(loss[0], list(net.parameters()))

    obs, actions, rewards, terminals, next_obs = batch
    with torch.no_grad():
        best = net(next_obs).argmax(1)
        targets = rewards + 0.99 * (1 - terminals) * target_net(next_obs)[torch.arange(batch_size), best]
    td_errors = targets - net(obs)[torch.arange(batch_size), actions]
    assert (td_errors.abs() > batch_size * bound).any(), "the test needs TD errors large enough to be clipped"
    td_errors.register_hook(lambda g: g.clamp(-bound, bound))  # rlax.clip_gradient
    reference = torch.autograd.grad((0.5 * td_errors**2).mean(), list(net.parameters()))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_per_example_gradients_and_their_covariance_match_one_backward_per_transition():
    # In float64: vmapped and one-at-a-time gradients sum their conv terms in different orders, which in float32
    # differs by about 1e-6 (a third of a float32 tolerance here, and more on other CPUs).
    torch.manual_seed(0)
    net, target_net = QNetwork(4, layer_norm=True).double(), QNetwork(4, layer_norm=True).double()
    frames = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    batch = (frames, torch.tensor([0, 3, 1]), torch.tensor([1.0, -2.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]),
             frames.roll(1, dims=0))
    grads = td_error_grads(net, target_net, batch, 0.99, huber_delta=1.0)
    loops = []
    for i in range(3):
        loss, _ = td_loss(OneSeed(net), OneSeed(target_net), [x[None, i:i + 1] for x in batch], 0.99, huber_delta=1.0)
        loops.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss[0], list(net.parameters()))]))
    torch.testing.assert_close(grads, torch.stack(loops), rtol=1e-9, atol=1e-12)
    cov = gradient_covariance(grads)
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    torch.testing.assert_close(cov[0, 1], cosine, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cov.diagonal(), torch.ones(3, dtype=torch.float64), rtol=1e-12, atol=1e-12)


class CountingEnv(gym.Env):
    """84x84 frames that encode a running counter (so every frame is unique); episodes end by termination or by
    truncation at random lengths; reset frames are marked (pixel [0, 0] = 255) so a reset frame can't pass for a
    final observation."""
    observation_space = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self):
        self.counter, self.rng = 0, np.random.default_rng(0)

    def _frame(self, is_reset):
        self.counter += 1
        frame = np.zeros((84, 84), np.uint8)
        frame[1, :3] = self.counter % 256, self.counter // 256 % 256, self.counter // 65536
        frame[0, 0] = 255 if is_reset else 0
        return frame

    def reset(self, *, seed=None, options=None):
        self.length, self.t = int(self.rng.integers(1, 9)), 0
        return self._frame(True), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        truncated = end and self.rng.random() < 0.5
        return self._frame(False), float(self.counter % 7), end and not truncated, truncated, {}


def dqn_zoo_stack(episode_frames):
    """DQN Zoo's stack (processors.atari): Deque(max_length=4), then trailing_zero_pad(4): A000, AB00, ABC0, ABCD."""
    recent = list(collections.deque(episode_frames, maxlen=4))
    return np.stack(recent + [np.zeros_like(recent[0])] * (4 - len(recent)))


@pytest.mark.parametrize("zero_pad", [True, False])
@pytest.mark.parametrize("capacity", [40, 1000])  # with and without wrapping around
def test_frame_store_matches_naive_stacked_buffer_across_episode_ends_and_truncation(capacity, zero_pad):
    """Against full stacks kept naively: DQN Zoo's zero padding, or gymnasium's FrameStackObservation (which pads
    with the reset frame)."""
    env = gym.wrappers.FrameStackObservation(CountingEnv(), stack_size=4)  # the naive reference: full stacks
    replay = FrameReplay(capacity, history=4, zero_pad=zero_pad)
    one = lambda value: torch.tensor([value])
    start_episode = lambda frame: replay.start_episodes(torch.from_numpy(frame)[None])
    naive = {}  # slot -> (stacked obs, action, reward, terminal, stacked next obs, oldest frame needed, truncated)
    rng = np.random.default_rng(1)
    truncations = 0
    obs, _ = env.reset()
    start_episode(obs[-1])
    episode_first, written = 0, 1
    episode = [obs[-1]]
    if zero_pad:
        obs = dqn_zoo_stack(episode)
    for _ in range(300):
        action = int(rng.integers(3))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        episode.append(next_obs[-1])
        if zero_pad:
            next_obs = dqn_zoo_stack(episode)
        slot, frame_id = (replay.pos[0] - 1) % capacity, written - 1
        replay.add(one(action), one(reward), one(terminated), torch.from_numpy(episode[-1])[None])
        written += 1
        naive[slot] = (obs, action, reward, terminated, next_obs, max(frame_id - 3, episode_first), truncated)
        obs = next_obs
        if terminated or truncated:
            truncations += truncated
            obs, _ = env.reset()
            start_episode(obs[-1])
            episode_first, written = written, written + 1
            episode = [obs[-1]]
            if zero_pad:
                obs = dqn_zoo_stack(episode)
        assert np.array_equal(replay.latest()[0].numpy(), obs)  # what the agent acts on
    assert truncations > 5

    checked = 0
    for slot, (obs, action, reward, terminal, next_obs, oldest_needed, truncated) in naive.items():
        complete = oldest_needed >= written - capacity  # all its frames are still in the store
        assert bool(replay.valid[0, slot]) == complete
        if not complete:
            continue
        got = replay.transitions(torch.tensor([0]), torch.tensor([slot]))
        assert np.array_equal(got[0][0].numpy(), obs)
        assert (int(got[1]), float(got[2]), float(got[3])) == (action, reward, float(terminal))
        assert np.array_equal(got[4][0].numpy(), next_obs)
        if truncated:  # the CleanRL/SB3 bug would put the next episode's reset frame here
            frames = got[4][0][got[4][0].flatten(1).any(1)]  # without zero padding (every CountingEnv frame has a 1)
            assert frames[-1, 0, 0] == 0
        checked += 1
    assert checked >= min(capacity, 300) * 0.6
    sampled = replay.sample(256, torch.Generator().manual_seed(0))
    assert sampled[0].shape == (256, 4, 84, 84)
    assert all(any(np.array_equal(s.numpy(), naive[k][0]) for k in naive if replay.valid[0, k]) for s in sampled[0][:8])


def test_frame_store_uses_a_quarter_of_a_stacked_buffer():
    replay = FrameReplay(1000)
    per_transition = sum(t.element_size() * t[0, 0].numel() for t in replay.state_dict().values()
                         if isinstance(t, torch.Tensor))
    assert per_transition <= 28_244 / 3  # CleanRL's memory-optimised stacked buffer
    assert per_transition < 84 * 84 + 20


def test_warm_up_acts_uniformly_then_with_epsilon_0_1():
    """DQN Zoo's LinearSchedule returns its begin value 1.0 until learning starts; the paper's epsilon is 0.1 after."""
    args = Args()
    assert args.learning_starts == 5_000  # DQN Zoo: min_replay_capacity_fraction 0.05 x the paper's 100,000
    assert Args(buffer_size=1_000_000).learning_starts == 50_000  # DQN Zoo's own capacity
    assert [epsilon_at(step, args) for step in (0, 4_999, 5_000, 10**7)] == [1.0, 1.0, 0.1, 0.1]
    zoo = Args(epsilon_start=1.0, epsilon_end=0.01, epsilon_decay_steps=1_000)
    assert epsilon_at(5_500, zoo) == pytest.approx(0.505)


def test_shared_output_bias_starts_uniform_like_the_other_biases():
    """DQN Zoo's linear_with_shared_bias draws the bias U(+-1/sqrt(512)), like every other weight and bias."""
    torch.manual_seed(0)
    biases = torch.cat([QNetwork(4, layer_norm=False).shared_bias.detach() for _ in range(40)])
    bound = 512**-0.5
    assert biases.abs().max() <= bound and biases.abs().max() > 0.8 * bound
    assert biases.std() == pytest.approx(bound / 3**0.5, rel=0.35)  # the standard deviation of U(-b, b)


def test_all_57_games_have_roms_and_a_sample_steps_under_one_protocol():
    """Every game's ROM resolves; a sample builds and steps in the vector env (each build loads its ROM twice, so
    all 57 would take most of a minute on the shared CI cores)."""
    from ale_py import roms

    ids = atari_env_ids()
    assert sorted(ids) == sorted(load_atari_scores()) and len(ids) == 57
    for name, env_id in ids.items():
        assert game_name(env_id) == name and roms.get_rom_path(rom_name(env_id)) is not None
    minimal_actions = {"Breakout": 4, "Pong": 6, "MsPacman": 9, "Seaquest": 18, "Surround": 5, "Skiing": 3}
    for name, actions in minimal_actions.items():
        envs = VectorAtari(ids[name], 1, noop_max=0, max_episode_frames=1_000, seed=0, device="cpu")
        envs.reset()
        frames, rewards, terminated, truncated, lives = envs.step(np.array([envs.num_actions - 1]))
        assert frames.shape == (1, 84, 84) and frames.dtype == torch.uint8 and lives.shape == (1,)
        assert envs.num_actions == actions
        envs.close()


def pil_bilinear_by_hand(image, size=84):
    """PIL's bilinear downscaling written out: along each axis a triangle filter as wide as the scale, centred on
    each output pixel; the horizontal pass first, each pass rounded to uint8."""
    def weights(n_in):
        scale = n_in / size
        centres = (np.arange(size) + 0.5) * scale
        w = np.maximum(0, 1 - np.abs((np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / scale))
        return w / w.sum(1, keepdims=True)

    rows = np.clip(np.round(image @ weights(image.shape[1]).T), 0, 255)
    return np.clip(np.round(weights(image.shape[0]) @ rows), 0, 255)


def test_dqn_zoo_preprocessing_matches_a_hand_computation_on_two_emulator_frames():
    """One agent step of Breakout, its four RGB frames recorded from the emulator: the observation is the luminance
    Y = 0.299 R + 0.587 G + 0.114 B (truncated) of the max of the last two, resized bilinearly to 84x84."""
    env = make_env("ALE/Breakout-v5", noop_max=0, max_episode_frames=108_000)
    env.reset(seed=0)
    for _ in range(12):
        env.step(1)  # FIRE: the ball is in play
    start = env.unwrapped.clone_state(include_rng=True)
    rgb = [env.unwrapped.step(3)[0].astype(np.float64) for _ in range(4)]
    env.unwrapped.restore_state(start)
    observation = env.step(3)[0]

    pooled = np.maximum(rgb[2], rgb[3])
    assert (pooled != rgb[3]).any() and (pooled != rgb[2]).any()  # the pair differs: the max matters
    luminance = np.floor(0.299 * pooled[..., 0] + 0.587 * pooled[..., 1] + 0.114 * pooled[..., 2])
    expected = pil_bilinear_by_hand(luminance)
    assert np.abs(observation.astype(np.int64) - expected).max() <= 1  # fixed-point rounding in PIL
    assert (observation == expected).mean() > 0.98
    last_frame_only = pil_bilinear_by_hand(np.floor(rgb[3] @ np.array([0.299, 0.587, 0.114])))
    assert np.abs(last_frame_only - expected).max() > 1  # so the test sees a missing max
    gymnasium_frame = make_env("ALE/Breakout-v5", 0, 108_000, preprocessing="gymnasium")
    gymnasium_frame.reset(seed=0)
    gymnasium_frame.unwrapped.restore_state(start)
    assert np.abs(gymnasium_frame.step(3)[0] - expected).max() > 1  # gymnasium's grey and INTER_AREA differ

    # Pure colours: the weights, and truncation rather than rounding (0.587 x 255 = 149.7 -> 149).
    for colour, grey in (((255, 0, 0), 76), ((0, 255, 0), 149), ((0, 0, 255), 29)):
        assert (luminance_84x84(np.full((210, 160, 3), colour, np.uint8)) == grey).all()


def tiny_args(run_dir, **overrides):
    """A few hundred agent steps of Breakout on the CPU: episodes capped at 80 frames so that evaluations finish one, small batches."""
    args = Args(run_dir=str(run_dir), cuda=False, total_frames=4 * 160, batch_size=8, buffer_size=120,
                min_replay_capacity_fraction=1 / 3, target_network_frequency=50, max_episode_frames=80, eval_every=80,
                eval_frames=120, grad_cov_every=60, grad_cov_samples=4, hessian_every=80, hessian_samples=16,
                hessian_iters=6, log_every=10, checkpoint_every=160, eval_envs=1)
    return dataclasses.replace(args, **overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddqn") / "full"
    return run_dir, train(tiny_args(run_dir, save_model=True, capture_video=True))


def test_smoke_run_on_breakout_writes_the_run_directory(finished_run):
    run_dir, summary = finished_run
    assert summary["status"] == "completed" and summary["steps"] == 160
    for name in ("args.json", "metrics.jsonl", "summary.json", "figures/grad_cov.png", "figures/hessian_density.png",
                 "checkpoint.pt",
                 "ddqn_atari_layernorm.model"):
        assert os.path.exists(run_dir / name), name
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))
    assert sorted(os.listdir(run_dir / "videos")) == ["eval_160.mp4", "eval_80.mp4"]
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    keys = set().union(*rows)
    for key in ("charts/episodic_return", "charts/SPS", "losses/td_loss", "losses/q_values",
                "eval/episodic_return", "eval/human_normalized_score", "curvature/grad_cov_offdiag_mean",
                "curvature/grad_cov_neg_fraction", "curvature/hessian_top_eigenvalue"):
        assert key in keys, key
    top, bottom = ([r[f"curvature/hessian_{end}_eigenvalue"] for r in rows if "curvature/hessian_top_eigenvalue" in r]
                   for end in ("top", "bottom"))
    assert len(top) == 2 and all(t > b for t, b in zip(top, bottom))  # at steps 80 and 160
    epsilons = {r["step"]: r["charts/epsilon"] for r in rows if "charts/epsilon" in r}
    assert {epsilons[s] for s in (10, 20, 30)} == {1.0} and {epsilons[s] for s in (40, 100, 160)} == {0.1}  # warm-up
    assert min(r["step"] for r in rows if "losses/td_loss" in r) > 40  # learning starts at 1/3 x 120 transitions
    losses = [r["losses/td_loss"] for r in rows if "losses/td_loss" in r and r["step"] > 40]
    assert losses and all(np.isfinite(losses)) and any(loss > 0 for loss in losses)
    assert json.load(open(run_dir / "summary.json"))["status"] == "completed"


def interrupted_and_resumed(run_dir, args, after_step):
    """Train with a SIGTERM once run_dir's metrics.jsonl reaches ``after_step``, then --resume: both summaries.
    With --num-seeds, run_dir is the first seed's directory."""
    metrics = run_dir / "metrics.jsonl"

    def interrupt_after_step(step):
        while not (metrics.exists() and any(json.loads(line)["step"] >= step for line in open(metrics))):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    # A harmless handler outside train(): a late signal must not kill pytest.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        threading.Thread(target=interrupt_after_step, args=(after_step,), daemon=True).start()
        first = train(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    at_interruption = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert at_interruption["step"] == (first["runs"][0] if "runs" in first else first)["steps"]
    return first, train(dataclasses.replace(args, resume=True))


def assert_same_checkpoints(resumed_dir, reference_dir):
    """The network, optimizer state, replay contents, emulators and step count of two runs are equal."""
    resumed = torch.load(resumed_dir / "checkpoint.pt", weights_only=False)
    reference = torch.load(reference_dir / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == reference["step"]
    for part in ("q_net", "target_net", "replay", "envs"):
        for key, value in reference[part].items():
            if key == "actions":  # each env's actions since its reset
                assert all(np.array_equal(a, b) for a, b in zip(resumed[part][key], value, strict=True))
            elif key != "rng":
                assert torch.equal(torch.as_tensor(resumed[part][key]), torch.as_tensor(value)), (part, key)
    assert resumed["envs"]["rng"] == reference["envs"]["rng"]
    for key, value in reference["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(resumed["optimizer"]["state"][key][name], tensor), (key, name)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(finished_run, tmp_path):
    """SIGTERM mid-run writes a checkpoint and exits; --resume then finishes with exactly the network, optimizer
    state, replay contents, emulators and step count of the run that was never interrupted."""
    full_dir, _ = finished_run
    run_dir = tmp_path / "resumed"
    first, second = interrupted_and_resumed(run_dir, tiny_args(run_dir), after_step=70)
    assert first["status"] == "interrupted" and 70 <= first["steps"] < 160
    assert second["status"] == "completed" and second["steps"] == 160
    assert_same_checkpoints(run_dir, full_dir)
    steps = [json.loads(line)["step"] for line in open(run_dir / "metrics.jsonl")]
    assert steps == sorted(steps) and steps[-1] == 160  # one metrics.jsonl continued across the interruption


def tiny_vector_args(run_dir, **overrides):
    """tiny_args with 4 environments: every period a multiple of 4, two updates per vector step at train
    frequency 2, two evaluation environments."""
    return tiny_args(run_dir, num_envs=4, train_frequency=2, target_network_frequency=48, log_every=20,
                     eval_envs=2, eval_frames=4 * 40, hessian_every=0, **overrides)


def test_four_envs_interrupted_and_resumed_equal_an_uninterrupted_run(tmp_path):
    full = train(tiny_vector_args(tmp_path / "full"))
    assert full["status"] == "completed" and full["steps"] == 160
    rows = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    assert {r["step"] % 4 for r in rows} == {0}
    assert len([r for r in rows if "charts/episodic_return" in r]) >= 8  # the four envs' episodes interleave
    assert [r["step"] for r in rows if "eval/episodic_return" in r] == [80, 160]
    replay = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["replay"]
    assert replay["frames"].shape[:2] == (4, 30)  # four lanes of 120 / 4 frames

    run_dir = tmp_path / "resumed"
    first, second = interrupted_and_resumed(run_dir, tiny_vector_args(run_dir), after_step=60)
    assert first["status"] == "interrupted" and second["status"] == "completed"
    assert_same_checkpoints(run_dir, tmp_path / "full")


@pytest.fixture(scope="module")
def float64_single_runs(tmp_path_factory):
    """The single runs of seeds 3 and 4 in float64: {seed: run directory}."""
    runs = {seed: tmp_path_factory.mktemp("single") / f"seed{seed}" for seed in (3, 4)}
    torch.set_default_dtype(torch.float64)
    try:
        for seed, run_dir in runs.items():
            assert train(tiny_args(run_dir, seed=seed))["status"] == "completed"
    finally:
        torch.set_default_dtype(torch.float32)
    return runs


def assert_close_checkpoints(lockstep_dir, single_dir):
    """Two runs' checkpoints agree: the networks and optimizer states to float64 rounding, and everything the
    agent acted on and stored (replay, emulators, counters, measurements' steps) exactly."""
    lock = torch.load(lockstep_dir / "checkpoint.pt", weights_only=False)
    single = torch.load(single_dir / "checkpoint.pt", weights_only=False)
    for part in ("q_net", "target_net"):
        assert lock[part].keys() == single[part].keys()
        for key, value in single[part].items():
            torch.testing.assert_close(lock[part][key], value, rtol=1e-9, atol=1e-12, msg=(part, key))
    assert lock["optimizer"]["state"].keys() == single["optimizer"]["state"].keys()
    for i, entry in single["optimizer"]["state"].items():
        for name, value in entry.items():
            torch.testing.assert_close(lock["optimizer"]["state"][i][name], value, rtol=1e-9, atol=1e-14)
    for key, value in single["replay"].items():
        assert torch.equal(torch.as_tensor(lock["replay"][key]), torch.as_tensor(value)), key
    assert lock["envs"]["rng"] == single["envs"]["rng"] and lock["rng"] == single["rng"]
    global_rng, single_global_rng = lock["lifecycle"]["rng"], single["lifecycle"]["rng"]  # each seed its own stream
    assert torch.equal(global_rng["torch"], single_global_rng["torch"])
    assert global_rng["python"] == single_global_rng["python"]
    assert all(np.array_equal(a, b) for a, b in zip(global_rng["numpy"], single_global_rng["numpy"]))
    assert all(np.array_equal(a, b) for a, b in zip(lock["envs"]["actions"], single["envs"]["actions"], strict=True))
    assert lock["step"] == single["step"]
    assert lock["lifecycle"]["measured"] == single["lifecycle"]["measured"]  # each measurement's last step
    assert [s for s, _ in lock["state"]["grad_cov"]] == [s for s, _ in single["state"]["grad_cov"]]
    for (_, a), (_, b) in zip(lock["state"]["grad_cov"], single["state"]["grad_cov"]):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-12)
    for key, value in single["state"]["last"].items():
        if key != "charts/SPS":
            np.testing.assert_allclose(lock["state"]["last"][key], value, rtol=1e-7, err_msg=key)


@pytest.mark.parametrize("after_step", [10, 70])
def test_seeds_in_lockstep_across_a_sigterm_equal_their_single_runs(float64_single_runs, tmp_path, after_step):
    """--num-seeds 2 (seeds 3 and 4), interrupted by one SIGTERM and resumed: each seed's run directory ends as its
    single run's, in float64, and each args.json is its single run's. The signal stops both seeds, also at step 10,
    in seed 3's warm-up before seed 4 has started (then seed 4 stops at step 0 and the two resume at different
    steps)."""
    torch.set_default_dtype(torch.float64)
    try:
        args = tiny_args(tmp_path / "lock", seed=3, num_seeds=2)
        first, second = interrupted_and_resumed(tmp_path / "lock__seed3", args, after_step=after_step)
    finally:
        torch.set_default_dtype(torch.float32)
    assert first["status"] == "interrupted" and [r["status"] for r in first["runs"]] == ["interrupted"] * 2
    assert all(r["steps"] < 160 for r in first["runs"])
    assert second["status"] == "completed" and [r["steps"] for r in second["runs"]] == [160, 160]
    for seed, single_dir in float64_single_runs.items():
        seed_dir = tmp_path / f"lock__seed{seed}"
        saved = json.load(open(seed_dir / "args.json"))
        assert (saved["seed"], saved["num_seeds"], saved["run_dir"]) == (seed, 1, str(seed_dir))
        assert_close_checkpoints(seed_dir, single_dir)
        rows, single_rows = ([json.loads(line) for line in open(d / "metrics.jsonl")] for d in (seed_dir, single_dir))
        assert [r["step"] for r in rows] == [r["step"] for r in single_rows]


def test_compiled_updates_equal_eager_ones(float64_single_runs, tmp_path):
    """--compile (torch.compile's inductor on the CPU), for one seed and for two in lockstep: each run ends as its
    eager single run, in float64. The compiled graph computes the same loss and gradient; only the order of a
    few floating-point sums may differ."""
    torch.set_default_dtype(torch.float64)
    try:
        assert train(tiny_args(tmp_path / "one", seed=3, compile=True))["status"] == "completed"
        assert train(tiny_args(tmp_path / "two", seed=3, num_seeds=2, compile=True))["status"] == "completed"
    finally:
        torch.set_default_dtype(torch.float32)
    assert_close_checkpoints(tmp_path / "one", float64_single_runs[3])
    for seed, single_dir in float64_single_runs.items():
        assert_close_checkpoints(tmp_path / f"two__seed{seed}", single_dir)


def test_bad_arguments_give_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown Atari env id"):
        train(Args(env_id="CartPole-v1", run_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="min-replay-capacity-fraction"):
        train(Args(min_replay_capacity_fraction=0.0, run_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="total-frames"):
        train(Args(total_frames=0, run_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="to resume"):
        train(Args(resume=True, run_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="--train-frequency 4 and --num-envs 7: one must divide the other"):
        train(Args(num_envs=7, run_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="--num-seeds"):
        train(Args(num_seeds=0, run_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="--log-every 1000 must be a multiple of --num-envs 16"):
        train(Args(num_envs=16, run_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="capture-video needs --preprocessing dqn_zoo"):
        train(Args(capture_video=True, preprocessing="gymnasium", run_dir=str(tmp_path)))
    for learning_rate in (-1e-4, float("nan")):
        with pytest.raises(UsageError, match="--learning-rate must be positive"):
            train(Args(learning_rate=learning_rate, run_dir=str(tmp_path)))


def test_diverging_run_records_diverged(tmp_path):
    summary = train(tiny_args(tmp_path / "diverged", total_frames=4 * 120, learning_rate=1e30, eval_every=10**6,
                              grad_cov_every=0, checkpoint_every=0, preprocessing="gymnasium"))  # the option runs
    assert summary["status"] == "diverged" and summary["steps"] < 120
    assert json.load(open(tmp_path / "diverged" / "summary.json"))["status"] == "diverged"


def test_resume_without_a_checkpoint_says_how_to_start_again(tmp_path):
    """A run killed before its first periodic checkpoint (or whose checkpoint was deleted): the advice works."""
    run_dir = tmp_path / "killed"
    args = tiny_args(run_dir, checkpoint_every=0, eval_every=10**6, grad_cov_every=0, hessian_every=0,
                     total_frames=4 * 40)
    train(args)
    os.remove(run_dir / "checkpoint.pt")
    (run_dir / "summary.json").write_text(json.dumps({"status": "interrupted", "steps": 20}))
    with pytest.raises(UsageError, match="move it aside") as error:
        train(dataclasses.replace(args, resume=True))
    stale = str(error.value).split("(mv ")[1].split(")")[0].split()[1]
    os.rename(run_dir, stale)  # following the advice: a fresh start in the same directory works
    assert train(args)["status"] == "completed"
    assert Args().checkpoint_every == 250_000  # a SIGKILL loses at most this many agent steps by default


def test_atari_sbatch_maps_tasks_to_games_and_moves_checkpointless_directories_aside(tmp_path):
    """slurm/atari.sbatch without Slurm: task 3 is Amidar's baseline (sorted games x {LN, baseline}), its two seeds
    in one --num-seeds process; a seed directory without checkpoint.pt is moved aside and the seeds train; a bad
    task id is a usage error (2)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "RUNS": str(tmp_path), "SEEDS": "2", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    stale = tmp_path / "Amidar_baseline__seed1"
    stale.mkdir()
    (stale / "args.json").write_text("{}")  # killed before its first checkpoint
    flags = ["--total-frames", "160", "--buffer-size", "120", "--min-replay-capacity-fraction", "0.34",
             "--batch-size", "8", "--eval-frames", "40", "--eval-envs", "1", "--eval-every", "40", "--no-cuda",
             "--grad-cov-every", "0", "--hessian-every", "0", "--log-every", "10"]
    done = subprocess.run(["slurm/atari.sbatch", *flags], cwd=root, env={**env, "SLURM_ARRAY_TASK_ID": "3"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for seed in (1, 2):
        summary = json.load(open(tmp_path / f"Amidar_baseline__seed{seed}" / "summary.json"))
        assert summary["status"] == "completed" and summary["env_id"] == "ALE/Amidar-v5" and not summary["layer_norm"]
        assert summary["seed"] == seed
    assert len(list(tmp_path.glob("Amidar_baseline__seed1.stale-*"))) == 1
    for task in ("abc", "114"):
        bad = subprocess.run(["slurm/atari.sbatch"], cwd=root, env={**env, "SLURM_ARRAY_TASK_ID": task},
                             capture_output=True, text=True)
        assert bad.returncode == 2, (task, bad.stderr)


def test_arguments_that_cannot_train_give_usage_errors(tmp_path):
    """A learning-start fraction that is not a number in (0, 1], fewer frames than one agent step, a game without
    human scores (its normalised score would be NaN: the run would end as diverged): one-line errors, exit 2."""
    for fraction in (float("nan"), float("inf"), float("-inf"), 1.5):
        with pytest.raises(UsageError, match=r"--min-replay-capacity-fraction must lie in \(0, 1\]"):
            train(Args(min_replay_capacity_fraction=fraction, run_dir=str(tmp_path / "run")))
    for frames in (1, 2, 3):
        with pytest.raises(UsageError, match="less than one agent step"):
            train(Args(total_frames=frames, run_dir=str(tmp_path / "run")))
    with pytest.raises(UsageError, match="use at least 32"):
        train(Args(total_frames=16, num_envs=8, run_dir=str(tmp_path / "run")))
    with pytest.raises(UsageError, match="ALE/Pacman-v5 has no random and human scores"):
        train(Args(env_id="ALE/Pacman-v5", run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
    result = subprocess.run([sys.executable, "ddqn_atari_layernorm.py", "--min-replay-capacity-fraction", "nan",
                             "--run-dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_replay_too_large_for_memory_is_a_usage_error_that_leaves_no_run_directory(tmp_path):
    """10^10 frames (70 TB) cannot be allocated: one line, exit 2, and the run directories made for the run (one
    seed, or a group's) are gone, so the same command with a smaller --buffer-size starts cleanly."""
    for seeds, run_dir in (("1", tmp_path / "one"), ("2", tmp_path / "group")):
        result = subprocess.run([sys.executable, "ddqn_atari_layernorm.py", "--no-cuda", "--buffer-size", str(10**10),
                                 "--num-seeds", seeds, "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "lower --buffer-size" in result.stderr
        assert not os.listdir(tmp_path), os.listdir(tmp_path)  # neither the directory nor its seeds' (__seed<n>)


def test_a_final_evaluation_without_a_finished_episode_leaves_no_final_score(tmp_path):
    """Seed 2's random evaluation policy finishes an episode at step 120 but none at the final evaluation (step
    160): the summary's final score is missing (eval/episodes 0, no return), not the step-120 score."""
    run_dir = tmp_path / "run"
    summary = train(tiny_args(run_dir, eval_epsilon=1.0, eval_frames=800, eval_every=40, max_episode_frames=108_000,
                              seed=2, grad_cov_every=0, hessian_every=0))
    evaluations = {r["step"]: r for r in map(json.loads, open(run_dir / "metrics.jsonl")) if "eval/episodes" in r}
    assert evaluations[120]["eval/episodes"] > 0 and "eval/episodic_return" in evaluations[120]  # a score to keep
    assert evaluations[160] == {"step": 160, "eval/episodes": 0}
    assert summary["status"] == "completed" and summary["metrics"]["eval/episodes"] == 0
    assert "eval/episodic_return" not in summary["metrics"]
    assert "eval/human_normalized_score" not in summary["metrics"]


def test_resuming_with_fewer_frames_than_the_checkpoint_trained_is_a_usage_error(tmp_path):
    """A run killed after its last checkpoint (no summary.json), resumed with a lower --total-frames: refused,
    since it would complete past its total with an earlier evaluation as its final score."""
    run_dir = tmp_path / "run"
    args = tiny_args(run_dir, total_frames=4 * 40, eval_every=40, grad_cov_every=0, hessian_every=0)
    train(args)
    os.remove(run_dir / "summary.json")
    with pytest.raises(UsageError, match="--total-frames 80 is below the 160 frames .* cannot be shortened"):
        train(dataclasses.replace(args, total_frames=4 * 20, resume=True))
    assert not (run_dir / "summary.json").exists()
    assert train(dataclasses.replace(args, resume=True))["status"] == "completed"  # the advice works


def test_a_checkpoint_of_the_generator_loop_gives_a_one_line_error(tmp_path):
    """A checkpoint written by the loop before its seeds moved to common.runtime.seeds (the counters under "state",
    no group step): resuming it is a one-line usage error (exit status 2), not a traceback."""
    run_dir = tmp_path / "old"
    args = tiny_args(run_dir, total_frames=4 * 40, eval_every=40, grad_cov_every=0, hessian_every=0)
    train(args)
    os.remove(run_dir / "summary.json")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    ckpt["state"]["step"] = ckpt.pop("step")
    for key in ("probes", "probe_curves"):
        del ckpt[key]
    del ckpt["lifecycle"]["measured"]
    torch.save(ckpt, run_dir / "checkpoint.pt")
    cli = subprocess.run([sys.executable, "ddqn_atari_layernorm.py", "--run-dir", str(run_dir), "--resume",
                          *[f"--{k.replace('_', '-')}={v}" for k, v in dataclasses.asdict(args).items()
                            if k not in ("run_dir", "resume") and v is not None and not isinstance(v, bool)],
                          "--no-cuda"], cwd=ROOT, capture_output=True, text=True)
    assert cli.returncode == EXIT_USAGE and len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    assert "older version" in cli.stderr


def test_atari_sbatch_skips_completed_seeds_resumes_checkpointed_ones_and_starts_the_rest(tmp_path):
    """slurm/atari.sbatch without Slurm, SEEDS=3, on a task whose seed 1 has completed, seed 2 has trained half
    as long (its checkpoint at step 20) and seed 3 has nothing: seed 1 is left as it is, seed 2 continues from
    step 20, seed 3 starts; nothing is moved aside."""
    env = {**os.environ, "RUNS": str(tmp_path), "SEEDS": "3", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    flags = ["--buffer-size", "120", "--min-replay-capacity-fraction", "0.34", "--batch-size", "8", "--eval-frames",
             "40", "--eval-envs", "1", "--eval-every", "20", "--no-cuda", "--grad-cov-every", "0", "--hessian-every",
             "0", "--log-every", "10"]
    for seed, frames in ((1, 160), (2, 80)):  # as the task's own process would have made them
        single = subprocess.run([sys.executable, "ddqn_atari_layernorm.py", "--env-id", "ALE/Amidar-v5",
                                 "--no-layer-norm", "--seed", str(seed), "--num-seeds", "1", "--run-dir",
                                 str(tmp_path / f"Amidar_baseline__seed{seed}"), *flags, "--total-frames",
                                 str(frames)], cwd=ROOT, env=env, capture_output=True, text=True)
        assert single.returncode == 0, single.stderr
    completed = (tmp_path / "Amidar_baseline__seed1" / "summary.json").read_bytes()
    task = subprocess.run(["slurm/atari.sbatch", *flags, "--total-frames", "160"], cwd=ROOT,
                          env={**env, "SLURM_ARRAY_TASK_ID": "3"}, capture_output=True, text=True)
    assert task.returncode == 0, task.stdout + task.stderr
    assert (tmp_path / "Amidar_baseline__seed1" / "summary.json").read_bytes() == completed
    for seed, resumes in ((2, [20]), (3, [])):
        summary = json.load(open(tmp_path / f"Amidar_baseline__seed{seed}" / "summary.json"))
        assert (summary["status"], summary["steps"], summary["resumes"], summary["seed"]) == \
            ("completed", 40, resumes, seed)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"Amidar_baseline__seed{seed}" for seed in (1, 2, 3)]
