"""Falsifying simple explanations of plasticity loss (Sec 5.2, Fig 3): 128 DQN agents, statistics vs plasticity.

Each cell of the grid below trains one agent of ``dqn_classification_mdp.py`` (Sec 5.1: target network every 1,000
steps, a probe every 5,000). ``analyze`` reads the runs of one protocol whose fresh network could fit the probe
(``common.analysis.validity``) and asks, for every statistic the agent logs (``stats/...``: weight norm, weight rank, feature
rank, dead units, ...) and every grouping of the runs (the learning problem, dataset x variant, and each single
axis), whether the statistic's final value correlates with the plasticity loss (the headline) and with P(theta_T)
inside the cells of each group, where only the seed differs. Each correlation is tested by permuting the outcome
among each cell's seeds, and Holm's correction holds the family-wise error over every test (``common.science.inference``).
Two groups of one grouping significant with opposite signs after the correction are a sign reversal: the statistic
cannot be a cause of plasticity loss on its own (Sec 5.2, after Buhlmann 2020).

    python falsification.py --list                                    # the 128 cells (--preset cpu: 160)
    python falsification.py --task-id 0                               # one cell (Slurm: slurm/falsification.sbatch)
    python falsification.py --tasks 0-127 --preset cpu --datasets offline   # everything, one after another
    python falsification.py analyze --runs-dir runs                   # falsification.json, fig3_falsification.png
"""
if __name__ == "__main__":  # a signal while the libraries below import ends the process with 75, as one later does
    from common.runtime import early_signals

    early_signals.install()

import argparse
import itertools
import json
import os

import numpy as np
import pandas as pd

import dqn_classification_mdp
from common.analysis import results, sweep, validity
from common.errors import check
from common.runtime.logger import pyplot
from common.science import inference, probe
from common.science.classification import VARIANTS  # the three MDPs of Sec 3.2

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
SEEDS_BY_PRESET = {"cpu": (1, 2, 3, 4, 5)}
"""presets whose grid has other seeds than ``SEEDS``. The tests are within cells, so the seeds of a cell are the
replicates: at 5 seeds a cell's exact permutation distribution has 5! = 120 orderings (4 seeds: 24), which lets a
group of a few cells reach significance after the correction over every test (see ``common.science.inference``)."""
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
        "seed": sweep.values("seed", SEEDS_BY_PRESET.get(getattr(options, "preset", None), SEEDS),
                             label=lambda s: f"seed{s}"),
    }, exclude=EXCLUDE)


# ------------------------------------------------------------------------------------------------------ analysis
FACTORS = ("dataset", "variant", "arch", "optimizer")  # args.json fields; a cell is one combination, its runs seeds
# Sec 5.2 asks within the learning problem (dataset x variant) as well as along single axes and over everything.
GROUPINGS = {"all": (), "problem": ("dataset", "variant"), **{f: (f,) for f in FACTORS}}
PROBES = {
    "paper": {"plasticity_loss": "probe/plasticity_loss", "plasticity": "probe/plasticity"},
    "reference": {"plasticity_loss": "probe_ref/plasticity_loss", "plasticity": "probe_ref/plasticity"},
}
"""outcome -> summary key, for each probe; the first outcome is the headline. The plasticity loss P(theta_0) -
P(theta_T) (eq. 5) nets out how well a fresh network fits the probe, which P(theta_T), Fig 3's axis, carries with
it. The paper's probe uses the agent's optimizer (Sec 3.1); the reference probe one optimizer for every arm."""
INSTRUMENT_VARIES = {"paper": ("optimizer",), "reference": ()}
"""groupings whose groups each probe measures with different instruments: the paper's probe fits with each arm's
own optimizer, and plain SGD is not scale-invariant, so a weight-norm effect on an SGD probe is partly mechanical"""


def cell_labels(table):
    """Each run's cell: its values of every factor (only the seed differs within a cell)."""
    return table[list(FACTORS)].astype(str).agg("__".join, axis=1)


def group_name(group):
    return "/".join(map(str, group)) if isinstance(group, tuple) else str(group)


def group_members(table):
    """[(grouping, group, positions of its runs in the table)] for every grouping and group, sorted."""
    out = []
    for group_by, keys in GROUPINGS.items():
        groups = table.groupby(list(keys), sort=True).indices if keys else {"all": np.arange(len(table))}
        out += [(group_by, group_name(group), positions) for group, positions in sorted(groups.items())]
    return out


def within_cell_tests(table, statistics, targets, seed=0, num_permutations=inference.NUM_PERMUTATIONS):
    """One row per outcome, statistic, grouping and group: runs, cells, the within-cell rank correlation and its
    permutation p-value (``common.science.inference.within_cell_test``), or why the group is not tested. Each row's test
    object is under ``"_test"``."""
    rows = []
    codes = inference.cell_codes(cell_labels(table))
    members = group_members(table)
    for (target_name, target), statistic in itertools.product(targets.items(), statistics):
        x, y = table[statistic].to_numpy(float), table[target].to_numpy(float)
        usable = np.isfinite(x) & np.isfinite(y)
        for group_by, group, positions in members:
            positions = positions[usable[positions]]
            informative = int((np.bincount(codes[positions]) > 1).sum()) if len(positions) else 0
            row = {"statistic": statistic, "target": target_name, "group_by": group_by, "group": group,
                   "runs": len(positions), "cells": informative, "rho": None, "p": None, "exact": None,
                   "untested": None}
            test = None
            if informative < inference.MIN_CELLS:
                row["untested"] = f"fewer than {inference.MIN_CELLS} cells of 2 or more runs"
            else:
                test = inference.within_cell_test(x[positions], y[positions], codes[positions], seed=seed + len(rows),
                                                  num_permutations=num_permutations)
                if test.scale == 0:
                    row["untested"], test = "no variation within any cell", None
                else:
                    row.update(rho=test.rho, p=test.p, exact=test.exact)
            rows.append({**row, "_test": test})
    return rows


def analyse(table, statistics, probe="paper", alpha=inference.ALPHA, seed=0,
            num_permutations=inference.NUM_PERMUTATIONS):
    """The falsification analysis of a table of runs (one row per run: the factors, the probe's outcomes, the
    statistics): every within-cell test, Holm's correction over all of them, the smallest |rho| each could call
    significant, the sign reversals after correction, and the statistics that are one finding. Returns the dict
    that ``falsification.json`` holds (less what only the run directories know)."""
    targets = PROBES[probe]
    rows = within_cell_tests(table, statistics, targets, seed, num_permutations)
    adjusted = inference.holm([r["p"] for r in rows])
    family = sum(p is not None for p in adjusted)
    for row, p_adjusted in zip(rows, adjusted):
        test = row.pop("_test")
        row["p_adjusted"] = p_adjusted
        row["significant"] = p_adjusted is not None and p_adjusted <= alpha
        # Holm's first step is Bonferroni's: a |rho| at or above this is significant whatever the other tests give.
        row["detectable_rho"] = inference.critical_rho(test, alpha / family) if test is not None else None
        row["probe_differs"] = row["group_by"] in INSTRUMENT_VARIES[probe]
    # Statistics that order the seeds alike within a group's cells are one finding there (weight norm and distance
    # from init under Adam, say), even where they differ elsewhere in the grid.
    cells = cell_labels(table).to_numpy()
    same_in = {}
    for group_by, group, positions in group_members(table):
        clusters, _ = inference.same_findings({s: table[s].to_numpy(float)[positions] for s in statistics},
                                              cells[positions])
        same_in[group_by, group] = {s: c for c in clusters for s in c}
    for row in rows:
        row["same_finding_as"] = [s for s in same_in[row["group_by"], row["group"]][row["statistic"]]
                                  if s != row["statistic"]]
    reversals = inference.sign_reversals(rows, alpha)
    findings = {}
    for r in reversals:
        r["probe_differs"] = r["group_by"] in INSTRUMENT_VARIES[probe]
        # one finding: the statistics that are one with this one in both of the reversal's groups
        members = sorted(set(same_in[r["group_by"], r["positive"]][r["statistic"]])
                         & set(same_in[r["group_by"], r["negative"]][r["statistic"]]))
        key = (" = ".join(members), r["target"], r["group_by"], r["positive"], r["negative"])
        findings.setdefault(key, {"finding": key[0], "statistics": [], "target": key[1], "group_by": key[2],
                                  "positive": key[3], "negative": key[4], "probe_differs": r["probe_differs"]})
        findings[key]["statistics"].append(r["statistic"])
    same, joined = inference.same_findings({s: table[s] for s in statistics}, cells)
    groups = [{"group_by": group_by, "group": group, "runs": len(positions),
               "cells": len(set(cells[positions]))} for group_by, group, positions in group_members(table)]
    return {"probe": probe, "targets": targets, "headline": next(iter(targets)),
            "test": "within-cell Spearman correlation; outcome permuted among each cell's seeds (exact up to "
                    f"{inference.EXACT_SEEDS} seeds per cell, else {num_permutations} Monte Carlo orderings)",
            "correction": "holm", "alpha": alpha, "family_size": family, "min_cells": inference.MIN_CELLS,
            "groups": groups, "tests": rows, "sign_reversals": reversals, "findings": list(findings.values()),
            "same_finding": {"groups": same, "threshold": inference.SAME_FINDING,
                             "within_cell_rank_correlation": joined,
                             "within_groups": [{"group_by": g, "group": n, "statistics": c}
                                               for (g, n), clusters in same_in.items()
                                               for c in sorted({tuple(c) for c in clusters.values()}) if len(c) > 1]}}


COLOURS = {1: "tab:blue", -1: "tab:red", 0: "0.6"}  # significant positive, significant negative, neither


def panel_grouping(result, members, target):
    """The grouping to show a finding's panel by: its reversal's, else the learning problem (the paper's unit)."""
    mine = [f for f in result["findings"] if f["target"] == target and set(f["statistics"]) & set(members)]
    if mine:
        f = mine[0]
        return f["group_by"], f"REVERSAL: + in {f['positive']}, - in {f['negative']}"
    return "problem", "no reversal after correction"


def plot_fig3(table, result, target_name, path, min_initial_fit):
    """Fig 3, the quantity and test of ``analyse``: per finding (statistics that are one finding share a panel),
    each run's outcome against its statistic, both as deviations from their cell's mean (only variation inside a
    cell enters the test), one marker per group of the panel's grouping, coloured by that group's test after
    Holm's correction; the last panel shows each run's P(theta_0) / b, the fresh fit that makes the probe a
    measurement."""
    plt = pyplot()

    target = result["targets"][target_name]
    findings = result["same_finding"]["groups"]
    panels = len(findings) + 1
    cols = min(4, panels)
    fig, axes = plt.subplots(-(-panels // cols), cols, figsize=(4.2 * cols, 3.8 * -(-panels // cols)), squeeze=False)
    tests = {(r["statistic"], r["group_by"], r["group"]): r for r in result["tests"] if r["target"] == target_name}
    cells = cell_labels(table)
    for ax, members in zip(axes.flat, findings):
        statistic = members[0]
        group_by, caption = panel_grouping(result, members, target_name)
        if group_by in INSTRUMENT_VARIES[result["probe"]]:
            caption += " (each group's probe uses its own optimizer)"
        usable = table[table[statistic].notna() & table[target].notna()]
        centred = usable[[statistic, target]] - usable[[statistic, target]].groupby(cells[usable.index]).transform(
            "mean")
        keys = list(GROUPINGS[group_by])
        for marker, (group, runs) in zip(itertools.cycle("os^Dv<>P"), usable.groupby(keys, sort=True)):
            row = tests.get((statistic, group_by, group_name(group)))
            sign = 0 if row is None or not row["significant"] else int(np.sign(row["rho"]))
            label = group_name(group) + ("" if row is None or row["rho"] is None else
                                         f": rho {row['rho']:+.2f}, p adj {row['p_adjusted']:.2g}")
            ax.scatter(centred.loc[runs.index, statistic], centred.loc[runs.index, target], s=14, alpha=0.75,
                       marker=marker, color=COLOURS[sign], label=label)
        others = f" (one finding with {', '.join(members[1:])})" if len(members) > 1 else ""
        ax.set(xlabel=f"{statistic}{others}\nfinal, minus its cell's mean",
               ylabel=f"{target_name.replace('_', ' ')} minus cell mean", title=f"by {group_by}: {caption}")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    ax = axes.flat[len(findings)]
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
    fig.suptitle(f"{target_name.replace('_', ' ')} ({result['probe']} probe) vs each statistic, within cells: "
                 f"Spearman within cells, outcome permuted among each cell's seeds, Holm over "
                 f"{result['family_size']} tests at {result['alpha']:g}. Blue / red: significant + / - after "
                 f"correction; grey: not", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(v, spec="+.2f"):
    return "-" if v is None else format(v, spec)


def print_results(result):
    """Runs and cells per group, then per outcome one line per statistic and group: rho, raw and adjusted p, the
    smallest detectable |rho|; then the reversals after correction, merged into findings."""
    print(f"\ntest: {result['test']}; Holm's correction over all {result['family_size']} tests "
          f"(family-wise error {result['alpha']:g}); groups of fewer than {result['min_cells']} cells not tested; "
          f"probe: {result['probe']}")
    print("runs and cells per group: " + "; ".join(f"{g['group_by']}={g['group']} {g['runs']}/{g['cells']}"
                                                   for g in result["groups"]))
    same = [" = ".join(g) for g in result["same_finding"]["groups"] if len(g) > 1]
    if same:
        print("one finding each (within-cell rank correlation >= "
              f"{result['same_finding']['threshold']}): " + "; ".join(same))
    table = pd.DataFrame([{"outcome": r["target"], "statistic": r["statistic"].removeprefix("stats/"),
                           "group": f"{r['group_by']}={r['group']}", "runs": r["runs"], "cells": r["cells"],
                           "rho": fmt(r["rho"]), "p": fmt(r["p"], ".2g"), "p adj": fmt(r["p_adjusted"], ".2g"),
                           "detectable |rho|": fmt(r["detectable_rho"], ".2f"),
                           "": ("SIGNIFICANT" if r["significant"] else "") + (r["untested"] or "")
                           + "".join(f" = {t.removeprefix('stats/')}" for t in r["same_finding_as"])
                           + (" (probe optimizer differs)" if r["probe_differs"] and r["significant"] else "")}
                          for r in result["tests"]])
    for outcome in result["targets"]:
        print(f"\n{outcome}" + (" (headline)" if outcome == result["headline"] else "") + ":")
        print(table[table["outcome"] == outcome].drop(columns="outcome").to_string(index=False))
    print(f"\n{len(result['findings'])} sign reversals after correction (two groups of one grouping significant "
          "with opposite signs), statistics that are one finding merged:")
    for f in result["findings"]:
        print(f"  {f['finding']} vs {f['target']} by {f['group_by']}: positive in {f['positive']}, negative in "
              f"{f['negative']}" + (" (each group's probe uses its own optimizer)" if f["probe_differs"] else ""))


def analyze(runs_dir, options):
    check(0 < options.alpha < 1, f"--alpha is a probability: between 0 and 1, got {options.alpha}")
    check(options.num_permutations >= 1_000, f"--num-permutations must be at least 1000, got "
                                             f"{options.num_permutations}")
    check(options.min_initial_fit <= 1, f"--min-initial-fit is a fit P / b: at most 1, got {options.min_initial_fit}")
    # before the validity filter, which would exclude every run that lacks the probe's fits without saying why
    recorded = results.read_runs(runs_dir, include=("completed",), exp_name="falsification").table
    missing = [key for key in PROBES[options.probe].values() if len(recorded) and key not in recorded]
    check(not missing, f"--probe {options.probe}: the runs record no {', '.join(missing)}; train them with that "
                       f"probe, or analyse another (--probe {' or '.join(p for p in PROBES if p != options.probe)})")
    varied = make_grid(argparse.Namespace(datasets="paper")).varied_fields()
    protocols = validity.load_protocols(runs_dir, "falsification", varied, options.min_initial_fit, runs_dir,
                                        prefix=probe.PROBES[options.probe])  # that probe's fits decide validity
    protocols = [p for p in protocols if len(p.runs) or len(p.diverged)]
    check(protocols, f"no completed falsification runs under {runs_dir} whose probe measures plasticity")
    for protocol in protocols:
        analyze_protocol(protocol, options)


def analyze_protocol(protocol, options):
    out, table = protocol.out_dir, protocol.runs
    diverged = protocol.diverged.assign(cell=protocol.diverged["run_dir"].map(validity.cell_name))
    diverged = diverged.groupby("cell").size().rename("diverged").reset_index() if len(diverged) else \
        pd.DataFrame(columns=["cell", "diverged"])
    targets = PROBES[options.probe]
    # Whole-network statistics; per-layer breakdowns (stats/weight_norm/<layer>) differ between architectures.
    statistics = sorted(c for c in table.columns if c.startswith("stats/") and c.count("/") == 1)
    if not statistics:
        print("the runs log no stats/... metrics: nothing to correlate (the agent logs them at every probe)")
    result = analyse(table, statistics, options.probe, options.alpha, num_permutations=options.num_permutations) \
        if len(table) and statistics else None
    with open(os.path.join(out, "falsification.json"), "w") as f:
        json.dump({"protocol": protocol.id, **(result or {}),
                   "diverged": dict(zip(diverged["cell"], diverged["diverged"].astype(int))),
                   "excluded": protocol.excluded,
                   "saturated": validity.saturated_cells(table) if len(table) else []}, f, indent=1,
                  default=lambda v: None)
    columns = [c for c in ("run_dir", *FACTORS, "seed", "initial_fit", "final_fit", *targets.values(), *statistics)
               if c in table]
    protocol.tag(table[columns]).to_csv(os.path.join(out, "fig3_falsification.csv"), index=False)
    protocol.tag(diverged).to_csv(os.path.join(out, "falsification_diverged.csv"), index=False)
    written = ["falsification.json", "fig3_falsification.csv", "falsification_diverged.csv"]
    if result:
        protocol.tag(pd.DataFrame(result["tests"])).to_csv(os.path.join(out, "falsification_tests.csv"), index=False)
        print_results(result)
        for target, stem in (("plasticity_loss", "fig3_falsification_loss"), ("plasticity", "fig3_falsification")):
            plot_fig3(table, result, target, os.path.join(out, f"{stem}.png"), options.min_initial_fit)
        written += ["falsification_tests.csv", "fig3_falsification_loss.png", "fig3_falsification.png"]
    print(f"wrote {out}/" + ", ".join(written))


def add_arguments(parser):
    sweep.add_analysis_arguments(parser)
    parser.add_argument("--alpha", type=float, default=inference.ALPHA,
                        help="family-wise error rate over every test the analysis reports (Holm's correction)")
    parser.add_argument("--num-permutations", type=int, default=inference.NUM_PERMUTATIONS,
                        help="Monte Carlo orderings per test, where a cell holds too many seeds to enumerate them")


SWEEP = sweep.Sweep(make_grid=make_grid, presets=PRESETS, analyze=analyze, train=dqn_classification_mdp.train,
                    args_cls=dqn_classification_mdp.Args, add_arguments=add_arguments, description=__doc__)

if __name__ == "__main__":
    sweep.main(SWEEP)
