"""falsification.py: the grid of Sec 5.2; the analysis tested on synthetic grids shaped like the reduced grid, with
no effect (it must reverse at most at its nominal rate) and with a planted reversal (it must find it); analyze end
to end on written run directories; one real tiny cell."""
import itertools
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

import falsification
from common.analysis import sweep


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
    # the reduced grid: 5 seeds per cell, one pack of 5 per cell
    assert sweep.run(falsification.SWEEP, ["--list", "--preset", "cpu", "--seeds-per-task", "5"]) == 0
    packs = [line.split()[1:] for line in capsys.readouterr().out.splitlines()]
    assert len(packs) == 32 and all(len(p) == 5 and p[-1].endswith("__seed5") for p in packs)


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


# ------------------------------------------------------------------ synthetic grids shaped like the reduced grid
REDUCED_CELLS = [cell for cell in itertools.product(("mnist", "fashion_mnist"), falsification.VARIANTS,
                                                    falsification.ARCHS, falsification.OPTIMIZERS)
                 if not (cell[3] == "sgd" and cell[1] == "sparse_reward")]
STATISTICS = ("stats/dead_units", "stats/distance_from_init", "stats/feature_rank", "stats/weight_norm",
              "stats/weight_rank")


def synthetic_grid(rng, planted=0.0, seeds=5):
    """A table like the reduced grid's runs: 32 cells x ``seeds``. Each cell draws its own means (one cell-level
    factor moves every column at once, so the statistics correlate with the outcomes across cells) and its own
    seed noise scale; seeds add noise. Within cells, weight norm's noise carries the plasticity loss's with
    correlation +``planted`` under Adam and -``planted`` under SGD (none under RMSProp); distance from init is weight
    norm plus a little noise (one finding); no other statistic relates to either outcome within a cell."""
    assert len(REDUCED_CELLS) == 32
    rows = []
    for dataset, variant, arch, optimizer in REDUCED_CELLS:
        shift = rng.normal() + 0.5 * rng.normal(size=7)
        scale = rng.uniform(0.2, 1.0)
        r = planted * {"adam": 1, "sgd": -1}.get(optimizer, 0)
        for seed in range(1, seeds + 1):
            noise = rng.normal(size=7)
            loss = shift[0] + scale * noise[0]
            norm = shift[1] + scale * (r * noise[0] + np.sqrt(1 - r * r) * noise[1])
            rows.append({"dataset": dataset, "variant": variant, "arch": arch, "optimizer": optimizer, "seed": seed,
                         "probe/plasticity_loss": loss, "probe/plasticity": 1 + shift[2] - loss + scale * noise[2],
                         "stats/weight_norm": norm, "stats/distance_from_init": 2 * norm + shift[3] + 0.02 * noise[3],
                         "stats/dead_units": shift[4] + scale * noise[4], "stats/feature_rank": shift[5] + noise[5],
                         "stats/weight_rank": shift[6] + scale * noise[6]})
    return pd.DataFrame(rows)


def test_calibration_null_grids_reverse_at_most_at_the_nominal_rate():
    """No statistic relates to plasticity inside any cell, while cell means shift together: over 40 grids the
    analysis finds a reversal, or any significant correlation at all, in at most its nominal 5% of the grids plus
    the Monte Carlo error of 40 replicates (the 99th percentile of Binomial(40, 0.05): 6). Without the correction
    nearly every grid shows reversals."""
    rng = np.random.default_rng(2024)
    replicates, reversed_, rejected = 40, 0, 0
    for _ in range(replicates):
        result = falsification.analyse(synthetic_grid(rng), STATISTICS)
        assert result["family_size"] == len(STATISTICS) * 2 * 17  # statistics x outcomes x groups, all tested
        reversed_ += bool(result["sign_reversals"])
        rejected += any(t["significant"] for t in result["tests"])
    assert reversed_ <= rejected <= binom.ppf(0.99, replicates, falsification.inference.ALPHA)


def test_a_planted_reversal_of_realistic_size_is_found_as_one_finding():
    """Weight norm correlates +0.85 with the plasticity loss inside the Adam cells and -0.85 inside the SGD cells
    (the size of the within-cell correlations the reduced grid showed); distance from init follows weight norm."""
    rng = np.random.default_rng(7)
    found = 0
    for _ in range(10):
        result = falsification.analyse(synthetic_grid(rng, planted=0.85), STATISTICS)
        merged = "stats/distance_from_init = stats/weight_norm"
        assert [merged] == [" = ".join(g) for g in result["same_finding"]["groups"] if len(g) > 1]
        found += any(f["finding"] == merged and (f["target"], f["group_by"], f["positive"], f["negative"]) ==
                     ("plasticity_loss", "optimizer", "adam", "sgd") and f["probe_differs"]
                     for f in result["findings"])
        assert all(f["finding"] == merged for f in result["findings"])  # nothing else reverses
    assert found >= 9


def write_grid(root, table, initial_fit=0.9, final_fit=0.8):
    """``table``'s rows as completed run directories (``seed`` becomes the run name's)."""
    for row in table.to_dict("records"):
        args = {k: row[k] for k in falsification.FACTORS}
        metrics = {k: v for k, v in row.items() if "/" in k}
        metrics.update({"probe/initial_fit": initial_fit, "probe/final_fit": final_fit})
        write_run(root, "__".join(args.values()) + f"__seed{row['seed']}", args, "completed", metrics)


def test_analyze_end_to_end_on_written_runs(tmp_path, capsys):
    """Synthetic completed run directories with a planted reversal, plus runs that must not be analysed."""
    table = synthetic_grid(np.random.default_rng(11), planted=0.95)
    write_grid(str(tmp_path), table)
    args = {"dataset": "mnist", "variant": "true_label", "arch": "cnn", "optimizer": "adam"}
    rng = np.random.default_rng(0)
    for i in range(30):  # were they analysed, dead units would reverse by arch
        loss = rng.normal()
        write_run(str(tmp_path), f"mnist__true_label__cnn__adam__seed{100 + i}", args,
                  ("interrupted", "diverged", None)[i % 3],
                  {"probe/plasticity_loss": loss, "probe/plasticity": -loss, "stats/dead_units": -20 * loss,
                   "probe/initial_fit": 0.9, "probe/final_fit": 0.9})
    for i, (name, (fits, probes)) in enumerate(INVALID.items()):
        loss = rng.normal()
        write_run(str(tmp_path), f"mnist__random_label__mlp__sgd__seed{200 + i}",
                  {**args, "arch": "mlp", "optimizer": "sgd"}, "completed",
                  {"probe/plasticity_loss": loss, "probe/plasticity": -loss, "stats/dead_units": -20 * loss, **fits},
                  probes)
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "160 completed runs analysed" in out and "10 runs diverged (counted, not analysed)" in out
    assert "5 runs excluded because a fresh network's probe fit says nothing" in out
    for reason in ("below --min-initial-fit 0.4", "not finite", "above 1", "baseline b = -0.5 is not positive"):
        assert reason in out, reason
    family = len(STATISTICS) * 2 * 17
    assert f"Holm's correction over all {family} tests (family-wise error 0.05)" in out
    assert "all=all 160/32" in out and "optimizer=sgd 40/8" in out and "problem=mnist/sparse_reward 20/4" in out
    assert "plasticity_loss (headline):" in out and "detectable |rho|" in out and "p adj" in out
    assert ("stats/distance_from_init = stats/weight_norm vs plasticity_loss by optimizer: positive in adam, "
            "negative in sgd (each group's probe uses its own optimizer)") in out
    result = json.loads((tmp_path / "falsification.json").read_text())
    assert result["diverged"] == {"mnist__true_label__cnn__adam": 10} and len(result["excluded"]) == 5
    assert (result["family_size"], result["correction"], result["probe"]) == (family, "holm", "paper")
    assert len(result["tests"]) == family
    for test in result["tests"]:
        assert test["p"] <= test["p_adjusted"] <= 1 and test["exact"]
        assert test["significant"] == (test["p_adjusted"] <= 0.05)
        assert test["detectable_rho"] is None or 0 < test["detectable_rho"] <= 1
        if test["detectable_rho"] is not None and abs(test["rho"]) >= test["detectable_rho"]:
            assert test["significant"]  # at or above it, significant whatever the other tests give
    assert {(f["finding"], f["target"], f["group_by"], f["positive"], f["negative"]) for f in result["findings"]} \
        >= {("stats/distance_from_init = stats/weight_norm", "plasticity_loss", "optimizer", "adam", "sgd")}
    assert all(f["finding"] == "stats/distance_from_init = stats/weight_norm" for f in result["findings"])
    tests = pd.read_csv(tmp_path / "falsification_tests.csv")
    assert len(tests) == family and set(tests["protocol"]) == {result["protocol"]}
    assert len(pd.read_csv(tmp_path / "fig3_falsification.csv")) == 160
    for stem in ("fig3_falsification", "fig3_falsification_loss"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    # the reference probe's outcomes are not in these runs: one line, status 2
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path), "--probe", "reference"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--probe reference: the runs record no probe_ref/" in err


def write_two_protocols(root, flip):
    """12 runs of 40 steps and 12 of 1,000 (two protocols); with ``flip`` the longer runs' statistic flips sign."""
    args = {"dataset": "mnist", "variant": "true_label", "arch": "mlp", "optimizer": "adam"}
    rng = np.random.default_rng(1)
    for steps in (40, 1_000):
        for seed in range(12):
            loss = rng.normal()
            sign = -1 if flip and steps == 1_000 else 1
            write_run(str(root), f"s{steps}__seed{seed}", {**args, "total_steps": steps, "seed": seed},
                      "completed", {"probe/plasticity_loss": loss, "probe/plasticity": -loss,
                                    "stats/weight_norm": loss * sign}, probe_rows(0.9, 0.5))


def test_analyze_keeps_protocols_apart_and_checks_its_options(tmp_path, capsys):
    write_two_protocols(tmp_path, flip=True)
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path), "--num-permutations", "999"]) == 2
    assert "--num-permutations must be at least 1000" in capsys.readouterr().err
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path), "--alpha", "1.5"]) == 2
    assert "--alpha is a probability" in capsys.readouterr().err
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path)]) == 0
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
    write_two_protocols(tmp_path, flip=False)
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("protocol-*/fig3_falsification.csv"))) == 2
    (tmp_path / "protocol-mine").mkdir()
    for run_dir in (tmp_path / "falsification").glob("s1000__seed*"):
        shutil.rmtree(run_dir)
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("protocol-*")) == ["protocol-mine"], capsys.readouterr().out[-1500:]
    assert len(pd.read_csv(tmp_path / "fig3_falsification.csv")) == 12
