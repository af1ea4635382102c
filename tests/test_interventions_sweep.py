"""interventions_sweep.py: both grids, the analysis of planted finished runs (every figure and its numbers, the
ranking), and real tiny cells end to end."""
import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch

import interventions_plots as plots
import interventions_sweep as iv
from common.analysis import sweep


def listed(capsys, *argv):
    assert sweep.run(iv.SWEEP, ["--list", *argv]) == 0
    return [line.split()[1] for line in capsys.readouterr().out.splitlines()]


def test_interventions_grid_lists_every_arch_and_intervention(capsys):
    names = listed(capsys)
    cells = [dict(zip(iv.AXES["interventions"], n.split("__"))) for n in names]
    assert len(names) == len(set(names)) == 2 * 3 * 4 * 2 * 8 * 3 - 2 * 3 * 2 * 2 * 3  # less ReDo on resnet18/vit
    for axis, expected in (("arch", {"mlp", "cnn", "resnet18", "vit"}), ("output", {"regression", "two_hot"}),
                           ("dataset", {"cifar10", "mnist"}), ("seed", {"seed1", "seed2", "seed3"}),
                           ("intervention", {"none", "reset_last_layer", "layer_norm", "shrink_perturb",
                                             "spectral_norm", "weight_decay", "reset_optimizer", "redo"})):
        assert {c[axis] for c in cells} == expected
    assert not any(c["intervention"] == "redo" and c["arch"] in ("resnet18", "vit") for c in cells)
    assert {n.split("__")[0] for n in listed(capsys, "--datasets", "offline")} == {"mnist", "fashion_mnist"}
    # The two-hot output brings its own optimizer settings (B.1); every regression cell keeps the agent's.
    options = sweep.build_parser(iv.SWEEP).parse_args([])
    for cell in iv.make_grid(options).cells():
        two_hot = cell.labels["output"] == "two_hot"
        assert cell.overrides["two_hot"] == two_hot
        assert cell.overrides.get("learning_rate") == (3e-3 if two_hot else None)
        assert cell.overrides.get("weight_decay") == (1e-5 if cell.labels["intervention"] == "weight_decay" else None)
    assert len(listed(capsys, "--preset", "cpu")) == 2 * 2 * 8 * 2
    assert len(listed(capsys, "--preset", "cpu_discriminating")) == 2 * 2 * 8 * 3


def test_the_figures_order_the_grids_axes_as_the_grid_does():
    assert (plots.INTERVENTIONS, plots.OUTPUTS) == (tuple(iv.INTERVENTIONS), tuple(iv.OUTPUTS))
    assert (plots.ARCHS, plots.VARIANTS) == (iv.ARCHS, iv.VARIANTS)


def test_width_grid_follows_a2(capsys):
    names = listed(capsys, "--grid", "width")
    cells = [dict(zip(iv.AXES["width"], n.split("__"))) for n in names]
    assert len(names) == len(set(names)) == 2 * 12 * 2 * 3
    assert {c["arch_width"] for c in cells} == {f"mlp_w{16 * k}" for k in (1, 2, 4, 8, 12, 16)} | \
        {f"cnn_w{w}" for w in (64, 128, 256, 512, 1024, 2048)}
    assert {c["target_period"] for c in cells} == {"period1000", "period10000"}
    assert {c["variant"] for c in cells} == {"true_label"}


# ------------------------------------------------------------------------------------------- planted finished runs
EFFECT = {"none": 0.30, "layer_norm": -0.10, "shrink_perturb": 0.45, "redo": 0.05}  # probe-loss change, regression
TWO_HOT_SHIFT = -0.2  # the two-hot output lowers every change by this much
REF_SCALE = 2.0  # the reference probe's change in final loss, in units of the paper probe's


def write_run(root, grid, name, args, status="completed", metrics=(), rows=(), curves=None, fit=0.9):
    """A run directory; its summary's probe rows are the metrics rows with a probe loss, each with P = fit * b."""
    path = os.path.join(root, grid, name)
    os.makedirs(path)
    with open(os.path.join(path, "args.json"), "w") as f:
        json.dump({"exp_name": grid, **args}, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    probes = [{**row, "probe/baseline": 0.5, "probe/plasticity": fit * 0.5, "probe_ref/baseline": 0.5,
               "probe_ref/plasticity": 0.7 * 0.5} for row in rows if "probe/final_loss" in row]
    if status is not None:
        with open(os.path.join(path, "summary.json"), "w") as f:
            json.dump({"status": status, "steps": 40, "metrics": dict(metrics), "probes": probes}, f)
    if curves is not None:
        torch.save({"steps": [0, 20, 40], "curves": curves, "plasticity": [0.0, 0.0, 0.0]},
                   os.path.join(path, "probe_curves.pt"))


def plant_intervention_runs(root):
    """Runs whose probe-loss change is EFFECT[intervention] (+ TWO_HOT_SHIFT with a two-hot output) plus a noise
    shared by every intervention of one (variant, arch, seed): paired with no intervention, the noise cancels."""
    rng = np.random.default_rng(0)
    expected = {}
    for variant in ("true_label", "sparse_reward"):
        for arch in ("mlp", "cnn"):
            for seed in (1, 2, 3):
                noise, initial = rng.normal(0, 0.1), 1.0 + rng.random()
                for output in ("regression", "two_hot"):
                    for intervention, effect in EFFECT.items():
                        change = effect + noise + (TWO_HOT_SHIFT if output == "two_hot" else 0.0)
                        expected[variant, arch, output, intervention, seed] = (initial, change)
                        rows = [{"step": 0, "probe/final_loss": initial, "probe_ref/final_loss": initial},
                                {"step": 20, "probe/final_loss": 9.0, "probe_ref/final_loss": 9.0},
                                {"step": 20, "losses/td_loss": 0.5, "charts/accuracy": 0.3},
                                {"step": 40, "losses/td_loss": 0.25, "charts/accuracy": 0.6},
                                {"step": 40, "probe/final_loss": initial + change,
                                 "probe_ref/final_loss": initial + REF_SCALE * change}]
                        if arch == "cnn":  # LayerNorm starts 100 times higher and grows 5-fold, as without it
                            scale = 100.0 if intervention == "layer_norm" else 1.0
                            rows += [{"step": s, "curvature/hessian_top": scale * (10.0 + s)} for s in (0, 20, 40)]
                        args = {"dataset": "mnist", "variant": variant, "arch": arch, "seed": seed}
                        write_run(root, "interventions", f"mnist__{variant}__{arch}__{output}__{intervention}__seed{seed}",
                                  args, metrics={"charts/accuracy": 0.6 + 0.01 * seed}, rows=rows,
                                  curves=torch.linspace(1, 0.1, 20).repeat(3, 1) * seed)
    # One run's probe_curves.pt cut short: Fig 17-18 leave it out with its reason, the run stays elsewhere.
    path = os.path.join(root, "interventions", "mnist__true_label__mlp__regression__layer_norm__seed1",
                        "probe_curves.pt")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    # Unfinished runs that would swing every number if they were read.
    for i, status in enumerate(("interrupted", "diverged", None)):
        rows = [{"step": 0, "probe/final_loss": 0.0}, {"step": 40, "probe/final_loss": 1e6}]
        write_run(root, "interventions", f"mnist__true_label__mlp__regression__none__seed{9 + i}",
                  {"dataset": "mnist", "variant": "true_label", "arch": "mlp", "seed": 9 + i}, status=status, rows=rows)
    return expected


WIDTH_FITS = {16: 0.9, 32: 0.99, 64: 0.9}  # P / b of every probe: width 32's cells are saturated


def plant_width_runs(root):
    expected = {}
    for arch, width in (("mlp", 16), ("mlp", 32), ("cnn", 64)):
        for period in (1_000, 10_000):
            for seed in (1, 2):
                loss = 1.0 / width + period / 1e5 + 0.01 * seed
                expected.setdefault((arch, width, period), []).append(loss)
                rows = [{"step": 0, "probe/final_loss": 1.0}, {"step": 40, "probe/final_loss": 1.0 + loss}]
                args = {"dataset": "mnist", "variant": "true_label", "arch": arch, "width": width,
                        "target_period": period, "seed": seed}
                write_run(root, "width_sweep", f"mnist__true_label__{arch}_w{width}__period{period}__seed{seed}",
                          args, metrics={"probe/plasticity_loss": loss}, rows=rows, fit=WIDTH_FITS[width])
    write_run(root, "width_sweep", "mnist__true_label__mlp_w16__period1000__seed7",
              {"dataset": "mnist", "variant": "true_label", "arch": "mlp", "width": 16, "target_period": 1_000,
               "seed": 7}, status="interrupted", metrics={"probe/plasticity_loss": 1e6})
    # A run whose fresh network fitted a third of the probe: excluded and counted, however large its loss.
    write_run(root, "width_sweep", "mnist__true_label__mlp_w16__period1000__seed8",
              {"dataset": "mnist", "variant": "true_label", "arch": "mlp", "width": 16, "target_period": 1_000,
               "seed": 8}, metrics={"probe/plasticity_loss": 1e6}, fit=0.33,
              rows=[{"step": 0, "probe/final_loss": 1.0}, {"step": 40, "probe/final_loss": 9.0}])
    return expected


FIGURES = ["fig5_width", "fig6_interventions", "fig8_9_interventions_mnist", "fig10_11_probe_losses_mnist",
           "fig12_13_accuracy_mnist", "fig14_hessian", "fig15_16_td_loss_mnist", "fig17_18_probe_curves_mnist"]


def test_analyze_draws_every_figure_with_its_numbers(tmp_path, capsys):
    root = str(tmp_path)
    expected, widths = plant_intervention_runs(root), plant_width_runs(root)
    assert sweep.run(iv.SWEEP, ["analyze", "--runs-dir", root]) == 0
    out = capsys.readouterr().out
    assert "width_sweep: 13 completed/diverged runs read" in out and "skipped 1: 1 status interrupted" in out
    assert "1 runs excluded because a fresh network's probe fit says nothing" in out
    assert "mnist__true_label__mlp_w16__period1000 (1)" in out and "12 completed runs analysed" in out
    assert "interventions: 97 completed/diverged runs read" in out and "96 completed runs analysed" in out
    assert "1 runs diverged (counted, not analysed): mnist__true_label__mlp__regression__none (1)" in out
    for stem in FIGURES:
        assert os.path.getsize(os.path.join(root, f"{stem}.png")) > 1_000, stem
        data = pd.read_csv(os.path.join(root, f"{stem}.csv"))
        assert len(data) and data["protocol"].nunique() == 1, stem
        assert os.path.exists(os.path.join(root, f"protocol_{data['protocol'][0]}.json"))

    # Fig 5: mean over seeds of each (arch, width, period) line, the CNN's width relative to A.2's.
    fig5 = pd.read_csv(os.path.join(root, "fig5_width.csv"))
    assert len(fig5) == len(widths)
    for (arch, width, period), losses in widths.items():
        row = fig5[(fig5["arch"] == arch) & (fig5["width"] == width) & (fig5["target_period"] == period)].iloc[0]
        assert row["mean"] == pytest.approx(np.mean(losses)) and row["seeds"] == 2
        assert row["x"] == (width / 512 if arch == "cnn" else width)
        assert row["initial_fit"] == pytest.approx(WIDTH_FITS[width])  # P(theta_0) / b beside the loss
        assert row["final_fit"] == pytest.approx(WIDTH_FITS[width])
        assert row["saturated"] == (width == 32)  # both fits within 2% of b

    # Fig 6: regression interventions and the two-hot column, averaged over variants then seeds.
    fig6 = pd.read_csv(os.path.join(root, "fig6_interventions.csv"))
    assert set(fig6["column"]) == set(EFFECT) | {"two_hot"}
    for arch in ("mlp", "cnn"):
        for column in ("none", "layer_norm", "two_hot"):
            output, intervention = ("two_hot", "none") if column == "two_hot" else ("regression", column)
            want = np.mean([c for (v, a, o, i, s), (_, c) in expected.items()
                            if (a, o, i) == (arch, output, intervention)])
            assert fig6[(fig6["arch"] == arch) & (fig6["column"] == column)]["mean"].item() == pytest.approx(want)

    # Fig 10-11: the first probe's loss and the last's.
    fig10 = pd.read_csv(os.path.join(root, "fig10_11_probe_losses_mnist.csv"))
    row = fig10[(fig10["arch"] == "cnn") & (fig10["output"] == "two_hot") & (fig10["intervention"] == "redo")]
    runs = [v for (_, a, o, i, _), v in expected.items() if (a, o, i) == ("cnn", "two_hot", "redo")]
    assert row["mean_initial"].item() == pytest.approx(np.mean([init for init, _ in runs]))
    assert row["mean_final"].item() == pytest.approx(np.mean([init + change for init, change in runs]))

    # Fig 12-13 read the final accuracy; Fig 14 the CNN's curvature; Fig 17-18 the saved probe curves.
    accuracy = pd.read_csv(os.path.join(root, "fig12_13_accuracy_mnist.csv"))
    assert accuracy["mean"].to_numpy() == pytest.approx(0.62)
    diverged = accuracy.set_index(["variant", "arch", "treatment"])["diverged"]
    assert diverged["true_label", "mlp", "none"] == 1 and diverged.sum() == 1  # counted where it happened
    ranking = pd.read_csv(os.path.join(root, "interventions_ranking.csv")).set_index("treatment")
    assert ranking.loc["none", "diverged"] == 1 and ranking["diverged"].sum() == 1
    hessian = pd.read_csv(os.path.join(root, "fig14_hessian.csv")).set_index("intervention")
    assert set(hessian.index) == {"none", "layer_norm"}  # growth, not levels: the same 5-fold growth
    assert hessian["mean_log10_growth"].to_numpy() == pytest.approx(np.log10(5.0))
    assert hessian.loc["none", "mean_change"].max() == pytest.approx(40.0)
    assert hessian.loc["layer_norm", "mean_change"].max() == pytest.approx(4000.0)
    assert hessian["seeds_log10_growth"].to_numpy() == pytest.approx(3)
    levels = pd.read_csv(os.path.join(root, "fig14_hessian_levels.csv"))
    assert levels["mean"].max() == 5000.0 and (hessian["probe"] == "paper").all()
    probes = pd.read_csv(os.path.join(root, "fig17_18_probe_curves_mnist.csv"))
    first = probes[(probes["probe_step"] == 0) & (probes["agent_step"] == 20)]
    means = first.set_index(["arch", "intervention"])["mean"]  # curves scaled by the seeds 1, 2, 3
    # true_label without seed 1 (its file is cut short): 2, 3; sparse_reward: 1, 2, 3
    assert means["mlp", "layer_norm"] == pytest.approx(11 / 5)
    assert means.drop(("mlp", "layer_norm")).to_numpy() == pytest.approx(2.0)
    assert "probe_curves.pt is truncated or corrupt" in out and "left out of Fig 17-18" in out

    # The ranking: paired with no intervention, the shared noise cancels and the intervals collapse on the effect.
    ranking = pd.read_csv(os.path.join(root, "interventions_ranking.csv"))
    assert list(ranking["treatment"]) == ["layer_norm", "redo", "two_hot", "none", "shrink_perturb"]
    want = {**{k: v - EFFECT["none"] for k, v in EFFECT.items()}, "two_hot": TWO_HOT_SHIFT}
    for r in ranking.itertuples():
        assert r.mean == pytest.approx(want[r.treatment], abs=1e-12) and r.seeds == 3
        assert r.ci_low == pytest.approx(r.mean, abs=1e-9) and r.ci_high == pytest.approx(r.mean, abs=1e-9)
    assert "1. layer_norm" in out


def test_analyze_with_the_reference_probe_reads_its_own_numbers_and_names_it(tmp_path, capsys):
    """--probe reference reads the probe_ref/ keys (here REF_SCALE times the paper probe's change) and its fits,
    and writes its figures beside the paper probe's, each named for its probe."""
    root = str(tmp_path)
    expected = plant_intervention_runs(root)
    assert sweep.run(iv.SWEEP, ["analyze", "--runs-dir", root, "--probe", "reference"]) == 0
    assert not os.path.exists(os.path.join(root, "fig6_interventions.csv"))
    assert not any(name.startswith(("fig12", "fig14", "fig15", "fig17")) for name in os.listdir(root))
    fig6 = pd.read_csv(os.path.join(root, "fig6_interventions_probe_ref.csv"))
    assert (fig6["probe"] == "reference").all() and fig6["initial_fit"].to_numpy() == pytest.approx(0.7)
    for arch in ("mlp", "cnn"):
        want = REF_SCALE * np.mean([c for (v, a, o, i, s), (_, c) in expected.items()
                                    if (a, o, i) == (arch, "regression", "none")])
        assert fig6[(fig6["arch"] == arch) & (fig6["column"] == "none")]["mean"].item() == pytest.approx(want)
    ranking = pd.read_csv(os.path.join(root, "interventions_ranking_probe_ref.csv")).set_index("treatment")
    assert ranking.loc["layer_norm", "mean"] == pytest.approx(REF_SCALE * (EFFECT["layer_norm"] - EFFECT["none"]))
    assert "reference probe" in capsys.readouterr().out


def test_mean_ci_is_the_student_t_interval():
    mean, low, high, n = plots.mean_ci([1.0, 2.0, 3.0, float("nan")])
    half = 4.302652729911275 / np.sqrt(3)  # t(0.975, 2 dof) from the table; sample std of 1, 2, 3 is 1
    assert (mean, n) == (2.0, 3) and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert np.isnan(plots.mean_ci([5.0])[1])


def test_analyze_without_runs_is_a_usage_error(tmp_path, capsys):
    assert sweep.run(iv.SWEEP, ["analyze", "--runs-dir", str(tmp_path)]) == sweep.EXIT_USAGE
    assert "no completed runs of either grid" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real cells end to end
def test_tiny_cells_run_and_analyze(tmp_path, data_dir, capsys):
    root = str(tmp_path)
    common = ["--preset", "test", "--runs-dir", root, "--set", f"data_dir={data_dir}"]
    assert sweep.run(iv.SWEEP, ["--tasks", "0-3", *common]) == 0
    assert sweep.run(iv.SWEEP, ["--grid", "width", "--tasks", "0", *common]) == 0
    assert sweep.run(iv.SWEEP, ["--tasks", "0", *common]) == 0  # finished: skipped
    assert "completed (40 steps), skipped" in capsys.readouterr().out
    with open(os.path.join(root, "interventions", "mnist__true_label__mlp__two_hot__layer_norm__seed1",
                           "args.json")) as f:
        args = json.load(f)
    assert args["two_hot"] and args["layer_norm"] and args["learning_rate"] == 3e-3
    # The test preset's 5-step probe fits nothing: every run is excluded, so it is unfit for results.
    assert sweep.run(iv.SWEEP, ["analyze", "--runs-dir", root]) == sweep.EXIT_USAGE
    assert "4 runs excluded" in capsys.readouterr().out
    assert sweep.run(iv.SWEEP, ["analyze", "--runs-dir", root, "--min-initial-fit", "-1"]) == 0
    out = capsys.readouterr().out
    assert "4 completed runs analysed" in out and "1 completed runs analysed" in out
    for stem in ("fig5_width", "fig6_interventions", "fig17_18_probe_curves_mnist"):
        assert os.path.exists(os.path.join(root, f"{stem}.png"))


@pytest.mark.parametrize("script, grid", [("interventions.sbatch", "interventions"), ("width_sweep.sbatch", "width")])
def test_sbatch_array_covers_the_grid(script, grid, capsys):
    """The array's range is the paper grid's tasks (a cell's three seeds each); the script hands its grid to the
    sweep's shared task body."""
    with open(os.path.join(os.path.dirname(iv.__file__), "slurm", script)) as f:
        text = f.read()
    last = int(re.search(r"^#SBATCH --array=0-(\d+)$", text, re.M)[1])
    assert last + 1 == len(listed(capsys, "--grid", grid, "--seeds-per-task", "3"))
    assert f'sweep_task.sh" interventions_sweep.py --grid {grid} --seeds-per-task 3 ' in text
    assert ("--set probe_seed_batch=1" in text) == (grid == "width")  # the 4x CNN probes one seed at a time
