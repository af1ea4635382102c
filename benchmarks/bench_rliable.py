"""The aggregate's bootstrap intervals, side by side in one run: ``common.analysis.atari_stats.interval_estimates``
(rliable's draws and estimators, vectorised over replicates) against rliable 1.2.0's own ``rliable.library``
(``get_interval_estimates`` for the aggregates and the probability of improvement, ``create_performance_profile``
for the profiles), on one scores matrix per configuration shaped like the MinAtar grid's (3 runs x 5 games) or
the ALE grid's (3 runs x 57 games). Both sides give the same intervals (tests/test_atari_aggregate.py); this
times them. rliable's time per replicate is constant, so its time at ``aggregate``'s defaults (50,000 replicates,
2,000 for the profiles) is extrapolated from --reps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rliable.py --games 5 --reps 1000
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.analysis import atari_stats  # noqa: E402


def rliable_intervals(scores, num_boot, num_boot_profile, seed):
    """The three rliable.library calls ``interval_estimates`` stands for."""
    from rliable import library, metrics

    def aggregates(s):
        return np.array([metrics.aggregate_iqm(s), metrics.aggregate_median(s), metrics.aggregate_mean(s),
                         metrics.aggregate_optimality_gap(s)])

    x, y = scores.values()
    np.random.seed(seed)
    library.get_interval_estimates(scores, aggregates, reps=num_boot)
    np.random.seed(seed)
    library.get_interval_estimates({"pair": (x, y)}, metrics.probability_of_improvement, reps=num_boot)
    np.random.seed(seed)
    library.create_performance_profile(scores, atari_stats.PROFILE_TAUS, reps=num_boot_profile)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", type=int, default=5, help="games per matrix (MinAtar: 5, the ALE: 57)")
    parser.add_argument("--runs", type=int, default=3, help="runs (seeds) per game and configuration")
    parser.add_argument("--reps", type=int, default=1_000, help="bootstrap replicates timed on both sides")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scores = {c: rng.gamma(1.0, 1.0, (args.runs, args.games)) for c in atari_stats.CONFIGS.values()}
    profile_reps = max(1, args.reps * 2_000 // 50_000)
    print(f"{platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.runs} runs x {args.games} games "
          f"per configuration, {args.reps:,} replicates ({profile_reps:,} for the profiles)")
    timings = {}
    for name, fn in (("vectorised (atari_stats)", atari_stats.interval_estimates), ("rliable.library", rliable_intervals)):
        start = time.perf_counter()
        fn(scores, args.reps, profile_reps, 0)
        timings[name] = time.perf_counter() - start
    for name, seconds in timings.items():
        print(f"- {name}: {seconds:.2f} s; at aggregate's defaults (50,000 / 2,000 replicates) about "
              f"{seconds * 50_000 / args.reps:,.0f} s")
    print(f"  ratio {timings['rliable.library'] / timings['vectorised (atari_stats)']:.0f}x")


if __name__ == "__main__":
    main()
