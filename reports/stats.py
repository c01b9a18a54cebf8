"""Intervals and tests, one copy: pure functions over numpy arrays of per-split scores or counts.

    t_interval(acc)                                   95 % t-interval of a mean over splits
    corrected_ttest(diffs, ratio)                     Nadeau-Bengio corrected resampled t-test
    bayes_correlated_ttest(diffs, ratio, rope=0.01)   Bayesian correlated t-test with a rope
    mcnemar_exact(only_a, only_b)                     McNemar's exact test on per-clip outcomes

`diffs` are paired per-split score differences (x - y, same split numbers, same folds); `ratio` is
n_test / n_train of those splits. Both t-tests use the same corrected variance, so they agree on
direction; they answer different questions (is the difference real / is it practically nil).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """(low, high): Student-t interval of the mean, `mean ± t_{(1+level)/2, n-1} * s / sqrt(n)`,
    s the sample standard deviation (ddof=1). One value: the interval is that value (no spread)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("t_interval of no values")
    mean = float(x.mean())
    if x.size < 2:
        return mean, mean
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean - half, mean + half


def _paired(diffs) -> np.ndarray:
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"a paired test over splits needs at least 2 differences, got {d.size}")
    if not np.isfinite(d).all():
        raise ValueError("differences must be finite")
    return d


def _check_ratio(ratio: float) -> float:
    if not (ratio >= 0 and math.isfinite(ratio)):
        raise ValueError(f"n_test / n_train must be a finite number >= 0, got {ratio}")
    return float(ratio)


def corrected_variance(diffs, ratio: float) -> float:
    """Nadeau & Bengio (2003), "Inference for the generalization error", Machine Learning 52(3):
    the variance of the mean of J resampled differences, corrected for the overlap of their
    training sets: `(1/J + n_test/n_train) * var(diffs, ddof=1)`. The plain paired t-test's 1/J
    alone underestimates it (the splits share training clips), and rejects too often."""
    d = _paired(diffs)
    return (1.0 / d.size + _check_ratio(ratio)) * float(d.var(ddof=1))


class TTest(NamedTuple):
    mean: float  # mean difference
    se: float  # corrected standard error, sqrt(corrected_variance)
    t: float  # mean / se (±inf when every difference is the same non-zero value)
    df: int  # J - 1
    p: float  # p-value of `alternative`


def corrected_ttest(diffs, ratio: float, alternative: str = "two-sided") -> TTest:
    """Nadeau-Bengio corrected resampled t-test of "mean difference = 0" over J paired splits:

        t = mean(d) / sqrt((1/J + n_test/n_train) * var(d, ddof=1)),  t ~ Student t with J - 1 df

    (Nadeau & Bengio 2003; Bouckaert & Frank 2004 for r-times repeated k-fold CV, where all J = r*k
    differences enter with the same correction). The same statistic as scikit-learn's example
    "Statistical comparison of models using grid search" (`corrected_std`,
    `compute_corrected_ttest`), whose p-value is the right tail (`alternative="greater"`).
    `alternative`: "two-sided" (default), "greater" (x better than y), "less".

    Zero variance (every difference equal): identical scores give t = 0 and p = 1; a constant
    non-zero difference gives t = ±inf and p = 0 on its side (nothing varies across splits).
    """
    d = _paired(diffs)
    mean, var = float(d.mean()), corrected_variance(d, ratio)
    df = d.size - 1
    se = math.sqrt(var)
    if var > 0:
        t = mean / se
    else:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    if alternative == "two-sided":
        p = 1.0 if t == 0 else float(2 * stats.t.sf(abs(t), df))
    elif alternative == "greater":
        p = float(stats.t.sf(t, df))
    elif alternative == "less":
        p = float(stats.t.cdf(t, df))
    else:
        raise ValueError(f"alternative must be two-sided, greater or less, not {alternative!r}")
    return TTest(mean, se, t, df, min(p, 1.0))


class Bayes(NamedTuple):
    p_better: float  # P(mu > rope): x better than y by more than the rope
    p_equiv: float  # P(-rope <= mu <= rope): practically equivalent
    p_worse: float  # P(mu < -rope): x worse than y by more than the rope
    mean: float  # posterior location (the mean difference)
    scale: float  # posterior scale
    df: int  # J - 1


def bayes_correlated_ttest(diffs, ratio: float, rope: float = 0.01) -> Bayes:
    """Bayesian correlated t-test (Corani & Benavoli 2015, "A Bayesian approach for comparing
    cross-validated algorithms on multiple data sets", Machine Learning 100; Benavoli, Corani,
    Demšar & Zaffalon 2017, "Time for a change", JMLR 18(77)). With correlation
    rho = n_test / (n_test + n_train) between the differences of splits that share training data,
    the posterior of the mean difference mu is Student t with

        df = J - 1,  location = mean(d),  scale^2 = (1/J + rho/(1-rho)) * var(d, ddof=1)

    and rho/(1-rho) = n_test/n_train = `ratio`: the Nadeau-Bengio variance. The three
    probabilities are the posterior mass right of the rope, inside [-rope, rope], and left of it.
    For r-times repeated CV, Corani & Benavoli use all J = r*k differences with the same rho.
    baycomp's `two_on_single(y, x, rope, runs)` is this test with rho fixed at 1/k (no validation
    fold); here rho comes from the splits' real sizes.

    Zero variance (every difference equal): the posterior is a point mass at the mean, so
    P(equivalent) = 1 when |mean| <= rope, else P(better) or P(worse) = 1.
    """
    d = _paired(diffs)
    if not (rope >= 0 and math.isfinite(rope)):
        raise ValueError(f"rope must be a finite number >= 0, got {rope}")
    mean, var = float(d.mean()), corrected_variance(d, ratio)
    df = d.size - 1
    if var == 0:
        better, worse = float(mean > rope), float(mean < -rope)
        return Bayes(better, 1.0 - better - worse, worse, mean, 0.0, df)
    scale = math.sqrt(var)
    worse = float(stats.t.cdf(-rope, df, loc=mean, scale=scale))
    better = float(stats.t.sf(rope, df, loc=mean, scale=scale))
    return Bayes(better, max(0.0, 1.0 - better - worse), worse, mean, scale, df)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """McNemar's exact test (McNemar 1947; the exact form: Edwards 1948, Dietterich 1998 for
    classifiers): two classifiers tested on the same clips; `only_a` clips only A got right, `only_b`
    only B. Under "equally accurate" each discordant clip is a fair coin, so the two-sided p-value is
    that of a binomial test of only_a successes in only_a + only_b trials at 1/2
    (`scipy.stats.binomtest`). No discordant clip: p = 1."""
    only_a, only_b = int(only_a), int(only_b)
    if only_a < 0 or only_b < 0:
        raise ValueError("counts must be >= 0")
    n = only_a + only_b
    return float(stats.binomtest(only_a, n, 0.5).pvalue) if n else 1.0
