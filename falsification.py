"""Falsifying simple explanations of plasticity loss (Sec 5.2, Fig 3): 128 DQN agents, statistics vs plasticity.

Each cell of the grid below trains one agent of ``dqn_classification_mdp.py`` (Sec 5.1: target network every 1,000
steps, a probe every 5,000). ``analyze`` then asks, for every statistic the agent logs (``stats/...``: weight
norm, weight rank, feature rank, dead units, ...) and every grouping of the runs (dataset, variant, arch,
optimizer), whether the statistic's final value correlates with plasticity loss with the same sign in every group.
A pair of groups whose bootstrap 95% intervals lie on opposite sides of zero is a sign reversal: the statistic
cannot be a cause of plasticity loss on its own (Sec 5.2, after Buhlmann 2020).

    python falsification.py --list                                    # the 128 cells
    python falsification.py --task-id 0                               # one cell (Slurm: slurm/falsification.sbatch)
    python falsification.py --tasks 0-127 --preset cpu --datasets offline   # everything, one after another
    python falsification.py analyze --runs-dir runs                   # falsification.json, fig3_falsification.png
"""
import json
import os
import warnings

import dqn_classification_mdp
from common import sweep
from common.errors import check

# ---------------------------------------------------------------------------------------------- the grid (Sec 5.2)
# "We train 128 DQN agents under a range of tasks, observation spaces, optimizers, and seeds" (Sec 5.2), with the
# MLP and CNN of Sec 5.1 / A.2. The paper does not list its grid; this is ours:
DATASETS = {
    "paper": ("cifar10", "mnist"),  # Sec 3.2 and Fig 3 contrast CIFAR-10 and MNIST observations
    "offline": ("mnist", "fashion_mnist"),  # without internet CIFAR-10 cannot be fetched: a deviation, say so
}
VARIANTS = ("true_label", "random_label", "sparse_reward")  # the three MDPs of Sec 3.2
ARCHS = ("mlp", "cnn")  # Sec 5.1: "a fully-connected network (MLP) and a convolutional network (CNN)"
OPTIMIZERS = {  # Sec 5.2 varies the optimizer without naming them; the three the agent has, each at a cited rate
    "adam": {"optimizer": "adam", "learning_rate": 1e-3},  # A.1's Adam
    "rmsprop": {"optimizer": "rmsprop", "learning_rate": 2.5e-4},  # DQN Zoo's (Nature DQN) RMSProp rate
    "sgd": {"optimizer": "sgd", "learning_rate": 1e-3},  # A.1's SGD (the Brownian-motion study)
}
SEEDS = (1, 2, 3, 4)
# 2 x 3 x 2 x 3 x 4 = 144 cells; dropping SGD on the sparse-reward MDP (16 cells) gives the paper's 128. We drop
# that pairing, the furthest from the paper's agents (adaptive optimizers), rather than thin every cell's seeds.
EXCLUDE = ({"optimizer": "sgd", "variant": "sparse_reward"},)

# Run sizes. Cells set the fields above; a preset sets everything else that differs from Args' defaults.
PRESETS = {
    "paper": {},  # Args' defaults follow Sec 5.1 / A.2: 100k steps, probe every 5k (2,000 steps, 10 targets)
    "cpu": {  # the grid on 2 CPU cores (two processes of one thread), far from converged: 2,000 steps, target
        # every 250, probes at 0, 1k, 2k (200 steps, 2 targets), width 64 (A.2: 512; it scales the CNN once the
        # statistics issue is merged).
        # Measured at load 4-5 on the 2 shared cores (statistics branch, --set hessian=false): an MLP cell 26 s,
        # a CNN cell 141 s, so 128 cells take 1.5 h there and about an hour on an idle machine.
        "cuda": False, "width": 64, "total_steps": 2_000, "learning_starts": 500, "target_period": 250,
        "log_every": 250, "probe_every": 1_000, "probe_steps": 200, "probe_targets": 2, "probe_inputs": 512,
        "hessian": False,  # curvature/hessian_top is not one of the analysed statistics; it was half a CNN cell's time
    },
    "test": {  # seconds per cell, for the tests
        "cuda": False, "num_images": 1_000, "width": 16, "total_steps": 40, "learning_starts": 32,
        "buffer_size": 1_000, "target_period": 10, "log_every": 10, "probe_every": 20, "probe_steps": 5,
        "probe_targets": 2, "probe_inputs": 64, "probe_batch_size": 16,
    },
}


def make_grid(options):
    return sweep.Grid("falsification", {
        "dataset": sweep.values("dataset", DATASETS[options.datasets]),
        "variant": sweep.values("variant", VARIANTS),
        "arch": sweep.values("arch", ARCHS),
        "optimizer": OPTIMIZERS,
        "seed": sweep.values("seed", SEEDS, label=lambda s: f"seed{s}"),
    }, exclude=EXCLUDE)


# ------------------------------------------------------------------------------------------------------ analysis
TARGET = "probe/plasticity_loss"  # P(theta_0) - P(theta_T), eq. 5
GROUP_BY = ("dataset", "variant", "arch", "optimizer")  # args.json fields
MIN_RUNS = 10  # a percentile bootstrap of fewer runs is too narrow to trust (4 runs: rho 0.89, CI [0.82, 1.0])


def spearman_bootstrap(x, y, num_boot=2_000, seed=0):
    """Spearman's rho of (x, y) and a percentile bootstrap 95% interval over resampled runs (None when undefined)."""
    import numpy as np
    from scipy.stats import rankdata

    def rowwise_spearman(xs, ys):  # Pearson correlation of average ranks, one row per sample
        rx, ry = rankdata(xs, axis=-1), rankdata(ys, axis=-1)
        rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (rx * ry).sum(-1) / np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))

    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = float(rowwise_spearman(x, y))
    if not np.isfinite(rho):  # a constant statistic (e.g. no dead units anywhere) correlates with nothing
        return None, [None, None]
    idx = np.random.default_rng(seed).integers(len(x), size=(num_boot, len(x)))
    boot = rowwise_spearman(x[idx], y[idx])
    boot = boot[np.isfinite(boot)]  # resamples that drew one value only
    lo, hi = np.percentile(boot, [2.5, 97.5]) if len(boot) else (None, None)
    return rho, [None if lo is None else float(lo), None if hi is None else float(hi)]


def correlations(table, statistics, num_boot=2_000):
    """Within each group of each grouping axis: Spearman(final statistic, plasticity loss), CI and n."""
    rows = []
    for statistic in statistics:
        for group_by in GROUP_BY:
            for group, runs in table.groupby(group_by, sort=True):
                runs = runs[runs[statistic].notna() & runs[TARGET].notna()]
                rho, ci = (None, [None, None]) if len(runs) < MIN_RUNS else \
                    spearman_bootstrap(runs[statistic], runs[TARGET], num_boot)
                rows.append({"statistic": statistic, "group_by": group_by, "group": str(group), "n": len(runs),
                             "spearman": rho, "ci95": ci})
    return rows


def sign_reversals(rows):
    """Pairs of groups under one axis whose 95% intervals lie entirely above and entirely below zero."""
    significant = [r for r in rows if r["ci95"][0] is not None]
    return [{"statistic": p["statistic"], "group_by": p["group_by"], "positive": p["group"], "negative": n["group"]}
            for p in significant if p["ci95"][0] > 0
            for n in significant if n["ci95"][1] < 0
            and (n["statistic"], n["group_by"]) == (p["statistic"], p["group_by"])]


def strongest_split(statistic, rows, reversals):
    """The axis to colour a statistic's panel by: its reversal with the largest rho gap, else the axis whose
    groups' correlations spread most. Returns (group_by, a caption)."""
    rho = {(r["group_by"], r["group"]): r["spearman"] for r in rows if r["statistic"] == statistic}
    mine = [r for r in reversals if r["statistic"] == statistic]
    if mine:
        best = max(mine, key=lambda r: rho[r["group_by"], r["positive"]] - rho[r["group_by"], r["negative"]])
        return best["group_by"], f"reversal: + in {best['positive']}, - in {best['negative']}"
    spread = {g: [v for (a, _), v in rho.items() if a == g and v is not None] for g in GROUP_BY}
    group_by = max(GROUP_BY, key=lambda g: max(spread[g]) - min(spread[g]) if spread[g] else -1)
    return group_by, "no sign reversal"


def plot_fig3(table, statistics, rows, reversals, path):
    """Fig 3: per statistic, plasticity loss against its final value, coloured by the groups of its strongest
    reversal, with a least-squares line per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = min(4, len(statistics))
    nrows = -(-len(statistics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.6 * nrows), squeeze=False)
    rho = {(r["statistic"], r["group_by"], r["group"]): r["spearman"] for r in rows}
    for ax, statistic in zip(axes.flat, statistics):
        group_by, caption = strongest_split(statistic, rows, reversals)
        for group, runs in table.groupby(group_by, sort=True):
            runs = runs[runs[statistic].notna() & runs[TARGET].notna()]
            r = rho.get((statistic, group_by, str(group)))
            label = f"{group} (rho {r:+.2f})" if r is not None else f"{group}"
            points = ax.scatter(runs[statistic], runs[TARGET], s=14, alpha=0.7, label=label)
            if runs[statistic].nunique() > 1:
                slope, intercept = np.polyfit(runs[statistic], runs[TARGET], 1)
                xs = np.linspace(runs[statistic].min(), runs[statistic].max(), 2)
                ax.plot(xs, slope * xs + intercept, color=points.get_facecolor()[0][:3])
        ax.set(xlabel=f"{statistic} (final)", ylabel="plasticity loss", title=f"{statistic}\nby {group_by}: {caption}")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(statistics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(rows, reversals):
    import pandas as pd

    def fmt(v):
        return "   -  " if v is None else f"{v:+.3f}"

    table = pd.DataFrame([{"statistic": r["statistic"], "group_by": r["group_by"], "group": r["group"],
                           "n": r["n"], "spearman": fmt(r["spearman"]),
                           "95% CI": f"[{fmt(r['ci95'][0])}, {fmt(r['ci95'][1])}]"} for r in rows])
    print(table.to_string(index=False))
    print(f"\n{len(reversals)} sign reversals (95% intervals on opposite sides of zero):")
    for r in reversals:
        print(f"  {r['statistic']} by {r['group_by']}: positive in {r['positive']}, negative in {r['negative']}")


def analyze(runs_dir, options):
    table, skipped = sweep.collect_runs(runs_dir, exp_name="falsification")
    if len(table) and TARGET in table:
        missing = int(table[TARGET].isna().sum())
        if missing:
            skipped[f"no {TARGET} (probes off)"] = missing
        table = table[table[TARGET].notna()]
    print(sweep.describe_skipped(len(table), skipped))
    check(len(table) and TARGET in table, f"no completed falsification runs with {TARGET} under {runs_dir}")
    # Whole-network statistics; per-layer breakdowns (stats/weight_norm/<layer>) differ between architectures.
    statistics = sorted(c for c in table.columns if c.startswith("stats/") and c.count("/") == 1)
    if not statistics:
        print("the runs log no stats/... metrics: nothing to correlate (the agent logs them at every probe)")
    rows = correlations(table, statistics, options.num_boot)
    reversals = sign_reversals(rows)
    with open(os.path.join(runs_dir, "falsification.json"), "w") as f:
        json.dump({"correlations": rows, "sign_reversals": reversals}, f, indent=1)
    print_table(rows, reversals)
    if statistics:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # polyfit on nearly constant groups
            plot_fig3(table, statistics, rows, reversals, os.path.join(runs_dir, "fig3_falsification.png"))
    print(f"wrote {runs_dir}/falsification.json" + (f" and {runs_dir}/fig3_falsification.png" if statistics else ""))


def add_arguments(parser):
    parser.add_argument("--datasets", choices=tuple(DATASETS), default="paper",
                        help="observation spaces: paper = CIFAR-10 and MNIST (needs internet once), "
                             "offline = MNIST and Fashion-MNIST")
    parser.add_argument("--num-boot", type=int, default=2_000, help="bootstrap resamples for each interval")


SWEEP = sweep.Sweep(make_grid=make_grid, presets=PRESETS, analyze=analyze, train=dqn_classification_mdp.train,
                    args_cls=dqn_classification_mdp.Args, add_arguments=add_arguments, description=__doc__)

if __name__ == "__main__":
    sweep.main(SWEEP)
