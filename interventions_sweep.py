"""Solutions to plasticity loss (Sec 6.1-6.2, B.1-B.2): width scaling (Fig 5) and architecture x intervention
(Fig 6, 8-18), as two grids of DQN agents from ``dqn_classification_mdp.py``.

    python interventions_sweep.py --grid width --list                   # Fig 5: widths x target periods x datasets
    python interventions_sweep.py --grid interventions --list           # Sec 6.2: archs x interventions x outputs ...
    python interventions_sweep.py --grid interventions --task-id 0      # one cell (Slurm: slurm/interventions.sbatch)
    python interventions_sweep.py --grid interventions --tasks 0-63 --preset cpu    # the reduced CPU grid
    python interventions_sweep.py analyze --runs-dir runs               # every figure, its numbers, a ranking

``analyze`` reads the completed and diverged runs of both grids under ``--runs-dir``, one protocol at a time, with
the probe ``--probe`` names (paper: the agent's own optimizer, Sec 3.1; reference: one optimizer, rate and loss for
every arm, ``dqn_classification_mdp.Args.ref_probe``), which every figure and CSV names,
leaves out (and counts per cell) the runs whose fresh network could not fit the probe (``common.analysis.validity``), writes
each figure (``interventions_plots.py``) as a PNG with its numbers in a CSV of the same name beside it, and prints
the interventions ranked by their change in plasticity loss against no intervention, with 95% t-intervals over
seeds and their diverged runs.
"""
if __name__ == "__main__":  # a signal while the libraries below import ends the process with 75, as one later does
    from common.runtime import early_signals

    early_signals.install()

import argparse
import functools
import os

import dqn_classification_mdp
from common.analysis import results, sweep, validity
from common.errors import check
from common.science.classification import VARIANTS  # Sec 3.2; B.1's 'easy' and 'hard' are the first and last
from common.science.probe import PROBES, probe_key

# --------------------------------------------------------------------------------------------------------- the grids
MLP_WIDTHS = tuple(("mlp", 16 * k) for k in (1, 2, 4, 8, 12, 16))  # A.2: "a base width of 16 ... factors 1 ... 16"
# The agent's --width is in MLP units and scales A.2's CNN by width / 512 (64 channels, 256 dense units at 512).
# Sec 6.1 scales the CNN "to the limit of a single GPU's memory" without naming factors: 1/8 to 4x A.2's CNN. At 4x
# (256 channels, 1,024 units: 128M parameters on MNIST, 178M on CIFAR-10) the probe's 10 vmapped copies with their
# gradients and Adam moments need about 21 GB (29 GB) by our arithmetic; not measured.
CNN_WIDTHS = tuple(("cnn", int(512 * f)) for f in (0.125, 0.25, 0.5, 1, 2, 4))
ARCHS = ("mlp", "cnn", "resnet18", "vit")  # Sec 6.2, A.2
# Sec 6.2's interventions (and ReDo, Sokar et al. 2023), as Args fields of the agent. The agent's defaults set their
# coefficients (shrink & perturb's, ReDo's tau) and apply the periodic ones at every target-network update (Sec 6.2).
INTERVENTIONS = {
    "none": {},
    "reset_last_layer": {"reset_last_layer": True},  # Sec 6.2, after Nikishin et al. (2022)
    "layer_norm": {"layer_norm": True},  # Ba et al. (2016)
    "shrink_perturb": {"shrink_perturb": True},  # Ash & Adams (2020)
    "spectral_norm": {"spectral_norm": True},  # first layer, Gogianu et al. (2021)
    "weight_decay": {"weight_decay": 1e-5},  # Sec 6.2: "l2 penalty coefficient to 1e-5"
    "reset_optimizer": {"reset_optimizer": True},  # B.1: "resetting only the optimizer state"
    "redo": {"redo": True},  # beyond the paper: the intervention most used since (Sokar et al., 2023)
}
# Fig 8-9 cross every intervention with a regression and a two-hot output; the two-hot cell with no other
# intervention is Fig 6's "two-hot" column. B.1: two-hot "required significantly different optimizer
# hyperparameters" without giving them. Those of the categorical DQN C51 (Bellemare et al., 2017: Adam 2.5e-4,
# epsilon 0.01 / 32) let a fresh network fit only 0.08 of the probe in 2,000 steps, and the regression agents'
# Adam 1e-3 0.54-0.60 (MLP, width 64: benchmarks/RESULTS.md); Adam 3e-3 fits 0.90-0.95, so the two-hot cells use
# A.1's Adam at 3e-3: measured, not cited.
OUTPUTS = {
    "regression": {"two_hot": False},
    "two_hot": {"two_hot": True, "optimizer": "adam", "learning_rate": 3e-3},
}
# Axis values per preset; "paper" takes its datasets from --datasets. ReDo recycles units of a Sequential torso
# only (the agent's common.science.interventions.redo), so the grid leaves out ReDo on ResNet-18 and the ViT.
GRIDS = {
    "width": {  # Fig 5; the variant is not given: the true-label MDP of Fig 4
        "paper": {"variant": ("true_label",), "arch_width": MLP_WIDTHS + CNN_WIDTHS,
                  "target_period": (1_000, 10_000), "seed": (1, 2, 3)},  # Sec 5.1 says 1,000 and A.2 10,000: both
        "cpu": {"dataset": ("mnist",), "variant": ("true_label",), "arch_width": MLP_WIDTHS + CNN_WIDTHS[:2],
                "target_period": (50, 500), "seed": (1, 2, 3)},  # 60 and 6 target updates in 3,000 steps
        "cpu_discriminating": {"dataset": ("mnist",), "variant": ("true_label",), "arch_width": MLP_WIDTHS,
                               "target_period": (50,), "seed": (1, 2, 3)},
        "test": {"dataset": ("mnist",), "variant": ("true_label",), "arch_width": MLP_WIDTHS[:2],
                 "target_period": (10, 20), "seed": (1,)},
    },
    "interventions": {  # Fig 6, 8-18: 2 x 3 x 4 x 2 x 8 x 3 = 1,152 cells less 72 ReDo cells
        "paper": {"variant": VARIANTS, "arch": ARCHS, "output": tuple(OUTPUTS), "intervention": tuple(INTERVENTIONS),
                  "seed": (1, 2, 3)},
        "cpu": {"dataset": ("mnist",), "variant": ("true_label",), "arch": ("mlp", "cnn"), "output": tuple(OUTPUTS),
                "intervention": tuple(INTERVENTIONS), "seed": (1, 2)},  # 64 cells; the sparse-reward MDP needs
        # "several tens of thousands of steps" (B.1) to show anything, and ResNet-18 and the ViT a GPU
        "cpu_discriminating": {"dataset": ("mnist",), "variant": ("true_label",), "arch": ("mlp", "cnn"),
                               "output": tuple(OUTPUTS), "intervention": tuple(INTERVENTIONS), "seed": (1, 2, 3)},
        "test": {"dataset": ("mnist",), "variant": ("true_label",), "arch": ("mlp",), "output": tuple(OUTPUTS),
                 "intervention": ("none", "layer_norm"), "seed": (1,)},
    },
}
GRID_NAMES = {"width": "width_sweep", "interventions": "interventions"}  # run directories and exp_name
AXES = {"width": ("dataset", "variant", "arch_width", "target_period", "seed"),
        "interventions": ("dataset", "variant", "arch", "output", "intervention", "seed")}

# Run sizes: Args values for every cell (cells set the fields above).
PRESETS = {
    "paper": {},  # Args' defaults: Sec 5.1 / 6.2, 100 iterations of 1,000 steps, target every 1,000, probe every 5,000
    "cpu": {  # both grids on a few CPU cores, far from converged.
        # Keeps the paper's probe (Sec 3.1: 2,000 steps of the agent's optimizer, fresh state) with 3 targets (A.2:
        # 10), the agent, the interventions at every target update (Sec 6.2) and the curvature of Fig 14.
        # Scales: 3,000 agent steps (Sec 6.2: 100k) with the target network every 250 (the width grid sets its
        # own periods), probes at the start, middle and end only (0, 1.5k, 3k), 512 probe inputs, width 64 (the
        # CNN at 1/8 of A.2's: 8 channels, 32 units), and the grids' cells (GRIDS). Cost per cell:
        # benchmarks/RESULTS.md.
        "cuda": False, "width": 64, "total_steps": 3_000, "learning_starts": 500, "target_period": 250,
        "log_every": 100, "probe_every": 1_500, "probe_steps": 2_000, "probe_targets": 3, "probe_inputs": 512,
    },
    "cpu_discriminating": {  # the cpu preset where its agents lose plasticity (benchmarks/RESULTS.md, calibration).
        # Keeps the cpu preset's agent, run length (3,000 steps), probe schedule (0, 1.5k, 3k), 2,000-step probes
        # with 3 targets, and interventions at every target update (Sec 6.2). Scales: the target network every 50
        # steps (60 updates in the run, as the paper's 100 in 100k; cpu: 12), 1,024 probe inputs for the paper's
        # probe, and the reference probe on 1,024 fixed distinct images, where a fresh width-64 network fits
        # 0.81-0.91 of b (the paper's probe, drawing from a 500-transition replay at step 0, 0.91-0.99). Without
        # intervention the MLP loses 0.35 of b of its reference fit, the CNN 0.44. 3 seeds.
        "cuda": False, "width": 64, "total_steps": 3_000, "learning_starts": 500, "target_period": 50,
        "log_every": 100, "probe_every": 1_500, "probe_steps": 2_000, "probe_targets": 3, "probe_inputs": 1_024,
        "ref_probe_inputs": 1_024,
    },
    "test": sweep.TEST_PRESET,
}


def make_grid(options):
    kind, preset = options.grid, options.preset
    values = {"dataset": sweep.DATASETS[options.datasets], **GRIDS[kind][preset]}
    if kind == "width":
        return sweep.Grid(GRID_NAMES[kind], {
            "dataset": sweep.values("dataset", values["dataset"]),
            "variant": sweep.values("variant", values["variant"]),
            "arch_width": {f"{arch}_w{width}": {"arch": arch, "width": width} for arch, width in values["arch_width"]},
            "target_period": sweep.values("target_period", values["target_period"], label=lambda p: f"period{p}"),
            "seed": sweep.values("seed", values["seed"], label=lambda s: f"seed{s}")})
    axes = {"dataset": sweep.values("dataset", values["dataset"]),
            "variant": sweep.values("variant", values["variant"]),
            "arch": sweep.values("arch", values["arch"]),
            "output": {k: OUTPUTS[k] for k in values["output"]},
            "intervention": {k: INTERVENTIONS[k] for k in values["intervention"]},
            "seed": sweep.values("seed", values["seed"], label=lambda s: f"seed{s}")}
    exclude = tuple({"arch": arch, "intervention": "redo"} for arch in ("resnet18", "vit")
                    if arch in axes["arch"] and "redo" in axes["intervention"])
    return sweep.Grid(GRID_NAMES[kind], axes, exclude=exclude)


# ---------------------------------------------------------------------------------------------------- reading runs
def prepare(table, kind, probe="paper"):
    """A grid's runs with their cell's axis labels (output, intervention) and, for the probe ``probe``
    (``common.science.probe.PROBES``), their first and last probe loss (``probe_initial``, ``probe_last``,
    ``probe_change``: Fig 6's colour; the loss is the mean over targets of the fits' last, Sec 3.1) from
    summary.json's probe rows, and their plasticity loss P(theta_0) - P(theta_T) at the last probe
(``plasticity_loss``, Fig 5)."""
    import numpy as np

    table = table.copy()
    key = functools.partial(probe_key, probe)
    labels = table["run_dir"].map(lambda run: dict(zip(AXES[kind], os.path.basename(run).split("__"))))
    for axis in ("output", "intervention"):
        if axis in AXES[kind]:
            table[axis] = labels.map(lambda cell: cell.get(axis))
    losses = table["probes"].map(lambda rows: [validity.number(r.get(key("final_loss"))) for r in rows or []])
    table["probe_initial"] = losses.map(lambda v: v[0] if v else np.nan)
    table["probe_last"] = losses.map(lambda v: v[-1] if len(v) > 1 else np.nan)
    table["probe_change"] = table["probe_last"] - table["probe_initial"]
    table["plasticity_loss"] = table[key("plasticity_loss")] if key("plasticity_loss") in table else np.nan
    table["probe"] = probe
    if kind == "interventions":
        table["treatment"] = [treatment(output, intervention)
                              for output, intervention in zip(table["output"], table["intervention"])]
    return table


def treatment(output, intervention):
    """Fig 6's column: the intervention, with the two-hot output as one more ('two_hot', or 'two_hot+<other>')."""
    if output == "regression":
        return intervention
    return "two_hot" if intervention == "none" else f"two_hot+{intervention}"


def load(runs_dir, kind, options):
    """The protocols of one grid's completed and diverged runs (``common.analysis.validity.load_protocols``), each table
    prepared; completed runs with fewer than two probes are left out and counted."""
    grid_dir = os.path.join(runs_dir, GRID_NAMES[kind])
    if not os.path.isdir(grid_dir):
        print(f"{kind} grid: no {grid_dir}")
        return []
    varied = make_grid(argparse.Namespace(grid=kind, preset="paper", datasets="paper")).varied_fields()
    protocols = validity.load_protocols(grid_dir, GRID_NAMES[kind], varied, options.min_initial_fit, runs_dir,
                                        PROBES[options.probe])
    for protocol in protocols:
        protocol.probe = options.probe  # the figures and CSVs name it (interventions_plots.save)
        runs = prepare(protocol.runs, kind, options.probe)
        few = runs["probe_change"].isna()
        if few.any():
            print(f"  {validity.describe_by_cell(sorted(runs['run_dir'][few]), 'left out with fewer than two probes')}")
        protocol.runs, protocol.diverged = runs[~few].reset_index(drop=True), prepare(protocol.diverged, kind,
                                                                                     options.probe)
    return [p for p in protocols if len(p.runs)]


def read_each(table, name, left_out_of):
    """``{run_dir: contents of name}`` of the table's runs (``common.analysis.results.read_each``); a run whose file is
    unreadable is left out of ``left_out_of`` only, with its reason."""
    loaded, failed = results.read_each(table["run_dir"], name)
    for run_dir, reason in failed.items():
        print(f"  {run_dir}: {reason}; left out of {left_out_of}")
    return loaded


def read_series(table):
    """``{run_dir: {key: ([steps], [values])}}`` from each run's metrics.jsonl, ascending, a step logged twice
    (after a resume) keeping its last value; a run whose file is unreadable is left out with its reason."""
    series = {}
    for run_dir, rows in read_each(table, "metrics.jsonl", "the curves").items():
        by_key = {}
        for row in rows:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    by_key.setdefault(key, {})[row["step"]] = float(value)
        series[run_dir] = {key: (sorted(v), [v[s] for s in sorted(v)]) for key, v in by_key.items()}
    return series


def rank_interventions(table, protocol):
    """Fig 6's interventions ranked by their change in final probe loss less that of no intervention in the same
    dataset, variant, arch and seed (negative: less plasticity loss), with 95% intervals over seeds, and how
    many runs of each diverged (they are not in the mean: an intervention's failures must not vanish)."""
    from interventions_plots import fig6_runs, out_name, over_seeds, with_diverged, with_fit

    runs = fig6_runs(table)
    keys = ["dataset", "variant", "arch", "seed"]
    base = runs[runs["treatment"] == "none"].groupby(keys)["probe_change"].mean()
    runs = runs.assign(vs_none=runs["probe_change"].values - base.reindex(runs.set_index(keys).index).values)
    data = over_seeds(runs, ("treatment",), "vs_none").merge(
        over_seeds(runs, ("treatment",), "probe_change"), on="treatment", suffixes=("", "_change"))
    data = with_diverged(with_fit(data, runs, ("treatment",)), fig6_runs(protocol.diverged), ("treatment",))
    data = data.sort_values("mean", na_position="last").reset_index(drop=True)
    name = out_name(protocol, "interventions_ranking")
    protocol.tag(data).assign(probe=protocol.probe).to_csv(os.path.join(protocol.out_dir, f"{name}.csv"), index=False)
    print(f"\ninterventions ranked by change in final probe loss (last - first probe; {protocol.probe} probe) minus "
          "no intervention's;"
          "\nnegative = less plasticity loss; 95% t-intervals over seeds; fit = P(theta_0) / b:")
    for rank, r in data.iterrows():
        print(f"  {rank + 1:>2}. {r['treatment']:<18} {r['mean']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
              f"   (change {r['mean_change']:+.4f}, {r['seeds']:.0f} seeds, fit {r['initial_fit']:.2f}, "
              f"{r['diverged']} diverged)")
    print(f"wrote {protocol.out_dir}/{name}.csv")


def analyze(runs_dir, options):
    import interventions_plots as plots

    check(options.min_initial_fit <= 1, f"--min-initial-fit is a fit P / b: at most 1, got {options.min_initial_fit}")
    width, interventions = load(runs_dir, "width", options), load(runs_dir, "interventions", options)
    check(width or interventions, f"no completed runs of either grid under {runs_dir} whose probe measures "
          "plasticity")
    for protocol in width:
        plots.plot_fig5(protocol.runs, protocol)
    for protocol in interventions:
        table = protocol.runs
        plots.plot_heatmaps(table, protocol)
        plots.plot_probe_losses(table, protocol)
        rank_interventions(table, protocol)
        if options.probe != "paper":
            print("Fig 12-18 do not read a probe's fits (Fig 17-18's saved curves are the paper probe's): "
                  "analyze with --probe paper draws them")
            continue
        plots.plot_accuracy(table, protocol)
        series = read_series(plots.fig6_runs(table))
        plots.plot_td_loss(table, series, protocol)
        plots.plot_hessian(table, series, protocol)
        curves = read_each(table[table["intervention"].isin(["none", "layer_norm"])], "probe_curves.pt", "Fig 17-18")
        plots.plot_probe_curves(table, curves, protocol)


def add_arguments(parser):
    parser.add_argument("--grid", choices=tuple(GRIDS), default="interventions",
                        help="width: Fig 5's width x target period grid; interventions: Sec 6.2's arch x "
                             "intervention x output grid (analyze reads both)")
    sweep.add_analysis_arguments(parser)


SWEEP = sweep.Sweep(make_grid=make_grid, presets=PRESETS, analyze=analyze, train=dqn_classification_mdp.train,
                    args_cls=dqn_classification_mdp.Args, add_arguments=add_arguments, description=__doc__)

if __name__ == "__main__":
    sweep.main(SWEEP)
