"""Statistics across seeds, from well-kept libraries (Agarwal et al. 2021's recommendations):

* the median and the interquartile mean (IQM, rliable's ``aggregate_iqm``) of the runs' final
  scores, each with a 95% percentile bootstrap confidence interval (``scipy.stats.bootstrap``,
  vectorised: resampling seeds);
* the probability of improvement P(X > Y) (rliable's ``probability_of_improvement``, the
  Mann-Whitney U statistic over n·m pairs, ties counting one half) with a stratified bootstrap
  interval: X's and Y's seeds are resampled independently, as in rliable;
* the one-sided exact permutation test of P(X > Y) (``scipy.stats.permutation_test`` over every
  split of the pooled seeds: the Mann-Whitney test with ties handled exactly), Holm's step-down
  adjustment across a claim's rivals, and the difference of medians with its bootstrap interval.
  These are what the claims' verdicts rest on (reports/claims.py): at 2 vs 2 seeds a complete
  separation has p = 1/6, at 3 vs 3 p = 1/20, at 5 vs 5 p = 1/252.

Bootstraps use a fixed seed, so a report is reproducible. With one seed there is no interval:
the interval collapses to the point and the report says n = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rliable import metrics as rly_metrics
from scipy import stats

CONFIDENCE = 0.95
REPS = 2000
SEED = 0


@dataclass(frozen=True)
class Aggregate:
    n: int
    median: float
    median_lo: float
    median_hi: float
    iqm: float
    iqm_lo: float
    iqm_hi: float


def _iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return stats.trim_mean(x, 0.25, axis=axis)


def _bootstrap(data: tuple[np.ndarray, ...], statistic, reps: int, seed: int, axis: int = 0) -> tuple:
    ci = stats.bootstrap(
        data,
        statistic,
        n_resamples=reps,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
        axis=axis,
        vectorized=True,
    ).confidence_interval
    return ci.low, ci.high


def aggregate(values, reps: int = REPS, seed: int = SEED) -> Aggregate:
    """Median and IQM over seeds of one cell's final scores, with bootstrap CIs."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        nan = float("nan")
        return Aggregate(0, nan, nan, nan, nan, nan, nan)
    median = float(np.median(x))
    iqm = float(rly_metrics.aggregate_iqm(x[:, None]))
    if len(x) == 1 or np.all(x == x[0]):
        return Aggregate(len(x), median, median, median, iqm, iqm, iqm)
    m_lo, m_hi = _bootstrap((x,), np.median, reps, seed)
    i_lo, i_hi = _bootstrap((x,), _iqm, reps, seed)
    return Aggregate(len(x), median, float(m_lo), float(m_hi), iqm, float(i_lo), float(i_hi))


@dataclass(frozen=True)
class Improvement:
    p: float
    lo: float
    hi: float
    n_x: int
    n_y: int


def _poi(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) along ``axis`` (vectorised over bootstrap resamples)."""
    u = stats.mannwhitneyu(x, y, axis=axis, alternative="two-sided", method="asymptotic").statistic
    return u / (x.shape[axis] * y.shape[axis])


def probability_of_improvement(x, y, reps: int = REPS, seed: int = SEED) -> Improvement:
    """P(a run of X scores higher than a run of Y), both samples of final scores over seeds."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        nan = float("nan")
        return Improvement(nan, nan, nan, len(x), len(y))
    p = float(rly_metrics.probability_of_improvement(x[:, None], y[:, None]))
    if np.all(np.concatenate([x, y]) == x[0]) or (len(x) < 2 and len(y) < 2):
        return Improvement(p, p, p, len(x), len(y))
    if len(x) >= 2 and len(y) >= 2:
        lo, hi = _bootstrap((x, y), _poi, reps, seed, axis=-1)
    else:  # scipy's bootstrap needs two values per sample: resample both sides by hand
        rng = np.random.default_rng(seed)
        boot = _poi(x[rng.integers(0, len(x), (reps, len(x)))], y[rng.integers(0, len(y), (reps, len(y)))])
        lo, hi = np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Improvement(p, float(lo), float(hi), len(x), len(y))


@dataclass(frozen=True)
class OneSidedTest:
    """H1: a run of X scores higher than a run of Y (P(X > Y) > 1/2)."""

    p: float  # nan when a side has fewer than two seeds (no test)
    exact: bool  # every split enumerated (else a Monte Carlo estimate over MAX_PERMUTATIONS splits)
    n_x: int
    n_y: int


# Up to this many distinct splits of the pooled seeds the test enumerates them all (8 vs 8: 12,870).
MAX_PERMUTATIONS = 20_000


def _poi_pairs(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) by counting pairs (vectorised over permutations)."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    d = x[..., :, None] - y[..., None, :]
    return ((d > 0) + 0.5 * (d == 0)).mean(axis=(-2, -1))


def one_sided_test(x, y, seed: int = SEED) -> OneSidedTest:
    """Exact permutation test of P(X > Y) > 1/2 on the seeds' final scores (scipy)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) < 2 or len(y) < 2:
        return OneSidedTest(float("nan"), False, len(x), len(y))
    res = stats.permutation_test(
        (x, y),
        _poi_pairs,
        permutation_type="independent",
        alternative="greater",
        n_resamples=MAX_PERMUTATIONS,
        vectorized=True,
        axis=-1,
        batch=2_000,
        rng=np.random.default_rng(seed),
    )
    exact = math.comb(len(x) + len(y), len(x)) <= MAX_PERMUTATIONS
    return OneSidedTest(float(res.pvalue), exact, len(x), len(y))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error rate), in the input's order; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, (len(ok) - rank) * p[i])
        out[i] = min(1.0, running)
    return out


@dataclass(frozen=True)
class Difference:
    value: float  # median(X) - median(Y)
    lo: float
    hi: float


def median_difference(x, y, reps: int = REPS, seed: int = SEED) -> Difference:
    """median(X) - median(Y) with a stratified percentile bootstrap interval (seeds of each side
    resampled independently)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        nan = float("nan")
        return Difference(nan, nan, nan)
    d = float(np.median(x) - np.median(y))
    if (len(x) < 2 and len(y) < 2) or (np.all(x == x[0]) and np.all(y == y[0])):
        return Difference(d, d, d)

    def diff(a, b, axis=-1):
        return np.median(a, axis=axis) - np.median(b, axis=axis)

    if len(x) >= 2 and len(y) >= 2:
        lo, hi = _bootstrap((x, y), diff, reps, seed, axis=-1)
    else:
        rng = np.random.default_rng(seed)
        boot = diff(x[rng.integers(0, len(x), (reps, len(x)))], y[rng.integers(0, len(y), (reps, len(y)))])
        lo, hi = np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Difference(d, float(lo), float(hi))


def curve_band(matrix, reps: int = REPS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median over seeds (rows) at each evaluation point (columns), with a bootstrap CI per point.
    NaNs (a seed without that evaluation) are left out of that point."""
    m = np.asarray(matrix, dtype=float)
    med = np.nanmedian(m, axis=0)
    lo, hi = med.copy(), med.copy()
    for j in range(m.shape[1]):
        col = m[:, j][np.isfinite(m[:, j])]
        if len(col) > 1 and not np.all(col == col[0]):
            lo[j], hi[j] = _bootstrap((col,), np.median, reps, seed)
    return med, lo, hi
