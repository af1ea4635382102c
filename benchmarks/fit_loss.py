"""Loss of probe fit over training, per probe, from runs of ``dqn_classification_mdp.py``: the calibration table
of a protocol (benchmarks/RESULTS.md). For each run directory given (``--num-seeds`` writes <run-dir>__seed<n>),
prints both probes' fits P / b at every probe, and per probe the mean over runs of the fit lost from the first
probe to the last, (P(theta_0) - P(theta_T)) / b(theta_0), with its 95% t-interval:

    python benchmarks/fit_loss.py runs/calib_mlp__seed1 runs/calib_mlp__seed2
"""
import argparse
import json
import os
import sys

import numpy as np
from scipy.stats import t

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.science.probe import PROBES, probe_key  # noqa: E402


def fit_lost(probes, probe):
    """(fits at every probe, fit lost from the first to the last in units of the first probe's b)."""
    key = lambda name: probe_key(probe, name)  # noqa: E731
    fits = [row[key("plasticity")] / row[key("baseline")] for row in probes if key("plasticity") in row]
    lost = (probes[0][key("plasticity")] - probes[-1][key("plasticity")]) / probes[0][key("baseline")] \
        if len(fits) > 1 else float("nan")
    return fits, lost


def interval(values):
    v = np.asarray(values, float)
    half = t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return v.mean(), v.mean() - half, v.mean() + half


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    options = parser.parse_args()
    lost = {probe: [] for probe in PROBES}
    for run_dir in options.run_dirs:
        summary = json.load(open(os.path.join(run_dir, "summary.json")))
        line = [os.path.basename(run_dir), summary["status"], f"{summary.get('wall_time_s', float('nan')):.0f} s",
                f"accuracy {summary['metrics'].get('charts/accuracy', float('nan')):.2f}"]
        for probe in PROBES:
            fits, loss = fit_lost(summary["probes"], probe)
            if fits:
                lost[probe].append(loss)
                line.append(f"{probe}: fit {' -> '.join(f'{f:.3f}' for f in fits)} (lost {loss:+.3f})")
        print("  ".join(line))
    for probe, values in lost.items():
        if values:
            mean, low, high = interval(values)
            print(f"{probe} probe: fit lost {mean:+.3f} [{low:+.3f}, {high:+.3f}] of b over {len(values)} runs")


if __name__ == "__main__":
    main()
