"""Agent steps per second of ddqn_atari_layernorm.py, side by side in one run (each configuration in its own
process, one torch thread unless --threads says otherwise):

(a) the loop's ceiling: a stand-in network of negligible cost, today's loop (the script at BASELINE_COMMIT: one
    Python environment, DQNZooPreprocessing) against the new one (C++ vector env) at 1 and 8 environments;
(b) the real Nature CNN with LayerNorm against a CleanRL-style dqn_atari.py loop with the same network (gymnasium
    SyncVectorEnv of AtariPreprocessing + FrameStackObservation, SB3's memory-optimised replay, Adam, MSE), at 1
    and 8 environments, one update per 4 agent steps in every loop; with --cleanrl-dir, the real CleanRL
    cleanrl/dqn_atari.py, unmodified (one env, its own Nature CNN without LayerNorm), beside the new loop with the
    same network; and the new loop with --compile;
(c) --num-seeds 3 against 3 single runs one after another, the Nature CNN with 8 environments per seed;
(d) emulation alone with DQN Zoo frames and random actions: today's pipeline against VectorAtari (ale_py's
    AtariVectorEnv) and, with --envpool-path, EnvPool, at 1 and 8 environments on 2 emulator threads;
and the costs of evaluation (today's one-environment evaluate against --eval-envs 8) and of a checkpoint at the
paper's replay capacity.

    python benchmarks/bench_ddqn_atari.py                  # appends to benchmarks/RESULTS.md
    python benchmarks/bench_ddqn_atari.py --steps 200 --no-write
    python benchmarks/bench_ddqn_atari.py --parts c        # only (c)

CleanRL's script pins gymnasium 0.29 (it uses the 0.29 wrappers' names and info keys) and ale-py 0.8, whose ROMs
come from the internet; it runs unmodified on gymnasium 0.29.1 and ale-py 0.9.0 (which ships the ROMs and
registers the games on import) installed in a directory put first on its PYTHONPATH:

    pip install --target /tmp/cleanrl_deps --no-deps gymnasium==0.29.1 ale-py==0.9.0
    git clone https://github.com/vwxyzjn/cleanrl /tmp/cleanrl      # or any checkout
    pip install --target /tmp/envpool_deps envpool                  # EnvPool for (d), kept out of the venv
    python benchmarks/bench_ddqn_atari.py --cleanrl-dir /tmp/cleanrl --cleanrl-deps /tmp/cleanrl_deps \
        --envpool-path /tmp/envpool_deps
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE_COMMIT = "7628a95"  # the script before the vector environments: one Python env, DQNZooPreprocessing
ENV_ID = "ALE/Breakout-v5"


def baseline_tree():
    """The script and common/ at BASELINE_COMMIT, extracted into a temporary directory."""
    path = tempfile.mkdtemp(prefix="bench_atari_baseline_")
    archive = subprocess.run(["git", "archive", BASELINE_COMMIT, "common", "ddqn_atari_layernorm.py"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", path], input=archive, check=True)
    return path


def stand_in_network():
    import torch.nn as nn

    class StandIn(nn.Module):
        """A network of negligible cost with the QNetwork interface: the loop's own cost is what remains."""

        def __init__(self, num_actions, layer_norm=False, channels_last=False):
            super().__init__()
            self.head = nn.Linear(1, num_actions)
            self.memory_format = None

        def forward(self, frames):
            return self.head(frames[:, :, ::12, ::12].float().mean((1, 2, 3))[:, None])

    return StandIn


def script_loop(steps, learning_starts, buffer_size, num_envs, stand_in, cuda=False, **options):
    """The real train() (this tree's or the baseline's, whichever is imported), run to learning_starts and to
    learning_starts + steps: the difference is the learning phase. ``options`` are further Args fields
    (layer_norm, compile). Returns wall seconds."""
    import ddqn_atari_layernorm as script

    if stand_in:
        script.QNetwork = stand_in_network()
    extra = {"num_envs": num_envs, "eval_envs": 1, **options} if hasattr(script.Args, "num_envs") else {}

    def run(total):
        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            script.train(script.Args(run_dir=run_dir, total_frames=4 * total, buffer_size=buffer_size,
                                     min_replay_capacity_fraction=learning_starts / buffer_size, grad_cov_every=0,
                                     hessian_every=0, eval_every=10**9, eval_frames=4 * 8, log_every=8,
                                     checkpoint_every=0, cuda=cuda, **extra))
            return time.perf_counter() - start

    run(learning_starts + 8 * num_envs)  # warm-up: first environment, first updates
    return run(learning_starts + steps) - run(learning_starts)


def seeds_loop(steps, learning_starts, buffer_size, num_seeds, one_by_one, cuda=False):
    """The real train() with the Nature CNN, 8 envs per seed: num_seeds seeds in lockstep (--num-seeds) or one run
    after another, each run to learning_starts and to learning_starts + steps. Returns the learning phase's wall
    seconds, all seeds together."""
    import ddqn_atari_layernorm as script

    def run(total, seed, n):
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            script.train(script.Args(run_dir=os.path.join(directory, "run"), seed=seed, num_seeds=n, num_envs=8,
                                     eval_envs=1, total_frames=4 * total, buffer_size=buffer_size,
                                     min_replay_capacity_fraction=learning_starts / buffer_size, grad_cov_every=0,
                                     hessian_every=0, eval_every=10**9, eval_frames=4 * 8, log_every=8,
                                     checkpoint_every=0, cuda=cuda))
            return time.perf_counter() - start

    groups = [(seed, 1) for seed in range(1, num_seeds + 1)] if one_by_one else [(1, num_seeds)]
    run(learning_starts + 64, *groups[0])  # warm-up: first environment, first updates
    return sum(run(learning_starts + steps, *g) - run(learning_starts, *g) for g in groups)


def cleanrl_loop(steps, learning_starts, buffer_size, num_envs, device="cpu", double_q=False):
    """CleanRL's dqn_atari.py structure (vwxyzjn/cleanrl, cleanrl/dqn_atari.py) on gymnasium 1.x with N envs and
    this repository's Nature CNN with LayerNorm: one epsilon draw per vector step, SB3's ReplayBuffer, Adam and an
    MSE loss, num_envs / 4 updates per vector step (the same replay ratio), the loss read every 100 steps. With
    double_q, the target is Double DQN's (the online network picks the next action), as the agent's: one more
    forward pass per update, which is what the two algorithms' costs differ by."""
    import gymnasium as gym
    import numpy as np
    import torch
    import torch.nn.functional as F
    from stable_baselines3.common.buffers import ReplayBuffer

    from common.science.atari import make_env
    from ddqn_atari_layernorm import QNetwork

    def thunk():
        return gym.wrappers.FrameStackObservation(make_env(ENV_ID, 30, 108_000, "gymnasium"), 4)

    envs = gym.vector.SyncVectorEnv([thunk] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    q_network = QNetwork(envs.single_action_space.n, layer_norm=True).to(device)
    target_network = QNetwork(envs.single_action_space.n, layer_norm=True).to(device)
    target_network.load_state_dict(q_network.state_dict())
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4)
    rb = ReplayBuffer(buffer_size, envs.single_observation_space, envs.single_action_space, device,
                      n_envs=num_envs, optimize_memory_usage=True, handle_timeout_termination=False)
    rng = np.random.default_rng(0)
    obs, _ = envs.reset(seed=0)
    for global_step in range(0, learning_starts + steps, num_envs):
        if global_step == learning_starts:
            start = time.perf_counter()
        if global_step < learning_starts or rng.random() < 0.1:
            actions = rng.integers(envs.single_action_space.n, size=num_envs)
        else:
            actions = q_network(torch.as_tensor(obs, device=device)).argmax(dim=1).cpu().numpy()
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        real_next_obs = next_obs.copy()
        for idx, done in enumerate(terminations | truncations):
            if done:
                real_next_obs[idx] = infos["final_obs"][idx]
        rb.add(obs, real_next_obs, actions, np.sign(rewards), terminations, [{}] * num_envs)
        obs = next_obs
        for update in range(max(num_envs // 4, 1) if global_step > learning_starts else 0):
            if num_envs < 4 and global_step % 4:
                break
            data = rb.sample(32)
            with torch.no_grad():
                if double_q:
                    best = q_network(data.next_observations).argmax(dim=1, keepdim=True)
                    target_max = target_network(data.next_observations).gather(1, best).squeeze(1)
                else:
                    target_max, _ = target_network(data.next_observations).max(dim=1)
                td_target = data.rewards.flatten() + 0.99 * target_max * (1 - data.dones.flatten())
            old_val = q_network(data.observations).gather(1, data.actions).squeeze()
            loss = F.mse_loss(td_target, old_val)
            if global_step % 100 < num_envs and update == 0:
                loss.item()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def real_cleanrl(steps, learning_starts, buffer_size, threads, cleanrl_dir, deps, cuda=False):
    """CleanRL's own cleanrl/dqn_atari.py, unmodified, each run in its own process (its default Breakout id, the
    paper's epsilon 0.1 throughout): run to learning_starts and to learning_starts + steps, as
    script_loop. ale_py is imported first, as ale-py 0.8's gymnasium plugin did. Returns wall seconds."""
    code = ("import os, runpy, sys, ale_py; sys.argv = ['dqn_atari.py'] + sys.argv[1:]; "
            "runpy.run_path(os.environ['CLEANRL_SCRIPT'], run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": f"{deps}:{cleanrl_dir}", "OMP_NUM_THREADS": str(threads),
           "CLEANRL_SCRIPT": os.path.join(cleanrl_dir, "cleanrl", "dqn_atari.py")}

    def run(total):
        flags = ["--total-timesteps", str(total), "--learning-starts", str(learning_starts), "--buffer-size",
                 str(buffer_size), "--start-e", "0.1", "--end-e", "0.1", "--cuda" if cuda else "--no-cuda"]
        with tempfile.TemporaryDirectory() as directory:  # it writes runs/ where it starts
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code, *flags], cwd=directory, env=env, check=True,
                           capture_output=True)
            return time.perf_counter() - start

    return run(learning_starts + steps) - run(learning_starts)


def emulation(steps, num_envs, pipeline, envpool_path=None):
    """Agent steps/s of the environments alone, random actions, DQN Zoo frames (84x84 grey on the CPU)."""
    import numpy as np

    rng = np.random.default_rng(0)
    if pipeline == "today":
        from common.science.atari import make_env

        env = make_env(ENV_ID, 30, 108_000)
        env.reset(seed=0)
        start = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            if terminated or truncated:
                env.reset()
        return time.perf_counter() - start
    if pipeline == "envpool":
        return envpool_emulation(steps, num_envs, envpool_path)
    from common.science.atari import VectorAtari

    envs = VectorAtari(ENV_ID, num_envs, 30, 108_000, 0, "cpu", num_threads=2)
    envs.reset()
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        _, _, terminated, truncated, _ = envs.step(rng.integers(envs.num_actions, size=num_envs))
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            envs.reset(done)
    return time.perf_counter() - start


def envpool_emulation(steps, num_envs, envpool_path):
    """EnvPool's Atari under the same protocol as VectorAtari (max-pooled RGB frames, 4-frame skip, 30 no-ops, no
    sticky actions, no fire reset, raw rewards, the 27,000-step cap), its frames made DQN Zoo's on the CPU by the
    same luminance_84x84_torch; EnvPool resets ended episodes itself. Returns wall seconds."""
    import numpy as np
    import torch

    sys.path.append(envpool_path)  # after the venv: only what the venv lacks comes from there
    import envpool

    from common.science.atari import luminance_84x84_torch

    envs = envpool.make(ENV_ID.split("/")[1], env_type="gymnasium", num_envs=num_envs, num_threads=2,
                        img_height=210, img_width=160, gray_scale=False, stack_num=1, frame_skip=4, noop_max=30,
                        repeat_action_probability=0.0, use_fire_reset=False, episodic_life=False,
                        reward_clip=False, full_action_space=False, max_episode_steps=27_000, seed=0)
    envs.reset()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        obs = envs.step(rng.integers(envs.action_space.n, size=num_envs))[0]
        luminance_84x84_torch(torch.from_numpy(obs).permute(0, 2, 3, 1))
    return time.perf_counter() - start


def evaluation(steps, eval_envs, cuda=False):
    """Seconds of evaluate() for `steps` agent steps with the Nature CNN: today's (one Python env) or the new one."""
    import torch

    import ddqn_atari_layernorm as script

    device = torch.device("cuda" if cuda else "cpu")
    args = script.Args(eval_frames=4 * steps, cuda=cuda, **({"eval_envs": eval_envs} if eval_envs else {}))
    q_net = script.QNetwork(4, layer_norm=True, channels_last=True).to(device)
    if eval_envs:
        from common.science.atari import VectorAtari

        env = VectorAtari(ENV_ID, eval_envs, 30, 108_000, 0, device, num_threads=2)
    else:
        from common.science.atari import make_env

        env = make_env(ENV_ID, 30, 108_000)
    start = time.perf_counter()
    script.evaluate(q_net, env, args, 0, device)
    return time.perf_counter() - start


def checkpoint(buffer_size):
    """Seconds to write (atomically) and read a checkpoint's replay at capacity buffer_size, and its bytes."""
    import torch

    from common.runtime.logger import atomic_torch_save
    from common.science.atari import FrameReplay

    replay = FrameReplay(buffer_size)
    with tempfile.TemporaryDirectory(dir=ROOT) as directory:
        path = os.path.join(directory, "checkpoint.pt")
        start = time.perf_counter()
        atomic_torch_save({"replay": replay.state_dict()}, path)
        written = time.perf_counter() - start
        size = os.path.getsize(path)
        start = time.perf_counter()
        torch.load(path, weights_only=False)
        return written, time.perf_counter() - start, size


def child(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    kind = spec["kind"]
    if kind == "loop":
        if spec["tree"] == "baseline":
            sys.path.insert(0, spec["baseline_path"])
        else:
            sys.path.insert(0, ROOT)
        seconds = script_loop(spec["steps"], spec["learning_starts"], spec["buffer_size"], spec["num_envs"],
                              spec["stand_in"], spec["cuda"], **spec.get("options", {}))
        return {"sps": spec["steps"] / seconds}
    sys.path.insert(0, ROOT)
    if spec.get("tree") == "baseline":
        sys.path.insert(0, spec["baseline_path"])
    if kind == "seeds":
        seconds = seeds_loop(spec["steps"], spec["learning_starts"], spec["buffer_size"], spec["num_seeds"],
                             spec["one_by_one"], spec["cuda"])
        return {"sps": spec["num_seeds"] * spec["steps"] / seconds}
    if kind == "cleanrl":
        return {"sps": spec["steps"] / cleanrl_loop(spec["steps"], spec["learning_starts"], spec["buffer_size"],
                                                    spec["num_envs"], "cuda" if spec["cuda"] else "cpu",
                                                    spec.get("double_q", False))}
    if kind == "real_cleanrl":
        return {"sps": spec["steps"] / real_cleanrl(spec["steps"], spec["learning_starts"], spec["buffer_size"],
                                                    spec["threads"], spec["cleanrl_dir"], spec["cleanrl_deps"],
                                                    spec["cuda"])}
    if kind == "emulation":
        return {"sps": spec["steps"] / emulation(spec["steps"], spec["num_envs"], spec["pipeline"],
                                                 spec.get("envpool_path"))}
    if kind == "evaluation":
        return {"sps": spec["steps"] / evaluation(spec["steps"], spec["num_envs"], spec["cuda"])}
    written, read, size = checkpoint(spec["buffer_size"])
    return {"write_s": written, "read_s": read, "bytes": size}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=800, help="timed agent steps of each loop after learning starts")
    parser.add_argument("--learning-starts", type=int, default=400)
    parser.add_argument("--buffer-size", type=int, default=20_000, help="replay capacity of the timed loops")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on the shared 2-core machine)")
    parser.add_argument("--cuda", action="store_true", help="train, act and evaluate on the GPU (every loop)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--parts", default="a,b,c,d,eval,checkpoint", help="comma-separated parts to run")
    parser.add_argument("--cleanrl-dir", default=None, help="a CleanRL checkout: adds its real dqn_atari.py to (b)")
    parser.add_argument("--cleanrl-deps", default=None, help="gymnasium 0.29.1 and ale-py 0.9.0 for it (pip --target)")
    parser.add_argument("--envpool-path", default=None, help="EnvPool installed with pip --target: adds it to (d)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    baseline_path = baseline_tree()
    common = {"threads": args.threads, "learning_starts": args.learning_starts, "buffer_size": args.buffer_size,
              "baseline_path": baseline_path, "cuda": args.cuda}
    loop = {**common, "kind": "loop", "steps": args.steps}
    configs = [
        ("a", "today's loop, 1 env", {**loop, "tree": "baseline", "num_envs": 1, "stand_in": True}),
        ("a", "new loop, 1 env", {**loop, "tree": "new", "num_envs": 1, "stand_in": True}),
        ("a", "new loop, 8 envs", {**loop, "tree": "new", "num_envs": 8, "stand_in": True}),
        ("b", "CleanRL-style, 1 env", {**loop, "kind": "cleanrl", "num_envs": 1}),
        ("b", "today's loop, 1 env", {**loop, "tree": "baseline", "num_envs": 1, "stand_in": False}),
        ("b", "new loop, 1 env", {**loop, "tree": "new", "num_envs": 1, "stand_in": False}),
        ("b", "CleanRL-style, 8 envs", {**loop, "kind": "cleanrl", "num_envs": 8}),
        ("b", "CleanRL-style with Double DQN's target, 8 envs", {**loop, "kind": "cleanrl", "num_envs": 8,
                                                                 "double_q": True}),
        ("b", "new loop, 8 envs", {**loop, "tree": "new", "num_envs": 8, "stand_in": False}),
        ("b", "new loop, 8 envs, --compile", {**loop, "tree": "new", "num_envs": 8, "stand_in": False,
                                              "options": {"compile": True}}),
        ("c", "3 runs one after another, 8 envs each", {**loop, "kind": "seeds", "num_seeds": 3,
                                                         "one_by_one": True}),
        ("c", "--num-seeds 3, 8 envs each", {**loop, "kind": "seeds", "num_seeds": 3, "one_by_one": False}),
        ("d", "today's pipeline (DQNZooPreprocessing)", {**common, "kind": "emulation", "steps": 2000,
                                                         "num_envs": 1, "pipeline": "today"}),
        ("d", "VectorAtari, 1 env, 2 threads", {**common, "kind": "emulation", "steps": 2000, "num_envs": 1,
                                                "pipeline": "new"}),
        ("d", "VectorAtari, 8 envs, 2 threads", {**common, "kind": "emulation", "steps": 4000, "num_envs": 8,
                                                 "pipeline": "new"}),
        ("eval", "today's evaluate, 1 env", {**common, "kind": "evaluation", "steps": 600, "num_envs": 0,
                                             "tree": "baseline"}),
        ("eval", "new evaluate, --eval-envs 8", {**common, "kind": "evaluation", "steps": 1600, "num_envs": 8}),
        ("checkpoint", "checkpoint, replay capacity 100,000", {**common, "kind": "checkpoint",
                                                               "buffer_size": 100_000}),
    ]
    if args.cleanrl_dir:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.cleanrl_dir, capture_output=True,
                                text=True).stdout.strip() or "?"
        configs[3:3] = [
            ("b", f"CleanRL's dqn_atari.py (vwxyzjn/cleanrl {commit}), 1 env, no LayerNorm",
             {**loop, "kind": "real_cleanrl", "cleanrl_dir": args.cleanrl_dir, "cleanrl_deps": args.cleanrl_deps}),
            ("b", "new loop, 1 env, no LayerNorm", {**loop, "tree": "new", "num_envs": 1, "stand_in": False,
                                                    "options": {"layer_norm": False}})]
    if args.envpool_path:
        at = next(i for i, config in enumerate(configs) if config[0] == "eval")
        configs[at:at] = [(
            "d", f"EnvPool, {n} env{'s' if n > 1 else ''}, 2 threads",
            {**common, "kind": "emulation", "steps": 2000 * (1 + (n > 1)), "num_envs": n, "pipeline": "envpool",
             "envpool_path": args.envpool_path}) for n in (1, 8)]
    parts = args.parts.split(",")
    configs = [config for part in parts for config in configs if config[0] == part]  # in the order asked
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    results = []
    for part, name, spec in configs:
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=ROOT, capture_output=True,
                             text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{part} {name} failed")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results.append((part, name, row))
        print(part, name, row, flush=True)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    import torch

    def sps(part, name):
        return next((row["sps"] for p, n, row in results if p == part and n == name), float("nan"))

    device = (torch.cuda.get_device_name() + f" and {os.cpu_count()} CPU cores" if args.cuda else
              f"CPU ({os.cpu_count()} cores, {platform.machine()})")
    lines = ["", "## ddqn_atari_layernorm.py: vector environments (bench_ddqn_atari.py)", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {device}, {args.threads} torch "
             f"thread, torch {torch.__version__}; {ENV_ID}; {args.learning_starts} agent steps before learning, then "
             f"{args.steps} timed agent steps, one update of batch 32 per 4 agent steps; replay capacity "
             f"{args.buffer_size:,} in the timed loops; one process per row, one pass. Today's loop: the script at "
             f"{BASELINE_COMMIT}. Load: `{uptime_before}` before, `{uptime_after}` after.", "",
             "| part | configuration | agent steps/s | ratio |", "|---|---|---|---|"]
    reference = {}
    for part, _, row in results:
        reference.setdefault(part, row.get("sps"))
    for part, name, row in results:
        if "sps" in row:
            lines.append(f"| {part} | {name} | {row['sps']:.0f} | {row['sps'] / reference[part]:.2f}x |")
        else:
            lines.append(f"| {part} | {name} | write {row['write_s']:.1f} s, read {row['read_s']:.1f} s, "
                         f"{row['bytes'] / 2**30:.2f} GiB | |")
    b8 = sps("b", "new loop, 8 envs") / sps("b", "CleanRL-style, 8 envs")
    train_sps = sps("b", "new loop, 8 envs")
    eval_before, eval_after = sps("eval", "today's evaluate, 1 env"), sps("eval", "new evaluate, --eval-envs 8")
    eval_steps, train_steps = 125_000, 250_000  # DQN Zoo: 500k frames of evaluation per 1M frames of training
    share = lambda e: (eval_steps / e) / (eval_steps / e + train_steps / train_sps)
    notes = ["Ratios against the first row of each part; (c) counts the agent steps of all 3 seeds."]
    if "b" in parts:
        double_q = sps("b", "CleanRL-style with Double DQN's target, 8 envs")
        notes.append(f"(b) at 8 envs: new loop / CleanRL-style = {b8:.2f}x, / CleanRL-style with Double DQN's "
                     f"target = {train_sps / double_q:.2f}x; --compile / eager = "
                     f"{sps('b', 'new loop, 8 envs, --compile') / train_sps:.2f}x.")
    if "b" in parts and args.cleanrl_dir:
        real = next(row["sps"] for part, name, row in results if name.startswith("CleanRL's dqn_atari.py"))
        notes.append(f"(b) the same network at 1 env: new loop / CleanRL's own script = "
                     f"{sps('b', 'new loop, 1 env, no LayerNorm') / real:.2f}x.")
    if "b" in parts and "eval" in parts:
        notes.append(f"Evaluation's share of wall time at the default schedule (125k evaluation steps per 250k "
                     f"training steps, training at the 8-env rate): {100 * share(eval_before):.0f}% with today's "
                     f"evaluate, {100 * share(eval_after):.0f}% with --eval-envs 8.")
    lines += ["", " ".join(notes), ""]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with open(os.path.join(ROOT, "benchmarks", "RESULTS.md"), "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
