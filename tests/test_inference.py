"""common.science.inference against independent references: brute-force enumeration of every ordering, scipy's ranks,
statsmodels' Holm."""
import itertools

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr
from statsmodels.stats.multitest import multipletests

from common.science import inference


def ranks_by_hand(values, cells):
    out = np.empty(len(values))
    for cell in set(cells):
        idx = [i for i, c in enumerate(cells) if c == cell]
        r = rankdata(np.asarray(values)[idx])
        out[idx] = r - r.mean()
    return out


def test_centred_ranks_within_cells_match_scipy_with_ties():
    cells = list("aabbbcccc") + ["d"]
    values = [2.0, 2, 1, 3, 1, 4, 4, 4, 0, 7]
    assert inference.centred_ranks(values, cells) == pytest.approx(ranks_by_hand(values, cells), abs=1e-12)
    assert inference.centred_ranks([3.0, 1, 2, 2]) == pytest.approx(rankdata([3, 1, 2, 2]) - 2.5, abs=1e-12)


def test_exact_p_value_is_the_share_of_all_orderings_as_extreme():
    """Two cells (3 and 4 runs, with ties in both x and y): every one of the 3! x 4! orderings of y within cells."""
    x = np.array([1.0, 2, 2, 5, 3, 1, 4])
    y = np.array([0.3, 0.1, 0.2, 4, 4, 1, 2])
    cells = ["a"] * 3 + ["b"] * 4
    test = inference.within_cell_test(x, y, cells)
    rx, ry = ranks_by_hand(x, cells), ranks_by_hand(y, cells)
    assert test.rho == pytest.approx(rx @ ry / np.sqrt((rx @ rx) * (ry @ ry)), abs=1e-12)
    null = [rx[:3] @ ry[:3][list(p)] + rx[3:] @ ry[3:][list(q)]
            for p in itertools.permutations(range(3)) for q in itertools.permutations(range(4))]
    assert test.exact and test.orderings == 144 and test.cells == 2
    assert test.p == pytest.approx(np.mean(np.abs(null) >= abs(rx @ ry) - 1e-9), abs=1e-12)
    # a cell of one run carries nothing: adding one changes neither rho nor p
    more = inference.within_cell_test(np.r_[x, 9.0], np.r_[y, -3.0], cells + ["c"])
    assert (more.rho, more.p, more.cells, more.runs) == (pytest.approx(test.rho), pytest.approx(test.p), 2, 8)


def test_monte_carlo_agrees_with_the_exact_distribution_and_is_seeded():
    rng = np.random.default_rng(1)
    cells = np.repeat(np.arange(6), 5)
    x = rng.normal(size=30)
    y = 0.4 * x + rng.normal(size=30)
    exact = inference.within_cell_test(x, y, cells)
    mc = inference.within_cell_test(x, y, cells, exact_seeds=4, num_permutations=20_000, seed=3)
    assert not mc.exact and mc.rho == exact.rho
    assert abs(mc.p - exact.p) < 4 * np.sqrt(exact.p * (1 - exact.p) / 20_000) + 1e-4
    assert mc.p == inference.within_cell_test(x, y, cells, exact_seeds=4, num_permutations=20_000, seed=3).p
    # the observed ordering counts: a Monte Carlo p is never below 1 / (draws + 1)
    strong = inference.within_cell_test(x, x, cells, exact_seeds=4, num_permutations=1_000)
    assert strong.p == pytest.approx(1 / 1_001) and inference.smallest_p(strong) == pytest.approx(1 / 1_001)
    assert inference.within_cell_test(x, x, cells).p == pytest.approx(2 / 120 ** 6)  # both extreme orderings


def test_cell_means_neither_make_nor_hide_the_sign():
    """Simpson's paradox: more of x goes with less of y inside each cell, while the cells with more x also have
    more y. Spearman over all runs is positive; the within-cell test sees the negative sign."""
    rng = np.random.default_rng(0)
    cells = np.repeat(np.arange(12), 5)
    noise = rng.normal(size=60)
    x = 3.0 * cells + noise
    y = 3.0 * cells - noise + rng.normal(0, 0.3, 60)
    test = inference.within_cell_test(x, y, cells)
    assert spearmanr(x, y).statistic > 0.8
    assert test.rho < -0.5 and test.p < 1e-6


def test_critical_rho_is_the_smallest_significant_correlation():
    rng = np.random.default_rng(2)
    cells = np.repeat(np.arange(4), 5)
    test = inference.within_cell_test(rng.normal(size=20), rng.normal(size=20), cells)
    level = 0.01
    critical = inference.critical_rho(test, level)
    rhos = np.abs(test.null_values) / test.scale
    tail = [test.null_weights[rhos >= r - 1e-12].sum() for r in np.unique(rhos)]
    assert critical == pytest.approx(min(r for r, p in zip(np.unique(rhos), tail) if p <= level))
    assert max((r for r, p in zip(np.unique(rhos), tail) if p > level)) < critical
    # one cell of 5 seeds: 120 orderings, smallest two-sided p 2/120, so nothing below 1/60 is reachable
    one = inference.within_cell_test(np.arange(5.0), np.arange(5.0), [0] * 5)
    assert inference.smallest_p(one) == pytest.approx(1 / 60)
    assert inference.critical_rho(one, 0.01) is None and inference.critical_rho(one, 0.02) == pytest.approx(1.0)


def test_holm_matches_statsmodels_and_skips_untested():
    rng = np.random.default_rng(4)
    p = list(rng.uniform(0, 0.1, 30) ** 2)
    expected = multipletests(p, method="holm")[1]
    assert inference.holm(p) == pytest.approx(list(expected), abs=1e-15)
    assert inference.holm([0.01, None, 0.04, 0.03]) == [pytest.approx(0.03), None, pytest.approx(0.06),
                                                         pytest.approx(0.06)]


def test_a_reversal_needs_two_groups_significant_in_opposite_directions_after_correction():
    def row(group, rho, p_adjusted, statistic="stats/w"):
        return {"statistic": statistic, "target": "loss", "group_by": "optimizer", "group": group, "rho": rho,
                "p_adjusted": p_adjusted}

    rows = [row("adam", 0.6, 0.01), row("sgd", -0.7, 0.04), row("rmsprop", -0.2, 0.5),
            row("adam", 0.6, 0.01, "stats/d"), row("sgd", -0.7, 0.2, "stats/d")]
    reversals = inference.sign_reversals(rows)
    assert [(r["statistic"], r["positive"], r["negative"]) for r in reversals] == [("stats/w", "adam", "sgd")]
    assert inference.sign_reversals(rows, alpha=0.03) == []


def test_statistics_that_order_seeds_alike_are_one_finding():
    rng = np.random.default_rng(5)
    cells = np.repeat(np.arange(8), 5)
    norm = rng.normal(size=40) + cells
    columns = {"norm": norm, "distance": np.exp(norm) + 1e-3 * rng.normal(size=40) - 2 * cells,
               "dead": rng.normal(size=40), "alive": -rng.normal(size=40)}
    columns["alive"] = -columns["dead"] * 2 + 5 * cells  # a mirror image: the same ordering reversed
    groups, joined = inference.same_findings(columns, cells)
    assert groups == [["alive", "dead"], ["distance", "norm"]]
    assert joined["alive ~ dead"] == pytest.approx(-1.0) and joined["distance ~ norm"] > 0.95
