"""TD-loss spikes after last-layer resets, from runs' metrics.jsonl: for every reset step r (multiples of the
intervention period), the TD loss of the log window just after r over that of the window ending at r. Logs every
few steps (``--log-every`` well under the period) resolve the spike; ``--reset-target-head`` runs beside runs
without it tell whether the pre-reset target network causes it.

    python benchmarks/reset_spikes.py --period 15 runs_a/*/*seed* runs_b/*/*seed*
"""
import argparse
import json
import os

import numpy as np


def spikes(run_dir, period):
    """``(after / before ratios, before losses, after losses)`` over the run's resets."""
    loss = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        row = json.loads(line)
        if "losses/td_loss" in row:
            loss[row["step"]] = row["losses/td_loss"]
    steps = sorted(loss)
    log_every = steps[1] - steps[0]
    resets = [r for r in steps if r % period == 0 and r + log_every in loss and r > steps[0]]
    before = np.array([loss[r] for r in resets])
    after = np.array([loss[r + log_every] for r in resets])
    return after / before, before, after


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--period", type=int, required=True)
    parser.add_argument("run_dirs", nargs="+")
    options = parser.parse_args()
    for run_dir in options.run_dirs:
        ratio, before, after = spikes(run_dir, options.period)
        print(f"{os.path.basename(os.path.dirname(os.path.dirname(run_dir)))}/{os.path.basename(run_dir)}: "
              f"{len(ratio)} resets, TD loss before {before.mean():.4f}, after {after.mean():.4f}, "
              f"ratio median {np.median(ratio):.2f} (mean {ratio.mean():.2f}, max {ratio.max():.2f})")


if __name__ == "__main__":
    main()
