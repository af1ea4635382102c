"""Fresh-network probe fit P(theta_0) / b for each optimizer setting a sweep uses, with the agent's own probe.

Sec 3.1 chose the probe's 2,000 steps so that "networks starting from random initializations [can] solve the
task": a plasticity loss means something only where a fresh network fits the probe. This measures that fit for
every (arch, optimizer setting) asked, on probe inputs drawn from the dataset (at step 0 the replay holds uniformly
drawn images), with ``dqn_classification_mdp``'s network, optimizer and ``common.science.probe.run_probe``:

    OMP_NUM_THREADS=1 python benchmarks/probe_fit.py --archs mlp cnn --settings adam_1e-3 sgd_1e-1 --seeds 1 2

A setting is ``<optimizer>_<learning rate>`` with optional ``_two_hot`` and ``_eps<adam eps>``, e.g.
``adam_2.5e-4_eps3.125e-4_two_hot`` (C51's Adam). Prints one row per (arch, setting, seed) with P, b, P/b and the
seconds the probe took.
"""
import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dqn_classification_mdp as agent  # noqa: E402
from common.science.data import load_dataset  # noqa: E402
from common.science.probe import run_probe  # noqa: E402


def parse_setting(text):
    """``adam_1e-3[_eps1e-8][_two_hot]`` -> Args overrides."""
    parts = text.split("_")
    overrides = {"optimizer": parts[0], "learning_rate": float(parts[1]), "two_hot": text.endswith("_two_hot")}
    for part in parts[2:]:
        if part.startswith("eps"):
            overrides["adam_eps"] = float(part[3:])
    return overrides


def fresh_fit(args, images, seed):
    """P, b and seconds of one probe of a freshly initialised network (seed ``seed``) on 'probe_inputs' images."""
    torch.manual_seed(seed)
    obs_shape = tuple(images.shape[1:])
    network = agent.build_q_network(args, obs_shape)
    generator = torch.Generator().manual_seed(seed)
    inputs = images[torch.randint(len(images), (args.probe_inputs,), generator=generator)]
    start = time.time()
    result = run_probe(network, lambda: agent.build_q_network(args, obs_shape), inputs,
                       lambda params: agent.build_optimizer(args, params), num_targets=args.probe_targets,
                       steps=args.probe_steps, batch_size=args.probe_batch_size, seed=seed)
    return float(result.plasticity), float(result.baseline), time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["mlp"])
    parser.add_argument("--settings", nargs="+", default=["adam_1e-3"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--probe-steps", type=int, default=2_000)
    parser.add_argument("--probe-inputs", type=int, default=512)
    parser.add_argument("--probe-targets", type=int, default=4)
    parser.add_argument("--layer-norm", action="store_true")
    options = parser.parse_args()
    data_dir = os.environ.get("PLASTICITY_DATA_DIR", "data")
    images, _ = load_dataset(options.dataset, data_dir, train=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {options.dataset}, width "
          f"{options.width}, {options.probe_steps} probe steps, {options.probe_inputs} inputs, "
          f"{options.probe_targets} targets")
    print(f"{'arch':<5} {'setting':<32} {'seed':>4} {'P':>8} {'b':>7} {'P/b':>7} {'s':>6}", flush=True)
    for arch in options.archs:
        for setting in options.settings:
            args = dataclasses.replace(agent.Args(), arch=arch, width=options.width, dataset=options.dataset,
                                       probe_steps=options.probe_steps, probe_inputs=options.probe_inputs,
                                       probe_targets=options.probe_targets, layer_norm=options.layer_norm,
                                       **parse_setting(setting))
            for seed in options.seeds:
                p, b, seconds = fresh_fit(args, images, seed)
                print(f"{arch:<5} {setting:<32} {seed:>4} {p:>8.4f} {b:>7.4f} {p / b:>7.3f} {seconds:>6.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
