"""falsification.py: the grid of Sec 5.2, the Spearman/bootstrap analysis on runs with planted correlations, and
one real tiny cell end to end."""
import itertools
import json
import os
import shutil

import numpy as np
import pandas as pd
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


def test_pooled_correlation_is_spearman_and_its_bootstrap_resamples_whole_cells():
    rng = np.random.default_rng(3)
    cells = [f"c{i // 4}" for i in range(40)]  # 10 cells of 4 seeds
    x = rng.integers(0, 6, 40).astype(float)  # ties, as in resampled data
    y = x + rng.normal(0, 2, 40)
    rho, (lo, hi) = falsification.rank_correlation(x, y, cells, "pooled", num_boot=300, seed=5)
    assert rho == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    # The same draws by hand: each resample takes 10 cells with replacement, each with all four of its runs.
    draws = np.random.default_rng(5).integers(10, size=(300, 10))
    boot = [spearmanr(np.concatenate([x[4 * c:4 * c + 4] for c in d]),
                      np.concatenate([y[4 * c:4 * c + 4] for c in d])).statistic for d in draws]
    assert [lo, hi] == pytest.approx(list(np.percentile(boot, [2.5, 97.5])), abs=1e-12)
    assert falsification.rank_correlation(np.ones(8), np.arange(8.0), cells[:8]) == (None, [None, None])


def within_cells_by_hand(x, y, cells):
    """Ranks centred within each cell, then one Pearson correlation over all runs, written out plainly."""
    sxy = sxx = syy = 0.0
    for cell in set(cells):
        idx = [i for i, c in enumerate(cells) if c == cell]
        rx, ry = spearman_ranks(x[idx]), spearman_ranks(y[idx])
        rx, ry = rx - rx.mean(), ry - ry.mean()
        sxy, sxx, syy = sxy + (rx * ry).sum(), sxx + (rx * rx).sum(), syy + (ry * ry).sum()
    return sxy / np.sqrt(sxx * syy)


def spearman_ranks(v):
    return np.array([sum(w < u for w in v) + (sum(w == u for w in v) + 1) / 2 for u in v])


def test_within_cell_correlation_sees_through_simpsons_paradox():
    """Inside each cell, more of the statistic goes with less of the target; the cells with more of it on
    average also have more of the target. Pooled, the sign is positive; within cells, negative."""
    rng = np.random.default_rng(0)
    x, y, cells = [], [], []
    for c in range(12):
        for seed in range(4):
            noise = rng.normal()
            x.append(3.0 * c + noise)
            y.append(3.0 * c - noise + rng.normal(0, 0.3))
            cells.append(f"cell{c:02d}")  # sorted as numbered: draw k is cell k
    x, y = np.array(x), np.array(y)
    pooled, _ = falsification.rank_correlation(x, y, cells, "pooled", num_boot=200)
    within, (lo, hi) = falsification.rank_correlation(x, y, cells, "within_cells", num_boot=200)
    assert pooled > 0.8
    assert within == pytest.approx(within_cells_by_hand(x, y, cells), abs=1e-12) and within < -0.5
    assert lo <= within <= hi < 0
    # Resampling whole cells, by hand: the per-cell sums weighted by how often each cell was drawn.
    draws = np.random.default_rng(0).integers(12, size=(200, 12))
    boot = [within_cells_by_hand(np.concatenate([x[4 * c:4 * c + 4] for c in d]),
                                 np.concatenate([y[4 * c:4 * c + 4] for c in d]),
                                 [f"{k}" for k, c in enumerate(d) for _ in range(4)]) for d in draws]
    assert [lo, hi] == pytest.approx(list(np.percentile(boot, [2.5, 97.5])), abs=1e-12)


def write_run(root, name, args, status, metrics, probes=None):
    path = os.path.join(root, "falsification", name)
    os.makedirs(path)
    with open(os.path.join(path, "args.json"), "w") as f:
        json.dump({"exp_name": "falsification", **args}, f)
    if status is not None:
        with open(os.path.join(path, "summary.json"), "w") as f:
            json.dump({"status": status, "steps": 100, "metrics": metrics, "probes": probes or []}, f)


def probe_rows(initial_fit, final_fit, baseline=0.5):
    return [{"step": 0, "probe/plasticity": initial_fit * baseline, "probe/baseline": baseline},
            {"step": 100, "probe/plasticity": final_fit * baseline, "probe/baseline": baseline}]


# Runs a fresh network could not fit, or whose probe numbers are absurd: each must be excluded and counted.
# (summary metrics, probe rows): probe/initial_fit recorded, or only the probe rows (older runs).
INVALID = {"low": ({"probe/initial_fit": 0.3, "probe/final_fit": 0.2}, []),
           "nan": ({"probe/initial_fit": "nan", "probe/final_fit": 0.5}, []),
           "above_one": ({"probe/initial_fit": 1.5, "probe/final_fit": 0.9}, []),
           "negative_b": ({}, probe_rows(0.9, 0.9, baseline=-0.5)),
           "old_low": ({}, probe_rows(0.002, 0.001))}


def plant_runs(root, seeds=8):
    """Completed runs where weight_norm reverses sign across datasets and feature_rank across variants, while
    dead_units is positive and dormant_units negative everywhere. A reversal's partner cells share plasticity loss
    and noise and differ only in the sign, so every other grouping sees a correlation of exactly zero. P(theta_T)
    is 0.5 less the loss, so its reversals are the loss's with the signs swapped. Half the runs record
    probe/initial_fit, the other half only their probe rows."""
    rng = np.random.default_rng(0)
    datasets, variants = ("cifar10", "mnist"), ("true_label", "random_label")
    for arch in ("mlp", "cnn"):
        for optimizer in ("adam", "sgd"):
            for seed in range(seeds):
                loss = rng.normal()
                noise = rng.normal(0, 0.3, size=(4, 2))
                for d, dataset in enumerate(datasets):
                    for v, variant in enumerate(variants):
                        metrics = {"probe/plasticity_loss": loss, "probe/plasticity": 0.5 - loss,
                                   "stats/weight_norm": (1 - 2 * d) * (loss + noise[0, v]),
                                   "stats/feature_rank": (1 - 2 * v) * (loss + noise[1, d]),
                                   "stats/dead_units": loss + noise[2, d],
                                   "stats/dormant_units": -loss + noise[3, v],
                                   "stats/weight_norm/head": (1 - 2 * v) * loss}  # per layer: not analysed
                        probes = probe_rows(0.9, 0.8)
                        if seed % 2:
                            metrics.update({"probe/initial_fit": 0.9, "probe/final_fit": 0.8})
                            probes = []
                        args = {"dataset": dataset, "variant": variant, "arch": arch, "optimizer": optimizer}
                        write_run(root, f"{dataset}__{variant}__{arch}__{optimizer}__seed{seed}", args,
                                  "completed", metrics, probes)
    # Runs that must not be analysed, each of which would plant a reversal of dead_units across arch if it were.
    args = {"dataset": "mnist", "variant": "true_label", "arch": "cnn", "optimizer": "adam"}
    for i in range(30):
        loss = rng.normal()
        metrics = {"probe/plasticity_loss": loss, "probe/plasticity": -loss, "stats/dead_units": -20 * loss,
                   "probe/initial_fit": 0.9, "probe/final_fit": 0.9}
        write_run(root, f"mnist__true_label__cnn__adam__seed{100 + i}", args, ("interrupted", "diverged", None)[i % 3],
                  metrics)
    for i, (name, (fits, probes)) in enumerate(INVALID.items()):
        loss = rng.normal()
        write_run(root, f"mnist__random_label__mlp__sgd__seed{200 + i}", {**args, "arch": "mlp", "optimizer": "sgd"},
                  "completed", {"probe/plasticity_loss": loss, "probe/plasticity": -loss,
                                "stats/dead_units": -20 * loss, **fits}, probes)


def expected_reversals():
    """Every (statistic, target, method, group_by, positive, negative) the planted runs hold."""
    out = set()
    for target, sign in (("plasticity_loss", 1), ("plasticity", -1)):
        for method in falsification.METHODS:
            for statistic, axis, (plus, minus) in (("stats/weight_norm", 0, ("cifar10", "mnist")),
                                                   ("stats/feature_rank", 1, ("true_label", "random_label"))):
                plus, minus = (plus, minus) if sign > 0 else (minus, plus)
                out.add((statistic, target, method, ("dataset", "variant")[axis], plus, minus))
                others = ("true_label", "random_label") if axis == 0 else ("cifar10", "mnist")
                for a, b in itertools.product(others, repeat=2):  # problem = dataset/variant
                    p, n = ((plus, a), (minus, b)) if axis == 0 else ((a, plus), (b, minus))
                    out.add((statistic, target, method, "problem", "/".join(p), "/".join(n)))
    return out


def test_analyze_finds_exactly_the_planted_reversals(tmp_path, capsys):
    plant_runs(str(tmp_path))
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path), "--num-boot", "300"]) == 0
    out = capsys.readouterr().out
    assert "143 completed/diverged runs read" in out and "10 status interrupted" in out
    assert "128 completed runs analysed" in out
    assert "5 runs excluded because a fresh network's probe fit says nothing" in out
    assert "mnist__random_label__mlp__sgd (5)" in out  # the cell they are in
    for reason in ("below --min-initial-fit 0.4", "not finite", "above 1", "baseline b = -0.5 is not positive"):
        assert reason in out, reason
    assert "10 runs diverged (counted, not analysed): mnist__true_label__cnn__adam (10)" in out
    result = json.loads((tmp_path / "falsification.json").read_text())
    assert result["diverged"] == {"mnist__true_label__cnn__adam": 10} and len(result["excluded"]) == 5
    assert result["saturated"] == []  # fits 0.9 and 0.8: the probe can show a loss
    key = ("statistic", "target", "method", "group_by", "positive", "negative")
    assert {tuple(r[k] for k in key) for r in result["sign_reversals"]} == expected_reversals()
    rows = result["correlations"]
    groups = 1 + 4 + 2 + 2 + 2 + 2  # all, problem, dataset, variant, arch, optimizer
    assert len(rows) == 4 * 2 * 2 * groups  # statistics x targets x methods x groups
    for row in rows:
        assert row["runs"] == 128 // (len(row["group"].split("/")) * 2 if row["group"] != "all" else 1)
        assert row["ci95"][0] <= row["spearman"] <= row["ci95"][1]
        assert row["half_width"] == pytest.approx((row["ci95"][1] - row["ci95"][0]) / 2)
    mixed = {(r["statistic"], r["target"], r["method"], r["group_by"]): r["spearman"] for r in rows}
    for method in falsification.METHODS:  # exact cancellation by design
        assert mixed["stats/weight_norm", "plasticity_loss", method, "arch"] == pytest.approx(0, abs=1e-12)
    for stem in ("fig3_falsification", "fig3_falsification_loss"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    runs = pd.read_csv(tmp_path / "fig3_falsification.csv")
    assert len(runs) == 128 and set(runs["protocol"]) == {result["protocol"]} and runs["initial_fit"].min() == 0.9
    assert "positive in cifar10, negative in mnist" in out and "no reversal +-" in out


def test_analyze_keeps_protocols_apart_and_needs_enough_resamples(tmp_path, capsys):
    args = {"dataset": "mnist", "variant": "true_label", "arch": "mlp", "optimizer": "adam"}
    rng = np.random.default_rng(1)
    for steps in (40, 1_000):
        for seed in range(12):
            loss = rng.normal()
            write_run(str(tmp_path), f"s{steps}__seed{seed}", {**args, "total_steps": steps, "seed": seed},
                      "completed", {"probe/plasticity_loss": loss, "probe/plasticity": -loss,
                                    "stats/weight_norm": loss * (1 if steps == 40 else -1)}, probe_rows(0.9, 0.5))
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path), "--num-boot", "99"]) == 2
    assert "--num-boot must be at least 100" in capsys.readouterr().err
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path), "--num-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "holds 2 protocols (runs differing in total_steps)" in out
    written = sorted(tmp_path.glob("protocol-*/fig3_falsification.csv"))
    assert len(written) == 2 and not (tmp_path / "fig3_falsification.csv").exists()
    for path in written:
        runs = pd.read_csv(path)
        assert len(runs) == 12 and runs["protocol"].nunique() == 1
        fields = json.loads((path.parent / f"protocol_{runs['protocol'][0]}.json").read_text())
        assert fields["total_steps"] in (40, 1_000)
        assert {int(s) for s in runs["run_dir"].str.extract(r"s(\d+)__")[0]} == {fields["total_steps"]}


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
    # The test preset's 5-step probe fits nothing, as a fresh network's fit of it says: unfit for results.
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path)]) == 2
    assert "1 runs excluded" in capsys.readouterr().out
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path), "--min-initial-fit", "-1"]) == 0
    assert "1 completed runs analysed" in capsys.readouterr().out


def test_a_new_analysis_removes_the_protocol_folders_of_an_earlier_one(tmp_path, capsys):
    """Two protocols (protocol-<id>/ each), then the longer runs removed: one protocol, analysed into the runs
    folder itself, and the earlier protocol-<id>/ folders are gone. A folder that is not an analysis's stays."""
    args = {"dataset": "mnist", "variant": "true_label", "arch": "mlp", "optimizer": "adam"}
    rng = np.random.default_rng(1)
    for steps in (40, 1_000):
        for seed in range(12):
            loss = rng.normal()
            write_run(str(tmp_path), f"s{steps}__seed{seed}", {**args, "total_steps": steps, "seed": seed},
                      "completed", {"probe/plasticity_loss": loss, "probe/plasticity": -loss,
                                    "stats/weight_norm": loss}, probe_rows(0.9, 0.5))
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("protocol-*/fig3_falsification.csv"))) == 2
    (tmp_path / "protocol-mine").mkdir()
    for run_dir in (tmp_path / "falsification").glob("s1000__seed*"):
        shutil.rmtree(run_dir)
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("protocol-*")) == ["protocol-mine"], capsys.readouterr().out[-1500:]
    assert len(pd.read_csv(tmp_path / "fig3_falsification.csv")) == 12
