"""Agent steps per second in the learning phase, and replay memory: ddqn_atari_layernorm.py against a CleanRL-style
loop (gymnasium FrameStackObservation, SB3's memory-optimised numpy replay of stacked frames, per-step host-to-device
copies, default memory format), measured the same way in one run. Each configuration runs in its own process;
the configurations alternate so that load from other processes falls on all of them.

    python benchmarks/bench_ddqn_atari.py                  # appends to benchmarks/RESULTS.md
    python benchmarks/bench_ddqn_atari.py --steps 400 --no-write
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def ours(steps, learning_starts, buffer_size, layer_norm):
    """The real train() loop, run to learning_starts and to learning_starts + steps: the difference is the
    learning phase (set-up and the acting-only phase cancel out). Returns (wall seconds, CPU seconds, bytes)."""
    from common.atari import FrameReplay
    from ddqn_atari_layernorm import Args, train

    def run(total):
        with tempfile.TemporaryDirectory() as run_dir:
            wall, cpu = time.perf_counter(), time.process_time()
            train(Args(run_dir=run_dir, total_frames=4 * total, buffer_size=buffer_size,
                       min_replay_capacity_fraction=learning_starts / buffer_size, layer_norm=layer_norm,
                       grad_cov_every=0, eval_every=10**9, eval_frames=4, log_every=100))
            return time.perf_counter() - wall, time.process_time() - cpu

    run(learning_starts + 8)  # warm-up: first environment, first updates
    short, full = run(learning_starts), run(learning_starts + steps)
    replay = FrameReplay(1000)
    per_transition = sum(t[0].numel() * t.element_size() for t in replay.state_dict().values() if hasattr(t, "numel"))
    return full[0] - short[0], full[1] - short[1], per_transition


def cleanrl(steps, learning_starts, buffer_size):
    """CleanRL's dqn_atari.py learning loop, with its Adam and MSE loss, on gymnasium 1.x wrappers."""
    import gymnasium as gym
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from stable_baselines3.common.buffers import ReplayBuffer

    from common.atari import make_env

    env = gym.wrappers.FrameStackObservation(make_env("ALE/Breakout-v5", 30, 108_000, "gymnasium"), 4)
    device = torch.device("cpu")

    def network():
        return nn.Sequential(nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                             nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, 512),
                             nn.ReLU(), nn.Linear(512, env.action_space.n))

    q_network, target_network = network(), network()
    target_network.load_state_dict(q_network.state_dict())
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4)
    rb = ReplayBuffer(buffer_size, env.observation_space, env.action_space, device, optimize_memory_usage=True,
                      handle_timeout_termination=False)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    for step in range(learning_starts + steps):
        if step == learning_starts:
            wall, cpu = time.perf_counter(), time.process_time()
        if rng.random() < 0.1:
            action = int(rng.integers(env.action_space.n))
        else:
            action = int(q_network(torch.Tensor(obs[None]).to(device) / 255.0).argmax(dim=1).cpu().numpy()[0])
        next_obs, reward, terminated, truncated, info = env.step(action)
        rb.add(obs[None], next_obs[None], np.array([action]), np.array([np.sign(reward)]), np.array([terminated]),
               [info])
        obs = next_obs if not (terminated or truncated) else env.reset()[0]
        if step > learning_starts and step % 4 == 0:
            data = rb.sample(32)
            with torch.no_grad():
                target_max, _ = target_network(data.next_observations / 255.0).max(dim=1)
                td_target = data.rewards.flatten() + 0.99 * target_max * (1 - data.dones.flatten())
            old_val = q_network(data.observations / 255.0).gather(1, data.actions).squeeze()
            loss = F.mse_loss(td_target, old_val)
            if step % 100 == 0:
                loss.item()  # CleanRL logs every 100 steps
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    per_transition = (rb.observations.nbytes + rb.actions.nbytes + rb.rewards.nbytes + rb.dones.nbytes) / buffer_size
    return wall, cpu, per_transition


def child(config, steps, learning_starts, buffer_size, threads):
    import torch

    torch.set_num_threads(threads)
    if config == "cleanrl":
        wall, cpu, per_transition = cleanrl(steps, learning_starts, buffer_size)
    else:
        wall, cpu, per_transition = ours(steps, learning_starts, buffer_size, layer_norm=config == "ours_layernorm")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"config": config, "sps": steps / wall, "cpu_sps": steps / cpu,
                      "replay_bytes_per_transition": per_transition, "peak_rss_mib": peak_mib}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000, help="timed agent steps after learning starts")
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--buffer-size", type=int, default=100_000, help="A.3's replay capacity")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the configurations")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 on this shared 2-core machine (2 threads spin-wait when oversubscribed)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps, args.learning_starts, args.buffer_size, args.threads)

    configs = ["ours_layernorm", "cleanrl", "ours_no_layernorm"]
    results = {c: [] for c in configs}
    for _ in range(args.rounds):
        for config in configs:
            out = subprocess.run([sys.executable, __file__, "--child", config, "--steps", str(args.steps),
                                  "--learning-starts", str(args.learning_starts), "--buffer-size",
                                  str(args.buffer_size), "--threads", str(args.threads)],
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results[config].append(row)
            print(row, flush=True)

    import torch

    def best(config, key):
        return max(row[key] for row in results[config])

    base, cpu_base = best("cleanrl", "sps"), best("cleanrl", "cpu_sps")
    lines = [
        "", "## ddqn_atari_layernorm.py", "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; device: CPU "
        f"({os.cpu_count()} cores, {platform.machine()}, shared with other jobs), {args.threads} torch thread(s), "
        f"torch {torch.__version__}, Python {platform.python_version()}; Breakout, {args.learning_starts} steps "
        f"before learning, then {args.steps} timed agent steps (one update of batch 32 every 4); replay capacity "
        f"{args.buffer_size}; best of {args.rounds} alternating rounds, each in its own process. Steps/s per wall "
        "second and per CPU second of the process (the latter is less sensitive to the other jobs).", "",
        "| loop | steps/s wall (rounds) | vs CleanRL | steps/s per CPU s | vs CleanRL | replay bytes/transition "
        "| peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for config in configs:
        rounds = ", ".join(f"{row['sps']:.1f}" for row in results[config])
        lines.append(f"| {config} | {best(config, 'sps'):.1f} ({rounds}) | {best(config, 'sps') / base:.2f}x | "
                     f"{best(config, 'cpu_sps'):.1f} | {best(config, 'cpu_sps') / cpu_base:.2f}x | "
                     f"{results[config][0]['replay_bytes_per_transition']:,.0f} | "
                     f"{best(config, 'peak_rss_mib'):.0f} |")
    lines.append("")
    lines.append("Bytes per transition: allocated replay capacity / transitions. Peak RSS: ours zero-fills its "
                 "whole replay up front (0.7 GB at 100k); numpy's stacked buffer is allocated lazily, so its RSS "
                 "counts only the pages touched so far (2.8 GB when full).")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with open(os.path.join(ROOT, "benchmarks", "RESULTS.md"), "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
