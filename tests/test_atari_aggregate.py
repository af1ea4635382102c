"""`ddqn_atari_layernorm.py aggregate` on synthetic run directories with known human-normalised scores.

The expected statistics are worked out by hand below, and the bootstrap intervals by a plain loop written here
(one replicate at a time, each game's runs drawn with replacement); neither calls rliable.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from common.analysis import atari_stats, validity
from common.errors import UsageError
from common.science.atari import load_atari_scores
from ddqn_atari_layernorm import AggregateArgs, aggregate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Human-normalised scores, 4 seeds per game and configuration.
LAYERNORM = {"Freeway": [0.2, 0.4, 0.6, 0.8], "Enduro": [1.0, 1.2, 1.4, 3.0], "Venture": [0.0, 0.0, 0.1, 0.3]}
BASELINE = {"Freeway": [0.1, 0.5, 0.5, 0.7], "Enduro": [1.0, 1.0, 2.0, 2.0], "Venture": [0.0, 0.0, 0.0, 0.0]}
# All 12 LayerNorm scores sorted: 0 0 .1 .2 .3 .4 .6 .8 1 1.2 1.4 3; the IQM drops 3 at each end: mean(.2 ... 1) = .55.
# Game means .5, 1.65, .1: median .5, mean .75. min(score, 1) sums to 6.4: optimality gap 1 - 6.4 / 12.
EXPECTED_LAYERNORM = {"IQM": 0.55, "median": 0.5, "mean": 0.75, "optimality gap": 1 - 6.4 / 12}
# Baseline sorted: 0 0 0 0 .1 .5 .5 .7 1 1 2 2: IQM mean(0 .1 .5 .5 .7 1) = 2.8 / 6; game means .45, 1.5, 0;
# min(score, 1) sums to 1.8 + 4 + 0.
EXPECTED_BASELINE = {"IQM": 2.8 / 6, "median": 0.45, "mean": 1.95 / 3, "optimality gap": 1 - 5.8 / 12}
# Of the 16 pairs (LN run, baseline run) per game, LN wins: Freeway 1+1+3+4 = 9; Enduro: 1.0 ties two 1.0s (1),
# 1.2 and 1.4 beat two each, 3.0 beats four: 9; Venture: two zeros tie four zeros (4), .1 and .3 win all: 12.
EXPECTED_IMPROVEMENT = (9 + 9 + 12) / 48
# Wang et al.: (LN - base) / (max(human, base) - random) of the seed means, in human-normalised units here since
# random = 0 for these three games: Freeway .05 / 1; Enduro .15 / 1.5 (the baseline is above human); Venture .1.
EXPECTED_WANG = {"Freeway": 0.05, "Enduro": 0.1, "Venture": 0.1}


def write_run(root, name, game, layer_norm, seed, score, status="completed", total_frames=4000):
    run = root / name
    run.mkdir()
    (run / "args.json").write_text(json.dumps({"env_id": f"ALE/{game}-v5", "layer_norm": layer_norm, "seed": seed,
                                               "total_frames": total_frames, "eval_frames": 500,
                                               "exp_name": "ddqn_atari_layernorm"}))
    (run / "summary.json").write_text(json.dumps({"status": status, "steps": total_frames // 4, "wall_time_s": 1.0,
                                                  "metrics": {"eval/episodic_return": score}}))
    return run


def write_runs(root, total_frames=4000, prefix=""):
    scores = load_atari_scores()
    for config, table in ((True, LAYERNORM), (False, BASELINE)):
        for game, normalised in table.items():
            random_score, human_score = scores[game]
            for seed, h in enumerate(normalised):
                write_run(root, f"{prefix}{game}_{config}_{seed}", game, config, seed,
                          random_score + h * (human_score - random_score), total_frames=total_frames)


def reference_bootstrap(statistic, matrices, num_boot, seed):
    """Plain loop: replicate by replicate, each matrix's runs redrawn with replacement within each game."""
    rng = np.random.RandomState(seed)
    replicates = []
    for _ in range(num_boot):
        samples = []
        for m in matrices:
            runs = rng.choice(m.shape[0], m.shape)
            samples.append(np.array([[m[runs[n, g], g] for g in range(m.shape[1])] for n in range(m.shape[0])]))
        replicates.append(statistic(*samples))
    return np.percentile(replicates, 2.5, axis=0), np.percentile(replicates, 97.5, axis=0)


def plain_aggregates(m):
    flat = np.sort(m.ravel())
    cut = len(flat) // 4
    game_means = m.mean(axis=0)
    return [flat[cut:len(flat) - cut].mean(), np.median(game_means), game_means.mean(), 1 - np.minimum(m, 1).mean()]


def plain_improvement(x, y):
    return np.mean([np.mean([[1.0 if a > b else 0.5 if a == b else 0.0 for b in y[:, g]] for a in x[:, g]])
                    for g in range(x.shape[1])])


def test_aggregates_match_hand_computed_scores(tmp_path, capsys):
    write_runs(tmp_path)
    write_run(tmp_path, "interrupted", "Freeway", True, 9, 1000.0, status="interrupted")  # would lift LN's scores
    write_run(tmp_path, "diverged", "Venture", False, 9, 1000.0, status="diverged")
    aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=6_000, num_boot_profile=300, seed=3))
    out = capsys.readouterr().out
    assert "skipped 2: 1 status diverged; 1 status interrupted" in out

    metrics = pd.read_csv(tmp_path / "aggregate_metrics.csv").set_index(["config", "metric"])
    for config, expected in (("LayerNorm", EXPECTED_LAYERNORM), ("baseline", EXPECTED_BASELINE)):
        for metric, value in expected.items():
            assert metrics.loc[(config, metric), "estimate"] == pytest.approx(value, abs=1e-12), (config, metric)
    assert set(metrics["runs_per_game"]) == {4} and set(metrics["games"]) == {3}
    assert set(metrics["protocol"]) == {"total_frames=4000"}

    improvement = pd.read_csv(tmp_path / "probability_of_improvement.csv").iloc[0]
    assert improvement["probability_of_improvement"] == pytest.approx(EXPECTED_IMPROVEMENT, abs=1e-12)

    wang = pd.read_csv(tmp_path / "fig7_layernorm_improvement.csv").set_index("game")["improvement"]
    assert wang.to_dict() == pytest.approx(EXPECTED_WANG, abs=1e-12)

    profiles = pd.read_csv(tmp_path / "performance_profiles.csv")
    at_half = profiles[np.isclose(profiles["tau"], 0.5)].set_index("config")["fraction_above"]
    assert at_half["LayerNorm"] == pytest.approx(6 / 12) and at_half["baseline"] == pytest.approx(5 / 12)

    # 95% intervals: the same stratified bootstrap as a plain loop, from the same RandomState draws.
    games = sorted(LAYERNORM)
    x = np.array([LAYERNORM[g] for g in games]).T
    y = np.array([BASELINE[g] for g in games]).T
    lower, upper = reference_bootstrap(plain_aggregates, [x], 6_000, seed=3)
    for i, metric in enumerate(atari_stats.METRICS):
        row = metrics.loc[("LayerNorm", metric)]
        assert (row["lower"], row["upper"]) == pytest.approx((lower[i], upper[i]), abs=1e-9), metric
        assert row["lower"] <= row["estimate"] <= row["upper"]
    lower, upper = reference_bootstrap(plain_improvement, [x, y], 6_000, seed=3)
    assert (improvement["lower"], improvement["upper"]) == pytest.approx((lower, upper), abs=1e-9)
    for name in ("fig7_layernorm_improvement", "aggregate_metrics", "performance_profiles"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_vectorised_estimators_equal_rliable():
    from rliable import metrics

    rng = np.random.default_rng(0)
    for shape in ((3, 57), (5, 4), (2, 1)):
        x, y = np.round(rng.gamma(1.0, 1.0, shape), 1), np.round(rng.gamma(0.8, 1.0, shape), 1)  # with ties
        assert atari_stats.aggregates(x) == pytest.approx(
            [metrics.aggregate_iqm(x), metrics.aggregate_median(x), metrics.aggregate_mean(x),
             metrics.aggregate_optimality_gap(x)], abs=1e-12)
        assert atari_stats.probability_of_improvement(x, y) == pytest.approx(
            metrics.probability_of_improvement(x, y), abs=1e-12)


def test_intervals_equal_rliable_library():
    """The vectorised bootstrap draws what rliable.library draws: its intervals equal the library's own."""
    from rliable import library, metrics

    rng = np.random.default_rng(1)
    x, y = np.round(rng.gamma(1.0, 1.0, (3, 5)), 1), np.round(rng.gamma(0.8, 1.0, (4, 5)), 1)  # with ties
    scores = {atari_stats.CONFIGS[True]: x, atari_stats.CONFIGS[False]: y}
    ours = atari_stats.interval_estimates(scores, num_boot=200, num_boot_profile=50, seed=5)

    def rliable_aggregates(s):
        return np.array([metrics.aggregate_iqm(s), metrics.aggregate_median(s), metrics.aggregate_mean(s),
                         metrics.aggregate_optimality_gap(s)])

    np.random.seed(5)
    points, intervals = library.get_interval_estimates(scores, rliable_aggregates, reps=200)
    for config in scores:
        point, lower, upper = ours["aggregates"][config]
        assert point == pytest.approx(points[config], abs=1e-12)
        assert np.stack([lower, upper]) == pytest.approx(intervals[config], abs=1e-12), config
    np.random.seed(5)
    pair = f"{atari_stats.CONFIGS[True]},{atari_stats.CONFIGS[False]}"
    points, intervals = library.get_interval_estimates({pair: (x, y)}, metrics.probability_of_improvement, reps=200)
    assert ours["improvement"][0] == pytest.approx(points[pair], abs=1e-12)
    assert ours["improvement"][1:] == pytest.approx(tuple(intervals[pair][:, 0]), abs=1e-12)
    np.random.seed(5)
    points, intervals = library.create_performance_profile(scores, atari_stats.PROFILE_TAUS, reps=50)
    for config in scores:
        point, lower, upper = ours["profiles"][config]
        assert point == pytest.approx(points[config], abs=1e-12)
        assert np.stack([lower, upper]) == pytest.approx(intervals[config], abs=1e-12), config


def test_truncated_files_are_skipped_and_reported(tmp_path, capsys):
    write_runs(tmp_path)
    torn = write_run(tmp_path, "torn_summary", "Freeway", True, 7, 1.0)
    (torn / "summary.json").write_text('{"status": "completed", "steps": 10, "metr')
    torn = write_run(tmp_path, "torn_args", "Enduro", False, 7, 1.0)
    (torn / "args.json").write_text('{"env_id": "ALE/End')
    results = aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=100, num_boot_profile=100))
    out = capsys.readouterr().out
    assert "24 completed runs read" in out and "skipped 2" in out
    assert "1 summary.json is truncated or corrupt" in out and "1 args.json is truncated or corrupt" in out
    (only,) = results.values()
    assert {r["metric"]: r["estimate"] for r in only["aggregates"] if r["config"] == "LayerNorm"} == pytest.approx(
        EXPECTED_LAYERNORM, abs=1e-12)


def test_extra_seeds_beyond_the_sparsest_game_are_left_out(tmp_path, capsys):
    write_runs(tmp_path)
    write_run(tmp_path, "Freeway_True_9", "Freeway", True, 9, 1000.0)  # a fifth Freeway seed
    aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=100, num_boot_profile=100))
    assert "left out 1 runs" in capsys.readouterr().err
    metrics = pd.read_csv(tmp_path / "aggregate_metrics.csv").set_index(["config", "metric"])["estimate"]
    assert metrics.loc[("LayerNorm", "IQM")] == pytest.approx(EXPECTED_LAYERNORM["IQM"], abs=1e-12)
    assert pd.read_csv(tmp_path / "fig7_layernorm_improvement.csv").set_index("game")["improvement"].to_dict() == \
        pytest.approx(EXPECTED_WANG, abs=1e-12)


def protocol_folders(runs_dir):
    """{total_frames: folder} of the protocol-<id> folders an aggregate wrote."""
    return {json.loads((folder / "protocol.json").read_text())["total_frames"]: folder
            for folder in runs_dir.glob("protocol-*") if (folder / "protocol.json").exists()}


def test_protocols_are_analysed_separately(tmp_path, capsys):
    write_runs(tmp_path)
    write_runs(tmp_path, total_frames=8000, prefix="long_")
    write_run(tmp_path, "long_Freeway_True_9", "Freeway", True, 9, 0.0, total_frames=8000)
    results = aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=100, num_boot_profile=100))
    assert "2 protocols (they differ in total_frames)" in capsys.readouterr().err
    assert sorted(results) == ["total_frames=4000", "total_frames=8000"]
    folders = protocol_folders(tmp_path)
    assert len(folders) == 2
    for label in ("total_frames=4000", "total_frames=8000"):
        folder = folders[int(label.split("=")[1])]
        assert folder.name == f"protocol-{validity.protocol_id(json.loads((folder / 'protocol.json').read_text()))}"
        for name in ("aggregate_metrics", "probability_of_improvement", "performance_profiles",
                     "fig7_layernorm_improvement", "human_normalized_scores"):
            assert set(pd.read_csv(folder / f"{name}.csv")["protocol"]) == {label}
    short = pd.read_csv(folders[4000] / "aggregate_metrics.csv").set_index(["config", "metric"])["estimate"]
    assert short.loc[("LayerNorm", "IQM")] == pytest.approx(EXPECTED_LAYERNORM["IQM"], abs=1e-12)  # not pooled
    assert len(pd.read_csv(folders[8000] / "human_normalized_scores.csv")) == 24  # its fifth seed left out


def test_too_few_runs_give_one_line_errors(tmp_path):
    for seed in range(3):
        write_run(tmp_path, f"Pong_base_{seed}", "Pong", False, seed, 0.0)
    write_run(tmp_path, "Pong_ln_0", "Pong", True, 0, 0.0)
    with pytest.raises(UsageError, match="Pong has 1 completed LayerNorm run: .* at least 2 runs per game"):
        aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=100, num_boot_profile=100))
    with pytest.raises(UsageError, match="at least 100"):
        aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=10))

    empty = tmp_path / "only_baseline"
    empty.mkdir()
    write_run(empty, "Pong_base", "Pong", False, 0, 0.0)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "ddqn_atari_layernorm.py"), "aggregate",
                             "--runs-dir", str(empty)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: no game has completed runs both with and without LayerNorm"


def outputs(folder):
    """{path relative to folder: (bytes, mtime)} of every file under it."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and "args.json" != p.name and "summary.json" != p.name}


def test_a_final_evaluation_without_a_finished_episode_is_not_scored(tmp_path, capsys):
    """A summary from before the fix: eval/episodes 0 beside an earlier evaluation's return. Skipped, not scored."""
    write_runs(tmp_path)
    stale = write_run(tmp_path, "Freeway_True_stale", "Freeway", True, 9, 1000.0)
    summary = json.loads((stale / "summary.json").read_text())
    summary["metrics"]["eval/episodes"] = 0
    (stale / "summary.json").write_text(json.dumps(summary))
    aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=100, num_boot_profile=100))
    assert "finished no episode (eval/episodes 0)" in capsys.readouterr().out
    scored = pd.read_csv(tmp_path / "human_normalized_scores.csv")
    assert len(scored) == 24 and not scored["run_dir"].str.contains("stale").any()


def test_an_output_dir_that_cannot_be_written_is_a_one_line_error(tmp_path):
    (tmp_path / "runs").mkdir()
    write_runs(tmp_path / "runs")
    (tmp_path / "a_file").write_text("")
    for output_dir, message in ((tmp_path / "a_file", "is a file, not a folder"), ("/proc/nope", "cannot be written")):
        result = subprocess.run([sys.executable, "ddqn_atari_layernorm.py", "aggregate", "--runs-dir",
                                 str(tmp_path / "runs"), "--output-dir", str(output_dir), "--num-boot", "100",
                                 "--num-boot-profile", "100"], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: --output-dir {output_dir} {message}") and "choose another" in line, line


def test_an_interrupted_aggregate_leaves_the_previous_outputs_as_they_were(tmp_path):
    """SIGTERM during the bootstrap of a second analysis (with a fifth Freeway seed, which changes every output):
    exit 75 with a line about aggregate, and the first analysis's files untouched, nothing added."""
    write_runs(tmp_path)
    aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=100, num_boot_profile=100))
    before = outputs(tmp_path)
    assert "human_normalized_scores.csv" in before and "fig7_layernorm_improvement.png" in before
    for game, config in (("Freeway", True), ("Freeway", False), ("Enduro", True), ("Enduro", False),
                         ("Venture", True), ("Venture", False)):
        write_run(tmp_path, f"{game}_{config}_fifth", game, config, 9, 0.0)
    process = subprocess.Popen([sys.executable, "ddqn_atari_layernorm.py", "aggregate", "--runs-dir", str(tmp_path),
                                "--num-boot", "1000000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:  # the per-game table is printed; its files and figure take a second or two
        if line.startswith("median improvement"):
            break
    time.sleep(5)  # well into the bootstrap (minutes at 10^6 replicates)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 75, err
    assert err.strip().splitlines()[-1] == ("SIGTERM before aggregate wrote its outputs (the earlier ones are "
                                            "unchanged): run the same command again")
    assert outputs(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_new_analysis_replaces_every_output_of_the_previous_one(tmp_path):
    """Two protocols, then one (the longer runs removed): the protocol-<id> folders go; then two again: the top
    level's outputs of the one-protocol analysis go. A file of the user's in a protocol folder stays."""
    write_runs(tmp_path)
    write_runs(tmp_path, total_frames=8000, prefix="long_")
    aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=100, num_boot_profile=100))
    short, long = (protocol_folders(tmp_path)[frames] for frames in (4000, 8000))
    assert (long / "aggregate_metrics.csv").exists()
    (short / "notes.txt").write_text("mine")
    for long_run in tmp_path.glob("long_*"):
        shutil.rmtree(long_run)
    aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=100, num_boot_profile=100))
    assert not long.exists() and (tmp_path / "aggregate_metrics.csv").exists()
    assert [p.name for p in short.iterdir()] == ["notes.txt"]
    write_runs(tmp_path, total_frames=8000, prefix="long_")
    aggregate(AggregateArgs(runs_dir=str(tmp_path), num_boot=100, num_boot_profile=100))
    assert not any((tmp_path / name).exists() for name in atari_stats.OUTPUTS)
    assert (short / "notes.txt").exists() and (long / "protocol.json").exists()  # the same protocol, the same folder
