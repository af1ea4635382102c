"""falsification.py: the grid of Sec 5.2, the Spearman/bootstrap analysis on runs with planted correlations, and
one real tiny cell end to end."""
import json
import os

import numpy as np
import pytest
from scipy.stats import spearmanr

import falsification
from common import sweep


def test_the_grid_has_128_cells_as_documented(capsys):
    assert sweep.run(falsification.SWEEP, ["--list"]) == 0
    names = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert len(names) == 128 == len(set(names))
    cells = [dict(zip(("dataset", "variant", "arch", "optimizer", "seed"), n.split("__"))) for n in names]
    assert {c["dataset"] for c in cells} == {"cifar10", "mnist"}
    assert sum(c["optimizer"] == "sgd" for c in cells) == 32
    assert not any(c["optimizer"] == "sgd" and c["variant"] == "sparse_reward" for c in cells)
    for axis, count in (("variant", 3), ("arch", 2), ("optimizer", 3), ("seed", 4)):
        assert len({c[axis] for c in cells}) == count
    sweep.run(falsification.SWEEP, ["--list", "--datasets", "offline"])
    assert {line.split()[1].split("__")[0] for line in capsys.readouterr().out.splitlines()} == \
        {"mnist", "fashion_mnist"}


def test_spearman_bootstrap_matches_scipy():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, 40).astype(float)  # ties, as in resampled data
    y = x + rng.normal(0, 2, 40)
    rho, (lo, hi) = falsification.spearman_bootstrap(x, y, num_boot=500)
    assert rho == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert lo < rho < hi and hi - lo < 0.8
    assert falsification.spearman_bootstrap(np.ones(5), np.arange(5.0)) == (None, [None, None])


def write_run(root, name, args, status, metrics):
    path = os.path.join(root, "falsification", name)
    os.makedirs(path)
    with open(os.path.join(path, "args.json"), "w") as f:
        json.dump({"exp_name": "falsification", **args}, f)
    if status is not None:
        with open(os.path.join(path, "summary.json"), "w") as f:
            json.dump({"status": status, "steps": 100, "metrics": metrics}, f)


def plant_runs(root, seeds=8):
    """Completed runs where weight_norm reverses sign across datasets and feature_rank across variants, while
    dead_units is positive and dormant_units negative everywhere. A reversal's partner cells share plasticity loss
    and noise and differ only in the sign, so every other grouping sees a correlation of exactly zero."""
    rng = np.random.default_rng(0)
    datasets, variants = ("cifar10", "mnist"), ("true_label", "random_label")
    for arch in ("mlp", "cnn"):
        for optimizer in ("adam", "sgd"):
            for seed in range(seeds):
                loss = rng.normal()
                noise = rng.normal(0, 0.3, size=(4, 2))
                for d, dataset in enumerate(datasets):
                    for v, variant in enumerate(variants):
                        metrics = {"probe/plasticity_loss": loss,
                                   "stats/weight_norm": (1 - 2 * d) * (loss + noise[0, v]),
                                   "stats/feature_rank": (1 - 2 * v) * (loss + noise[1, d]),
                                   "stats/dead_units": loss + noise[2, d],
                                   "stats/dormant_units": -loss + noise[3, v],
                                   "stats/weight_norm/head": (1 - 2 * v) * loss}  # per layer: not analysed
                        args = {"dataset": dataset, "variant": variant, "arch": arch, "optimizer": optimizer}
                        write_run(root, f"{dataset}__{variant}__{arch}__{optimizer}__seed{seed}", args,
                                  "completed", metrics)
    # Unfinished runs, each of which would plant a reversal of dead_units across arch if it were read.
    for i in range(40):
        loss = rng.normal()
        args = {"dataset": "mnist", "variant": "true_label", "arch": "cnn", "optimizer": "adam"}
        metrics = {"probe/plasticity_loss": loss, "stats/dead_units": -20 * loss}
        write_run(root, f"unfinished{i}", args, ("interrupted", "diverged", None)[i % 3], metrics)


def test_analyze_finds_exactly_the_planted_reversals(tmp_path, capsys):
    plant_runs(str(tmp_path))
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path), "--num-boot", "500"]) == 0
    out = capsys.readouterr().out
    assert "128 completed runs; left out 40" in out and "14 status interrupted" in out and "13 status diverged" in out
    result = json.loads((tmp_path / "falsification.json").read_text())
    assert set(result) == {"correlations", "sign_reversals"}
    reversals = {tuple(r[k] for k in ("statistic", "group_by", "positive", "negative"))
                 for r in result["sign_reversals"]}
    assert reversals == {("stats/weight_norm", "dataset", "cifar10", "mnist"),
                         ("stats/feature_rank", "variant", "true_label", "random_label")}
    rows = result["correlations"]
    assert len(rows) == 4 * (2 + 2 + 2 + 2)  # statistics x groups of dataset, variant, arch, optimizer
    for row in rows:
        assert set(row) == {"statistic", "group_by", "group", "n", "spearman", "ci95"}
        assert row["n"] == 64 and row["ci95"][0] <= row["spearman"] <= row["ci95"][1]
    mixed = {(r["statistic"], r["group_by"]): r["spearman"] for r in rows}
    assert mixed["stats/weight_norm", "arch"] == pytest.approx(0, abs=1e-12)  # exact cancellation by design
    assert (tmp_path / "fig3_falsification.png").read_bytes()[:4] == b"\x89PNG"
    assert "positive in cifar10, negative in mnist" in out


def test_one_tiny_cell_end_to_end(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PLASTICITY_DATA_DIR", data_dir)
    argv = ["--tasks", "0", "--preset", "test", "--datasets", "offline", "--runs-dir", str(tmp_path),
            "--set", f"data_dir={data_dir}"]
    assert sweep.run(falsification.SWEEP, argv) == 0
    run_dir = tmp_path / "falsification" / "mnist__true_label__mlp__adam__seed1"
    summary = json.loads((run_dir / "summary.json").read_text())
    args = json.loads((run_dir / "args.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40
    assert (args["exp_name"], args["optimizer"], args["learning_rate"], args["width"]) == \
        ("falsification", "adam", 1e-3, 16)
    assert "probe/plasticity_loss" in summary["metrics"]
    assert sweep.run(falsification.SWEEP, argv) == 0
    assert "completed (40 steps), skipped" in capsys.readouterr().out
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path)]) == 0
    assert "1 completed runs, none left out" in capsys.readouterr().out
