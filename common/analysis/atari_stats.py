"""Aggregate Atari statistics of LayerNorm against the baseline (Sec 6.3, Fig 7 top) and the field's aggregates.

- The paper's per-game improvement (Wang et al. 2016): (LN - baseline) / (max(human, baseline) - random) of the
  seed-mean final scores.
- rliable's (Agarwal et al. 2021) aggregates of human-normalised scores, per configuration: IQM, median, mean and
  optimality gap, each with a stratified bootstrap 95% interval; the probability of improvement of LayerNorm over
  the baseline; performance profiles (the fraction of runs scoring above tau).

The point estimates are ``rliable.metrics`` (the profiles' is rliable's score distribution, which lives in
``rliable.library``, written here). The bootstrap intervals are rliable.library's, computed here vectorised over
replicates: rliable's ``get_interval_estimates`` and ``create_performance_profile`` run one replicate at a time
(its probability of improvement is a scipy Mann-Whitney test per game), about 100 times slower at the MinAtar
grid's size (``benchmarks/bench_rliable.py``). The indices are drawn in the order of rliable's
``StratifiedBootstrap`` and ``StratifiedIndependentBootstrap`` (runs resampled with replacement within each game,
games kept) from ``RandomState(seed)``, and the intervals are arch's percentile intervals, so they equal
rliable.library's after ``np.random.seed(seed)`` (tested against the library itself).

Runs of different protocols (every Args field but the axes, the seeds, the paths and the speed settings:
``common.analysis.validity``) are never pooled: each protocol is analysed on its own.

MinAtar runs (``MinAtar/<Game>-v1``; an ALE run and a MinAtar run never share a protocol: their preprocessing
field differs) have no human scores. Their normalised score is (score - random) / (reference - random): random is
the uniformly random policy's mean return measured with the training protocol's sticky actions
(common/science/minatar_scores.csv, 1,000 episodes per game, ``python -m common.science.minatar``), and the reference is the best
seed-mean final score of a configuration in the protocol analysed (1 = the better configuration's mean). A game
where neither configuration's mean beats the random policy has no normalised score and no improvement: it is
reported per game and left out of the aggregates. No
published table of MinAtar DQN returns fixes a reference (Young & Tian 2019 report theirs as curves), so the
scale is relative to the runs analysed: comparable within one aggregate, not across aggregates. The "human"
column of the CSV files holds this reference for MinAtar games. The learning curves (evaluation return against
agent steps, mean and a Student-t 95% interval over seeds) are drawn for both families.
"""
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import pandas as pd
import scipy.stats
from rliable import metrics

from common.analysis.results import Unreadable, read_metrics, read_runs
from common.analysis.validity import differing_fields, split_protocols
from common.errors import UsageError, check
from common.runtime import run
from common.runtime.logger import pyplot
from common.science.atari import game_name, load_atari_scores
from common.science.minatar import PREFIX, is_minatar, load_random_scores

CONFIGS = {True: "LayerNorm", False: "baseline"}  # args.layer_norm -> configuration name
SCORE = "eval/episodic_return"  # the final evaluation's mean episode return (DQN Zoo's protocol)
AXES = ("env_id", "layer_norm")  # what the analysis compares; every other field but NOT_PROTOCOL is the protocol
PROFILE_TAUS = np.linspace(0.0, 8.0, 81)  # rliable's Atari 200M example (README): human-normalised 0 to 8
METRICS = ("IQM", "median", "mean", "optimality gap")
COLORS = {CONFIGS[True]: "tab:blue", CONFIGS[False]: "tab:gray"}
OUTPUTS = ("human_normalized_scores.csv", "fig7_layernorm_improvement.csv", "fig7_layernorm_improvement.png",
           "aggregate_metrics.csv", "probability_of_improvement.csv", "performance_profiles.csv",
           "aggregate_metrics.png", "performance_profiles.png", "protocol.json")  # what one protocol's analysis writes
PROTOCOL_DIR = re.compile(r"protocol-\w+")


# ---------------------------------------------------------------------------------------------------- estimators
# Each takes scores of shape (..., runs, games) and reduces the last two axes, as rliable.metrics does for one
# (runs, games) matrix; the leading axes are bootstrap replicates.
def iqm(scores):
    """Interquartile mean over all runs and games: scipy's 25% trimmed mean (rliable.metrics.aggregate_iqm)."""
    return scipy.stats.trim_mean(scores.reshape(*scores.shape[:-2], -1), 0.25, axis=-1)


def median_of_means(scores):
    return np.median(scores.mean(axis=-2), axis=-1)


def mean_of_means(scores):
    return scores.mean(axis=-2).mean(axis=-1)


def optimality_gap(scores, gamma=1.0):
    """How far runs fall short of human level: gamma - mean(min(score, gamma)) (rliable's gamma = 1)."""
    return gamma - np.minimum(scores, gamma).mean(axis=(-2, -1))


def aggregates(scores):
    """The four aggregates of METRICS, stacked on a last axis."""
    return np.stack([iqm(scores), median_of_means(scores), mean_of_means(scores), optimality_gap(scores)], axis=-1)


def probability_of_improvement(x, y):
    """P(X > Y) of a random run of X against one of Y on the same game, ties counting 1/2, averaged over games:
    the Mann-Whitney U of rliable.metrics.probability_of_improvement divided by the number of pairs."""
    x, y = x[..., :, None, :], y[..., None, :, :]
    return ((x > y).mean(axis=(-3, -2)) + 0.5 * (x == y).mean(axis=(-3, -2))).mean(axis=-1)


def score_distribution(scores, taus):
    """Fraction of all runs (of all games) scoring above each tau: rliable's performance profile."""
    flat = scores.reshape(*scores.shape[:-2], -1)
    return (flat[..., None, :] > np.asarray(taus)[:, None]).mean(axis=-1)


# ---------------------------------------------------------------------------------------------------- bootstrap
def resample(scores, indices):
    """scores[indices[r, n, m], m]: replicate r keeps every game m and draws its runs."""
    return np.take_along_axis(scores[None], indices, axis=1)


def stratified_bootstrap(statistic, scores, num_boot, rng, chunk=5_000):
    """Replicates of ``statistic`` (leading axis num_boot) under rliable's StratifiedBootstrap draws, computed
    ``chunk`` replicates at a time to bound memory (the draws are the same)."""
    return np.concatenate([statistic(resample(scores, rng.choice(scores.shape[0], (min(chunk, num_boot - start),
                                                                                   *scores.shape))))
                           for start in range(0, num_boot, chunk)])


def independent_bootstrap(statistic, x, y, num_boot, rng, chunk=5_000):
    """Replicates of ``statistic(x, y)`` with x's and y's runs drawn independently within each game, one replicate
    at a time in the order of rliable's StratifiedIndependentBootstrap."""
    out = []
    for start in range(0, num_boot, chunk):
        draws = [(rng.choice(x.shape[0], x.shape), rng.choice(y.shape[0], y.shape))
                 for _ in range(min(chunk, num_boot - start))]
        out.append(statistic(resample(x, np.stack([d[0] for d in draws])),
                             resample(y, np.stack([d[1] for d in draws]))))
    return np.concatenate(out)


def percentile_interval(replicates, size=0.95):
    """(lower, upper) of the central ``size`` of the replicates (arch's ``percentile`` method)."""
    alpha = 100 * (1 - size) / 2
    return np.percentile(replicates, alpha, axis=0), np.percentile(replicates, 100 - alpha, axis=0)


def interval_estimates(scores_by_config, num_boot, num_boot_profile, seed):
    """Point estimates and 95% intervals for one (runs, games) matrix per configuration:
    ``{"aggregates": {config: (point[4], lower[4], upper[4])}, "improvement": (point, lower, upper),
    "profiles": {config: (point[taus], lower[taus], upper[taus])}}``. Each of the three draws from its own
    RandomState(seed), configurations in the order given, as three rliable calls after np.random.seed(seed) do."""
    x, y = scores_by_config[CONFIGS[True]], scores_by_config[CONFIGS[False]]
    rng = np.random.RandomState(seed)
    aggregate_intervals = {c: percentile_interval(stratified_bootstrap(aggregates, s, num_boot, rng))
                           for c, s in scores_by_config.items()}
    rng = np.random.RandomState(seed)
    improvement = percentile_interval(independent_bootstrap(probability_of_improvement, x, y, num_boot, rng))
    rng = np.random.RandomState(seed)
    profile = lambda s: score_distribution(s, PROFILE_TAUS)  # noqa: E731
    profile_intervals = {c: percentile_interval(stratified_bootstrap(profile, s, num_boot_profile, rng))
                         for c, s in scores_by_config.items()}
    rliable_aggregates = lambda s: np.array([metrics.aggregate_iqm(s), metrics.aggregate_median(s),  # noqa: E731
                                             metrics.aggregate_mean(s), metrics.aggregate_optimality_gap(s)])
    return {"aggregates": {c: (rliable_aggregates(s), *aggregate_intervals[c]) for c, s in scores_by_config.items()},
            "improvement": (metrics.probability_of_improvement(x, y), *improvement),
            "profiles": {c: (profile(s), *profile_intervals[c]) for c, s in scores_by_config.items()}}


# ---------------------------------------------------------------------------------------------------- runs
def final_scores(runs):
    """One row per usable run of a ``common.analysis.results.RunTable``: game, config, seed, score, random and human scores
    (DQN Zoo's atari_data, in common/science/atari_scores.csv), human_normalized, the args. Others join ``runs.skipped``."""
    table, scores = runs.table, load_atari_scores()
    env_ids = table.get("args.env_id", pd.Series(None, index=table.index))
    minatar = env_ids.map(is_minatar)
    scores = {**scores, **{f"{PREFIX}{game}": (random_score, np.nan)  # the reference comes per protocol
                           for game, random_score in load_random_scores().items()}}
    layer_norm = table.get("args.layer_norm", pd.Series(None, index=table.index))
    final = pd.to_numeric(table.get(SCORE, pd.Series(np.nan, index=table.index)), errors="coerce")
    episodes = pd.to_numeric(table.get("eval/episodes", pd.Series(np.nan, index=table.index)), errors="coerce")
    games = env_ids.map(lambda e: game_name(e) if isinstance(e, str) else None)
    games[minatar] = PREFIX + games[minatar]  # MinAtar/Breakout is not the ALE's Breakout
    atari = games.notna() & layer_norm.map(lambda v: isinstance(v, (bool, np.bool_)))
    known = atari & games.isin(list(scores))
    # a final evaluation that finished no episode has no score; a summary written before that was so may still
    # hold an earlier evaluation's return beside eval/episodes 0: never use it
    unscored = known & (episodes == 0)
    scored = known & ~unscored & np.isfinite(final)
    runs.skip(table.loc[~atari, "run_dir"], "not an Atari run (no env_id or layer_norm in args.json)")
    runs.skip(table.loc[atari & ~known, "run_dir"], "a game without random and human scores in common/science/atari_scores.csv "
              "or common/science/minatar_scores.csv")
    runs.skip(table.loc[unscored, "run_dir"], "its final evaluation finished no episode (eval/episodes 0): no score")
    runs.skip(table.loc[known & ~unscored & ~scored, "run_dir"], f"no finite final {SCORE} in summary.json")
    rows = table.loc[scored].assign(game=games[scored], config=layer_norm[scored].map(lambda v: CONFIGS[bool(v)]),
                                    seed=table.loc[scored].get("args.seed"), score=final[scored])
    rows["random"] = rows["game"].map(lambda g: scores[g][0])
    rows["human"] = rows["game"].map(lambda g: scores[g][1])
    rows["human_normalized"] = (rows["score"] - rows["random"]) / (rows["human"] - rows["random"])
    return rows.reset_index(drop=True)


def with_minatar_references(rows):
    """The rows of one protocol with each MinAtar game's reference (in "human": the best configuration's seed-mean
    score) and its normalised scores; ALE rows unchanged."""
    minatar = rows["game"].str.startswith(PREFIX)
    if not minatar.any():
        return rows
    rows = rows.copy()
    best = rows[minatar].groupby(["game", "config"])["score"].mean().groupby("game").max()
    rows.loc[minatar, "human"] = rows.loc[minatar, "game"].map(best)
    spread = (rows.loc[minatar, "human"] - rows.loc[minatar, "random"]).where(lambda d: d > 0, np.nan)
    rows.loc[minatar, "human_normalized"] = (rows.loc[minatar, "score"] - rows.loc[minatar, "random"]) / spread
    return rows


def learning_curves(rows):
    """Evaluation return against agent steps of each run's metrics.jsonl, per game, configuration and step: the
    mean over seeds and a Student-t 95% interval (none with one seed)."""
    points = []
    for run in rows.itertuples():
        try:
            metrics = read_metrics(os.path.join(run.run_dir, "metrics.jsonl"))
        except Unreadable:  # a run without its metrics adds no curve; its final score still counts
            continue
        for r in metrics:
            if SCORE in r:
                points.append({"game": run.game, "config": run.config, "seed": run.seed, "step": r["step"],
                               "return": r[SCORE]})
    if not points:
        return []
    out = []
    for (game, config, step), group in pd.DataFrame(points).groupby(["game", "config", "step"], sort=True):
        values = group["return"].to_numpy(float)
        mean, n = values.mean(), len(values)
        half = scipy.stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        out.append({"game": game, "config": config, "step": int(step), "mean_return": mean, "lower": mean - half,
                    "upper": mean + half, "seeds": n})
    return out


def protocols(rows):
    """([(id, label, {field: value}, rows)] for each protocol among the runs, the fields that differ between them).
    The id is ``common.analysis.validity``'s (its folder's name, as the sweeps name theirs); the label names
    total_frames and every differing field."""
    groups = split_protocols(rows, AXES)
    groups.sort(key=lambda g: json.dumps(g[1], sort_keys=True, default=str))
    groups = [(pid, {f: _plain(v) for f, v in fields.items()}, group) for pid, fields, group in groups]
    differing = differing_fields([(None, fields, None) for _, fields, _ in groups])
    shown = ["total_frames"] * any("total_frames" in p for _, p, _ in groups) + [f for f in differing
                                                                                 if f != "total_frames"]
    return [(pid, " ".join(f"{f}={p.get(f)}" for f in shown) or "unknown", p, g) for pid, p, g in groups], differing


def _plain(value):
    """A JSON-ready args value: numpy scalars as Python ones, a field missing from some args.json as None."""
    if isinstance(value, float) and np.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def score_matrices(rows):
    """(games, {config: (runs, normalised games) matrix of human-normalised scores}, dropped): the games with runs
    of both configurations; the matrices hold those with a normalised score (a MinAtar game where no configuration
    beat the random policy has none); a configuration keeps as many runs per game as its sparsest game has (the
    lowest seeds), as rliable needs one matrix, and ``dropped`` lists the run_dirs left out for that."""
    counts = rows.groupby(["game", "config"]).size().unstack(fill_value=0)
    games = sorted(g for g in counts.index if all(counts.get(c, {}).get(g, 0) > 0 for c in CONFIGS.values()))
    check(games, "no game has completed runs both with and without LayerNorm")
    normalised = [g for g in games if np.isfinite(rows.loc[rows["game"] == g, "human_normalized"]).all()]
    if len(normalised) < len(games):
        print(f"left out of the aggregates: {', '.join(sorted(set(games) - set(normalised)))}: no configuration's "
              f"mean beat the random policy, so there is no normalised score", file=sys.stderr)
    check(normalised, "no game has a normalised score: no configuration's mean beat the random policy anywhere")
    matrices, dropped = {}, []
    for config in CONFIGS.values():
        runs_per_game = int(counts.loc[normalised, config].min())
        sparsest = counts.loc[normalised, config].idxmin()
        check(runs_per_game >= 2, f"{sparsest} has {runs_per_game} completed {config} run: the stratified bootstrap "
                                  f"needs at least 2 runs per game and configuration (train more seeds)")
        columns = []
        for game in normalised:
            runs = rows[(rows["game"] == game) & (rows["config"] == config)].sort_values(["seed", "run_dir"])
            columns.append(runs["human_normalized"].to_numpy()[:runs_per_game])
            dropped += list(runs["run_dir"][runs_per_game:])
        matrices[config] = np.stack(columns, axis=1)
    return games, matrices, dropped


def per_game_improvement(rows, games):
    """Wang et al. (2016)'s improvement of LayerNorm over the baseline per game, from the seed means."""
    means = rows.groupby(["game", "config"])["score"].mean().unstack()
    counts = rows.groupby(["game", "config"]).size().unstack()
    first = rows.groupby("game")[["random", "human"]].first()
    out = []
    for g in games:
        ln, base = means.loc[g, CONFIGS[True]], means.loc[g, CONFIGS[False]]
        random_score, human_score = first.loc[g, "random"], first.loc[g, "human"]
        scale = max(human_score, base) - random_score  # not positive where no configuration beat random (MinAtar)
        out.append({"game": g, "layernorm_mean": ln, "baseline_mean": base, "random": random_score,
                    "human": human_score, "improvement": (ln - base) / scale if scale > 0 else np.nan,
                    "layernorm_runs": int(counts.loc[g, CONFIGS[True]]),
                    "baseline_runs": int(counts.loc[g, CONFIGS[False]])})
    return sorted(out, key=lambda r: (np.isnan(r["improvement"]), r["improvement"]))  # no improvement last


# ---------------------------------------------------------------------------------------------------- output
def write_csv(path, rows, protocol):
    pd.DataFrame(rows).assign(protocol=protocol).to_csv(path, index=False)


def analyse(rows, out_dir, protocol, num_boot, num_boot_profile, seed):
    """Every statistic of one protocol's runs, printed, drawn into out_dir and written beside as CSV."""
    games, matrices, dropped = score_matrices(rows)
    if dropped:
        print(f"left out {len(dropped)} runs beyond the per-game seed count the sparsest game allows: "
              + ", ".join(dropped), file=sys.stderr)
    os.makedirs(out_dir, exist_ok=True)
    used = rows[~rows["run_dir"].isin(dropped) & rows["game"].isin(games)]
    improvement = per_game_improvement(used, games)
    print(f"{'game':<20}{'LayerNorm':>12}{'baseline':>12}{'improvement':>13}{'runs':>8}")
    for r in improvement:
        print(f"{r['game']:<20}{r['layernorm_mean']:>12.1f}{r['baseline_mean']:>12.1f}"
              f"{100 * r['improvement']:>12.1f}%{r['layernorm_runs']:>4}/{r['baseline_runs']}")
    scored = [r["improvement"] for r in improvement if np.isfinite(r["improvement"])]
    print(f"median improvement {100 * np.median(scored):.1f}% over the {len(scored)} games where a configuration "
          f"beat the random policy" if scored else "no game where a configuration beat the random policy")
    write_csv(os.path.join(out_dir, "human_normalized_scores.csv"),
              used[["game", "config", "seed", "score", "random", "human", "human_normalized", "run_dir"]], protocol)
    write_csv(os.path.join(out_dir, "fig7_layernorm_improvement.csv"), improvement, protocol)
    draw_improvement(improvement, os.path.join(out_dir, "fig7_layernorm_improvement.png"))
    curves = learning_curves(used)
    if curves:
        write_csv(os.path.join(out_dir, "learning_curves.csv"), curves, protocol)
        draw_learning_curves(curves, os.path.join(out_dir, "learning_curves.png"))

    estimates = interval_estimates(matrices, num_boot, num_boot_profile, seed)
    shape = {c: m.shape for c, m in matrices.items()}
    aggregate_rows = [{"config": c, "metric": name, "estimate": p[i], "lower": lo[i], "upper": hi[i],
                       "runs_per_game": shape[c][0], "games": shape[c][1], "num_boot": num_boot}
                      for c, (p, lo, hi) in estimates["aggregates"].items() for i, name in enumerate(METRICS)]
    p, lo, hi = estimates["improvement"]
    improvement_rows = [{"x": CONFIGS[True], "y": CONFIGS[False], "probability_of_improvement": p, "lower": lo,
                         "upper": hi, "games": shape[CONFIGS[True]][1], "num_boot": num_boot}]
    profile_rows = [{"config": c, "tau": t, "fraction_above": p[i], "lower": lo[i], "upper": hi[i],
                     "num_boot": num_boot_profile}
                    for c, (p, lo, hi) in estimates["profiles"].items() for i, t in enumerate(PROFILE_TAUS)]
    write_csv(os.path.join(out_dir, "aggregate_metrics.csv"), aggregate_rows, protocol)
    write_csv(os.path.join(out_dir, "probability_of_improvement.csv"), improvement_rows, protocol)
    write_csv(os.path.join(out_dir, "performance_profiles.csv"), profile_rows, protocol)
    draw_aggregates(aggregate_rows, improvement_rows[0], os.path.join(out_dir, "aggregate_metrics.png"))
    draw_profiles(estimates["profiles"], os.path.join(out_dir, "performance_profiles.png"))

    for r in aggregate_rows:
        print(f"{r['config']:<10} {r['metric']:<15} {r['estimate']:8.3f}  [{r['lower']:.3f}, {r['upper']:.3f}]")
    print(f"P(LayerNorm > baseline) {p:.3f}  [{lo:.3f}, {hi:.3f}]  (95% stratified bootstrap intervals, "
          f"{num_boot:,} replicates; {shape[CONFIGS[True]][0]}/{shape[CONFIGS[False]][0]} runs per game, "
          f"{shape[CONFIGS[True]][1]} games)")
    return {"improvement": improvement, "aggregates": aggregate_rows, "probability_of_improvement": improvement_rows[0],
            "profiles": profile_rows, "games": games}


def aggregate_runs(runs_dir, output_dir=None, num_boot=50_000, num_boot_profile=2_000, seed=0):
    """The `aggregate` command: read runs_dir, analyse each protocol, and return {protocol label: results}.

    Every output is made in a hidden folder inside output_dir and moved into place only once all are made, the
    previous analysis's outputs (``OUTPUTS``, at the top and in ``protocol-<id>/``) removed in the same step: an
    aggregate stopped before then (a signal, an error) leaves the previous outputs as they were."""
    check(os.path.isdir(runs_dir), f"--runs-dir {runs_dir} is not a directory")
    check(num_boot >= 100 and num_boot_profile >= 100, "--num-boot and --num-boot-profile must be at least 100")
    output_dir = output_dir or runs_dir
    check(not os.path.exists(output_dir) or os.path.isdir(output_dir),
          f"--output-dir {output_dir} is a file, not a folder: choose another --output-dir")
    runs = read_runs(runs_dir)
    rows = final_scores(runs)
    print(runs.report())
    check(len(rows), f"no completed Atari run with a final {SCORE} in {runs_dir}")
    groups, differing = protocols(rows)
    if len(groups) > 1:
        print(f"warning: the runs follow {len(groups)} protocols (they differ in {', '.join(differing)}); each is "
              f"analysed on its own, in {output_dir}/protocol-<id>", file=sys.stderr)
    staging = _staging_dir(output_dir)
    try:
        results, failures = {}, []
        for pid, label, fields, protocol_rows in groups:
            out_dir = staging if len(groups) == 1 else os.path.join(staging, f"protocol-{pid}")
            print(f"protocol {label}: {len(protocol_rows)} runs")
            protocol_rows = with_minatar_references(protocol_rows)
            try:
                results[label] = analyse(protocol_rows, out_dir, label, num_boot, num_boot_profile, seed)
            except UsageError as e:  # too few runs in this protocol
                if len(groups) == 1:
                    raise
                failures.append(f"protocol {label}: {e}")
                print(f"not analysed: {e}", file=sys.stderr)
                continue
            with open(os.path.join(out_dir, "protocol.json"), "w") as f:
                json.dump(fields, f, indent=2)  # every protocol field of these runs
        check(results, "; ".join(failures))
        with run.deferred_signals(raise_pending=False):  # the outputs are made: a signal now stops nothing
            _publish(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"figures and CSV files: {output_dir}" + (f"/protocol-<id> ({len(results)} protocols)" * (len(groups) > 1)))
    return results


def _staging_dir(output_dir):
    """A fresh hidden folder in output_dir for the outputs being made (one a killed aggregate left is removed)."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        for name in os.listdir(output_dir):
            match = re.fullmatch(r"\.aggregate-(\d+)-\w+", name)
            if match and not _alive(int(match[1])):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
        return tempfile.mkdtemp(prefix=f".aggregate-{os.getpid()}-", dir=output_dir)
    except OSError as e:
        raise UsageError(f"--output-dir {output_dir} cannot be written ({e.strerror}): choose another "
                         f"--output-dir") from None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _publish(staging, output_dir):
    """Replace the previous analysis's outputs in output_dir by the staged ones. Only OUTPUTS are removed: a
    protocol-<id> folder holding anything else keeps it."""
    old_dirs = [name for name in os.listdir(output_dir) if PROTOCOL_DIR.fullmatch(name)
                and os.path.isdir(os.path.join(output_dir, name))]
    for folder in ["", *old_dirs]:
        for name in OUTPUTS:
            path = os.path.join(output_dir, folder, name)
            if os.path.isfile(path):
                os.remove(path)
        if folder and not os.listdir(os.path.join(output_dir, folder)):
            os.rmdir(os.path.join(output_dir, folder))
    for folder, _, files in os.walk(staging):
        target = os.path.join(output_dir, os.path.relpath(folder, staging))
        os.makedirs(target, exist_ok=True)
        for name in files:
            os.replace(os.path.join(folder, name), os.path.join(target, name))


# ---------------------------------------------------------------------------------------------------- figures
def draw_improvement(improvement, path):
    """Fig 7 (top): one bar per game, sorted."""
    plt = pyplot()
    values = [100 * r["improvement"] for r in improvement]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(values)), 4))
    ax.bar(range(len(values)), values, color=["tab:blue" if v >= 0 else "tab:red" for v in values])
    ax.set_xticks(range(len(values)), [r["game"] for r in improvement], rotation=90, fontsize=7)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylabel("human-normalised improvement of LayerNorm (%)")
    ax.axhline(0, color="black", lw=0.5)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def draw_learning_curves(curves, path):
    """One panel per game: each configuration's mean evaluation return over seeds, with its 95% band."""
    plt = pyplot()
    frame = pd.DataFrame(curves)
    games = sorted(frame["game"].unique())
    columns = min(len(games), 5)
    rows = -(-len(games) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for ax, game in zip(axes.flat, games):
        for config, group in frame[frame["game"] == game].groupby("config"):
            ax.plot(group["step"], group["mean_return"], color=COLORS[config], label=config)
            ax.fill_between(group["step"], group["lower"], group["upper"], color=COLORS[config], alpha=0.2)
        ax.set_title(game, fontsize=9)
        ax.set_xlabel("agent steps")
    for ax in axes.flat[len(games):]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("evaluation return")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_aggregates(aggregate_rows, improvement, path):
    """rliable's interval-estimate panels: one per aggregate, and the probability of improvement."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(METRICS) + 1, figsize=(3 * (len(METRICS) + 1), 1.8))
    for ax, metric in zip(axes, METRICS):
        for y, r in enumerate(r for r in aggregate_rows if r["metric"] == metric):
            ax.barh(y, r["upper"] - r["lower"], left=r["lower"], height=0.6, color=COLORS[r["config"]], alpha=0.7)
            ax.vlines(r["estimate"], y - 0.3, y + 0.3, color="black")
        ax.set_yticks(range(len(CONFIGS)), list(CONFIGS.values()) if metric == METRICS[0] else [])
        ax.set_title(metric)
        ax.set_xlabel("human-normalised score")
    ax = axes[-1]
    ax.barh(0, improvement["upper"] - improvement["lower"], left=improvement["lower"], height=0.6, color="tab:blue",
            alpha=0.7)
    ax.vlines(improvement["probability_of_improvement"], -0.3, 0.3, color="black")
    ax.axvline(0.5, color="black", lw=0.5, ls="--")
    ax.set_yticks([])
    ax.set_title("P(LayerNorm > baseline)")
    ax.set_xlabel("probability of improvement")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def draw_profiles(profiles, path):
    """Performance profiles: fraction of runs above each human-normalised score, with 95% bands."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for config, (point, lower, upper) in profiles.items():
        ax.plot(PROFILE_TAUS, point, label=config, color=COLORS[config])
        ax.fill_between(PROFILE_TAUS, lower, upper, color=COLORS[config], alpha=0.2)
    ax.set_xlabel(r"human-normalised score $\tau$")
    ax.set_ylabel(r"fraction of runs with score > $\tau$")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
