"""The figures of ``interventions_sweep.py analyze`` (Fig 5, 6, 8-18): each a PNG with its numbers in a CSV of the
same name beside it, the CSV's ``protocol`` column naming the runs' protocol (``protocol_<id>.json``).

Every function takes a grid's prepared table (``interventions_sweep.prepare``) and its ``common.analysis.validity.Protocol``
(where to write, which protocol, the diverged runs, and ``probe``: which probe's numbers the table holds, paper or
reference). Figures of plasticity loss show the fresh network's probe fit P(theta_0) / b beside it: a loss is a
measurement only where that fit is high. Every figure names its probe in its title and CSV; the reference probe's
files end in ``_probe_ref``.
"""
import itertools
import os

import matplotlib
import numpy as np
import pandas as pd

from common.analysis.validity import SATURATION
from common.runtime.logger import pyplot
from common.science.classification import VARIANTS
from common.science.networks import ARCHITECTURES as ARCHS
from common.science.probe import PROBES

plt = pyplot()

FIG6_COLUMNS = ("none", "reset_last_layer", "layer_norm", "shrink_perturb", "two_hot", "spectral_norm",
                "weight_decay", "reset_optimizer", "redo")  # Fig 6's interventions, then ReDo
# The order of interventions_sweep's INTERVENTIONS and OUTPUTS (tests/test_interventions_sweep.py checks it)
INTERVENTIONS = tuple(column for column in FIG6_COLUMNS if column != "two_hot")
OUTPUTS = ("regression", "two_hot")
HESSIAN_TOP = "curvature/hessian_top"


def mean_ci(values):
    """Mean and 95% Student-t interval of the finite values (interval NaN for fewer than two)."""
    from scipy.stats import t

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan, 0
    half = t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else np.nan
    return v.mean(), v.mean() - half, v.mean() + half, len(v)


def over_seeds(table, keys, value):
    """Average ``value`` within each seed over every other axis, then mean and 95% interval over seeds."""
    per_seed = table.groupby(list(keys) + ["seed"], sort=False)[value].mean().reset_index()
    rows = [dict(zip(keys, group if isinstance(group, tuple) else (group,)),
                 **dict(zip(("mean", "ci_low", "ci_high", "seeds"), mean_ci(runs[value]))))
            for group, runs in per_seed.groupby(list(keys), sort=False)]
    return pd.DataFrame(rows, columns=[*keys, "mean", "ci_low", "ci_high", "seeds"])


def with_fit(data, table, keys):
    """``data`` with the mean probe fits P / b of its runs per ``keys``, the fresh network's (``initial_fit``) and
    the last probe's (``final_fit``), and ``saturated``: both within ``validity.SATURATION`` of b, where the probe is
    too easy to show a loss."""
    fit = table.groupby(list(keys))[["initial_fit", "final_fit"]].mean().reset_index()
    fit["saturated"] = (fit["initial_fit"] >= 1 - SATURATION) & (fit["final_fit"] >= 1 - SATURATION)
    return data.merge(fit, on=list(keys), how="left")


def with_diverged(data, diverged, keys):
    """``data`` with the number of diverged runs per ``keys`` (``diverged``; 0 where none)."""
    if len(diverged):
        counts = diverged.groupby(list(keys)).size().rename("diverged").reset_index()
        data = data.merge(counts, on=list(keys), how="outer")
    else:
        data = data.assign(diverged=0)
    return data.assign(diverged=data["diverged"].fillna(0).astype(int))


def order(values, preferred):
    present = list(dict.fromkeys(v for v in values if isinstance(v, str) or not pd.isna(v)))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def probe_of(protocol):
    """The probe whose numbers ``protocol``'s table holds (``common.science.probe.PROBES``)."""
    return getattr(protocol, "probe", "paper")


def out_name(protocol, stem):
    """``stem`` for the paper's probe, ``<stem>_probe_ref`` for the reference probe: both analyses fit one folder."""
    return stem if probe_of(protocol) == "paper" else f"{stem}_{PROBES[probe_of(protocol)]}"


def save(fig, data, protocol, stem):
    """The figure as <stem>.png, titled with its probe, and the numbers behind it, with their protocol and probe,
    as <stem>.csv (``out_name``)."""
    fig.suptitle(f"{probe_of(protocol)} probe", fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    stem = out_name(protocol, stem)
    fig.savefig(os.path.join(protocol.out_dir, f"{stem}.png"), dpi=110)
    plt.close(fig)
    protocol.tag(data).assign(probe=probe_of(protocol)).to_csv(os.path.join(protocol.out_dir, f"{stem}.csv"),
                                                               index=False)
    print(f"wrote {protocol.out_dir}/{stem}.png and {stem}.csv")


def fig6_runs(table):
    """The runs of Fig 6's columns: every regression run, and the two-hot output without other interventions."""
    return table[(table["output"] == "regression") | (table["intervention"] == "none")]


def plot_fig5(table, protocol):
    """Fig 5: plasticity loss (eq. 5: P at the first probe less P at the last) against width, a line per target
    period and dataset, with 95% intervals over seeds; below it, the fresh network's fit P(theta_0) / b (solid)
    and the final fit (dashed). The CNN's width is relative to A.2's."""
    table = table.assign(x=table["width"] / table["arch"].map({"cnn": 512}).fillna(1))
    keys = ("arch", "x", "width", "target_period", "dataset")
    data = over_seeds(table, keys, "plasticity_loss")
    data = with_fit(data, table, keys)
    archs = order(data["arch"], ARCHS)
    fig, axes = plt.subplots(2, len(archs), figsize=(5.5 * len(archs), 7), squeeze=False, sharex="col")
    for j, arch in enumerate(archs):
        for k, ((period, dataset), line) in enumerate(data[data["arch"] == arch].groupby(["target_period", "dataset"])):
            line = line.sort_values("x")
            label = f"{dataset}, target period {period:,}"
            axes[0, j].plot(line["x"], line["mean"], marker="o", color=f"C{k}", label=label)
            axes[0, j].fill_between(line["x"], line["ci_low"], line["ci_high"], color=f"C{k}", alpha=0.2)
            full = line[line["saturated"].fillna(False).astype(bool)]
            axes[0, j].scatter(full["x"], full["mean"], s=90, facecolors="none", edgecolors="black",
                               label=f"saturated: both fits within {SATURATION:.0%} of b" if k == 0 else None)
            axes[1, j].plot(line["x"], line["initial_fit"], marker="o", color=f"C{k}", label=f"{label}: P(theta_0)/b")
            axes[1, j].plot(line["x"], line["final_fit"], ls="--", color=f"C{k}", label="P(theta_T)/b")
        axes[0, j].set(xscale="log", ylabel="plasticity loss", title=arch)
        axes[1, j].set(xscale="log", ylabel="probe fit P / b", ylim=(0, 1.05),
                       xlabel="hidden units" if arch == "mlp" else "width (x A.2's CNN: 64 channels, 256 units)")
        widths = sorted(data.loc[data["arch"] == arch, "x"].unique())
        axes[1, j].set_xticks(widths, [f"{w:g}" for w in widths])  # the grid's widths, not log-axis decades
        axes[1, j].minorticks_off()
        axes[0, j].legend(fontsize=8)
        axes[1, j].legend(fontsize=6)
    save(fig, data, protocol, "fig5_width")


def heatmap(ax, data, rows, columns, title):
    """Rows arch x columns, coloured by the change in final probe loss (red: plasticity lost); each cell also
    shows the fresh network's fit P(theta_0) / b; grey: no runs."""
    grid, fit = np.full((len(rows), len(columns)), np.nan), np.full((len(rows), len(columns)), np.nan)
    for r in data.itertuples():
        if r.arch in rows and r.column in columns:
            grid[rows.index(r.arch), columns.index(r.column)] = r.mean
            fit[rows.index(r.arch), columns.index(r.column)] = r.initial_fit
    lim = (np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 0.0) or 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        text = "-" if np.isnan(value) else f"{value:+.3f}\nfit {fit[i, j]:.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title, fontsize=10)
    return image


def plot_heatmaps(table, protocol):
    """Fig 6 (all datasets, Fig 6's columns) and Fig 8-9 (per dataset, regression and two-hot outputs)."""
    archs = order(table["arch"], ARCHS)
    fig6 = fig6_runs(table).assign(column=lambda t: t["treatment"])
    data = with_fit(over_seeds(fig6, ("arch", "column"), "probe_change"), fig6, ("arch", "column"))
    diverged = fig6_runs(protocol.diverged).assign(column=lambda t: t["treatment"])
    data = with_diverged(data, diverged, ("arch", "column"))
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.7 * len(archs)))
    columns = order(data["column"], FIG6_COLUMNS)
    fig.colorbar(heatmap(ax, data, archs, columns, "change in final probe loss, last - first probe (mean over "
                                                   "datasets, variants, seeds); fit: P(theta_0) / b"), ax=ax)
    save(fig, data, protocol, "fig6_interventions")
    for dataset, runs in table.groupby("dataset"):
        runs = runs.assign(column=runs["intervention"])
        keys = ("output", "arch", "column")
        data = with_fit(over_seeds(runs, keys, "probe_change"), runs, keys)
        outputs, columns = order(data["output"], OUTPUTS), order(data["column"], INTERVENTIONS)
        fig, axes = plt.subplots(1, len(outputs), figsize=(8 * len(outputs), 1.6 + 0.7 * len(archs)), squeeze=False)
        for ax, output in zip(axes[0], outputs):
            fig.colorbar(heatmap(ax, data[data["output"] == output], archs, columns,
                                 f"{dataset}, {output} output: change in final probe loss"), ax=ax)
        save(fig, data, protocol, f"fig8_9_interventions_{dataset}")


def plot_probe_losses(table, protocol):
    """Fig 10-11: the final probe loss at the first and at the last probe, per arch, output and intervention;
    each bar pair labelled with the fresh network's fit P(theta_0) / b."""
    for dataset, runs in table.groupby("dataset"):
        keys = ("output", "arch", "intervention")
        data = over_seeds(runs, keys, "probe_initial").merge(
            over_seeds(runs, keys, "probe_last"), on=list(keys), suffixes=("_initial", "_final"))
        data = with_fit(data, runs, keys)
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
            for k, fit in enumerate(bars["initial_fit"]):
                ax.annotate(f"{fit:.2f}", (k, 0), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=6)
            ax.set_xticks(x, bars.index, rotation=40, ha="right", fontsize=8)
            ax.set(title=f"{dataset}: {arch}, {output} output (P(theta_0)/b at the bars' foot)",
                   ylabel="final probe loss")
            ax.title.set_fontsize(8)
            ax.legend(fontsize=8)
        save(fig, data, protocol, f"fig10_11_probe_losses_{dataset}")


def plot_accuracy(table, protocol):
    """Fig 12-13: the agent's accuracy over its last log window, per variant, arch and intervention, over the
    completed runs; the number of diverged runs of each bar is written above it (and counted in the CSV)."""
    diverged = fig6_runs(protocol.diverged)
    for dataset, runs in fig6_runs(table).groupby("dataset"):
        keys = ("variant", "arch", "treatment")
        data = over_seeds(runs, keys, "charts/accuracy")
        data = with_diverged(data, diverged[diverged["dataset"] == dataset], keys)
        variants, archs = order(data["variant"], VARIANTS), order(data["arch"], ARCHS)
        columns = order(data["treatment"], FIG6_COLUMNS)
        fig, axes = plt.subplots(1, len(variants), figsize=(7 * len(variants), 4), squeeze=False)
        for ax, variant in zip(axes[0], variants):
            width = 0.8 / len(archs)
            for k, arch in enumerate(archs):
                bars = data[(data["variant"] == variant) & (data["arch"] == arch)].set_index("treatment")
                bars = bars.reindex(columns)
                err = np.abs(np.stack([bars["mean"] - bars["ci_low"], bars["ci_high"] - bars["mean"]]))
                x = np.arange(len(columns)) + (k - (len(archs) - 1) / 2) * width
                ax.bar(x, bars["mean"].fillna(0), width, yerr=np.nan_to_num(err), capsize=2, label=arch)
                for xi, n, top in zip(x, bars["diverged"].fillna(0), bars["mean"].fillna(0)):
                    if n:
                        ax.annotate(f"{int(n)} div.", (xi, top), xytext=(0, 3), textcoords="offset points",
                                    ha="center", fontsize=6, color="red")
            ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=8)
            ax.set(title=f"{dataset}, {variant} (red: diverged runs, not in the bar)",
                   ylabel="agent accuracy (final)", ylim=(0, 1))
            ax.legend(fontsize=8)
        save(fig, data, protocol, f"fig12_13_accuracy_{dataset}")


def curves(runs, series, key):
    """One row per logged value of ``key``: the run's axis values, step and value."""
    rows = []
    for run in runs.itertuples():
        steps, values = series.get(run.run_dir, {}).get(key, ([], []))
        rows += [{"dataset": run.dataset, "variant": run.variant, "arch": run.arch, "output": run.output,
                  "intervention": run.intervention, "treatment": run.treatment, "seed": run.seed,
                  "step": s, "value": v} for s, v in zip(steps, values)]
    return pd.DataFrame(rows)


def plot_td_loss(table, series, protocol):
    """Fig 15-16: TD loss over training, a line per intervention (mean over seeds), per variant and arch."""
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
        save(fig, data.rename(columns={"count": "seeds"}), protocol, f"fig15_16_td_loss_{dataset}")


def hessian_growth(runs, series):
    """Per run, the top Hessian eigenvalue's growth from its first logged point to its last: ``change`` (last -
    first), ``ratio`` (last / first) and ``log10_growth``; levels differ by orders of magnitude between
    architectures (LayerNorm's start far higher), so Fig 14 compares growth, not levels."""
    data = curves(runs, series, HESSIAN_TOP)
    if not len(data):
        return data
    ends = data.sort_values("step").groupby(["dataset", "output", "variant", "intervention", "seed"])["value"]
    growth = ends.agg(first="first", last="last", points="count").reset_index()
    growth = growth[growth["points"] > 1]
    return growth.assign(change=growth["last"] - growth["first"], ratio=growth["last"] / growth["first"],
                         log10_growth=np.log10(growth["last"] / growth["first"]))


def plot_hessian(table, series, protocol):
    """Fig 14: the top Hessian eigenvalue of the TD loss over training, CNN with and without LayerNorm (top), and
    its growth from the first point to the last, log10(last / first) with 95% intervals over seeds (bottom); the
    CSV holds both growths (change and log10 ratio) with their intervals."""
    runs = table[(table["arch"] == "cnn") & table["intervention"].isin(["none", "layer_norm"])]
    data = curves(runs, series, HESSIAN_TOP)
    if not len(data):
        print(f"Fig 14 skipped: no CNN run (with or without LayerNorm) logged {HESSIAN_TOP}")
        return
    levels = data.groupby(["dataset", "output", "variant", "intervention", "step"])["value"].agg(
        ["mean", "count"]).reset_index()
    keys = ("dataset", "output", "variant", "intervention")
    growth = hessian_growth(runs, series)
    summary = over_seeds(growth, keys, "log10_growth").merge(over_seeds(growth, keys, "change"), on=list(keys),
                                                             suffixes=("_log10_growth", "_change"))
    panels = list(levels.groupby(["dataset", "output"]).groups)
    fig, axes = plt.subplots(2, len(panels), figsize=(5.5 * len(panels), 7.5), squeeze=False)
    for j, (dataset, output) in enumerate(panels):
        ax, panel = axes[0, j], levels[(levels["dataset"] == dataset) & (levels["output"] == output)]
        bars = summary[(summary["dataset"] == dataset) & (summary["output"] == output)]
        labels = []
        for k, variant in enumerate(order(panel["variant"], VARIANTS)):
            for intervention, style in (("none", "--"), ("layer_norm", "-")):
                line = panel[(panel["variant"] == variant) & (panel["intervention"] == intervention)]
                ax.plot(line["step"], line["mean"], style, color=f"C{k}", label=f"{variant}, {intervention}")
                bar = bars[(bars["variant"] == variant) & (bars["intervention"] == intervention)]
                if len(bar):
                    mean = bar["mean_log10_growth"].iloc[0]
                    err = [[mean - bar["ci_low_log10_growth"].iloc[0]], [bar["ci_high_log10_growth"].iloc[0] - mean]]
                    axes[1, j].bar(len(labels), mean, yerr=np.nan_to_num(err), color=f"C{k}", capsize=3,
                                   hatch="" if intervention == "layer_norm" else "//")
                    labels.append(f"{variant}, {intervention}")
        ax.set(yscale="log", title=f"CNN on {dataset}, {output} output", xlabel="step",
               ylabel="top Hessian eigenvalue")
        ax.legend(fontsize=7)
        axes[1, j].axhline(0, color="black", lw=0.8)
        axes[1, j].set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        axes[1, j].set(ylabel="growth, log10(last / first)", title="growth over training (95% interval over seeds)")
    save(fig, summary, protocol, "fig14_hessian")
    save_levels = levels.rename(columns={"count": "seeds"})
    protocol.tag(save_levels).assign(probe=probe_of(protocol)).to_csv(
        os.path.join(protocol.out_dir, f"{out_name(protocol, 'fig14_hessian')}_levels.csv"), index=False)


def plot_probe_curves(table, saved_curves, protocol, max_points=100):
    """Fig 17-18: probe learning curves from successive checkpoints, without and with LayerNorm (regression
    output), averaged over seeds and variants; ``saved_curves`` is ``{run_dir: probe_curves.pt contents}``."""
    runs = table[(table["output"] == "regression") & table["intervention"].isin(["none", "layer_norm"])]
    rows = []
    for run in runs.itertuples():
        saved = saved_curves.get(run.run_dir)
        if saved is None:
            continue
        every = max(1, saved["curves"].shape[1] // max_points)
        for agent_step, curve in zip(saved["steps"], saved["curves"]):
            rows += [{"dataset": run.dataset, "arch": run.arch, "intervention": run.intervention,
                      "agent_step": agent_step, "probe_step": k, "loss": float(curve[k])}
                     for k in range(0, len(curve), every)]
    if not rows:
        print("Fig 17-18 skipped: no readable probe_curves.pt in the runs without and with LayerNorm")
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
        save(fig, by_dataset.rename(columns={"count": "runs"}), protocol, f"fig17_18_probe_curves_{dataset}")
