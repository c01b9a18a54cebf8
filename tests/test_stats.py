"""reports.stats against published figures and independent computations.

Sources:
- scikit-learn's example "Statistical comparison of models using grid search"
  (examples/model_selection/plot_grid_search_stats.py, in the gallery since 0.24): SVC with an rbf
  and a linear kernel, ROC AUC over 10 x repeated 10-fold stratified CV of make_moons. Its printed
  output: corrected t 0.750, corrected (right-tailed) p 0.227, uncorrected t 2.611, p 0.005;
  P(rbf more accurate) 0.773; P(practically equivalent, rope 0.01) 0.432.
- baycomp 1.0.3 (Benavoli, Corani, Demšar, Zaffalon), the reference implementation of "Time for a
  change" (JMLR 18(77), 2017): its tests/test_single.py expects the correlated t-test of
  x = [4, 2, 6], y = [5, 7, 3] (3 folds, 1 run) to have mean 1 and variance
  (4² + 4²) / 2 * (1/3 + 1/2); its two_on_single on the example's scores gave the probabilities checked below.
"""

import math

import numpy as np
import pytest
from scipy import stats

from reports.stats import bayes_correlated_ttest, corrected_ttest, corrected_variance, mcnemar_exact, t_interval


@pytest.fixture(scope="module")
def grid_search_example():
    """The scores the scikit-learn example compares (rbf first, the better model), rebuilt exactly
    as the example builds them (about a second: 200 small SVC fits)."""
    from sklearn.datasets import make_moons
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
    from sklearn.svm import SVC

    X, y = make_moons(noise=0.352, random_state=1, n_samples=100)
    cv = RepeatedStratifiedKFold(n_splits=10, n_repeats=10, random_state=0)
    rbf = cross_val_score(SVC(kernel="rbf", random_state=0), X, y, scoring="roc_auc", cv=cv)
    linear = cross_val_score(SVC(kernel="linear", random_state=0), X, y, scoring="roc_auc", cv=cv)
    n_train, n_test = (len(part) for part in next(cv.split(X, y)))
    return rbf, linear, n_train, n_test


def test_corrected_ttest_reproduces_the_scikit_learn_example(grid_search_example):
    rbf, linear, n_train, n_test = grid_search_example
    assert (n_train, n_test) == (90, 10)
    diffs = rbf - linear
    r = corrected_ttest(diffs, n_test / n_train, alternative="greater")  # the example's right tail
    assert round(r.t, 3) == 0.750 and round(r.p, 3) == 0.227 and r.df == 99
    two_sided = corrected_ttest(diffs, n_test / n_train)
    assert two_sided.p == pytest.approx(2 * r.p) and two_sided.t == r.t
    # the uncorrected t-test the example sets beside it: ratio 0 leaves the plain 1/J
    plain = corrected_ttest(diffs, 0.0, alternative="greater")
    assert round(plain.t, 3) == 2.611 and round(plain.p, 3) == 0.005
    assert plain.t == pytest.approx(stats.ttest_1samp(diffs, 0).statistic)  # scipy's own paired t


def test_bayesian_test_reproduces_the_scikit_learn_example(grid_search_example):
    rbf, linear, n_train, n_test = grid_search_example
    diffs = rbf - linear
    no_rope = bayes_correlated_ttest(diffs, n_test / n_train, rope=0.0)
    assert round(no_rope.p_better, 3) == 0.773 and round(no_rope.p_worse, 3) == 0.227
    b = bayes_correlated_ttest(diffs, n_test / n_train, rope=0.01)
    assert round(b.p_equiv, 3) == 0.432
    # baycomp 1.0.3 two_on_single(linear, rbf, rope=0.01, runs=10) gave (0.068, 0.432, 0.500)
    assert (round(b.p_worse, 3), round(b.p_equiv, 3), round(b.p_better, 3)) == (0.068, 0.432, 0.500)
    assert b.p_better + b.p_equiv + b.p_worse == pytest.approx(1.0)


def test_bayesian_test_is_the_student_t_posterior_of_baycomp(grid_search_example):
    """baycomp (not a dependency: it installs a top-level `tests` package that shadows this one)
    computes the posterior as a Student t with df n - 1, location mean(d) and scale
    sqrt(var(d) * (1/n + rho/(1 - rho))); its probabilities are that t's mass left of -rope, inside
    the rope and right of it. Computed here independently with scipy."""
    rbf, linear, n_train, n_test = grid_search_example
    for d, ratio, rope in (
        (rbf - linear, n_test / n_train, 0.01),
        (np.array([5.0, 7.0, 3.0]) - np.array([4.0, 2.0, 6.0]), 1 / 2, 0.5),
    ):
        n = len(d)
        scale = math.sqrt(np.var(d, ddof=1) * (1 / n + ratio))
        post = stats.t(df=n - 1, loc=d.mean(), scale=scale)
        b = bayes_correlated_ttest(d, ratio, rope=rope)
        assert (b.mean, b.scale, b.df) == pytest.approx((d.mean(), scale, n - 1))
        expected = (post.cdf(-rope), post.cdf(rope) - post.cdf(-rope), post.sf(rope))
        assert (b.p_worse, b.p_equiv, b.p_better) == pytest.approx(expected, abs=1e-9)


def test_baycomp_published_variance():
    # baycomp's tests/test_single.py: x = [4, 2, 6], y = [5, 7, 3], 3 folds -> n_test/n_train = 1/2
    b = bayes_correlated_ttest([1.0, 5.0, -3.0], 1 / 2)
    assert b.mean == 1 and b.df == 2
    assert b.scale**2 == pytest.approx((4**2 + 4**2) / 2 * (1 / 3 + 1 / 2))


def test_fixed_inputs_against_a_direct_computation():
    d = np.array([0.02, -0.01, 0.03, 0.00, 0.01])
    ratio = 1 / 8  # e.g. 10 folds with a validation fold: 1 test fold, 8 training folds
    # by hand: mean 0.01; squared deviations 1, 4, 4, 1, 0 (x 1e-4) -> var 2.5e-4
    var = (1 / 5 + 1 / 8) * 2.5e-4
    assert corrected_variance(d, ratio) == pytest.approx(var)
    # the scikit-learn example's own formula (current gallery: 1/kr with kr = number of differences)
    example_std = np.sqrt(np.var(d, ddof=1) * (1 / len(d) + 1 / 8))
    r = corrected_ttest(d, ratio)
    assert r.se == pytest.approx(example_std) and r.t == pytest.approx(0.01 / math.sqrt(var))
    assert round(r.t, 3) == 1.109 and r.p == pytest.approx(2 * stats.t.sf(0.01 / math.sqrt(var), 4))
    b = bayes_correlated_ttest(d, ratio, rope=0.01)
    post = stats.t(4, loc=0.01, scale=math.sqrt(var))
    assert b.p_worse == pytest.approx(post.cdf(-0.01)) and b.p_better == pytest.approx(post.sf(0.01))
    assert b.p_better == pytest.approx(0.5)  # the rope's edge sits at the posterior's centre


def test_zero_variance():
    same = np.zeros(10)
    r = corrected_ttest(same, 1 / 8)
    assert (r.t, r.p) == (0.0, 1.0)
    assert bayes_correlated_ttest(same, 1 / 8, rope=0.01)[:3] == (0.0, 1.0, 0.0)
    inside = np.full(5, 0.005)  # every split 0.005 better: within the rope
    assert bayes_correlated_ttest(inside, 1 / 8, rope=0.01)[:3] == (0.0, 1.0, 0.0)
    above = np.full(5, -0.05)
    assert bayes_correlated_ttest(above, 1 / 8, rope=0.01)[:3] == (0.0, 0.0, 1.0)
    r = corrected_ttest(above, 1 / 8)
    assert r.t == -math.inf and r.p == 0.0


def test_refuses_what_it_cannot_test():
    with pytest.raises(ValueError, match="at least 2"):
        corrected_ttest([0.1], 0.1)
    with pytest.raises(ValueError, match="at least 2"):
        bayes_correlated_ttest([], 0.1)
    with pytest.raises(ValueError, match="rope"):
        bayes_correlated_ttest([0.1, 0.2], 0.1, rope=-1)
    with pytest.raises(ValueError, match="n_test / n_train"):
        corrected_ttest([0.1, 0.2], float("nan"))


def test_t_interval():
    low, high = t_interval([0.5, 0.6])
    assert (low + high) / 2 == pytest.approx(0.55) and high - 0.55 == pytest.approx(12.7062047 * 0.05)
    assert t_interval([0.7]) == (0.7, 0.7)
    x = np.array([0.8, 0.9, 0.85, 0.75])
    half = stats.t.ppf(0.975, 3) * x.std(ddof=1) / 2
    assert t_interval(x) == pytest.approx((x.mean() - half, x.mean() + half))


def test_mcnemar_exact():
    assert mcnemar_exact(3, 1) == pytest.approx(0.625)  # 4 discordant clips, 3 vs 1: 2 * 5/16
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
