"""Binomial tail probabilities and Clopper-Pearson bounds in pure numpy.

The binomial CDF is the regularised incomplete beta function,
P(X <= k | n, p) = I_{1-p}(n - k, k + 1), evaluated by its continued fraction
(modified Lentz, as in Numerical Recipes' `betacf`) with a log-gamma prefactor;
accuracy is close to double precision. The Clopper-Pearson bound inverts that
CDF by bisection.
"""
from __future__ import annotations

import math

import numpy as np

_lgamma = np.frompyfunc(math.lgamma, 1, 1)
_TINY = 1e-300
_EPS = 1e-15
_MAX_ITER = 100_000


def _log_gamma(x: np.ndarray) -> np.ndarray:
    return _lgamma(x).astype(np.float64)


def _beta_continued_fraction(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Continued fraction of I_x(a, b); converges fast for x < (a + 1) / (a + b + 2).

    Each element stops at its own convergence (iterating on can only add rounding).
    """
    def nonzero(v: np.ndarray) -> np.ndarray:
        return np.where(np.abs(v) < _TINY, _TINY, v)

    result = np.empty_like(x)
    idx = np.arange(x.size)
    c = np.ones_like(x)
    d = 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    h = d.copy()
    for m in range(1, _MAX_ITER + 1):
        num = m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m))
        d = 1.0 / nonzero(1.0 + num * d)
        c = nonzero(1.0 + num / c)
        h *= d * c
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))
        d = 1.0 / nonzero(1.0 + num * d)
        c = nonzero(1.0 + num / c)
        step = d * c
        h *= step
        done = np.abs(step - 1.0) < _EPS
        if done.any():
            result[idx[done]] = h[done]
            keep = ~done
            if not keep.any():
                return result
            idx, a, b, x, c, d, h = (v[keep] for v in (idx, a, b, x, c, d, h))
    raise ArithmeticError("incomplete beta continued fraction did not converge")


def betainc(a, b, x) -> np.ndarray:
    """Regularised incomplete beta I_x(a, b) elementwise, for a, b > 0 and 0 <= x <= 1."""
    a, b, x = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, x)))
    if np.any(a <= 0) or np.any(b <= 0) or np.any((x < 0) | (x > 1)) or np.isnan(x).any():
        raise ValueError("betainc needs a > 0, b > 0 and 0 <= x <= 1")
    out = np.where(x >= 1.0, 1.0, 0.0)
    inner = (x > 0.0) & (x < 1.0)
    if not inner.any():
        return out
    a, b, x = a[inner], b[inner], x[inner]
    swap = x > (a + 1.0) / (a + b + 2.0)  # I_x(a, b) = 1 - I_{1-x}(b, a)
    a, b, x = np.where(swap, b, a), np.where(swap, a, b), np.where(swap, 1.0 - x, x)
    log_front = (_log_gamma(a + b) - _log_gamma(a) - _log_gamma(b)
                 + a * np.log(x) + b * np.log1p(-x))
    value = np.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    out[inner] = np.where(swap, 1.0 - value, value)
    return out


def binomial_cdf(k, n, p) -> np.ndarray:
    """P(X <= k) for X ~ Binomial(n, p), elementwise; k, n integers, 0 <= p <= 1."""
    k, n, p = np.broadcast_arrays(np.asarray(k, dtype=np.int64), np.asarray(n, dtype=np.int64),
                                  np.asarray(p, dtype=np.float64))
    if np.any(n < 0) or np.any((p < 0) | (p > 1)) or np.isnan(p).any():
        raise ValueError("binomial_cdf needs n >= 0 and 0 <= p <= 1")
    out = np.where(k >= n, 1.0, 0.0)
    inner = (k >= 0) & (k < n)
    if inner.any():
        ki, ni = k[inner], n[inner]
        out[inner] = betainc(ni - ki, ki + 1, 1.0 - p[inner])
    return out


def clopper_pearson_upper(errors, n, delta: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound, confidence 1 - delta, on a binomial rate.

    With `errors` failures in `n` trials the true rate is below the bound with
    probability at least 1 - delta. The bound is the p solving
    P(X <= errors | n, p) = delta: exactly 1 - delta**(1/n) for zero errors,
    1 for errors == n, bisection otherwise (to ~1e-15).
    """
    k, n = np.broadcast_arrays(np.asarray(errors, dtype=np.int64), np.asarray(n, dtype=np.int64))
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError("need n >= 1 and 0 <= errors <= n")
    out = np.where(k == 0, -np.expm1(np.log(delta) / np.maximum(n, 1)), 1.0)
    middle = (k > 0) & (k < n)
    if middle.any():
        out[middle] = _bisect_upper(k[middle], n[middle], delta)
    return out


def clopper_pearson_interval(k, n: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided exact (Clopper-Pearson) interval of a binomial proportion: (lower, upper) for each
    entry of `k` successes in `n` trials, as fractions. The true proportion lies inside with
    probability at least `level`; each side is a one-sided bound at (1 - level) / 2, with the
    lower bound 0 at k = 0 and the upper 1 at k = n. These are the exact limits that Rumke tabulated
    for manual differentials and that CLSI H20 uses. With n = 0 nothing is known: [0, 1]."""
    return clopper_pearson_bounds(k, k, n, level)


def clopper_pearson_bounds(k_lower, k_upper, n: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided interval's lower end for `k_lower` successes and its upper end for `k_upper`,
    both in `n` trials, found in one bisection (the bisection is what a call costs)."""
    k_lower, k_upper = np.broadcast_arrays(np.asarray(k_lower, dtype=np.int64), np.asarray(k_upper, dtype=np.int64))
    if n == 0:
        return np.zeros(k_lower.shape), np.ones(k_upper.shape)
    tail = (1.0 - level) / 2.0
    # the lower end for k is one minus the upper end for the n - k failures
    bounds = clopper_pearson_upper(np.minimum(np.concatenate([k_upper.ravel(), (n - k_lower).ravel()]), n - 1),
                                   n, tail)
    upper, lower = bounds[:k_upper.size].reshape(k_upper.shape), 1.0 - bounds[k_upper.size:].reshape(k_lower.shape)
    return np.where(k_lower == 0, 0.0, lower), np.where(k_upper == n, 1.0, upper)


def _bisect_upper(k: np.ndarray, n: np.ndarray, delta: float) -> np.ndarray:
    """The p in (0, 1) with binomial_cdf(k, n, p) == delta (the CDF falls as p grows)."""
    lo = np.zeros(k.shape)
    hi = np.ones(k.shape)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = binomial_cdf(k, n, mid) > delta
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return 0.5 * (lo + hi)
