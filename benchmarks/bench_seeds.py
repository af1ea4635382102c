"""Benchmark of --num-seeds: N agents in lockstep against N sequential single runs, same process, same threads.

Both sides call the real ``dqn_classification_mdp.train`` (no probes, one log at the end) and read the loop's own
speed from ``charts/SPS`` (set-up and the replay fill excluded). Lockstep: agent steps per second summed over the
N seeds. Sequential: N single runs one after another, their total steps over their total loop time. Probes run
seed by seed in both (not vectorised over seeds), so they cost the same and are not timed here.
Appends a section to benchmarks/RESULTS.md:
    python benchmarks/bench_seeds.py [--widths 128] [--seeds 1 4 16] [--steps 200] [--threads 2] [--no-write]
"""
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dqn_classification_mdp as dqn  # noqa: E402
from common.cli import select_device  # noqa: E402


@dataclass
class Args:
    data_dir: str = os.environ.get("PLASTICITY_DATA_DIR", "data")
    """MNIST location"""
    cuda: bool = True
    """use the GPU when there is one"""
    arch: str = "mlp"
    """architecture"""
    widths: list[int] = field(default_factory=lambda: [128])
    """MLP widths (the issue's CPU target: 128; its GPU target: 512)"""
    seeds: list[int] = field(default_factory=lambda: [1, 4, 16])
    """values of N"""
    steps: int = 200
    """timed agent steps per run"""
    threads: int = 2
    """torch CPU threads for both sides"""
    write: bool = True
    """append the results to benchmarks/RESULTS.md"""


def loop_sps(args, width, num_seeds, seed, run_dir):
    """Agent steps per second of the training loop, summed over ``num_seeds`` seeds."""
    config = dqn.Args(data_dir=args.data_dir, cuda=args.cuda, arch=args.arch, width=width, num_seeds=num_seeds,
                      seed=seed, run_dir=run_dir, total_steps=args.steps, log_every=args.steps, probe_every=0,
                      learning_starts=100, target_period=100, checkpoint_every=10 * args.steps)
    summary = dqn.train(config)
    runs = summary["runs"] if num_seeds > 1 else [summary]
    return num_seeds * runs[0]["metrics"]["charts/SPS"]


def main(args):
    torch.set_num_threads(args.threads)
    device = select_device(args.cuda)
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        loop_sps(args, args.widths[0], 1, 0, os.path.join(tmp, "warmup"))  # first-call costs out of the timing
        for width in args.widths:
            for n in args.seeds:
                start = time.time()
                lockstep = loop_sps(args, width, n, 1, os.path.join(tmp, f"w{width}n{n}"))
                seq_time = sum(args.steps / loop_sps(args, width, 1, 1 + k, os.path.join(tmp, f"w{width}n{n}s{k}"))
                               for k in range(n))
                sequential = n * args.steps / seq_time
                line = (f"- {args.arch} width {width}, N = {n}: lockstep {lockstep:,.0f} agent steps/s (summed over "
                        f"seeds), sequential {sequential:,.0f}: **{lockstep / sequential:.2f}x** "
                        f"({time.time() - start:.0f} s)")
                print(line, flush=True)
                lines.append(line)
    load_after = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, " \
                                                                                   f"{platform.machine()})"
    header = (f"\n## Seeds in lockstep (--num-seeds) ({time.strftime('%Y-%m-%d %H:%M')}, {device_name}, torch "
              f"{torch.__version__}, {args.threads} threads, {args.steps} steps per run, load average "
              f"{' '.join(load)} before and {' '.join(load_after)} after)\n\n")
    if args.write:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"), "a") as f:
            f.write(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
