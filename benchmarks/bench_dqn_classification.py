"""Benchmark of dqn_classification_mdp.py's hot paths, each against the plain version in the same run.

(a) the probe: K target fits vectorised with torch.func against K sequential fits (same draws, same result);
(b) the agent: environment steps and optimizer steps per second (no probes), with 1 and 8 envs;
(c) what the Sec 5.2 statistics and the TD Hessian's top eigenvalue add to a probe at the default sizes.
Appends a section to benchmarks/RESULTS.md. Run: ``python benchmarks/bench_dqn_classification.py``.
"""
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dqn_classification_mdp as dqn  # noqa: E402
from common.cli import select_device  # noqa: E402
from common.data import load_dataset  # noqa: E402
from common.networks import build_network  # noqa: E402
from common.optim import make_optimizer  # noqa: E402
from common.probe import fit_sequential, fit_vectorized, make_targets  # noqa: E402


@dataclass
class Args:
    data_dir: str = os.environ.get("PLASTICITY_DATA_DIR", "data")
    """MNIST location"""
    cuda: bool = True
    """use the GPU when there is one"""
    probe_targets: int = 10
    """K, the paper's 10"""
    probe_steps: int = 100
    """fit steps timed (the paper runs 2,000; the per-step cost is what matters)"""
    probe_widths: tuple[int, ...] = (512, 128)
    """MLP widths probed: A.2's 512, and a narrow one where per-operation overhead dominates"""
    agent_steps: int = 1_000
    """optimizer steps timed for the agent"""
    repeats: int = 3
    """timed repeats; the best is reported"""
    stats_archs: tuple[str, ...] = ("mlp",)
    """architectures for (c); the CNN's probe at 28x28 takes hours on a 2-core CPU"""
    stats_only: bool = False
    """run only (c), the cost of the statistics and the top eigenvalue"""
    write: bool = True
    """append the results to benchmarks/RESULTS.md"""


def best_time(fn, repeats, device):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_probe(args, device, images, width):
    make = lambda: build_network("mlp", (1, 28, 28), 10, width=width).to(device)  # noqa: E731  784-w-w-10
    network, inputs = make(), images[:2048]
    targets = make_targets(network, make, inputs, args.probe_targets)
    adam = lambda params: make_optimizer("adam", params, 1e-3)  # noqa: E731
    run = lambda fit: fit(network, inputs, targets, adam, args.probe_steps, 32)  # noqa: E731
    run(fit_vectorized), run(fit_sequential)  # warm-up
    vectorised = best_time(lambda: run(fit_vectorized), args.repeats, device)
    sequential = best_time(lambda: run(fit_sequential), args.repeats, device)
    return vectorised, sequential


def bench_agent(args, num_envs):
    with tempfile.TemporaryDirectory() as run_dir:
        dqn.train(dqn.Args(data_dir=args.data_dir, run_dir=run_dir, cuda=args.cuda, probe_every=0,
                           num_envs=num_envs, total_steps=args.agent_steps + 200, log_every=200))
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    sps = max(r["charts/SPS"] for r in rows[1:])  # the first window includes warm-up
    return {f"agent_env_steps_per_s_{num_envs}env": sps, f"agent_updates_per_s_{num_envs}env": sps / num_envs}


def bench_statistics(args, device, images, arch):
    """(c): one probe's network_statistics (stats on 2,048 probe inputs, TD gradient norm and 20 Lanczos steps on
    512 transitions) against the probe itself at the defaults. The probe is timed for ``probe_steps`` fit steps
    plus its target construction and extrapolated linearly to the default 2,000 steps."""
    run_args = dqn.Args(arch=arch, cuda=args.cuda)
    obs_shape = tuple(images.shape[1:])
    q_network = dqn.build_q_network(run_args, obs_shape).to(device)
    target_network = dqn.build_q_network(run_args, obs_shape).to(device)
    initial = [p.detach().clone() for p in q_network.parameters()]
    replay = dqn.IndexReplay(10_000, device)
    generator = torch.Generator(device).manual_seed(0)
    n = 10_000
    replay.add(torch.randint(len(images), (n,), device=device), torch.randint(10, (n,), device=device),
               torch.rand(n, device=device), torch.randint(len(images), (n,), device=device))
    inputs = images[replay.obs[:run_args.probe_inputs]]
    batch = replay.sample(run_args.hessian_batch_size, generator)
    statistics = lambda: dqn.network_statistics(run_args, q_network, target_network, images, inputs, batch,  # noqa
                                                initial)
    statistics()  # warm-up
    stats_time = best_time(statistics, args.repeats, device)
    run_args.probe_steps, run_args.stats, run_args.hessian = args.probe_steps, False, False  # the probe alone
    probe = lambda: dqn.probe_plasticity(run_args, q_network, target_network, images, replay, obs_shape, 0,  # noqa
                                         initial)
    short = best_time(probe, 1, device)
    run_args.probe_steps = 2 * args.probe_steps
    long = best_time(probe, 1, device)
    per_step = (long - short) / args.probe_steps
    probe_time = short + per_step * (2_000 - args.probe_steps)
    return stats_time, probe_time


def main(args):
    device = select_device(args.cuda)
    images, _ = load_dataset("mnist", args.data_dir, device=device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"]
    stats_lines = [f"\n## Probe statistics cost ({time.strftime('%Y-%m-%d %H:%M')}, {name}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, load average {' '.join(load)})\n"]
    for arch in args.stats_archs:
        stats_time, probe_time = bench_statistics(args, device, images, arch)
        stats_lines.append(f"- {arch} (defaults: 2,048 probe inputs, Hessian batch 512, 20 Lanczos steps): statistics "
                           f"and top eigenvalue {stats_time:.2f} s; probe (K=10, 2,000 steps, extrapolated from "
                           f"{args.probe_steps} and {2 * args.probe_steps}) {probe_time:.1f} s: "
                           f"**+{100 * stats_time / probe_time:.1f}%**")
    print("\n".join(stats_lines))
    if args.stats_only:
        if args.write:
            with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"), "a") as f:
                f.write("\n".join(stats_lines) + "\n")
        return
    probe = {width: bench_probe(args, device, images, width) for width in args.probe_widths}
    results = {}
    for num_envs in (1, 8):
        results.update(bench_agent(args, num_envs))
    lines = [f"\n## dqn_classification_mdp.py ({time.strftime('%Y-%m-%d')}, {name}, torch {torch.__version__})\n",
             *[f"- probe, MLP 784-{w}-{w}-10, K={args.probe_targets} targets, {args.probe_steps} steps of batch 32, "
               f"2,048 inputs: vectorised {v:.2f} s, sequential {q:.2f} s: **{q / v:.2f}x**"
               for w, (v, q) in probe.items()],
             f"- agent (MLP 512, batch 32, no probes): 1 env {results['agent_env_steps_per_s_1env']:,.0f} env steps/s "
             f"= {results['agent_updates_per_s_1env']:,.0f} updates/s; 8 envs "
             f"{results['agent_env_steps_per_s_8env']:,.0f} env steps/s = {results['agent_updates_per_s_8env']:,.0f} updates/s",
             *stats_lines]
    print("\n".join(lines))
    if args.write:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
