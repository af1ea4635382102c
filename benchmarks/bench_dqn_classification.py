"""Benchmark of dqn_classification_mdp.py's hot paths, each against the plain version in the same run.

(a) the probe: K target fits vectorised with torch.func against K sequential fits (same draws, same result), at
    each width and torch thread count, with the step time the machine's matrix-multiply throughput allows for the
    step's FLOPs (a 1024^3 float32 matmul timed in the same interleaved rounds);
(b) the agent: environment steps and optimizer steps per second (no probes), with 1 and 8 envs;
(c) what the Sec 5.2 statistics and the TD Hessian's top eigenvalue add to a probe at the default sizes;
(d) with --paper-run-steps N: the minutes a full run at the paper's protocol takes (Sec 5.1: 100k steps, a probe
    every 5k), from two N-step runs of the real agent, one without probes and one probing at its start and end.
Appends a section to benchmarks/RESULTS.md (or --results). About 2-3 minutes on an idle 2-core CPU:
    python benchmarks/bench_dqn_classification.py [--no-agent] [--no-write] [--stats-only] [--budget-s 60]
"""
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dqn_classification_mdp as dqn  # noqa: E402
from common.runtime.cli import select_device  # noqa: E402
from common.runtime.seeds import SeedStack, StackedReplay  # noqa: E402
from common.science.classification import load_dataset  # noqa: E402
from common.science.networks import build_network  # noqa: E402
from common.science.optim import make_optimizer  # noqa: E402
from common.science.probe import _final_losses_vectorized, fit_sequential, fit_vectorized, make_targets  # noqa: E402
from types import SimpleNamespace  # noqa: E402


@dataclass
class Args:
    data_dir: str = os.environ.get("PLASTICITY_DATA_DIR", "data")
    """MNIST location"""
    cuda: bool = True
    """use the GPU when there is one"""
    probe_targets: int = 10
    """K, the paper's 10"""
    probe_steps: int = 30
    """fit steps timed (the paper runs 2,000; the per-step cost is what matters)"""
    probe_widths: tuple[int, ...] = (512, 128)
    """MLP widths probed: A.2's 512, and a narrow one where per-operation overhead dominates"""
    threads: tuple[int, ...] = (1, 2)
    """torch CPU thread counts for the probe"""
    agent: bool = True
    """also time the agent"""
    agent_steps: int = 1_000
    """optimizer steps timed for the agent"""
    repeats: int = 3
    """timed repeats, alternating between the contenders; the median is reported"""
    stats_archs: tuple[str, ...] = ("mlp",)
    """architectures for (c); the CNN's probe at 28x28 takes hours on a 2-core CPU"""
    stats_only: bool = False
    """run only (c), the cost of the statistics and the top eigenvalue"""
    stats: bool = True
    """run (c)"""
    probe: bool = True
    """run (a)"""
    paper_run_steps: int = 0
    """run (d) with runs of this many steps (0: skip it)"""
    budget_s: float = 0.0
    """start no measurement after this many seconds (0: no limit); the results name what the budget cut"""
    write: bool = True
    """append the results to --results"""
    results: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
    """the Markdown file the results are appended to"""


class Budget:
    """Wall-clock seconds for a benchmark: ``allows(what)`` is false once they are spent, and remembers ``what``
    so that the results can say which measurements the budget cut."""

    def __init__(self, seconds):
        self.seconds, self.deadline, self.skipped = seconds, time.time() + (seconds or float("inf")), []

    def allows(self, what):
        if time.time() < self.deadline:
            return True
        self.skipped.append(what)
        print(f"budget of {self.seconds:g} s spent: skipping {what}", flush=True)
        return False

    def note(self):
        return [f"\n- The budget of {self.seconds:g} s was spent before: {', '.join(self.skipped)}."] if self.skipped else []


def append(path, lines):
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def step_flops(network, batch_size):
    """Matrix-multiply FLOPs of one fit step of one copy: forward, weight gradients, and input gradients of every
    Linear layer but the first (the inputs need none)."""
    layers = [m for m in network.modules() if isinstance(m, torch.nn.Linear)]
    forward = [2 * batch_size * m.in_features * m.out_features for m in layers]
    return 2 * sum(forward) + sum(forward[1:])


def bench_probe(args, device, images, width):
    make = lambda: build_network("mlp", (1, 28, 28), 10, width=width).to(device)  # noqa: E731  784-w-w-10
    network, inputs = make(), images[:2048]
    targets = make_targets(network, make, inputs, args.probe_targets)
    adam = lambda params: make_optimizer("adam", params, 1e-3)  # noqa: E731
    a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)

    fit_seconds = []  # the fit alone, for the step time

    def vectorised():  # with the final losses on all inputs, as fit_sequential computes them
        start = time.perf_counter()
        model, params, buffers, _ = fit_vectorized([network], inputs[None], targets[None], adam, args.probe_steps,
                                                   32, seeds=[0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        fit_seconds.append(time.perf_counter() - start)
        return _final_losses_vectorized(model, params, buffers, inputs[None], targets[None])

    contenders = {"vectorised": vectorised,
                  "sequential": lambda: fit_sequential(network, inputs, targets, adam, args.probe_steps, 32),
                  "matmul": lambda: [a @ b for _ in range(10)]}
    for fn in contenders.values():  # warm-up
        fn()
    times = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn, device))
    seconds = {name: statistics.median(t) for name, t in times.items()}
    gflops = 10 * 2 * 1024**3 / seconds["matmul"] / 1e9
    flops = args.probe_targets * step_flops(network, 32)
    return dict(vectorised=seconds["vectorised"], sequential=seconds["sequential"], gflops=gflops,
                step_ms=statistics.median(fit_seconds[1:]) / args.probe_steps * 1e3, bound_ms=flops / gflops / 1e6)


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
    n = 10_000
    replay = StackedReplay(1, n, device)
    generator = torch.Generator(device).manual_seed(0)
    replay.add(torch.randint(len(images), (1, n), device=device), torch.randint(10, (1, n), device=device),
               torch.rand(1, n, device=device), torch.randint(len(images), (1, n), device=device))
    stacked_replay, replay = replay, replay.view(0)
    inputs = images[replay.obs[:run_args.probe_inputs]]
    batch = replay.sample(run_args.hessian_batch_size, generator)
    statistics = lambda: dqn.network_statistics(run_args, q_network, target_network, images, inputs, batch,  # noqa
                                                initial)
    statistics()  # warm-up
    stats_time = min(timed(statistics, device) for _ in range(args.repeats))
    run_args.probe_steps, run_args.stats, run_args.hessian = args.probe_steps, False, False  # the probe alone
    q_stack, target_stack = SeedStack([q_network]), SeedStack([target_network])  # one seed, as train has it
    initial = dict(zip(q_stack.params, (p[None] for p in initial)))
    seed = SimpleNamespace(index=0, seed=1, probes=[])
    probe = lambda: dqn.probe_plasticity(run_args, q_stack, target_stack, images, stacked_replay, initial,  # noqa
                                         [seed], 0)
    short = timed(probe, device)
    run_args.probe_steps = 2 * args.probe_steps
    long = timed(probe, device)
    per_step = (long - short) / args.probe_steps
    probe_time = short + per_step * (2_000 - args.probe_steps)
    return stats_time, probe_time


def bench_paper_run(args):
    """(d): wall seconds of the set-up, of one agent step and of one probe at the paper's protocol (the Args'
    defaults), from two ``paper_run_steps`` runs: without probes, and with probes at step 0 and at the end."""
    steps = args.paper_run_steps

    def run(probe_every):
        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            dqn.train(dqn.Args(data_dir=args.data_dir, run_dir=run_dir, cuda=args.cuda, total_steps=steps,
                               probe_every=probe_every, log_every=min(steps, 1_000)))
            wall = time.perf_counter() - start
            rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        return wall, statistics.median(r["charts/SPS"] for r in rows if "charts/SPS" in r)

    plain, sps = run(0)
    probed, _ = run(steps)
    return dict(setup=plain - steps / sps, step=1 / sps, probe=(probed - plain) / 2)


def paper_run_lines(args, r, name):
    paper = dqn.Args()
    probes = paper.total_steps // paper.probe_every + 1
    agent_min, probe_min = paper.total_steps * r["step"] / 60, probes * r["probe"] / 60
    total = r["setup"] / 60 + agent_min + probe_min
    return [f"\n## Paper-protocol run of dqn_classification_mdp.py ({time.strftime('%Y-%m-%d %H:%M')}, {name}, "
            f"torch {torch.__version__})\n",
            f"- Sec 5.1 protocol (the Args' defaults: {paper.total_steps:,} steps, {probes} probes of K = "
            f"{paper.probe_targets} x {paper.probe_steps:,} steps with statistics and Hessian), extrapolated from two "
            f"{args.paper_run_steps:,}-step runs (without probes; with probes at its start and end): set-up "
            f"{r['setup']:.1f} s, agent {1 / r['step']:,.0f} steps/s, one probe {r['probe']:.1f} s; a full run takes "
            f"**{total:.1f} min** ({agent_min:.1f} min agent, {probe_min:.1f} min probes)"]


def main(args):
    budget = Budget(args.budget_s)
    device = select_device(args.cuda)
    images, _ = load_dataset("mnist", args.data_dir, device=device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"]
    stats_lines = [f"\n## Probe statistics cost ({time.strftime('%Y-%m-%d %H:%M')}, {name}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, load average {' '.join(load)})\n"]
    for arch in args.stats_archs if args.stats else ():
        if not budget.allows(f"statistics cost of {arch}"):
            continue
        stats_time, probe_time = bench_statistics(args, device, images, arch)
        stats_lines.append(f"- {arch} (defaults: 2,048 probe inputs, Hessian batch 512, 20 Lanczos steps): statistics "
                           f"and top eigenvalue {stats_time:.2f} s; probe (K=10, 2,000 steps, extrapolated from "
                           f"{args.probe_steps} and {2 * args.probe_steps}) {probe_time:.1f} s: "
                           f"**+{100 * stats_time / probe_time:.1f}%**")
    stats_lines = stats_lines if len(stats_lines) > 1 else []
    print("\n".join(stats_lines))
    if args.stats_only:  # (c) alone
        if args.write:
            append(args.results, stats_lines + budget.note())
        return
    lines = [f"\n## dqn_classification_mdp.py ({time.strftime('%Y-%m-%d %H:%M')}, {name}, torch {torch.__version__})\n",
             f"Probe: MLP 784-w-w-10, K={args.probe_targets} targets, {args.probe_steps} steps of batch 32, 2,048 "
             f"inputs, Adam; median of {args.repeats} alternating repeats (`python benchmarks/bench_dqn_classification.py "
             f"--probe-steps {args.probe_steps} --repeats {args.repeats}{'' if args.agent else ' --no-agent'}`). "
             "Both include the final losses on all inputs (a forward pass of the K copies over the 2,048 inputs, about 20 steps' worth of FLOPs). Step: the vectorised fit alone / steps. Bound: the step's matmul FLOPs at the 1024^3 matmul rate measured in the same rounds.\n",
             "| width | threads | load avg | vectorised s | sequential s | speed-up | matmul GFLOP/s | step ms | bound ms | step / bound |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    if not args.probe:
        lines = lines[:1]
    for threads in (args.threads if device.type == "cpu" and args.probe else (torch.get_num_threads(),)):
        torch.set_num_threads(threads)
        for width in args.probe_widths if args.probe else ():
            if not budget.allows(f"probe at width {width}, {threads} threads"):
                continue
            load = os.getloadavg()[0]
            r = bench_probe(args, device, images, width)
            lines.append(f"| {width} | {threads} | {load:.1f} | {r['vectorised']:.2f} | {r['sequential']:.2f} | "
                         f"**{r['sequential'] / r['vectorised']:.2f}x** | {r['gflops']:.0f} | {r['step_ms']:.1f} | "
                         f"{r['bound_ms']:.1f} | {r['step_ms'] / r['bound_ms']:.2f} |")
            print(lines[-1], flush=True)
    if args.agent and budget.allows("agent"):
        results = {}
        for num_envs in (1, 8):
            results.update(bench_agent(args, num_envs))
        lines.append(f"\n- agent (MLP 512, batch 32, no probes, {torch.get_num_threads()} threads, load average "
                     f"{os.getloadavg()[0]:.1f}): 1 env {results['agent_env_steps_per_s_1env']:,.0f} env steps/s "
                     f"= {results['agent_updates_per_s_1env']:,.0f} updates/s; 8 envs "
                     f"{results['agent_env_steps_per_s_8env']:,.0f} env steps/s = {results['agent_updates_per_s_8env']:,.0f} updates/s")
        print(lines[-1])
    if args.paper_run_steps and budget.allows("paper-protocol run"):
        paper_lines = paper_run_lines(args, bench_paper_run(args), name)
        print("\n".join(paper_lines), flush=True)
        lines = (lines if len(lines) > 1 else []) + paper_lines
    lines = (lines if len(lines) > 1 else []) + stats_lines + budget.note()
    if args.write:
        append(args.results, lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
