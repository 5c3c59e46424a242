"""Paired t-intervals and Holm's correction against independent truths: textbook t quantiles, scipy's own
paired t-test on the raw accuracies, and Holm's procedure stated as sequential rejection."""

import itertools
import math
import random

import pytest

from kernel_reg.app.statistics import family, holm, paired

stats = pytest.importorskip("scipy.stats")

# two-sided 95% quantiles t_{0.975, df} from a printed table
T975 = {1: 12.706, 2: 4.303, 4: 2.776, 7: 2.365}


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_the_interval_is_the_mean_plus_minus_the_t_quantile_at_n_minus_1_degrees_of_freedom(n):
    rng = random.Random(n)
    d = [rng.gauss(1.0, 2.0) for _ in range(n)]
    c = paired(d)
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) / math.sqrt(n)
    assert c.n == n and c.mean == pytest.approx(mean) and c.se == pytest.approx(se)
    assert (c.high - c.mean) / se == pytest.approx(T975[n - 1], abs=1e-3)
    assert c.low == pytest.approx(2 * mean - c.high)


def test_the_p_value_is_scipys_paired_t_test_on_the_accuracies():
    baseline, method = [79.1, 80.5, 79.5, 78.2, 81.0], [81.0, 83.1, 82.2, 79.9, 83.5]
    c = paired([m - b for m, b in zip(method, baseline)])
    assert c.p == pytest.approx(stats.ttest_rel(method, baseline).pvalue, rel=1e-9)


def test_the_interval_excludes_zero_exactly_when_p_is_below_alpha():
    rng = random.Random(0)
    for _ in range(200):
        d = [rng.gauss(0.5, 1.0) for _ in range(rng.choice([3, 5, 8]))]
        c = paired(d)
        assert (c.low > 0 or c.high < 0) == (c.p < 0.05)


def _holm_rejections(p_values, alpha):
    """Holm stated as a procedure: sort, reject while p_(i) <= alpha / (m - i), stop at the first that fails."""
    m, rejected = len(p_values), set()
    for i, index in enumerate(sorted(range(m), key=lambda k: p_values[k])):
        if p_values[index] > alpha / (m - i):
            break
        rejected.add(index)
    return rejected


def test_holm_adjusted_p_values_reject_what_the_step_down_procedure_rejects():
    rng = random.Random(1)
    for _ in range(300):
        p_values = [rng.random() ** 3 for _ in range(rng.randint(1, 12))]
        adjusted = holm(p_values)
        assert all(q >= p and q <= 1 for p, q in zip(p_values, adjusted))
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i, q in enumerate(adjusted) if q <= alpha} == _holm_rejections(p_values, alpha)


def test_holm_is_monotone_in_the_order_of_the_raw_p_values():
    p_values = [0.01, 0.04, 0.03, 0.005]
    adjusted = holm(p_values)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])  # 3*0.01, max(2*0.03, 0.03)=0.06, then 0.06
    for a, b in itertools.combinations(range(4), 2):
        if p_values[a] < p_values[b]:
            assert adjusted[a] <= adjusted[b]


def test_a_family_adjusts_over_its_comparisons_and_skips_those_without_two_pairs():
    tested = family({"steady": [3.0, 3.1, 2.9], "noisy": [5.0, -4.0, 0.0], "single": [1.0]})
    assert set(tested) == {"steady", "noisy"}
    assert tested["steady"].p_holm == pytest.approx(min(1.0, 2 * tested["steady"].p))
    assert tested["steady"].verdict() == "gain" and tested["noisy"].verdict() == "no evidence"
    assert paired([-2.0, -2.1, -1.9, -2.2]).verdict() == "loss"
    with pytest.raises(ValueError, match="at least 2 differences"):
        paired([1.0])


def test_identical_differences_have_a_point_interval():
    c = paired([1.5, 1.5, 1.5])
    assert (c.low, c.high, c.se, c.p) == (1.5, 1.5, 0.0, 0.0)
    assert paired([0.0, 0.0]).p == 1.0


@pytest.mark.parametrize("bad", [[1.0, math.nan, 2.0], [1.0, math.inf, 2.0]])
def test_a_non_finite_difference_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="needs finite differences"):
        paired(bad)


def test_holm_refuses_a_p_value_outside_0_1_or_nan():
    """NaN sorts anywhere: holm([nan, 0.001, 0.002]) gave [1, 1, 1], a silent wrong verdict."""
    for bad in ([math.nan, 0.001, 0.002], [0.001, 1.5]):
        with pytest.raises(ValueError, match=r"p-values in \[0, 1\]"):
            holm(bad)
