import numpy as np
import pytest

from calibration.binomial import clopper_pearson_interval
from edge.counting.differential import differential


def test_matches_published_exact_limits():
    # Exact binomial 95 % limits: 5 of 100 -> 1.64 % to 11.28 %; 50 of 100 -> 39.83 % to 60.17 %.
    low, high = clopper_pearson_interval([5, 50], 100)
    np.testing.assert_allclose(low, [0.0164, 0.3983], atol=1e-4)
    np.testing.assert_allclose(high, [0.1128, 0.6017], atol=1e-4)


def test_edges_of_the_range():
    low, high = clopper_pearson_interval([0, 20], 20)
    assert low[0] == 0.0 and high[1] == 1.0
    assert high[0] == pytest.approx(1 - 0.025 ** (1 / 20))  # 16.84 %
    assert low[1] == pytest.approx(0.025 ** (1 / 20))


def test_covers_the_true_proportion_at_least_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    n, p = 200, 0.07
    k = rng.binomial(n, p, size=4000)
    low, high = clopper_pearson_interval(k, n)
    assert np.mean((low <= p) & (p <= high)) >= 0.95


def test_differential_percentages_and_intervals():
    d = differential({"neutrophil": 60, "lymphocyte": 30, "monocyte": 10})
    assert sum(v["percent"] for v in d.values()) == pytest.approx(100.0)
    assert d["monocyte"]["count"] == 10 and d["monocyte"]["percent"] == 10.0
    assert d["monocyte"]["ci_low"] < 10.0 < d["monocyte"]["ci_high"]
    assert differential({"a": 0, "b": 0})["a"] == {"count": 0, "percent": 0.0, "ci_low": 0.0, "ci_high": 100.0}
