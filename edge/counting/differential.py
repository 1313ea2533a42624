"""Per-class percentages of a differential count with exact 95 % confidence intervals.

The intervals are two-sided Clopper-Pearson intervals of a binomial proportion
(calibration.binomial.clopper_pearson_interval): with k cells of a class among
n, the true proportion lies in [lower, upper] with probability at least 95 %.
"""
from __future__ import annotations

import numpy as np

from calibration.binomial import clopper_pearson_interval


def differential(counts: dict[str, int], level: float = 0.95) -> dict[str, dict[str, float]]:
    """{class: {count, percent, ci_low, ci_high}}, percentages of all the cells in `counts`."""
    names = list(counts)
    k = np.array([counts[n] for n in names], dtype=np.int64)
    n = int(k.sum())
    low, high = clopper_pearson_interval(k, n, level)
    return {name: {"count": int(c), "percent": 100.0 * c / n if n else 0.0,
                   "ci_low": round(100.0 * float(lo), 2), "ci_high": round(100.0 * float(hi), 2)}
            for name, c, lo, hi in zip(names, k, low, high)}
