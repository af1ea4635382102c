"""Loss of probe fit over training, per probe, from runs of ``dqn_classification_mdp.py``: the calibration table
of a protocol (benchmarks/RESULTS.md). For each run directory given (``--num-seeds`` writes <run-dir>__seed<n>),
prints both probes' fits P / b at every probe, and per probe the mean over runs of the fit lost from the first
probe to the last, (P(theta_0) - P(theta_T)) / b(theta_0), with its 95% t-interval:

    python benchmarks/fit_loss.py runs/calib_mlp__seed1 runs/calib_mlp__seed2

With --paired, the run directories are cells of ``interventions_sweep.py`` (``<dataset>__<variant>__<arch>__<output>
__<intervention>__seed<n>``): per probe, arch and output it prints each intervention's mean fit lost and its
paired difference from no intervention (the same seed), with 95% t-intervals over seeds:

    python benchmarks/fit_loss.py --paired runs_cpu2/interventions/*
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
    parser.add_argument("--paired", action="store_true", help="intervention cells: differences from no intervention")
    options = parser.parse_args()
    if options.paired:
        return paired(options.run_dirs)
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


def paired(run_dirs):
    lost = {}  # (probe, arch, output, intervention) -> {seed: fit lost}
    for run_dir in run_dirs:
        path = os.path.join(run_dir, "summary.json")
        summary = json.load(open(path)) if os.path.exists(path) else {}
        if summary.get("status") != "completed":
            continue
        _, _, arch, output, intervention, seed = os.path.basename(run_dir.rstrip("/")).split("__")
        for probe in PROBES:
            fits, loss = fit_lost(summary["probes"], probe)
            if fits:
                lost.setdefault((probe, arch, output, intervention), {})[seed] = (fits[0], fits[-1], loss)
    for (probe, arch, output, intervention), seeds in sorted(lost.items()):
        mean, low, high = interval([v[2] for v in seeds.values()])
        line = (f"{probe:9s} {arch} {output:10s} {intervention:17s} {len(seeds)} seeds  fit {np.mean([v[0] for v in seeds.values()]):.2f}"
                f" -> {np.mean([v[1] for v in seeds.values()]):.2f}  lost {mean:+.3f} [{low:+.3f}, {high:+.3f}]")
        none = lost.get((probe, arch, output, "none"), {})
        if output == "two_hot" and intervention == "none":
            none = lost.get((probe, arch, "regression", "none"), {})  # the two-hot output against regression
        shared = sorted(set(seeds) & set(none))
        if none is not seeds and len(shared) > 1:
            mean, low, high = interval([seeds[s][2] - none[s][2] for s in shared])
            line += f"  vs none {mean:+.3f} [{low:+.3f}, {high:+.3f}]"
        print(line)


if __name__ == "__main__":
    main()
