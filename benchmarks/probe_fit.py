"""Fresh-network probe fit P(theta_0) / b for each optimizer setting a sweep uses, with the agent's own probe.

Sec 3.1 chose the probe's 2,000 steps so that "networks starting from random initializations [can] solve the
task": a plasticity loss means something only where a fresh network fits the probe. This measures that fit for
every (arch, optimizer setting) asked, on probe inputs drawn from the dataset (at step 0 the replay holds uniformly
drawn images), with ``dqn_classification_mdp``'s network, optimizer and ``common.science.probe.run_probe``:

    OMP_NUM_THREADS=1 python benchmarks/probe_fit.py --archs mlp cnn --settings adam_1e-3 sgd_1e-1 --seeds 1 2
    OMP_NUM_THREADS=1 python benchmarks/probe_fit.py --reference --widths 16 64 256 --probe-inputs 1024 2048

A setting is ``<optimizer>_<learning rate>`` with optional ``_two_hot``, ``_eps<adam eps>`` and ``_value`` (fit the
predicted values by squared error, as the reference probe does, instead of the head's loss), e.g.
``adam_2.5e-4_eps3.125e-4_two_hot`` (C51's Adam). ``--reference`` measures the agent's reference probe
(``dqn_classification_mdp.reference_probe_optimizer``) for the regression and the two-hot head of every arch and
width. Prints one row per (arch, width, inputs, setting, seed) with P, b, P/b and the seconds the probe took.
"""
import argparse
import dataclasses
import itertools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dqn_classification_mdp as agent  # noqa: E402
from common.science.classification import load_dataset  # noqa: E402
from common.science.probe import run_probe  # noqa: E402


def parse_setting(text):
    """``adam_1e-3[_eps1e-8][_two_hot][_value]`` -> Args overrides and whether the fit is on values."""
    parts = text.split("_")
    overrides = {"optimizer": parts[0], "learning_rate": float(parts[1]), "two_hot": "_two_hot" in text}
    for part in parts[2:]:
        if part.startswith("eps"):
            overrides["adam_eps"] = float(part[3:])
    return overrides, text.endswith("_value")


def fresh_fit(args, images, seed, reference=False, value_loss=False):
    """P, b and seconds of one probe of a freshly initialised network (seed ``seed``) on 'probe_inputs' images:
    the agent's probe, or with ``reference`` its reference probe (``args.ref_probe_inputs`` images)."""
    torch.manual_seed(seed)
    obs_shape = tuple(images.shape[1:])
    network = agent.build_q_network(args, obs_shape)
    generator = torch.Generator().manual_seed(seed)
    if reference:  # distinct images, as the agent's reference probe draws them
        inputs = images[torch.randperm(len(images), generator=generator)[:args.ref_probe_inputs]]
    else:
        inputs = images[torch.randint(len(images), (args.probe_inputs,), generator=generator)]
    make_optimizer = agent.reference_probe_optimizer(args) if reference else \
        (lambda params: agent.build_optimizer(args, params))
    start = time.time()
    result = run_probe(network, lambda: agent.build_q_network(args, obs_shape), inputs, make_optimizer,
                       num_targets=args.probe_targets, steps=args.probe_steps, batch_size=args.probe_batch_size,
                       seed=seed, value_loss=reference or value_loss)
    return float(result.plasticity), float(result.baseline), time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["mlp"])
    parser.add_argument("--settings", nargs="+", default=["adam_1e-3"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--widths", nargs="+", type=int, default=[64])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--probe-steps", type=int, default=2_000)
    parser.add_argument("--probe-inputs", nargs="+", type=int, default=[512])
    parser.add_argument("--reference", action="store_true",
                        help="the reference probe (with --probe-inputs as its inputs) of the regression and two-hot "
                             "heads, instead of --settings")
    parser.add_argument("--ref-learning-rate", type=float, default=agent.Args.ref_probe_learning_rate)
    parser.add_argument("--probe-targets", type=int, default=4)
    parser.add_argument("--layer-norm", action="store_true")
    options = parser.parse_args()
    data_dir = os.environ.get("PLASTICITY_DATA_DIR", "data")
    images, _ = load_dataset(options.dataset, data_dir, train=True)
    probe = f"reference probe, Adam {options.ref_learning_rate:g}" if options.reference else "agent probe"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {options.dataset}, "
          f"{options.probe_steps} probe steps, {options.probe_targets} targets, {probe}")
    print(f"{'arch':<5} {'width':>5} {'inputs':>6} {'setting':<32} {'seed':>4} {'P':>8} {'b':>7} {'P/b':>7} {'s':>6}",
          flush=True)
    settings = ["regression", "two_hot"] if options.reference else options.settings
    for arch, width, num_inputs, setting in itertools.product(options.archs, options.widths, options.probe_inputs,
                                                              settings):
        overrides, value_loss = ({"two_hot": setting == "two_hot"}, True) if options.reference else \
            parse_setting(setting)
        args = dataclasses.replace(agent.Args(), arch=arch, width=width, dataset=options.dataset,
                                   probe_steps=options.probe_steps, probe_inputs=num_inputs,
                                   ref_probe_inputs=num_inputs, ref_probe_learning_rate=options.ref_learning_rate,
                                   probe_targets=options.probe_targets, layer_norm=options.layer_norm, **overrides)
        for seed in options.seeds:
            p, b, seconds = fresh_fit(args, images, seed, options.reference, value_loss)
            print(f"{arch:<5} {width:>5} {num_inputs:>6} {setting:<32} {seed:>4} {p:>8.4f} {b:>7.4f} {p / b:>7.3f} "
                  f"{seconds:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
