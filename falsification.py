"""Falsifying simple explanations of plasticity loss (Sec 5.2, Fig 3): 128 DQN agents, statistics vs plasticity.

Each cell of the grid below trains one agent of ``dqn_classification_mdp.py`` (Sec 5.1: target network every 1,000
steps, a probe every 5,000). ``analyze`` reads the runs of one protocol whose fresh network could fit the probe
(``common.validity``) and asks, for every statistic the agent logs (``stats/...``: weight norm, weight rank, feature
rank, dead units, ...) and every grouping of the runs (the learning problem, dataset x variant, and each single
axis), whether the statistic's final value correlates with P(theta_T) and with plasticity loss with the same sign in
every group, pooled and within cells, with intervals from a bootstrap over whole cells. A pair of groups whose 95%
intervals lie on opposite sides of zero is a sign reversal: the statistic cannot be a cause of plasticity loss on
its own (Sec 5.2, after Buhlmann 2020).

    python falsification.py --list                                    # the 128 cells
    python falsification.py --task-id 0                               # one cell (Slurm: slurm/falsification.sbatch)
    python falsification.py --tasks 0-127 --preset cpu --datasets offline   # everything, one after another
    python falsification.py analyze --runs-dir runs                   # falsification.json, fig3_falsification.png
"""
import argparse
import itertools
import json
import os
import warnings

import numpy as np
import pandas as pd

import dqn_classification_mdp
from common import sweep, validity
from common.envs import VARIANTS  # the three MDPs of Sec 3.2
from common.errors import check
from common.logger import pyplot

# ---------------------------------------------------------------------------------------------- the grid (Sec 5.2)
# "We train 128 DQN agents under a range of tasks, observation spaces, optimizers, and seeds" (Sec 5.2), with the
# MLP and CNN of Sec 5.1 / A.2. The paper does not list its grid; this is ours:
ARCHS = ("mlp", "cnn")  # Sec 5.1: "a fully-connected network (MLP) and a convolutional network (CNN)"
# Sec 5.2 varies the optimizer without naming them; the three the agent has. Each must let a fresh network fit the
# probe in Sec 3.1's 2,000 steps, or its plasticity loss measures nothing (fresh fits P(theta_0) / b, MLP / CNN at
# width 64, 512 MNIST inputs: benchmarks/RESULTS.md). A.1's SGD rate 1e-3 fits 0.002 and DQN Zoo's RMSProp rate
# 2.5e-4 (dqn_zoo/dqn/run_atari.py) 0.36 / 0.33: both too slow, so the rates below are measured, not cited.
OPTIMIZERS = {
    "adam": {"optimizer": "adam", "learning_rate": 1e-3},  # A.1's Adam: fits 0.97-0.98 / 0.92
    "rmsprop": {"optimizer": "rmsprop", "learning_rate": 1e-3},  # DQN Zoo's RMSProp (decay 0.95, eps 0.01 / 32**2,
    # centered) at A.1's rate 1e-3 (the agent's default for every optimizer): fits 0.84 / 0.92
    "sgd": {"optimizer": "sgd", "learning_rate": 0.3},  # plain SGD (the agent's has no momentum): the smallest of
    # 1e-3, 1e-2, 3e-2, 0.1, 0.3 that fits well (0.1: 0.62; 0.3: 0.87-0.89 / 0.95)
}
SEEDS = (1, 2, 3, 4)
# 2 x 3 x 2 x 3 x 4 = 144 cells; dropping SGD on the sparse-reward MDP (16 cells) gives the paper's 128. We drop
# that pairing, the furthest from the paper's agents (adaptive optimizers), rather than thin every cell's seeds.
EXCLUDE = ({"optimizer": "sgd", "variant": "sparse_reward"},)

# Run sizes. Cells set the fields above; a preset sets everything else that differs from Args' defaults.
PRESETS = {
    "paper": {},  # Args' defaults follow Sec 5.1 / A.2: 100k steps, probe every 5k (2,000 steps, 10 targets)
    "cpu": {  # the grid on a few CPU cores, far from converged.
        # Keeps the paper's probe (Sec 3.1: 2,000 steps of the agent's optimizer, fresh state) with 3 targets (A.2:
        # 10), the MDPs, the agent, the architectures, optimizers and statistics.
        # Scales: 2,000 agent steps (Sec 5.1: 100k) with the target network every 250 (Sec 5.1: 1,000), probes at
        # the start, middle and end only (0, 1k, 2k), 512 probe inputs, width 64 (A.2: 512; the CNN at 1/8), no
        # Hessian (not an analysed statistic; half a CNN cell's time). Cost per cell: benchmarks/RESULTS.md.
        "cuda": False, "width": 64, "total_steps": 2_000, "learning_starts": 500, "target_period": 250,
        "log_every": 250, "probe_every": 1_000, "probe_steps": 2_000, "probe_targets": 3, "probe_inputs": 512,
        "hessian": False,
    },
    "test": sweep.TEST_PRESET,
}


def make_grid(options):
    return sweep.Grid("falsification", {
        "dataset": sweep.values("dataset", sweep.DATASETS[options.datasets]),
        "variant": sweep.values("variant", VARIANTS),
        "arch": sweep.values("arch", ARCHS),
        "optimizer": OPTIMIZERS,
        "seed": sweep.values("seed", SEEDS, label=lambda s: f"seed{s}"),
    }, exclude=EXCLUDE)


# ------------------------------------------------------------------------------------------------------ analysis
FACTORS = ("dataset", "variant", "arch", "optimizer")  # args.json fields; a cell is one combination, its runs seeds
# Sec 5.2 asks within the learning problem (dataset x variant) as well as along single axes and over everything.
GROUPINGS = {"all": (), "problem": ("dataset", "variant"), **{f: (f,) for f in FACTORS}}
TARGETS = {"plasticity": "probe/plasticity",  # P(theta_T): Fig 3's axis
           "plasticity_loss": "probe/plasticity_loss"}  # P(theta_0) - P(theta_T), eq. 5
# pooled: Spearman over a group's runs, where differences between the cell means of the other factors (optimizers,
# architectures, ...) can make or hide a sign on their own (Simpson's paradox); within_cells: ranks taken within
# each combination of the other factors (a cell: only its seeds differ), so only variation inside cells counts.
METHODS = ("pooled", "within_cells")
MIN_RUNS = 10  # a percentile bootstrap of fewer runs is too narrow to trust (4 runs: rho 0.89, CI [0.82, 1.0])


def _centred_ranks(values):
    from scipy.stats import rankdata

    ranks = rankdata(values, axis=-1, nan_policy="omit")
    return ranks - np.nanmean(ranks, axis=-1, keepdims=True)


def _pearson_of_centred(cx, cy):
    """sum(cx cy) / sqrt(sum cx^2 sum cy^2) along the last axis, NaN (padding) ignored."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(cx * cy, -1) / np.sqrt(np.nansum(cx ** 2, -1) * np.nansum(cy ** 2, -1))


def _pooled_cell_sums(sums, counts):
    """The same over cells whose sums (sxy, sxx, syy) are taken ``counts`` times: (..., C) counts -> (...,)."""
    sxy, sxx, syy = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts @ sxy / np.sqrt((counts @ sxx) * (counts @ syy))


def rank_correlation(x, y, cells, method="pooled", num_boot=2_000, seed=0):
    """Spearman-type correlation of (x, y) and a percentile bootstrap 95% interval that resamples whole cells
    (``cells``: one label per run; a cell's seeds share its settings and are not independent draws).

    ``pooled``: Spearman's rho over all runs. ``within_cells``: ranks centred within each cell, then
    ``sum(rx ry) / sqrt(sum rx^2 sum ry^2)`` over all runs, so that only how x and y vary together inside cells
    counts (cells of one run add nothing). Returns ``(rho, [lo, hi])``, None where undefined."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    labels = sorted(set(cells), key=str)
    members = [np.flatnonzero(np.asarray([c == label for c in cells])) for label in labels]
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(labels), size=(num_boot, len(labels)))
    if method == "pooled":
        rho = float(_pearson_of_centred(_centred_ranks(x), _centred_ranks(y)))
        padded = np.full((2, len(labels), max(len(m) for m in members)), np.nan)
        for c, m in enumerate(members):
            padded[0, c, :len(m)], padded[1, c, :len(m)] = x[m], y[m]
        xb, yb = (padded[i][draws].reshape(num_boot, -1) for i in (0, 1))
        boot = _pearson_of_centred(_centred_ranks(xb), _centred_ranks(yb))
    else:
        sums = np.zeros((3, len(labels)))
        for c, m in enumerate(members):
            rx, ry = _centred_ranks(x[m]), _centred_ranks(y[m])
            sums[:, c] = (rx * ry).sum(), (rx ** 2).sum(), (ry ** 2).sum()
        rho = float(_pooled_cell_sums(sums, np.ones(len(labels))))
        counts = np.zeros((num_boot, len(labels)))
        np.add.at(counts, (np.arange(num_boot)[:, None], draws), 1)
        boot = _pooled_cell_sums(sums, counts)
    if not np.isfinite(rho):  # a constant statistic (e.g. no dead units anywhere) correlates with nothing
        return None, [None, None]
    boot = boot[np.isfinite(boot)]  # resamples without variation
    if not len(boot):
        return rho, [None, None]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return rho, [float(lo), float(hi)]


def correlations(table, statistics, num_boot=2_000):
    """For every statistic, target, method, grouping and group: the correlation, its cell-bootstrap 95% interval,
    the interval's half-width, and the numbers of runs and cells."""
    rows = []
    cell = table[list(FACTORS)].astype(str).agg("__".join, axis=1)
    for statistic, (target_name, target), method in itertools.product(statistics, TARGETS.items(), METHODS):
        usable = table[statistic].notna() & table[target].notna()
        for group_by, keys in GROUPINGS.items():
            groups = table[usable].groupby(list(keys), sort=True) if keys else [("all", table[usable])]
            for group, runs in groups:
                cells = list(cell[runs.index])
                informative = len(runs) if method == "pooled" else \
                    sum(n for n in pd.Series(cells).value_counts() if n > 1)
                rho, ci = (None, [None, None]) if informative < MIN_RUNS else rank_correlation(
                    runs[statistic], runs[target], cells, method, num_boot)
                rows.append({"statistic": statistic, "target": target_name, "method": method, "group_by": group_by,
                             "group": "/".join(map(str, group)) if isinstance(group, tuple) else str(group),
                             "runs": len(runs), "cells": len(set(cells)), "spearman": rho, "ci95": ci,
                             "half_width": None if ci[0] is None else (ci[1] - ci[0]) / 2})
    return rows


def sign_reversals(rows):
    """Pairs of groups of one grouping (same statistic, target and method) whose 95% intervals lie entirely above
    and entirely below zero."""
    key = ("statistic", "target", "method", "group_by")
    significant = [r for r in rows if r["ci95"][0] is not None]
    return [{**{k: p[k] for k in key}, "positive": p["group"], "negative": n["group"]}
            for p in significant if p["ci95"][0] > 0
            for n in significant if n["ci95"][1] < 0 and all(n[k] == p[k] for k in key)]


def strongest_split(statistic, rows, reversals, target="plasticity", method="pooled"):
    """The grouping to colour a statistic's panel by: its reversal with the largest rho gap, else the grouping
    whose groups' correlations spread most. Returns (group_by, a caption)."""
    mine = [r for r in rows if (r["statistic"], r["target"], r["method"]) == (statistic, target, method)]
    rho = {(r["group_by"], r["group"]): r["spearman"] for r in mine}
    flips = [r for r in reversals if (r["statistic"], r["target"], r["method"]) == (statistic, target, method)]
    if flips:
        best = max(flips, key=lambda r: rho[r["group_by"], r["positive"]] - rho[r["group_by"], r["negative"]])
        return best["group_by"], f"reversal: + in {best['positive']}, - in {best['negative']}"
    spread = {g: [v for (a, _), v in rho.items() if a == g and v is not None] for g in GROUPINGS if g != "all"}
    group_by = max(spread, key=lambda g: max(spread[g]) - min(spread[g]) if spread[g] else -1)
    return group_by, "no sign reversal"


def plot_fig3(table, statistics, rows, reversals, target_name, path, min_initial_fit):
    """Fig 3: per statistic, P(theta_T) (or plasticity loss) against its final value, coloured by the groups of
    its strongest split, a least-squares line per group; the last panel shows each cell's P(theta_0) / b, the
    fresh network's fit that makes the probe a measurement."""
    plt = pyplot()

    target = TARGETS[target_name]
    panels = len(statistics) + 1
    cols = min(4, panels)
    fig, axes = plt.subplots(-(-panels // cols), cols, figsize=(4 * cols, 3.6 * -(-panels // cols)), squeeze=False)
    rho = {(r["statistic"], r["group_by"], r["group"]): r["spearman"] for r in rows
           if (r["target"], r["method"]) == (target_name, "pooled")}
    for ax, statistic in zip(axes.flat, statistics):
        group_by, caption = strongest_split(statistic, rows, reversals, target_name)
        keys = list(GROUPINGS[group_by])
        for group, runs in table.groupby(keys, sort=True):
            runs = runs[runs[statistic].notna() & runs[target].notna()]
            name = "/".join(map(str, group)) if isinstance(group, tuple) else str(group)
            r = rho.get((statistic, group_by, name))
            points = ax.scatter(runs[statistic], runs[target], s=14, alpha=0.7,
                                label=f"{name} (rho {r:+.2f})" if r is not None else name)
            if runs[statistic].nunique() > 1:
                slope, intercept = np.polyfit(runs[statistic], runs[target], 1)
                xs = np.linspace(runs[statistic].min(), runs[statistic].max(), 2)
                ax.plot(xs, slope * xs + intercept, color=points.get_facecolor()[0][:3])
        ax.set(xlabel=f"{statistic} (final)", ylabel=target_name.replace("_", " "),
               title=f"{statistic}\nby {group_by}: {caption}")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6)
    ax = axes.flat[len(statistics)]
    labels = table["arch"].astype(str) + "/" + table["optimizer"].astype(str)
    names = sorted(labels.unique())
    for i, name in enumerate(names):
        fits = table["initial_fit"][labels == name]
        ax.scatter(np.full(len(fits), i) + np.linspace(-0.2, 0.2, len(fits)), fits, s=10)
    ax.axhline(min_initial_fit, color="red", ls="--", lw=1, label=f"--min-initial-fit {min_initial_fit:g}")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="P(theta_0) / b", title="fresh network's probe fit (runs analysed)")
    ax.legend(fontsize=7)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(v):
    return "  -  " if v is None else f"{v:+.2f}"


def print_table(rows, reversals):
    """One line per statistic and group, one column per target and method: rho [95% interval]."""
    table = pd.DataFrame([{"statistic": r["statistic"], "group": f"{r['group_by']}={r['group']}",
                           "column": f"{r['target']}/{r['method']}",
                           "value": f"{fmt(r['spearman'])} [{fmt(r['ci95'][0])},{fmt(r['ci95'][1])}]"} for r in rows])
    wide = table.pivot(index=["statistic", "group"], columns="column", values="value")
    print(wide[[f"{t}/{m}" for t in TARGETS for m in METHODS]].to_string())
    print(f"\n{len(reversals)} sign reversals (two groups of one grouping, 95% intervals on opposite sides of zero):")
    for r in reversals:
        print(f"  {r['statistic']} vs {r['target']} ({r['method']}) by {r['group_by']}: positive in {r['positive']}, "
              f"negative in {r['negative']}")
    print("\nwhere there is none, the largest 95% half-width among the groups (the test's resolution):")
    for (target, method, statistic), mine in itertools.groupby(
            sorted(rows, key=lambda r: (r["target"], r["method"], r["statistic"])),
            key=lambda r: (r["target"], r["method"], r["statistic"])):
        mine, parts = list(mine), []
        for group_by in GROUPINGS:
            if group_by == "all":
                continue
            flips = [r for r in reversals if (r["target"], r["method"], r["statistic"], r["group_by"]) ==
                     (target, method, statistic, group_by)]
            widths = [r["half_width"] for r in mine if r["group_by"] == group_by and r["half_width"] is not None]
            parts.append(f"{group_by} {'REVERSAL' if flips else 'no reversal'}"
                         + (f" +-{max(widths):.2f}" if widths else " (too few runs)"))
        print(f"  {target:<15} {method:<12} {statistic:<28} " + "; ".join(parts))


def analyze(runs_dir, options):
    check(options.num_boot >= 100, f"--num-boot must be at least 100 for a 95% interval, got {options.num_boot}")
    check(options.min_initial_fit <= 1, f"--min-initial-fit is a fit P / b: at most 1, got {options.min_initial_fit}")
    varied = make_grid(argparse.Namespace(datasets="paper")).varied_fields()
    protocols = validity.load_protocols(runs_dir, "falsification", varied, options.min_initial_fit, runs_dir)
    protocols = [p for p in protocols if len(p.runs) or len(p.diverged)]
    check(protocols, f"no completed falsification runs under {runs_dir} whose probe measures plasticity")
    for protocol in protocols:
        analyze_protocol(protocol, options)


def analyze_protocol(protocol, options):
    out, table = protocol.out_dir, protocol.runs
    diverged = protocol.diverged.assign(cell=protocol.diverged["run_dir"].map(validity.cell_name))
    diverged = diverged.groupby("cell").size().rename("diverged").reset_index() if len(diverged) else \
        pd.DataFrame(columns=["cell", "diverged"])
    # Whole-network statistics; per-layer breakdowns (stats/weight_norm/<layer>) differ between architectures.
    statistics = sorted(c for c in table.columns if c.startswith("stats/") and c.count("/") == 1)
    if not statistics:
        print("the runs log no stats/... metrics: nothing to correlate (the agent logs them at every probe)")
    rows = correlations(table, statistics, options.num_boot) if len(table) else []
    reversals = sign_reversals(rows)
    with open(os.path.join(out, "falsification.json"), "w") as f:
        json.dump({"protocol": protocol.id, "correlations": rows, "sign_reversals": reversals,
                   "diverged": dict(zip(diverged["cell"], diverged["diverged"].astype(int))),
                   "excluded": protocol.excluded,
                   "saturated": validity.saturated_cells(table) if len(table) else []}, f, indent=1)
    columns = [c for c in ("run_dir", *FACTORS, "seed", "initial_fit", "final_fit", *TARGETS.values(), *statistics)
               if c in table]
    protocol.tag(table[columns]).to_csv(os.path.join(out, "fig3_falsification.csv"), index=False)
    protocol.tag(diverged).to_csv(os.path.join(out, "falsification_diverged.csv"), index=False)
    if rows:
        print_table(rows, reversals)
    if statistics:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # polyfit on nearly constant groups
            for target, stem in (("plasticity", "fig3_falsification"), ("plasticity_loss", "fig3_falsification_loss")):
                plot_fig3(table, statistics, rows, reversals, target, os.path.join(out, f"{stem}.png"),
                          options.min_initial_fit)
    print(f"wrote {out}/falsification.json, fig3_falsification.csv, falsification_diverged.csv"
          + (", fig3_falsification.png and fig3_falsification_loss.png" if statistics else ""))


def add_arguments(parser):
    parser.add_argument("--datasets", choices=tuple(sweep.DATASETS), default="paper",
                        help="observation spaces: paper = CIFAR-10 and MNIST (needs internet once), "
                             "offline = MNIST and Fashion-MNIST")
    parser.add_argument("--num-boot", type=int, default=2_000, help="bootstrap resamples for each interval (>= 100)")
    parser.add_argument("--min-initial-fit", type=float, default=validity.MIN_INITIAL_FIT,
                        help="analyse only runs whose fresh network fits at least this fraction of the probe's "
                             "variance, P(theta_0) / b (see common.validity.MIN_INITIAL_FIT; a negative value keeps "
                             "every run with finite fits)")


SWEEP = sweep.Sweep(make_grid=make_grid, presets=PRESETS, analyze=analyze, train=dqn_classification_mdp.train,
                    args_cls=dqn_classification_mdp.Args, add_arguments=add_arguments, description=__doc__)

if __name__ == "__main__":
    sweep.main(SWEEP)
