"""Tests of the MinAtar path of ddqn_atari_layernorm.py: Young & Tian's defaults and network, the vectorised games
against minatar's own Environment, the replay's compact states, resume, locks and signals on tiny configurations,
and aggregate on synthetic MinAtar runs."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from minatar import Environment

from common.errors import EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_USAGE, UsageError
from common.science.atari import FrameReplay
from common.science.minatar import GAMES, MINATAR_DEFAULTS, VectorMinAtar, load_random_scores, minatar_env_ids
from common.science.networks import MinAtarQNetwork
from ddqn_atari_layernorm import ALE_DEFAULTS, Args, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_follow_the_id_family_and_the_ale_keeps_its_own():
    minatar, ale = Args(env_id="MinAtar/Breakout-v1"), Args()
    # Young & Tian's examples/dqn.py constants
    assert (minatar.total_frames, minatar.train_frequency, minatar.target_network_frequency) == (5_000_000, 1, 1_000)
    assert (minatar.epsilon_start, minatar.epsilon_end, minatar.epsilon_decay_steps) == (1.0, 0.1, 100_000)
    assert (minatar.buffer_size, minatar.learning_starts, minatar.batch_size) == (100_000, 5_000, 32)
    assert (minatar.learning_rate, minatar.rmsprop_decay, minatar.gamma, minatar.rmsprop_eps) == (
        2.5e-4, 0.95, 0.99, 1e-4)
    assert minatar.frame_skip == 1 and minatar.noop_max == 0 and minatar.preprocessing is None
    # the ALE's DQN Zoo / A.3 values, as before
    assert (ale.total_frames, ale.train_frequency, ale.target_network_frequency, ale.epsilon_start) == (
        200_000_000, 4, 30_000, 0.1)
    assert (ale.preprocessing, ale.noop_max, ale.eval_frames, ale.rmsprop_eps) == ("dqn_zoo", 30, 500_000, 0.01 / 32**2)
    assert ale.frame_skip == 4 and set(ALE_DEFAULTS) >= set(MINATAR_DEFAULTS)
    assert Args(env_id="MinAtar/Breakout-v1", train_frequency=2).train_frequency == 2  # a given value stays


@pytest.mark.parametrize("env_id", list(minatar_env_ids().values()) + ["MinAtar/Breakout-v0"])
def test_vector_games_step_as_minatar_environments_and_resume_exactly(env_id):
    """Frames are the Environment's states channels-first as uint8, rewards and terminals its own, under the same
    seeds; a state_dict taken mid-episode continues the games exactly."""
    venv = VectorMinAtar(env_id, 2, max_episode_frames=10**6, seed=5, device="cpu")
    game = GAMES[env_id.split("/")[1].split("-")[0]]
    references = [Environment(game) for _ in range(2)]
    for env, child in zip(references, np.random.SeedSequence(5).spawn(2)):
        env.seed(int(child.generate_state(1)[0]))
        env.reset()
    actions_of = (list(references[0].minimal_action_set()) if env_id.endswith("v1") else list(range(6)))
    assert venv.num_actions == len(actions_of) and venv.frame_shape == (references[0].state_shape()[2], 10, 10)
    frames, lives = venv.reset()
    assert frames.dtype == torch.uint8 and not lives.any()
    rng, saved = np.random.default_rng(0), None
    for t in range(300):
        if t == 150:
            saved, at_save = venv.state_dict(), [frames.clone()]
        actions = rng.integers(venv.num_actions, size=2)
        frames, rewards, terminated, truncated, _ = venv.step(actions)
        for k, env in enumerate(references):
            reward, done = env.act(actions_of[actions[k]])
            assert (reward, done) == (rewards[k], terminated[k])
            assert np.array_equal(frames[k].numpy(), env.state().transpose(2, 0, 1).astype(np.uint8))
            if done:
                env.reset()
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            frames[done] = venv.reset(done)[0]
        if t == 250:
            later = frames.clone()
    resumed = VectorMinAtar(env_id, 2, max_episode_frames=10**6, seed=99, device="cpu")
    resumed.load_state_dict(saved)
    frames, rng = at_save[0], np.random.default_rng(0)
    for t in range(300):
        actions = rng.integers(venv.num_actions, size=2)
        if t < 150:
            continue
        frames, _, terminated, truncated, _ = resumed.step(actions)
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            frames[done] = resumed.reset(done)[0]
        if t == 250:
            assert torch.equal(frames, later)


def test_episode_cap_truncates():
    venv = VectorMinAtar("MinAtar/Freeway-v1", 1, max_episode_frames=7, seed=0, device="cpu")
    venv.reset()
    ends = [venv.step([0])[3][0] for _ in range(7)]
    assert ends == [False] * 6 + [True]


def test_network_is_young_and_tians_with_layernorm_before_each_relu():
    base, ln = MinAtarQNetwork(4, 3, layer_norm=False), MinAtarQNetwork(4, 3, layer_norm=True)
    counts = [p.numel() for p in base.parameters()]
    assert counts == [16 * 4 * 9, 16, 8 * 8 * 16 * 128, 128, 128 * 3, 3]  # dqn.py's QNetwork
    norms = [type(m).__name__ for m in ln.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))]
    assert norms == ["GroupNorm", "LayerNorm"]
    states = torch.randint(0, 2, (5, 1, 4, 10, 10), dtype=torch.uint8)  # replay stacks of history 1
    assert ln(states).shape == (5, 3) and torch.equal(ln(states), ln(states[:, 0]))


def test_replay_stores_states_once_as_uint8_channels_first():
    venv = VectorMinAtar("MinAtar/Seaquest-v1", 2, 10**6, seed=1, device="cpu")
    replay = FrameReplay(64, history=1, frame_shape=venv.frame_shape, lanes=2)
    assert replay.frames.dtype == torch.uint8 and replay.frames.shape == (2, 32, 10, 10, 10)
    frames, _ = venv.reset()
    replay.start_episodes(frames)
    seen, rng = {}, np.random.default_rng(0)
    for _ in range(20):
        obs, actions = replay.latest(), rng.integers(venv.num_actions, size=2)
        frames, rewards, terminated, truncated, _ = venv.step(actions)
        replay.add(torch.as_tensor(actions), torch.as_tensor(rewards), torch.as_tensor(terminated), frames)
        for k in range(2):
            seen[(obs[k].numpy().tobytes(), int(actions[k]))] = frames[k].numpy().tobytes()
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            replay.start_episodes(venv.reset(done)[0], done)
    obs, actions, _, _, next_obs = replay.sample(50)
    for k in range(50):  # every sampled transition is one the games made
        assert seen[(obs[k].numpy().tobytes(), int(actions[k]))] == next_obs[k].numpy().tobytes()


def tiny_args(run_dir, **overrides):
    """A few hundred agent steps of MinAtar Breakout: small replay and batches, every measurement once or twice."""
    config = dict(env_id="MinAtar/Breakout-v1", run_dir=str(run_dir), cuda=False, total_frames=240, batch_size=8,
                  buffer_size=120, min_replay_capacity_fraction=1 / 3, target_network_frequency=50, eval_every=120,
                  eval_frames=200, epsilon_decay_steps=100, grad_cov_every=80, grad_cov_samples=4, hessian_every=120,
                  hessian_samples=16, hessian_iters=6, log_every=10, checkpoint_every=120, eval_envs=2)
    return Args(**{**config, **overrides})


def checkpoint(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)


def assert_same_runs(a, b, rtol=0.0):
    """Two runs' final checkpoints hold the same networks, optimizer state, replay, games and counters."""
    a, b = checkpoint(a), checkpoint(b)
    for part in ("q_net", "target_net"):
        for key, value in b[part].items():
            torch.testing.assert_close(a[part][key], value, rtol=rtol, atol=rtol * 1e-3, msg=(part, key))
    for i, entry in b["optimizer"]["state"].items():
        for name, value in entry.items():
            torch.testing.assert_close(a["optimizer"]["state"][i][name], value, rtol=rtol, atol=rtol * 1e-5)
    for key, value in b["replay"].items():
        assert np.array_equal(np.asarray(a["replay"][key]), np.asarray(value)), key
    assert np.array_equal(a["envs"]["envs"], b["envs"]["envs"]) and a["rng"] == b["rng"]
    assert a["step"] == b["step"]
    assert a["lifecycle"]["measured"] == b["lifecycle"]["measured"]  # each measurement's last step


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("minatar") / "full"
    return run_dir, train(tiny_args(run_dir, save_model=True))


def test_smoke_run_writes_the_run_directory_and_learns_from_step_40(finished_run):
    run_dir, summary = finished_run
    assert summary["status"] == "completed" and summary["steps"] == 240 and summary["frames"] == 240
    for name in ("args.json", "metrics.jsonl", "summary.json", "figures/grad_cov.png", "figures/hessian_density.png",
                 "checkpoint.pt", "ddqn_atari_layernorm.model"):
        assert os.path.exists(run_dir / name), name
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    keys = set().union(*rows)
    for key in ("charts/episodic_return", "losses/td_loss", "eval/episodic_return",
                "curvature/grad_cov_offdiag_mean", "curvature/hessian_top_eigenvalue"):
        assert key in keys, key
    assert "eval/human_normalized_score" not in keys  # MinAtar has no human scores
    assert min(r["step"] for r in rows if "losses/td_loss" in r) > 40
    assert [r["step"] for r in rows if "eval/episodic_return" in r] == [120, 240]
    replay = checkpoint(run_dir)["replay"]
    assert replay["frames"].dtype == torch.uint8 and replay["frames"].shape == (1, 120, 4, 10, 10)
    saved = json.load(open(run_dir / "args.json"))
    assert (saved["train_frequency"], saved["preprocessing"], saved["noop_max"]) == (1, None, 0)


def interrupted_and_resumed(run_dir, args, after_step):
    """SIGTERM once run_dir's metrics.jsonl reaches ``after_step``, then --resume; both summaries."""
    import threading

    metrics = run_dir / "metrics.jsonl"

    def interrupt():
        while not (metrics.exists() and any(json.loads(line)["step"] >= after_step for line in open(metrics))):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        first = train(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return first, train(dataclasses.replace(args, resume=True))


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(finished_run, tmp_path):
    full_dir, _ = finished_run
    run_dir = tmp_path / "resumed"
    first, second = interrupted_and_resumed(run_dir, tiny_args(run_dir), after_step=90)
    assert first["status"] == "interrupted" and 90 <= first["steps"] < 240
    assert second["status"] == "completed" and second["steps"] == 240
    assert_same_runs(run_dir, full_dir)


def test_two_envs_and_two_seeds_in_lockstep_equal_their_single_runs(tmp_path):
    """--num-envs 2 runs; --num-seeds 2 in lockstep ends as the two single runs (float64)."""
    kwargs = dict(num_envs=2, grad_cov_every=0, hessian_every=0)
    torch.set_default_dtype(torch.float64)
    try:
        for seed in (3, 4):
            assert train(tiny_args(tmp_path / f"single{seed}", seed=seed, **kwargs))["status"] == "completed"
        summary = train(tiny_args(tmp_path / "lock", seed=3, num_seeds=2, **kwargs))
    finally:
        torch.set_default_dtype(torch.float32)
    assert [r["steps"] for r in summary["runs"]] == [240, 240]
    assert checkpoint(tmp_path / "single3")["replay"]["frames"].shape[:2] == (2, 60)
    for seed in (3, 4):
        assert_same_runs(tmp_path / f"lock__seed{seed}", tmp_path / f"single{seed}", rtol=1e-9)


def test_bad_minatar_arguments_give_one_line_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown MinAtar env id 'MinAtar/Pong-v1'"):
        train(Args(env_id="MinAtar/Pong-v1", run_dir=str(tmp_path)))
    for flag, value in (("noop_max", 30), ("preprocessing", "dqn_zoo"), ("capture_video", True), ("env_threads", 2)):
        with pytest.raises(UsageError, match=f"--{flag.replace('_', '-')} applies to the ALE only"):
            train(Args(env_id="MinAtar/Breakout-v1", run_dir=str(tmp_path), **{flag: value}))
    cli = subprocess.run([sys.executable, "ddqn_atari_layernorm.py", "--env-id", "MinAtar/Breakout-v1",
                          "--noop-max", "30", "--run-dir", str(tmp_path / "cli")], cwd=ROOT, capture_output=True,
                         text=True)
    assert cli.returncode == EXIT_USAGE and len(cli.stderr.strip().splitlines()) == 1, cli.stderr


def test_a_second_process_is_locked_out_and_a_sigterm_then_resume_completes(tmp_path):
    """Real processes: a running MinAtar run holds its directory (a second one exits EXIT_LOCKED at once); SIGTERM
    stops it with EXIT_INTERRUPTED; the same command with --resume completes."""
    run_dir = tmp_path / "run"

    def command(total):
        flags = {"env-id": "MinAtar/Breakout-v1", "total-frames": total, "eval-every": 100_000, "eval-frames": 200,
                 "log-every": 10, "grad-cov-every": 0, "hessian-every": 0, "checkpoint-every": 0, "run-dir": run_dir}
        return [sys.executable, "ddqn_atari_layernorm.py", "--no-cuda"] + [w for k, v in flags.items()
                                                                          for w in (f"--{k}", str(v))]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command(200_000), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 300
    while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().count("\n") > 3):
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.2)
    second = subprocess.run(command(200_000), cwd=ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == EXIT_LOCKED and f"pid {first.pid}" in second.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(120) == EXIT_INTERRUPTED
    stopped = checkpoint(run_dir)["step"]
    assert 0 < stopped < 200_000
    resumed = subprocess.run([*command(stopped + 40), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.load(open(run_dir / "summary.json"))["steps"] == stopped + 40


def test_random_policy_scores_cover_the_five_games():
    scores = load_random_scores()
    assert set(scores) == set(GAMES) and all(0 <= s < 5 for s in scores.values())


def write_minatar_run(root, name, game, layer_norm, seed, curve, env_family="MinAtar"):
    """A completed run whose evaluations at steps 1000, 2000, ... return ``curve``; the last is its final score."""
    run = root / name
    run.mkdir()
    env_id = f"MinAtar/{game}-v1" if env_family == "MinAtar" else f"ALE/{game}-v5"
    (run / "args.json").write_text(json.dumps({
        "env_id": env_id, "layer_norm": layer_norm, "seed": seed, "total_frames": 1000 * len(curve),
        "preprocessing": None if env_family == "MinAtar" else "dqn_zoo", "exp_name": "ddqn_atari_layernorm"}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": 1000 * (i + 1), "eval/episodic_return": v}) + "\n"
                                               for i, v in enumerate(curve)))
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 1000 * len(curve),
                                                  "wall_time_s": 1.0, "metrics": {"eval/episodic_return": curve[-1]}}))


def test_aggregate_normalises_minatar_runs_by_random_and_the_best_configuration(tmp_path):
    from common.analysis import atari_stats
    from ddqn_atari_layernorm import AggregateArgs, aggregate

    random_scores = load_random_scores()
    finals = {("Breakout", True): [10.0, 12.0, 14.0], ("Breakout", False): [4.0, 6.0, 8.0],
              ("Asterix", True): [2.0, 2.0, 5.0], ("Asterix", False): [3.0, 3.0, 3.0]}
    runs = tmp_path / "runs"
    runs.mkdir()
    for (game, ln), values in finals.items():
        for seed, final in enumerate(values):
            write_minatar_run(runs, f"{game}_{ln}_{seed}", game, ln, seed, [1.0 + seed, final])
    write_minatar_run(runs, "ale_breakout", "Breakout", True, 0, [5.0, 9.0], env_family="ALE")  # its own protocol
    results = aggregate(AggregateArgs(runs_dir=str(runs), output_dir=str(tmp_path / "out"), num_boot=200,
                                      num_boot_profile=100))
    (label, result), = [(k, v) for k, v in results.items()]  # the ALE run alone is too few: not analysed
    assert result["games"] == ["MinAtar/Asterix", "MinAtar/Breakout"]
    out, = (tmp_path / "out").glob("protocol-*/human_normalized_scores.csv")  # the ALE run is another protocol
    out = out.parent
    scores = pd.read_csv(out / "human_normalized_scores.csv")
    breakout = scores[scores["game"] == "MinAtar/Breakout"]
    reference, random_score = 12.0, random_scores["Breakout"]  # the LayerNorm mean is the better one
    np.testing.assert_allclose(breakout["human"], reference)
    np.testing.assert_allclose(breakout["human_normalized"], (breakout["score"] - random_score)
                               / (reference - random_score))
    improvement = {r["game"]: r["improvement"] for r in result["improvement"]}
    np.testing.assert_allclose(improvement["MinAtar/Breakout"], (12 - 6) / (12 - random_scores["Breakout"]))
    np.testing.assert_allclose(improvement["MinAtar/Asterix"], 0.0, atol=1e-12)  # means 3 and 3
    curves = pd.read_csv(out / "learning_curves.csv")
    first = curves[(curves["game"] == "MinAtar/Breakout") & (curves["config"] == "LayerNorm") & (curves["step"] == 1000)]
    half = atari_stats.scipy.stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)  # values 1, 2, 3: mean 2, sd 1
    np.testing.assert_allclose(first[["mean_return", "lower", "upper"]].to_numpy()[0], [2, 2 - half, 2 + half])
    assert len(curves) == 2 * 2 * 2 and (curves["seeds"] == 3).all()
    for name in ("fig7_layernorm_improvement", "learning_curves", "aggregate_metrics", "performance_profiles"):
        assert (out / f"{name}.png").exists()


def test_a_minatar_game_where_no_configuration_beat_random_has_no_improvement_and_no_aggregate(tmp_path):
    """Both configurations below the random policy: (LN - baseline) / (best - random) would divide by a negative
    number and flip the sign, so the game gets no improvement and stays out of rliable's aggregates."""
    from ddqn_atari_layernorm import AggregateArgs, aggregate

    random_score = load_random_scores()["Asterix"]
    finals = {("Breakout", True): [10.0, 12.0], ("Breakout", False): [4.0, 6.0],
              ("Asterix", True): [random_score - 0.2] * 2, ("Asterix", False): [random_score - 0.1] * 2}
    runs = tmp_path / "runs"
    runs.mkdir()
    for (game, ln), values in finals.items():
        for seed, final in enumerate(values):
            write_minatar_run(runs, f"{game}_{ln}_{seed}", game, ln, seed, [final])
    result, = aggregate(AggregateArgs(runs_dir=str(runs), output_dir=str(tmp_path / "out"), num_boot=200,
                                      num_boot_profile=100)).values()
    improvement = {r["game"]: r["improvement"] for r in result["improvement"]}
    assert np.isnan(improvement["MinAtar/Asterix"]) and improvement["MinAtar/Breakout"] > 0
    assert result["probability_of_improvement"]["games"] == 1
    assert {r["games"] for r in result["aggregates"]} == {1}


def test_atari_sbatch_with_family_minatar_runs_the_five_games(tmp_path):
    """FAMILY=minatar slurm/atari.sbatch without Slurm: task 3 is MinAtar Breakout's baseline (sorted games x {LN,
    baseline}), its two seeds in one --num-seeds process; task 10 is past the array (usage error 2)."""
    env = {**os.environ, "RUNS": str(tmp_path), "SEEDS": "2", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "FAMILY": "minatar"}
    flags = ["--total-frames", "120", "--buffer-size", "120", "--min-replay-capacity-fraction", "0.34",
             "--batch-size", "8", "--eval-frames", "40", "--eval-envs", "1", "--eval-every", "60", "--no-cuda",
             "--grad-cov-every", "0", "--hessian-every", "0", "--log-every", "10"]
    done = subprocess.run(["slurm/atari.sbatch", *flags], cwd=ROOT, env={**env, "SLURM_ARRAY_TASK_ID": "3"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for seed in (1, 2):
        summary = json.load(open(tmp_path / f"Breakout_baseline__seed{seed}" / "summary.json"))
        assert (summary["status"], summary["env_id"], summary["layer_norm"], summary["seed"]) == (
            "completed", "MinAtar/Breakout-v1", False, seed)
    bad = subprocess.run(["slurm/atari.sbatch"], cwd=ROOT, env={**env, "SLURM_ARRAY_TASK_ID": "10"},
                         capture_output=True, text=True)
    assert bad.returncode == 2, bad.stderr
