"""Solutions to plasticity loss (Sec 6.1-6.2, B.1-B.2): width scaling (Fig 5) and architecture x intervention
(Fig 6, 8-18), as two grids of DQN agents from ``dqn_classification_mdp.py``.

    python interventions_sweep.py --grid width --list                   # Fig 5: widths x target periods x datasets
    python interventions_sweep.py --grid interventions --list           # Sec 6.2: archs x interventions x outputs ...
    python interventions_sweep.py --grid interventions --task-id 0      # one cell (Slurm: slurm/interventions.sbatch)
    python interventions_sweep.py --grid interventions --tasks 0-63 --preset cpu    # the reduced CPU grid
    python interventions_sweep.py analyze --runs-dir runs               # every figure, its numbers, a ranking

``analyze`` reads the completed runs of both grids under ``--runs-dir`` and writes each figure as a PNG with its
numbers in a CSV of the same name beside it, and prints the interventions ranked by their change in plasticity
loss against no intervention, with 95% t-intervals over seeds.
"""
import itertools
import json
import os

import dqn_classification_mdp
from common import sweep
from common.errors import check

# --------------------------------------------------------------------------------------------------------- the grids
DATASETS = {
    "paper": ("cifar10", "mnist"),  # Fig 8 / 10 / 12 use CIFAR-10, Fig 9 / 11 / 13 MNIST
    "offline": ("mnist", "fashion_mnist"),  # without internet CIFAR-10 cannot be fetched: a deviation
}
MLP_WIDTHS = tuple(("mlp", 16 * k) for k in (1, 2, 4, 8, 12, 16))  # A.2: "a base width of 16 ... factors 1 ... 16"
# The agent's --width is in MLP units and scales A.2's CNN by width / 512 (64 channels, 256 dense units at 512).
# Sec 6.1 scales the CNN "to the limit of a single GPU's memory" without naming factors: 1/8 to 4x A.2's CNN. At 4x
# (256 channels, 1,024 units: 128M parameters on MNIST, 178M on CIFAR-10) the probe's 10 vmapped copies with their
# gradients and Adam moments need about 21 GB (29 GB) by our arithmetic; not measured.
CNN_WIDTHS = tuple(("cnn", int(512 * f)) for f in (0.125, 0.25, 0.5, 1, 2, 4))
ARCHS = ("mlp", "cnn", "resnet18", "vit")  # Sec 6.2, A.2
VARIANTS = ("true_label", "random_label", "sparse_reward")  # Sec 3.2; B.1's 'easy' and 'hard' are the first/last
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
# hyperparameters" without giving them; we take those of the categorical DQN, C51 (Bellemare et al., 2017): Adam,
# learning rate 2.5e-4 (a quarter of the regression agents' 1e-3) and epsilon 0.01 / 32 (batch size 32).
OUTPUTS = {
    "regression": {"two_hot": False},
    "two_hot": {"two_hot": True, "optimizer": "adam", "learning_rate": 2.5e-4, "adam_eps": 0.01 / 32},
}
# Axis values per preset; "paper" takes its datasets from --datasets. ReDo recycles units of a Sequential torso
# only (the agent's common.interventions.redo), so the grid leaves out ReDo on ResNet-18 and the ViT.
GRIDS = {
    "width": {  # Fig 5; the variant is not given: the true-label MDP of Fig 4
        "paper": {"variant": ("true_label",), "arch_width": MLP_WIDTHS + CNN_WIDTHS,
                  "target_period": (1_000, 10_000), "seed": (1, 2, 3)},  # Sec 5.1 says 1,000 and A.2 10,000: both
        "cpu": {"dataset": ("mnist",), "variant": ("true_label",), "arch_width": MLP_WIDTHS + CNN_WIDTHS[:2],
                "target_period": (50, 500), "seed": (1, 2)},  # 60 and 6 target updates in 3,000 steps
        "test": {"dataset": ("mnist",), "variant": ("true_label",), "arch_width": MLP_WIDTHS[:2],
                 "target_period": (10, 20), "seed": (1,)},
    },
    "interventions": {  # Fig 6, 8-18: 2 x 3 x 4 x 2 x 8 x 3 = 1,152 cells less 72 ReDo cells
        "paper": {"variant": VARIANTS, "arch": ARCHS, "output": tuple(OUTPUTS), "intervention": tuple(INTERVENTIONS),
                  "seed": (1, 2, 3)},
        "cpu": {"dataset": ("mnist",), "variant": ("true_label",), "arch": ("mlp", "cnn"), "output": tuple(OUTPUTS),
                "intervention": tuple(INTERVENTIONS), "seed": (1, 2)},  # 64 cells; the sparse-reward MDP needs
        # "several tens of thousands of steps" (B.1) to show anything, and ResNet-18 and the ViT a GPU
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
    "cpu": {  # the falsification study's cpu sizes (3,000 steps, probes at 0, 1k, 2k, 3k) at width 64, where the
        # CNN is 1/8 of A.2's (8 channels, 32 units; A.2's costs about 0.2 s a step on one core). Measured at load
        # average 4-6 on 2 shared cores: 54 s an MLP cell (two-hot 99 s), 309 s a CNN cell (two-hot 360 s), so the
        # 64 intervention cells take about 2 hours in two processes of one thread there; far from converged.
        "cuda": False, "width": 64, "total_steps": 3_000, "learning_starts": 500, "target_period": 250,
        "log_every": 100, "probe_every": 1_000, "probe_steps": 200, "probe_targets": 4, "probe_inputs": 512,
    },
    "test": {  # seconds per cell, for the tests
        "cuda": False, "num_images": 1_000, "width": 16, "total_steps": 40, "learning_starts": 32,
        "buffer_size": 1_000, "target_period": 10, "log_every": 10, "probe_every": 20, "probe_steps": 5,
        "probe_targets": 2, "probe_inputs": 64, "probe_batch_size": 16,
    },
}


def make_grid(options):
    kind, preset = options.grid, options.preset
    values = {"dataset": DATASETS[options.datasets], **GRIDS[kind][preset]}
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
PROBE_LOSS = "probe/final_loss"  # mean over targets of the probe's last loss (Sec 3.1)


def read_metrics(run_dir):
    """metrics.jsonl as {key: ([steps], [values])}, ascending; a step logged twice (after a resume) keeps its last."""
    rows = {}
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                for key, value in row.items():
                    if key != "step" and isinstance(value, (int, float)):
                        rows.setdefault(key, {})[row["step"]] = float(value)
    except OSError:
        pass
    return {key: (sorted(by_step), [by_step[s] for s in sorted(by_step)]) for key, by_step in rows.items()}


def load_runs(runs_dir, kind):
    """The completed runs of one grid: a table (args, final metrics, the run's path, its cell's axis labels, first
    and last probe loss) and {run path: metrics series}. Prints what it left out."""
    import numpy as np

    grid_dir = os.path.join(runs_dir, GRID_NAMES[kind])
    if not os.path.isdir(grid_dir):
        print(f"{kind} grid: no {grid_dir}")
        return [], {}
    table, skipped = sweep.collect_runs(grid_dir, exp_name=GRID_NAMES[kind])
    if not len(table):
        print(f"{kind} grid: {sweep.describe_skipped(0, skipped)}")
        return table, {}
    table["run"] = grid_dir + os.sep + table["run"]
    labels = table["run"].map(lambda run: dict(zip(AXES[kind], os.path.basename(run).split("__"))))
    for axis in ("output", "intervention"):
        if axis in AXES[kind]:
            table[axis] = labels.map(lambda cell: cell.get(axis))
    series = {run: read_metrics(run) for run in table["run"]}
    probes = table["run"].map(lambda run: series[run].get(PROBE_LOSS, ([], []))[1])
    table["probe_initial"] = probes.map(lambda losses: losses[0] if losses else np.nan)
    table["probe_last"] = probes.map(lambda losses: losses[-1] if len(losses) > 1 else np.nan)
    table["probe_change"] = table["probe_last"] - table["probe_initial"]  # Fig 6's colour
    no_probes = int(table["probe_change"].isna().sum())
    if no_probes:
        skipped["with fewer than two probes"] = no_probes
    print(f"{kind} grid: {sweep.describe_skipped(len(table) - no_probes, skipped)}")
    return table[table["probe_change"].notna()].reset_index(drop=True), series


def treatment(row):
    """Fig 6's column: the intervention, with the two-hot output as one more ('two_hot', or 'two_hot+<other>')."""
    if row["output"] == "regression":
        return row["intervention"]
    return "two_hot" if row["intervention"] == "none" else f"two_hot+{row['intervention']}"


def mean_ci(values):
    """Mean and 95% Student-t interval of the finite values (interval NaN for fewer than two)."""
    import numpy as np
    from scipy.stats import t

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan, 0
    half = t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else np.nan
    return v.mean(), v.mean() - half, v.mean() + half, len(v)


def over_seeds(table, keys, value):
    """Average ``value`` within each seed over every other axis, then mean and 95% interval over seeds."""
    import pandas as pd

    per_seed = table.groupby(list(keys) + ["seed"], sort=False)[value].mean().reset_index()
    rows = [dict(zip(keys, group if isinstance(group, tuple) else (group,)),
                 **dict(zip(("mean", "ci_low", "ci_high", "seeds"), mean_ci(runs[value]))))
            for group, runs in per_seed.groupby(list(keys), sort=False)]
    return pd.DataFrame(rows)


def order(values, preferred):
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def save(fig, data, runs_dir, stem):
    """The figure as <stem>.png and the numbers behind it as <stem>.csv, side by side."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(os.path.join(runs_dir, f"{stem}.png"), dpi=110)
    plt.close(fig)
    data.to_csv(os.path.join(runs_dir, f"{stem}.csv"), index=False)
    print(f"wrote {stem}.png and {stem}.csv")


# --------------------------------------------------------------------------------------------------------- figures
FIG6_COLUMNS = ("none", "reset_last_layer", "layer_norm", "shrink_perturb", "two_hot", "spectral_norm",
                "weight_decay", "reset_optimizer", "redo")  # Fig 6's interventions, then ReDo


def fig6_runs(table):
    """The runs of Fig 6's columns: every regression run, and the two-hot output without other interventions."""
    return table[(table["output"] == "regression") | (table["intervention"] == "none")]


def plot_fig5(table, runs_dir):
    """Fig 5: plasticity loss (eq. 5: P at the first probe less P at the last) against width, a line per target
    period and dataset, with 95% intervals over seeds; the CNN's width relative to A.2's."""
    import matplotlib.pyplot as plt

    table = table.assign(x=table["width"] / table["arch"].map({"cnn": 512}).fillna(1))
    data = over_seeds(table, ("arch", "x", "width", "target_period", "dataset"), "probe/plasticity_loss")
    archs = order(data["arch"], ARCHS)
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 4), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for (period, dataset), line in data[data["arch"] == arch].groupby(["target_period", "dataset"]):
            line = line.sort_values("x")
            ax.plot(line["x"], line["mean"], marker="o", label=f"{dataset}, target period {period:,}")
            ax.fill_between(line["x"], line["ci_low"], line["ci_high"], alpha=0.2)
        ax.set(xscale="log", ylabel="plasticity loss", title=arch,
               xlabel="hidden units" if arch == "mlp" else "width (x A.2's CNN: 64 channels, 256 units)")
        ax.legend(fontsize=8)
    save(fig, data, runs_dir, "fig5_width")


def heatmap(ax, data, rows, columns, title):
    """Rows arch x columns, coloured by the change in final probe loss (red: plasticity lost); grey: no runs."""
    import matplotlib
    import numpy as np

    grid = np.full((len(rows), len(columns)), np.nan)
    for r in data.itertuples():
        grid[rows.index(r.arch), columns.index(r.column)] = r.mean
    lim = (np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 0.0) or 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, "-" if np.isnan(value) else f"{value:+.3f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title, fontsize=10)
    return image


def plot_heatmaps(table, runs_dir):
    """Fig 6 (all datasets, Fig 6's columns) and Fig 8-9 (per dataset, regression and two-hot outputs)."""
    import matplotlib.pyplot as plt

    archs = order(table["arch"], ARCHS)
    fig6 = fig6_runs(table)
    data = over_seeds(fig6.assign(column=fig6["treatment"]), ("arch", "column"), "probe_change")
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(archs)))
    columns = order(data["column"], FIG6_COLUMNS)
    fig.colorbar(heatmap(ax, data, archs, columns, "change in final probe loss, last - first probe "
                                                   "(mean over datasets, variants, seeds)"), ax=ax)
    save(fig, data, runs_dir, "fig6_interventions")
    for dataset, runs in table.groupby("dataset"):
        data = over_seeds(runs.assign(column=runs["intervention"]), ("output", "arch", "column"), "probe_change")
        outputs = order(data["output"], OUTPUTS)
        columns = order(data["column"], INTERVENTIONS)
        fig, axes = plt.subplots(1, len(outputs), figsize=(8 * len(outputs), 1.4 + 0.6 * len(archs)), squeeze=False)
        for ax, output in zip(axes[0], outputs):
            fig.colorbar(heatmap(ax, data[data["output"] == output], archs, columns,
                                 f"{dataset}, {output} output: change in final probe loss"), ax=ax)
        save(fig, data, runs_dir, f"fig8_9_interventions_{dataset}")


def plot_probe_losses(table, runs_dir):
    """Fig 10-11: the final probe loss at the first and at the last probe, per arch, output and intervention."""
    import matplotlib.pyplot as plt
    import numpy as np

    for dataset, runs in table.groupby("dataset"):
        keys = ("output", "arch", "intervention")
        data = over_seeds(runs, keys, "probe_initial").merge(
            over_seeds(runs, keys, "probe_last"), on=list(keys), suffixes=("_initial", "_final"))
        outputs, archs = order(data["output"], OUTPUTS), order(data["arch"], ARCHS)
        fig, axes = plt.subplots(len(outputs), len(archs), figsize=(4.5 * len(archs), 3.6 * len(outputs)),
                                 squeeze=False)
        for (i, output), (j, arch) in itertools.product(enumerate(outputs), enumerate(archs)):
            ax, bars = axes[i, j], data[(data["output"] == output) & (data["arch"] == arch)]
            bars = bars.set_index("intervention").reindex(order(bars["intervention"], INTERVENTIONS))
            x = np.arange(len(bars))
            for offset, when in ((-0.2, "initial"), (0.2, "final")):
                mean = bars[f"mean_{when}"]
                err = np.abs(np.stack([mean - bars[f"ci_low_{when}"], bars[f"ci_high_{when}"] - mean]))
                ax.bar(x + offset, mean, 0.4, yerr=np.nan_to_num(err), label=f"{when} probe", capsize=2)
            ax.set_xticks(x, bars.index, rotation=40, ha="right", fontsize=8)
            ax.set(title=f"{dataset}: {arch}, {output} output", ylabel="final probe loss")
            ax.legend(fontsize=8)
        save(fig, data, runs_dir, f"fig10_11_probe_losses_{dataset}")


def plot_accuracy(table, runs_dir):
    """Fig 12-13: the agent's accuracy over its last log window, per variant, arch and intervention."""
    import matplotlib.pyplot as plt
    import numpy as np

    for dataset, runs in fig6_runs(table).groupby("dataset"):
        data = over_seeds(runs, ("variant", "arch", "treatment"), "charts/accuracy")
        variants, archs = order(data["variant"], VARIANTS), order(data["arch"], ARCHS)
        columns = order(data["treatment"], FIG6_COLUMNS)
        fig, axes = plt.subplots(1, len(variants), figsize=(7 * len(variants), 4), squeeze=False)
        for ax, variant in zip(axes[0], variants):
            width = 0.8 / len(archs)
            for k, arch in enumerate(archs):
                bars = data[(data["variant"] == variant) & (data["arch"] == arch)].set_index("treatment")
                bars = bars.reindex(columns)
                err = np.abs(np.stack([bars["mean"] - bars["ci_low"], bars["ci_high"] - bars["mean"]]))
                ax.bar(np.arange(len(columns)) + (k - (len(archs) - 1) / 2) * width, bars["mean"], width,
                       yerr=np.nan_to_num(err), capsize=2, label=arch)
            ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=8)
            ax.set(title=f"{dataset}, {variant}", ylabel="agent accuracy (final)", ylim=(0, 1))
            ax.legend(fontsize=8)
        save(fig, data, runs_dir, f"fig12_13_accuracy_{dataset}")


def curves(runs, series, key):
    """One row per logged value of ``key``: the run's axis values, step and value."""
    import pandas as pd

    rows = []
    for run in runs.itertuples():
        steps, values = series[run.run].get(key, ([], []))
        rows += [{"dataset": run.dataset, "variant": run.variant, "arch": run.arch, "output": run.output,
                  "intervention": run.intervention, "treatment": run.treatment, "seed": run.seed,
                  "step": s, "value": v} for s, v in zip(steps, values)]
    return pd.DataFrame(rows)


def plot_td_loss(table, series, runs_dir):
    """Fig 15-16: TD loss over training, a line per intervention (mean over seeds), per variant and arch."""
    import matplotlib.pyplot as plt

    for dataset, runs in fig6_runs(table).groupby("dataset"):
        data = curves(runs, series, "losses/td_loss")
        if not len(data):
            continue
        data = data.groupby(["variant", "arch", "treatment", "step"])["value"].agg(["mean", "count"]).reset_index()
        variants, archs = order(data["variant"], VARIANTS), order(data["arch"], ARCHS)
        fig, axes = plt.subplots(len(variants), len(archs), figsize=(4.5 * len(archs), 3.4 * len(variants)),
                                 squeeze=False)
        for (i, variant), (j, arch) in itertools.product(enumerate(variants), enumerate(archs)):
            panel = data[(data["variant"] == variant) & (data["arch"] == arch)]
            for name in order(panel["treatment"], FIG6_COLUMNS):
                line = panel[panel["treatment"] == name]
                axes[i, j].plot(line["step"], line["mean"], lw=1, label=name)
            axes[i, j].set(yscale="log", title=f"{dataset}, {variant}: {arch}", xlabel="step", ylabel="TD loss")
        axes[0, -1].legend(fontsize=7)
        save(fig, data.rename(columns={"count": "seeds"}), runs_dir, f"fig15_16_td_loss_{dataset}")


HESSIAN_TOP = "curvature/hessian_top"


def plot_hessian(table, series, runs_dir):
    """Fig 14: the top Hessian eigenvalue of the TD loss over training, CNN with and without LayerNorm."""
    import matplotlib.pyplot as plt

    runs = table[(table["arch"] == "cnn") & table["intervention"].isin(["none", "layer_norm"])]
    data = curves(runs, series, HESSIAN_TOP)
    if not len(data):
        print(f"Fig 14 skipped: no CNN run (with or without LayerNorm) logged {HESSIAN_TOP}")
        return
    data = data.groupby(["dataset", "output", "variant", "intervention", "step"])["value"].agg(
        ["mean", "count"]).reset_index()
    panels = list(data.groupby(["dataset", "output"]).groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (dataset, output) in zip(axes[0], panels):
        panel = data[(data["dataset"] == dataset) & (data["output"] == output)]
        for k, variant in enumerate(order(panel["variant"], VARIANTS)):
            for intervention, style in (("none", "--"), ("layer_norm", "-")):
                line = panel[(panel["variant"] == variant) & (panel["intervention"] == intervention)]
                ax.plot(line["step"], line["mean"], style, color=f"C{k}", label=f"{variant}, {intervention}")
        ax.set(yscale="log", title=f"CNN on {dataset}, {output} output", xlabel="step",
               ylabel="top Hessian eigenvalue")
        ax.legend(fontsize=7)
    save(fig, data.rename(columns={"count": "seeds"}), runs_dir, "fig14_hessian")


def plot_probe_curves(table, runs_dir, max_points=100):
    """Fig 17-18: probe learning curves from successive checkpoints, without and with LayerNorm (regression
    output), averaged over seeds and variants; from each run's probe_curves.pt."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import torch

    runs = table[(table["output"] == "regression") & table["intervention"].isin(["none", "layer_norm"])]
    rows = []
    for run in runs.itertuples():
        path = os.path.join(run.run, "probe_curves.pt")
        if not os.path.exists(path):
            continue
        saved = torch.load(path, weights_only=True)
        every = max(1, saved["curves"].shape[1] // max_points)
        for agent_step, curve in zip(saved["steps"], saved["curves"]):
            rows += [{"dataset": run.dataset, "arch": run.arch, "intervention": run.intervention,
                      "agent_step": agent_step, "probe_step": k, "loss": float(curve[k])}
                     for k in range(0, len(curve), every)]
    if not rows:
        print("Fig 17-18 skipped: no probe_curves.pt in the runs without and with LayerNorm")
        return
    keys = ["dataset", "arch", "intervention", "agent_step", "probe_step"]
    data = pd.DataFrame(rows).groupby(keys)["loss"].agg(["mean", "count"]).reset_index()
    for dataset, by_dataset in data.groupby("dataset"):
        archs = order(by_dataset["arch"], ARCHS)
        fig, axes = plt.subplots(2, len(archs), figsize=(4.5 * len(archs), 7), squeeze=False)
        for (i, intervention), (j, arch) in itertools.product(enumerate(("none", "layer_norm")), enumerate(archs)):
            panel = by_dataset[(by_dataset["arch"] == arch) & (by_dataset["intervention"] == intervention)]
            steps = sorted(panel["agent_step"].unique())
            for k, step in enumerate(steps):
                line = panel[panel["agent_step"] == step]
                axes[i, j].plot(line["probe_step"], line["mean"], lw=1,
                                color=plt.cm.viridis(k / max(1, len(steps) - 1)), label=f"step {step:,}")
            axes[i, j].set(yscale="log", title=f"{dataset}: {arch}, {intervention}", xlabel="probe step",
                           ylabel="probe loss")
            if 0 < len(steps) <= 12:
                axes[i, j].legend(fontsize=6)
        save(fig, by_dataset.rename(columns={"count": "runs"}), runs_dir, f"fig17_18_probe_curves_{dataset}")


def rank_interventions(table, runs_dir):
    """Fig 6's interventions ranked by their change in final probe loss less that of no intervention in the same
    dataset, variant, arch and seed (negative: less plasticity loss), with 95% intervals over seeds."""
    runs = fig6_runs(table)
    keys = ["dataset", "variant", "arch", "seed"]
    base = runs[runs["treatment"] == "none"].groupby(keys)["probe_change"].mean()
    runs = runs.assign(vs_none=runs["probe_change"].values - base.reindex(runs.set_index(keys).index).values)
    data = over_seeds(runs, ("treatment",), "vs_none").merge(
        over_seeds(runs, ("treatment",), "probe_change"), on="treatment", suffixes=("", "_change"))
    data = data.sort_values("mean", na_position="last").reset_index(drop=True)
    data.to_csv(os.path.join(runs_dir, "interventions_ranking.csv"), index=False)
    print("\ninterventions ranked by change in final probe loss (last - first probe) minus no intervention's;"
          "\nnegative = less plasticity loss; 95% t-intervals over seeds:")
    for rank, r in data.iterrows():
        print(f"  {rank + 1:>2}. {r['treatment']:<18} {r['mean']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
              f"   (change {r['mean_change']:+.4f}, {int(r['seeds'])} seeds)")
    print(f"wrote {runs_dir}/interventions_ranking.csv")


def analyze(runs_dir, options):
    import matplotlib

    matplotlib.use("Agg")
    width, _ = load_runs(runs_dir, "width")
    table, series = load_runs(runs_dir, "interventions")
    check(len(width) or len(table), f"no completed runs of either grid under {runs_dir}")
    if len(width):
        plot_fig5(width, runs_dir)
    if len(table):
        table["treatment"] = table.apply(treatment, axis=1)
        plot_heatmaps(table, runs_dir)
        plot_probe_losses(table, runs_dir)
        plot_accuracy(table, runs_dir)
        plot_td_loss(table, series, runs_dir)
        plot_hessian(table, series, runs_dir)
        plot_probe_curves(table, runs_dir)
        rank_interventions(table, runs_dir)


def add_arguments(parser):
    parser.add_argument("--grid", choices=tuple(GRIDS), default="interventions",
                        help="width: Fig 5's width x target period grid; interventions: Sec 6.2's arch x "
                             "intervention x output grid (analyze reads both)")
    parser.add_argument("--datasets", choices=tuple(DATASETS), default="paper",
                        help="observation spaces of the paper preset: paper = CIFAR-10 and MNIST (needs internet "
                             "once), offline = MNIST and Fashion-MNIST")


SWEEP = sweep.Sweep(make_grid=make_grid, presets=PRESETS, analyze=analyze, train=dqn_classification_mdp.train,
                    args_cls=dqn_classification_mdp.Args, add_arguments=add_arguments, description=__doc__)

if __name__ == "__main__":
    sweep.main(SWEEP)
