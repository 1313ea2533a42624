"""Per-class percentages of a differential count with exact 95 % confidence intervals.

The intervals are two-sided Clopper-Pearson intervals of a binomial proportion,
the exact binomial limits that Rümke tabulated for manual differentials and
that CLSI H20 uses: with k cells of a class among n, the true proportion lies
in [lower, upper] with probability at least 95 %.
"""
from __future__ import annotations

import numpy as np

from calibration.binomial import clopper_pearson_upper


def proportion_interval(k, n: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson (lower, upper) for k successes in n trials, as fractions."""
    k = np.asarray(k, dtype=np.int64)
    if n == 0:
        return np.zeros(k.shape), np.ones(k.shape)
    tail = (1.0 - level) / 2.0
    upper = clopper_pearson_upper(k, n, tail)
    lower = 1.0 - clopper_pearson_upper(n - k, n, tail)
    return np.where(k == 0, 0.0, lower), np.where(k == n, 1.0, upper)


def differential(counts: dict[str, int], level: float = 0.95) -> dict[str, dict[str, float]]:
    """{class: {count, percent, ci_low, ci_high}}, percentages of all the cells in `counts`."""
    names = list(counts)
    k = np.array([counts[n] for n in names], dtype=np.int64)
    n = int(k.sum())
    low, high = proportion_interval(k, n, level)
    return {name: {"count": int(c), "percent": 100.0 * c / n if n else 0.0,
                   "ci_low": round(100.0 * float(lo), 2), "ci_high": round(100.0 * float(hi), 2)}
            for name, c, lo, hi in zip(names, k, low, high)}
