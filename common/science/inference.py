"""Tests of a correlation measured within the cells of a grid, and their correction for multiplicity.

A cell is one setting of a grid's factors; only its seeds differ. Seeds are the replicates: under the null that a
statistic x is unrelated to an outcome y inside every cell, the seeds of a cell are exchangeable, so permuting y
among the seeds of each cell, independently across cells, gives the exact null distribution of any statistic of
(x, y), whatever the cells' means do (they can make or hide a pooled correlation: Simpson's paradox).

    test = within_cell_test(x, y, cells)          # rho, p (two-sided), exact or Monte Carlo
    adjusted = holm([t.p for t in tests])          # family-wise error over every test reported
    critical_rho(test, alpha / len(tests))         # the smallest |rho| this test can call significant

The correlation is Spearman's within cells: ranks centred within each cell, then
``sum(rx ry) / sqrt(sum rx^2 sum ry^2)`` over all runs. Permuting y within cells leaves both sums of squares
unchanged, so the test statistic is ``T = sum(rx ry)``, a sum of independent per-cell terms. Each cell's term is
enumerated over all n! orderings of its seeds; the group's exact distribution is their convolution (ranks are
multiples of 1/2, so 4 T is an integer and the convolution is exact). Cells of more than ``EXACT_SEEDS`` seeds are
too many orderings to enumerate: then the whole group is tested by Monte Carlo with a seeded generator and the
p-value counts the observed ordering (+1 above and below the line).

Everything here is a pure function of arrays; nothing reads runs.
"""
import itertools
import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
"""the family-wise error rate that every test of an analysis shares (Holm 1979)"""
EXACT_SEEDS = 8
"""cells up to this many seeds are enumerated exactly (8! = 40,320 orderings); larger ones by Monte Carlo"""
NUM_PERMUTATIONS = 100_000
"""Monte Carlo orderings per test: its smallest p-value is 1 / 100,001, below alpha / m for m up to 5,000 tests"""
MIN_CELLS = 2
"""cells (of at least 2 seeds) a group needs to be tested. The permutation test is exact for any number of cells,
but a group of one cell is one configuration: its result says nothing about the group's level of the factor that
the other configurations of the group would share. One cell also cannot be significant after a correction over
many tests (5 seeds: 120 orderings, smallest two-sided p 1/60); two cells of 5 seeds reach 1/7,200."""
SAME_FINDING = 0.95
"""statistics whose within-cell rank correlation over the grid is at least this in magnitude are one finding: they
order a cell's seeds (almost) identically, so their tests are the same test twice"""


def centred_ranks(values, cells=None):
    """Average ranks (ties share their mean rank) minus their mean, within each cell (one label per value; all one
    cell when None): multiples of 1/2."""
    values = np.asarray(values, float)
    codes = np.zeros(len(values), np.int64) if cells is None else cell_codes(cells)
    return _ranks(values, codes)[0]


def cell_codes(cells):
    """One integer per run, numbering the cells in the sorted order of their labels."""
    return np.unique(np.asarray(cells), return_inverse=True)[1].reshape(-1)


def _ranks(values, codes, sorted_by_cell=True):
    """Centred within-cell ranks in the values' order, and (``sorted_by_cell``) each cell's sorted doubled ranks
    (integers) as a tuple."""
    order = np.lexsort((values, codes))
    v, c = values[order], codes[order]
    position = np.arange(len(v))
    new_cell = np.r_[True, c[1:] != c[:-1]]
    new_tie = new_cell | np.r_[True, v[1:] != v[:-1]]
    cell_start = np.maximum.accumulate(np.where(new_cell, position, 0))
    tie = np.cumsum(new_tie) - 1
    size = np.bincount(c)[c]
    # a tie of k values from rank r shares r + (k - 1) / 2, doubled to stay in integers
    doubled = 2 * (position[new_tie][tie] - cell_start) + np.bincount(tie)[tie] + 1 - (size + 1)
    centred = np.empty(len(v))
    centred[order] = doubled / 2
    if not sorted_by_cell or not len(v):
        return centred, []
    return centred, [tuple(part) for part in np.split(doubled.astype(np.int64), position[new_cell][1:])]


@dataclass
class WithinCellTest:
    rho: float
    """the within-cell rank correlation (NaN where x or y is constant within every cell)"""
    p: float
    """two-sided p-value: the null probability of |T| at least the observed"""
    exact: bool
    """True: the full permutation distribution; False: Monte Carlo"""
    orderings: float
    """orderings of the seeds within cells that the null covers: the product of n_c!"""
    cells: int
    """cells with at least 2 runs (the others carry no within-cell information)"""
    runs: int
    null_values: np.ndarray
    """4 T under the null: the support (exact) or the draws (Monte Carlo)"""
    null_weights: np.ndarray
    """the probability of each support value (exact), or ones (Monte Carlo)"""
    scale: float
    """4 sqrt(sum rx^2 sum ry^2): rho = 4 T / scale"""


def _cell_null(a, b, _cache={}):
    """The null distribution of one cell's 4 sum(a b[pi]) over every ordering pi of its seeds: (lowest value, pmf).
    ``a``, ``b``: the cell's sorted doubled ranks. Cells without ties share theirs, so each is computed once."""
    key = (a, b)
    if key not in _cache:
        orderings = np.array(list(itertools.permutations(range(len(b)))), dtype=np.int64)
        terms = np.asarray(b)[orderings] @ np.asarray(a)
        _cache[key] = (int(terms.min()), np.bincount(terms - terms.min()) / len(terms))
    return key, _cache[key]


def _group_null(cells, _cache={}):
    """The convolution of the cells' null distributions: (values of 4 T, probabilities), cached by the cells' keys."""
    keys = tuple(sorted(key for key, _ in cells))
    if keys not in _cache:
        low, probabilities = 0, np.ones(1)
        for _, (cell_low, pmf) in cells:
            low, probabilities = low + cell_low, np.convolve(probabilities, pmf)
        values = np.arange(len(probabilities), dtype=np.int64) + low
        keep = probabilities > 0
        _cache[keys] = values[keep], probabilities[keep]
    return _cache[keys]


def within_cell_test(x, y, cells, *, seed=0, num_permutations=NUM_PERMUTATIONS, exact_seeds=EXACT_SEEDS):
    """The within-cell rank correlation of (x, y) and its permutation test: y permuted among the runs of each cell
    (``cells``: one label per run), independently across cells."""
    x, y, codes = np.asarray(x, float), np.asarray(y, float), cell_codes(cells)
    informative = np.bincount(codes)[codes] > 1  # a cell of one run has no ordering to permute
    x, y, codes = x[informative], y[informative], np.unique(codes[informative], return_inverse=True)[1].reshape(-1)
    (rx, sorted_x), (ry, sorted_y) = _ranks(x, codes), _ranks(y, codes)
    observed = int(round(4 * float(rx @ ry)))
    scale = 4 * math.sqrt(float(rx @ rx) * float(ry @ ry))
    sizes = np.bincount(codes) if len(codes) else np.zeros(0, np.int64)
    orderings = float(np.prod([math.factorial(n) for n in sizes]))
    runs = len(cells)
    if scale == 0:  # no variation inside any cell: the correlation is undefined and nothing can be tested
        return WithinCellTest(math.nan, 1.0, True, orderings, len(sizes), runs, np.zeros(1), np.ones(1), 0.0)
    if sizes.max() <= exact_seeds:
        values, probabilities = _group_null([_cell_null(a, b) for a, b in zip(sorted_x, sorted_y)])
        p = float(probabilities[np.abs(values) >= abs(observed)].sum())
        return WithinCellTest(observed / scale, min(p, 1.0), True, orderings, len(sizes), runs, values,
                              probabilities, scale)
    rng = np.random.default_rng(seed)
    draws = np.zeros(num_permutations, np.int64)
    for cell in range(len(sizes)):  # each cell's seeds shuffled independently in every draw
        a, b = 2 * rx[codes == cell], 2 * ry[codes == cell]
        shuffled = rng.permuted(np.broadcast_to(b, (num_permutations, len(b))), axis=1)
        draws += np.rint(shuffled @ a).astype(np.int64)
    p = (1 + int((np.abs(draws) >= abs(observed)).sum())) / (num_permutations + 1)
    return WithinCellTest(observed / scale, p, False, orderings, len(sizes), runs, draws,
                          np.ones(num_permutations), scale)

def critical_rho(test, level):
    """The smallest |rho| that ``test``'s null distribution calls significant at ``level`` (two-sided), or None
    when no value can be (too few orderings, or too few Monte Carlo draws). A true within-cell correlation of this
    size is found about half the time; a larger one more often."""
    if test.scale == 0:
        return None
    magnitudes = np.abs(test.null_values)
    thresholds = np.unique(magnitudes)  # candidate |4 T|, ascending
    mass = np.bincount(np.searchsorted(thresholds, magnitudes), test.null_weights, minlength=len(thresholds))
    tail = np.cumsum(mass[::-1])[::-1]  # null mass at or above each threshold
    p = tail if test.exact else (1 + tail) / (len(test.null_values) + 1)
    reachable = thresholds[p <= level]
    if not len(reachable):
        return None
    return float(reachable.min() / test.scale)


def smallest_p(test):
    """The smallest p-value ``test`` can produce (the most extreme ordering)."""
    if test.exact:
        magnitudes = np.abs(test.null_values)
        return float(test.null_weights[magnitudes == magnitudes.max()].sum())
    return 1 / (len(test.null_values) + 1)


def holm(p_values):
    """Holm's step-down adjusted p-values (family-wise error control under any dependence between the tests), in
    the order given; None entries (tests not made) stay None and do not count in the family."""
    index = [i for i, p in enumerate(p_values) if p is not None]
    m = len(index)
    adjusted = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(index, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def sign_reversals(rows, alpha=ALPHA, family=("statistic", "target", "group_by")):
    """Pairs of groups of one grouping (rows equal in every ``family`` key) that are significant after correction
    (``p_adjusted`` at most ``alpha``) with opposite signs of ``rho``: the statistic correlates positively with the
    outcome in one group and negatively in the other."""
    significant = [r for r in rows if r.get("p_adjusted") is not None and r["p_adjusted"] <= alpha]
    return [{**{k: p[k] for k in family}, "positive": p["group"], "negative": n["group"],
             "rho_positive": p["rho"], "rho_negative": n["rho"],
             "p_adjusted_positive": p["p_adjusted"], "p_adjusted_negative": n["p_adjusted"]}
            for p in significant if p["rho"] > 0
            for n in significant if n["rho"] < 0 and all(n[k] == p[k] for k in family)]


def within_cell_rho(x, y, cells):
    """The within-cell rank correlation of x and y over the runs where both are finite (NaN without variation)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    codes = cell_codes(np.asarray(cells)[ok])
    return _rho(_ranks(x[ok], codes, False)[0], _ranks(y[ok], codes, False)[0])


def _rho(rx, ry):
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denominator if denominator > 0 else math.nan


def within_cell_correlation_matrix(columns, cells):
    """{(a, b): ``within_cell_rho`` of columns a and b} for every pair of names, sorted."""
    codes = cell_codes(cells)
    columns = {name: np.asarray(values, float) for name, values in columns.items()}
    ranks = {name: _ranks(v, codes, False)[0] for name, v in columns.items() if np.isfinite(v).all()}
    return {(a, b): _rho(ranks[a], ranks[b]) if a in ranks and b in ranks else
            within_cell_rho(columns[a], columns[b], cells) for a, b in itertools.combinations(sorted(columns), 2)}


def same_findings(columns, cells, threshold=SAME_FINDING):
    """Statistics that order the seeds of each cell (almost) alike, as one finding: a list of groups (each a sorted
    list of names, singletons included), joined wherever two statistics' within-cell rank correlation is at least
    ``threshold`` in magnitude; and the correlations that joined them."""
    correlation = within_cell_correlation_matrix(columns, cells)
    group = {name: {name} for name in columns}
    joined = {}
    for (a, b), rho in correlation.items():
        if np.isfinite(rho) and abs(rho) >= threshold:
            joined[f"{a} ~ {b}"] = rho
            merged = group[a] | group[b]
            for name in merged:
                group[name] = merged
    groups = sorted({tuple(sorted(g)) for g in group.values()})
    return [list(g) for g in groups], joined
