from fractions import Fraction
from math import comb

import numpy as np
import pytest

from calibration import betainc, binomial_cdf, clopper_pearson_upper


def exact_binomial_cdf(k: int, n: int, p: float) -> float:
    q = Fraction(str(p))
    return float(sum(comb(n, i) * q ** i * (1 - q) ** (n - i) for i in range(k + 1)))


@pytest.mark.parametrize("n", [1, 2, 7, 40, 150])
def test_binomial_cdf_matches_exact_rational_sum(n):
    ks = np.unique(np.linspace(-1, n + 1, 30).round().astype(int))
    for p in (0.0, 0.001, 0.02, 0.3, 0.5, 0.81, 0.999, 1.0):
        got = binomial_cdf(ks, n, p)
        want = [0.0 if k < 0 else 1.0 if k >= n else exact_binomial_cdf(k, n, p) for k in ks]
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-14)


def test_betainc_closed_forms():
    x = np.linspace(0, 1, 11)
    np.testing.assert_allclose(betainc(1, 1, x), x, atol=1e-15)
    np.testing.assert_allclose(betainc(3.5, 1, x), x ** 3.5, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(betainc(1, 2.5, x), 1 - (1 - x) ** 2.5, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(betainc(40, 40, 0.5), 0.5, rtol=1e-13)
    with pytest.raises(ValueError):
        betainc(0, 1, 0.5)


@pytest.mark.parametrize("errors, n, expected", [
    (0, 100, 1 - 0.05 ** (1 / 100)),  # 0.029513
    (1, 100, 0.0465598),
    (5, 200, 0.0518433),  # exact value; a rough 0.0522 is sometimes quoted
    (50, 1000, 0.0628634),
    (0, 1, 0.95),
    (3, 3, 1.0),
])
def test_clopper_pearson_known_values(errors, n, expected):
    assert clopper_pearson_upper(errors, n, 0.05) == pytest.approx(expected, abs=5e-7)


def test_clopper_pearson_inverts_the_cdf():
    k = np.array([1, 4, 17, 90])
    n = np.array([10, 60, 300, 4000])
    for delta in (0.01, 0.05, 0.2):
        bound = clopper_pearson_upper(k, n, delta)
        np.testing.assert_allclose(binomial_cdf(k, n, bound), delta, rtol=1e-9)
        assert np.all(bound > k / n)


def test_clopper_pearson_rejects_bad_arguments():
    for args in ((1, 0, 0.05), (3, 2, 0.05), (-1, 5, 0.05), (1, 5, 0.0), (1, 5, 1.0)):
        with pytest.raises(ValueError):
            clopper_pearson_upper(*args)


def test_binomial_cdf_vectorised_on_large_counts():
    rng = np.random.default_rng(0)
    n = np.arange(1, 20_001)
    k = rng.binomial(n, 0.02)
    cdf = binomial_cdf(k, n, 0.01)
    assert cdf.shape == n.shape and np.all((cdf >= 0) & (cdf <= 1))
    # spot checks against the exact sum
    for i in (0, 99, 1999):
        assert cdf[i] == pytest.approx(exact_binomial_cdf(int(k[i]), int(n[i]), 0.01), rel=1e-10)
