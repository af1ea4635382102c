"""Probe a finished run's final network again, as it is and with its head re-initialised (``reset_last_layer``),
with both probes of ``dqn_classification_mdp.py``: is a two-hot agent's low fit in its head or in its torso, and
what does a last-layer reset leave a probe to see?

    python benchmarks/reprobe.py runs/interventions/mnist__true_label__mlp__two_hot__none__seed1

Reads the run's args.json and checkpoint.pt (the network and replay after its last step). The paper's probe draws
its inputs from the checkpoint's replay with the seed of a probe at the checkpoint's step, the reference probe its
fixed task; each is repeated on a copy whose head is re-initialised from a fixed seed. Prints P / b per probe.
"""
import argparse
import copy
import dataclasses
import json
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dqn_classification_mdp as agent  # noqa: E402
from common.science.interventions import reset_last_layer  # noqa: E402
from common.runtime.seeds import SeedStack, StackedReplay  # noqa: E402


def reprobe(run_dir, head_seed=0):
    """``{(probe, head): fit}`` for head in ('as is', 'fresh head'), probe in ('paper', 'reference')."""
    fields = {f.name for f in dataclasses.fields(agent.Args)}
    saved = json.load(open(os.path.join(run_dir, "args.json")))
    args = agent.Args(**{k: v for k, v in saved.items() if k in fields})
    args = dataclasses.replace(args, cuda=False, stats=False, hessian=False)
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False, map_location="cpu")
    images, _ = agent.load_images(args, torch.device("cpu"))
    replay = StackedReplay(1, args.buffer_size, "cpu")
    replay.load_state_dicts([checkpoint["replay"]])
    network = agent.build_q_network(args, tuple(images.shape[1:]))
    network.load_state_dict(checkpoint["q_network"])
    fresh_head = copy.deepcopy(network)
    with torch.random.fork_rng():
        torch.manual_seed(head_seed)
        reset_last_layer(fresh_head)
    fits = {}
    for head, net in (("as is", network), ("fresh head", fresh_head)):
        stack = SeedStack([copy.deepcopy(net)])
        seed = types.SimpleNamespace(index=0, seed=args.seed, probes=[])
        row, _ = agent.probe_plasticity(args, stack, stack, images, replay, {}, [seed], checkpoint["step"])[0]
        for probe, prefix in (("paper", "probe"), ("reference", "probe_ref")):
            if f"{prefix}/fit" in row:
                fits[probe, head] = float(row[f"{prefix}/fit"])
    return checkpoint["step"], fits


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    options = parser.parse_args()
    for run_dir in options.run_dirs:
        step, fits = reprobe(run_dir)
        print(f"{os.path.basename(run_dir)} step {step}: " + ", ".join(
            f"{probe} probe {head} {fit:.3f}" for (probe, head), fit in fits.items()), flush=True)


if __name__ == "__main__":
    main()
