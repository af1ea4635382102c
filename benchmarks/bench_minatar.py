"""Agent steps per second on MinAtar, side by side in one run (each configuration in its own process, the same
thread settings for all): Young & Tian's examples/dqn.py (github.com/kenjyoung/MinAtar, run unmodified) against
ddqn_atari_layernorm.py at the same network (conv 16 3x3 -> 128 -> 6 actions: MinAtar/Breakout-v0, the full action
set dqn.py uses) and the same update period (one update of batch 32 per agent step, target every 1,000), with and
without LayerNorm, at 1 and 4 environments; and --num-seeds 3 in lockstep against 3 single runs one after another.

Every process is timed the same way: a counter wraps the game's step (minatar.Environment.act for dqn.py,
common.science.minatar.VectorMinAtar.step here), starts the clock once every seed has --start agent steps (past the 5,000
random warm-up steps of both, so every timed step learns) and stops the process --steps agent steps (per seed)
later. Three single runs one after another take three times one single run's time, so their rate is the single
run's (the seeds differ only in their numbers). Last, each loop's floor: its update and acting forward alone on a
fixed batch, no environment and no replay (``update_floor``), the most agent steps/s that loop could reach.

    git clone https://github.com/kenjyoung/MinAtar /tmp/MinAtar     # or any copy of examples/dqn.py
    OMP_NUM_THREADS=1 python benchmarks/bench_minatar.py --peer /tmp/MinAtar/examples/dqn.py
"""
import argparse
import datetime
import hashlib
import os
import platform
import runpy
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = r'''
import os, runpy, sys, time
start, steps, seeds, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sys.argv = sys.argv[5:]
count, clock = [0], [None]

def tick(n):
    count[0] += n
    if clock[0] is None and count[0] >= seeds * start:
        clock[0] = (time.perf_counter(), count[0])
    elif clock[0] is not None and count[0] >= clock[0][1] + seeds * steps:
        print("RATE", (count[0] - clock[0][1]) / (time.perf_counter() - clock[0][0]), flush=True)
        os._exit(0)

if mode == "peer":
    import minatar
    act = minatar.Environment.act
    def counted(self, a):
        tick(1)
        return act(self, a)
    minatar.Environment.act = counted
else:
    sys.path.insert(0, os.getcwd())
    from common.science.minatar import VectorMinAtar
    step = VectorMinAtar.step
    def counted(self, actions):
        tick(self.num_envs)
        return step(self, actions)
    VectorMinAtar.step = counted
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def measure(command, mode, seeds, args, workdir):
    """Agent steps/s (summed over seeds) of one process running ``command`` under the counting driver."""
    out = subprocess.run([sys.executable, "-c", DRIVER, str(args.start), str(args.steps), str(seeds), mode, *command],
                         cwd=ROOT if mode == "ours" else workdir, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    lines = [line for line in out.stdout.splitlines() if line.startswith("RATE")]
    if not lines:
        raise RuntimeError(f"{command[0]} stopped before the timed steps: {out.stderr[-2000:]}")
    return float(lines[0].split()[1])


def update_floor(peer, layer_norm, steps=1_000):
    """Agent steps/s of the update and acting forward alone, no environment, no replay: a fixed batch of 32 random
    Breakout states. Ours: the script's td_loss (double-Q, 3 forwards), backward, RMSProp step and one acting
    forward. Peer: dqn.py's own train() on a fixed sample of 32 transitions and its acting forward. A loop's agent
    steps/s cannot exceed its floor, so a peer rate above half our floor rules out 2x."""
    import torch
    from ddqn_atari_layernorm import td_loss
    from common.runtime.seeds import SeedStack, StackedOptimizer
    from common.science.networks import MinAtarQNetwork
    from common.science.optim import RMSProp
    generator = torch.Generator().manual_seed(0)
    states = torch.rand(33, 4, 10, 10, generator=generator).lt(0.1)
    actions, rewards = torch.randint(6, (32,), generator=generator), torch.rand(32, generator=generator)
    if peer is not None:
        dqn = runpy.run_path(peer, run_name="dqn")
        policy, target = dqn["QNetwork"](4, 6), dqn["QNetwork"](4, 6)
        optimizer = torch.optim.RMSprop(policy.parameters(), lr=dqn["STEP_SIZE"], alpha=dqn["SQUARED_GRAD_MOMENTUM"],
                                        centered=True, eps=dqn["MIN_SQUARED_GRAD"])
        float_states = states.float()
        sample = [dqn["transition"](float_states[i:i + 1], float_states[i + 1:i + 2], actions[i].view(1, 1),
                                    rewards[i].view(1, 1), torch.tensor([[False]])) for i in range(32)]

        def agent_step():
            with torch.no_grad():
                policy(float_states[:1]).max(1)[1].view(1, 1)
            dqn["train"](sample, policy, target, optimizer)
    else:
        nets = [MinAtarQNetwork(4, 6, layer_norm) for _ in range(2)]
        q_net, target_net = SeedStack(nets[:1]), SeedStack(nets[1:])
        optimizer = StackedOptimizer(RMSProp(q_net.parameters(), lr=2.5e-4, decay=0.95, eps=0.01, centered=True),
                                     q_net)
        stacked = states.to(torch.uint8)[None, :, None]  # (seeds, batch, history 1, C, 10, 10) as the replay gives
        batch = (stacked[:, :32], actions[None], rewards[None], torch.zeros(1, 32), stacked[:, 1:])

        def agent_step():
            with torch.no_grad():
                q_net.call(stacked[:, :1]).argmax(-1)
            loss, _ = td_loss(q_net, target_net, batch, 0.99, 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
    for _ in range(100):
        agent_step()
    start = time.perf_counter()
    for _ in range(steps):
        agent_step()
    return steps / (time.perf_counter() - start)


def ours(run_dir, *flags):
    total = 10**7  # never reached: the driver stops the process
    return ["ddqn_atari_layernorm.py", "--env-id", "MinAtar/Breakout-v0", "--no-cuda", "--total-frames", str(total),
            "--eval-every", str(total), "--grad-cov-every", "0", "--hessian-every", "0", "--checkpoint-every", "0",
            "--run-dir", run_dir, *flags]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", default="/tmp/MinAtar/examples/dqn.py", help="Young & Tian's examples/dqn.py")
    parser.add_argument("--start", type=int, default=5_500, help="agent steps per seed before the clock starts")
    parser.add_argument("--steps", type=int, default=1_500, help="timed agent steps per seed")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--compile", action="store_true", help="also time the 1-env LayerNorm run with --compile")
    args = parser.parse_args()
    load_before = open("/proc/loadavg").read().split()[:3]
    began = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("Young & Tian's examples/dqn.py, unmodified (DQN target, 1 env)",
                     measure([args.peer, "-g", "breakout", "-o", os.path.join(tmp, "peer")], "peer", 1, args, tmp)))
        for label, flags, seeds in (("ours, 1 env, no LayerNorm", ["--no-layer-norm"], 1),
                                    ("ours, 1 env, LayerNorm", [], 1),
                                    ("ours, 4 envs, LayerNorm", ["--num-envs", "4"], 1),
                                    *[("ours, 1 env, LayerNorm, --compile", ["--compile"], 1)] * args.compile,
                                    ("ours, --num-seeds 3 in lockstep, 1 env, LayerNorm", ["--num-seeds", "3"], 3)):
            rows.append((label, measure(ours(os.path.join(tmp, label.replace(" ", "_")), *flags), "ours", seeds,
                                        args, tmp)))
            print(f"{label}: {rows[-1][1]:.0f} agent steps/s", flush=True)
    sys.path.insert(0, ROOT)
    floors = [("floor: dqn.py's update and acting forward alone", update_floor(args.peer, False)),
              ("floor: our update and acting forward alone, no LayerNorm", update_floor(None, False)),
              ("floor: our update and acting forward alone, LayerNorm", update_floor(None, True))]
    single = dict(rows)["ours, 1 env, LayerNorm"]
    rows.insert(-1, ("3 single runs one after another (each the 1-env LayerNorm run)", single))
    load_after = open("/proc/loadavg").read().split()[:3]
    import minatar  # noqa: F401
    import torch

    peer_hash = hashlib.sha256(open(args.peer, "rb").read()).hexdigest()[:12]
    table = ["| configuration | agent steps/s | ratio |", "|---|---|---|"]
    table += [f"| {label} | {rate:.0f} | {rate / rows[0][1]:.2f}x |" for label, rate in rows + floors]
    lockstep = rows[-1][1] / single
    text = "\n".join([
        "", "", "## ddqn_atari_layernorm.py on MinAtar (bench_minatar.py)", "",
        f"{began:%Y-%m-%d %H:%M} UTC; {platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}, torch {torch.__version__}, minatar 1.0.15; MinAtar/Breakout-v0 (6 "
        f"actions, as dqn.py); one update of batch 32 per agent step, target every 1,000; {args.start:,} agent steps "
        f"per seed before the clock, then {args.steps:,} timed (all learning); one process per row, one pass. "
        f"dqn.py sha256 {peer_hash}... (kenjyoung/MinAtar 4241f24). Load average {' '.join(load_before)} before, "
        f"{' '.join(load_after)} after.", "", *table, "",
        f"Ratios against dqn.py. --num-seeds 3 in lockstep / 3 single runs one after another = {lockstep:.2f}x.",
        "", f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} python benchmarks/bench_minatar.py "
        f"--peer {args.peer} --start {args.start} --steps {args.steps}{' --compile' * args.compile}`.", ""])
    print(text)
    if not args.no_write:
        with open(os.path.join(ROOT, "benchmarks", "RESULTS.md"), "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
