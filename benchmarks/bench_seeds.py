"""Benchmark of --num-seeds: N agents in lockstep against N sequential single runs, same process, same threads.

Agent: both sides call the real ``dqn_classification_mdp.train`` (no probes, one log at the end) and read the
loop's own speed from ``charts/SPS`` (set-up and the replay fill excluded). Lockstep: agent steps per second
summed over the N seeds. Sequential: N single runs one after another, their total steps over their total loop time.
Probes: ``common.science.probe.run_probes`` on N networks (the N seeds' probes in one lockstep of N x K fits, as the
agent runs them) against N calls of ``run_probe`` (each vectorised over its K targets, as a single run probes);
probe fits per second, target construction and final losses included.
Appends a section to benchmarks/RESULTS.md (or --results):
    python benchmarks/bench_seeds.py [--widths 128] [--seeds 1 4 16] [--steps 200] [--threads 2] [--budget-s 60]
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
from bench_dqn_classification import Budget, append, timed  # noqa: E402
from common.runtime.cli import select_device  # noqa: E402
from common.science.classification import load_dataset  # noqa: E402
from common.science.networks import build_network  # noqa: E402
from common.science.optim import make_optimizer  # noqa: E402
from common.science.probe import run_probe, run_probes  # noqa: E402


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
    probe_targets: int = 10
    """K, probe targets per seed (A.2: 10)"""
    probe_steps: int = 50
    """timed steps of each probe fit (the paper's 2,000 scale linearly)"""
    probe_inputs: int = 2048
    """probe inputs per seed (the agent's default)"""
    agent: bool = True
    """time the agent's loop"""
    probes: bool = True
    """time the probes"""
    budget_s: float = 0.0
    """start no measurement after this many seconds (0: no limit); the results name what the budget cut"""
    write: bool = True
    """append the results to --results"""
    results: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
    """the Markdown file the results are appended to"""


def loop_sps(args, width, num_seeds, seed, run_dir):
    """Agent steps per second of the training loop, summed over ``num_seeds`` seeds."""
    config = dqn.Args(data_dir=args.data_dir, cuda=args.cuda, arch=args.arch, width=width, num_seeds=num_seeds,
                      seed=seed, run_dir=run_dir, total_steps=args.steps, log_every=args.steps, probe_every=0,
                      learning_starts=100, target_period=100, checkpoint_every=10 * args.steps)
    summary = dqn.train(config)
    runs = summary["runs"] if num_seeds > 1 else [summary]
    return num_seeds * runs[0]["metrics"]["charts/SPS"]


def probe_fits_per_s(args, width, num_seeds, images, device):
    """Probe fits per second for N seeds' probes: one lockstep of N x K fits, and N probes one after another."""
    make = lambda: build_network(args.arch, tuple(images.shape[1:]), 10, width=width).to(device)  # noqa: E731
    torch.manual_seed(0)
    networks = [make() for _ in range(num_seeds)]
    inputs = images[torch.randint(len(images), (num_seeds, args.probe_inputs))]
    adam = lambda params: make_optimizer("adam", params, 1e-3)  # noqa: E731
    kwargs = dict(num_targets=args.probe_targets, steps=args.probe_steps, batch_size=32)

    lockstep = timed(lambda: run_probes(networks, make, inputs, adam, seeds=range(num_seeds), **kwargs), device)
    sequential = timed(lambda: [run_probe(net, make, x, adam, seed=k, **kwargs)
                                for k, (net, x) in enumerate(zip(networks, inputs))], device)
    fits = num_seeds * args.probe_targets
    return fits / lockstep, fits / sequential


def main(args):
    budget = Budget(args.budget_s)
    torch.set_num_threads(args.threads)
    device = select_device(args.cuda)
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.agent and budget.allows("agent warm-up"):
            loop_sps(args, args.widths[0], 1, 0, os.path.join(tmp, "warmup"))  # first-call costs out of the timing
        for width in args.widths:
            for n in args.seeds if args.agent else ():
                if not budget.allows(f"agent at width {width}, N = {n}"):
                    continue
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
        if args.probes and budget.allows("probe warm-up"):
            images = load_dataset("mnist", args.data_dir, device=device)[0]
            probe_fits_per_s(args, args.widths[0], 2, images, device)  # warm-up
        for width in args.widths:
            for n in args.seeds if args.probes else ():
                if not budget.allows(f"probes at width {width}, N = {n}"):
                    continue
                lockstep, sequential = probe_fits_per_s(args, width, n, images, device)
                line = (f"- probes, {args.arch} width {width}, N = {n} x K = {args.probe_targets}, "
                        f"{args.probe_steps} steps: lockstep {lockstep:,.2f} probe fits/s, sequential "
                        f"{sequential:,.2f}: **{lockstep / sequential:.2f}x**")
                print(line, flush=True)
                lines.append(line)
    load_after = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, " \
                                                                                   f"{platform.machine()})"
    header = (f"\n## Seeds in lockstep (--num-seeds) ({time.strftime('%Y-%m-%d %H:%M')}, {device_name}, torch "
              f"{torch.__version__}, {args.threads} threads, {args.steps} agent steps per run, load average "
              f"{' '.join(load)} before and {' '.join(load_after)} after)\n\n")
    if args.write:
        append(args.results, [header + "\n".join(lines)] + budget.note())


if __name__ == "__main__":
    main(tyro.cli(Args))
