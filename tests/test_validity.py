"""common/analysis/validity.py: the probe-validity filter on synthetic runs (low, missing and absurd fits are excluded and
counted), saturation, protocols; and, for every cpu preset of both sweeps, that its probe is the paper's and that a
fresh network fits it under each of the grid's optimizers."""
import argparse
import dataclasses
import math

import pandas as pd
import pytest
import torch

import dqn_classification_mdp as agent
import falsification
import interventions_sweep
from common.analysis import sweep, validity
from common.science.classification import load_dataset
from common.science.probe import run_probe


def run(name, metrics=None, probes=None, **args):
    return {"run_dir": f"runs/grid/{name}", "status": "completed", **(metrics or {}), "probes": probes or [],
            **{f"args.{k}": v for k, v in args.items()}}


def rows(*fits, baseline=0.5):
    return [{"step": 100 * i, "probe/plasticity": fit * baseline, "probe/baseline": baseline}
            for i, fit in enumerate(fits)]


def test_invalid_probes_are_excluded_with_their_reasons():
    table = pd.DataFrame([
        run("good__seed1", {"probe/initial_fit": 0.9, "probe/final_fit": 0.7}),
        run("good__seed2", probes=rows(0.8, 0.6)),  # an older run: fits from its probe rows
        run("narrow__seed1", {"probe/initial_fit": 0.5, "probe/final_fit": 0.2}),  # a fresh width-16 MLP: kept
        run("slow__seed1", {"probe/initial_fit": 0.3, "probe/final_fit": 0.3}),  # below 0.4
        run("slow__seed2", probes=rows(0.002, 0.001)),  # SGD at 1e-3
        run("nan__seed1", {"probe/initial_fit": math.nan, "probe/final_fit": 0.5}),
        run("missing__seed1"),
        run("above__seed1", {"probe/initial_fit": 1.2, "probe/final_fit": 0.9}),
        run("negative_b__seed1", probes=rows(0.9, 0.9, baseline=-0.5)),
        run("zero_b__seed1", probes=[{"probe/plasticity": 0.0, "probe/baseline": 0.0}] * 2),
        run("strings__seed1", {"probe/initial_fit": "nan", "probe/final_fit": "inf"}),
    ])
    table = validity.add_fits(table)
    assert table["initial_fit"][:3].tolist() == pytest.approx([0.9, 0.8, 0.5])
    assert table["final_fit"][1] == pytest.approx(0.6)
    reasons = validity.invalid_runs(table, validity.MIN_INITIAL_FIT)
    assert sorted(d.split("/")[-1] for d in reasons) == sorted(
        ["slow__seed1", "slow__seed2", "nan__seed1", "missing__seed1", "above__seed1", "negative_b__seed1",
         "zero_b__seed1", "strings__seed1"])
    assert "below --min-initial-fit 0.4" in reasons["runs/grid/slow__seed2"]
    assert "above 1" in reasons["runs/grid/above__seed1"]
    assert "not positive" in reasons["runs/grid/negative_b__seed1"]
    assert "not finite" in reasons["runs/grid/strings__seed1"]
    line = validity.describe_by_cell(sorted(reasons), "excluded")
    assert line.startswith("8 runs excluded: ") and "slow (2)" in line and "above (1)" in line
    assert validity.invalid_runs(table, 0.0).keys() == reasons.keys() - {"runs/grid/slow__seed1",
                                                                        "runs/grid/slow__seed2"}


def test_saturated_cells_are_those_whose_two_fits_are_within_noise_of_b():
    table = validity.add_fits(pd.DataFrame([
        run("easy__seed1", {"probe/initial_fit": 0.995, "probe/final_fit": 0.99}),
        run("easy__seed2", {"probe/initial_fit": 0.99, "probe/final_fit": 0.985}),
        run("lost__seed1", {"probe/initial_fit": 0.99, "probe/final_fit": 0.6}),
        run("fit__seed1", {"probe/initial_fit": 0.9, "probe/final_fit": 0.99})]))
    assert validity.saturated_cells(table) == ["easy"]


def test_protocols_split_on_every_field_but_the_axes_and_where_runs_ran():
    table = pd.DataFrame([run(f"c{i}", total_steps=steps, probe_steps=2_000, seed=i, arch=arch, data_dir=f"/d{i}")
                          for i, (steps, arch) in enumerate([(3_000, "mlp"), (3_000, "cnn"), (40, "mlp")])])
    protocols = validity.split_protocols(table, varied={"arch", "seed"})
    assert [len(runs) for _, _, runs in protocols] == [2, 1]
    assert protocols[0][1] == {"total_steps": 3_000, "probe_steps": 2_000}
    assert validity.differing_fields(protocols) == ["total_steps"]
    assert protocols[0][0] != protocols[1][0] == validity.protocol_id({"total_steps": 40, "probe_steps": 2_000})


# ------------------------------------------------------------------------------------- the presets' probes work
PRESETS = {"falsification": falsification.PRESETS["cpu"], "interventions": interventions_sweep.PRESETS["cpu"]}


GRIDS = {"falsification": [argparse.Namespace(datasets="offline")],
         "interventions": [argparse.Namespace(grid=grid, datasets="offline") for grid in ("width", "interventions")]}


@pytest.mark.parametrize("name", PRESETS)
def test_every_cpu_cell_keeps_the_papers_probe(name):
    """Each cell's Args as the sweep builds them (defaults < preset < the cell's values): the paper's probe and
    probes at the start, the middle and the end."""
    module = {"falsification": falsification, "interventions": interventions_sweep}[name]
    for options in GRIDS[name]:
        options = argparse.Namespace(**vars(options), preset="cpu", set=[], runs_dir="runs")
        grid = module.make_grid(options)
        for cell in grid.cells():
            args = sweep.cell_args(module.SWEEP, grid, cell, options)
            assert args.probe_steps == 2_000 and args.probe_targets >= 3, cell.name  # Sec 3.1; A.2 uses 10
            assert 512 <= args.probe_inputs <= 1_024, cell.name
            probes = [step for step in range(args.total_steps + 1) if step % args.probe_every == 0]
            assert probes == [0, args.total_steps // 2, args.total_steps], cell.name


OPTIMIZERS = {**{f"falsification {k}": ("falsification", v) for k, v in falsification.OPTIMIZERS.items()},
              "interventions two_hot": ("interventions", interventions_sweep.OUTPUTS["two_hot"])}


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("preset, overrides", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_a_fresh_network_fits_the_cpu_probe_under_each_grid_optimizer(preset, overrides, arch, data_dir):
    """The preset's own probe (2,000 steps, its inputs and width), one target instead of its 3 to stay fast: a
    fresh MLP and a fresh CNN fit well above --min-initial-fit under every optimizer of the grids."""
    args = dataclasses.replace(agent.Args(), arch=arch,
                               **{k: v for k, v in PRESETS[preset].items() if k in
                                  ("width", "probe_steps", "probe_inputs", "probe_batch_size")}, **overrides)
    images, _ = load_dataset("mnist", data_dir)
    torch.manual_seed(0)
    obs_shape = tuple(images.shape[1:])
    inputs = images[torch.randint(len(images), (args.probe_inputs,), generator=torch.Generator().manual_seed(0))]
    result = run_probe(agent.build_q_network(args, obs_shape), lambda: agent.build_q_network(args, obs_shape),
                       inputs, lambda params: agent.build_optimizer(args, params), num_targets=1,
                       steps=args.probe_steps, batch_size=args.probe_batch_size, seed=0)
    fit = float(result.plasticity / result.baseline)
    print(f"{arch} {overrides}: P(theta_0) / b = {fit:.3f}")
    assert fit > 1.5 * validity.MIN_INITIAL_FIT
