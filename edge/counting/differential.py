"""Per-class percentages of a differential count with exact 95 % confidence intervals.

The intervals are two-sided Clopper-Pearson intervals of a binomial proportion
(calibration.binomial.clopper_pearson_interval): with k cells of a class among
n, the true proportion lies in [lower, upper] with probability at least 95 %.
"""
from __future__ import annotations

import numpy as np

from calibration.binomial import clopper_pearson_bounds, clopper_pearson_interval


def differential(counts: dict[str, int], level: float = 0.95) -> dict[str, dict[str, float]]:
    """{class: {count, percent, ci_low, ci_high}}, percentages of all the cells in `counts`."""
    names = list(counts)
    k = np.array([counts[n] for n in names], dtype=np.int64)
    n = int(k.sum())
    low, high = clopper_pearson_interval(k, n, level)
    return {name: {"count": int(c), "percent": 100.0 * c / n if n else 0.0,
                   "ci_low": round(100.0 * float(lo), 2), "ci_high": round(100.0 * float(hi), 2)}
            for name, c, lo, hi in zip(names, k, low, high)}


# Rejection rates that differ by more than this between leukocyte classes make accepted-only
# percentages biased by the reject option itself (the class rejected more looks rarer).
CLASS_DEPENDENT_SPREAD = 0.15
MIN_CELLS_FOR_A_RATE = 20     # a class's own rejection rate is read only from this many cells
FEW_LEUKOCYTES = 100          # CLSI H20-A2 counts 200; below 100 the intervals are wide


def leukocyte_differential(class_names, roles: dict[str, str], accepted, rejected_by_class, rejected_scores,
                           bundle_rejection: dict[str, float] | None = None, level: float = 0.95) -> dict:
    """The differential as a haematology lab reads it, provisional while cells wait for review.

    accepted (C,): accepted cells per class; rejected_by_class (C,): cells in review by the class the
    classifier put first; rejected_scores (C,): the sum over the cells in review of their class scores,
    each cell's scores normalised to sum to 1; bundle_rejection: the bundle's calibration rejection rate
    per class. With A accepted leukocytes and R cells in review, n = A + R bounds every leukocyte
    count the review can produce, so for a leukocyte class c with a accepted cells the percentage lies
    in [a / n, (a + R) / n] whatever the expert answers; each end is widened by its exact interval.
    The point estimate gives each cell in review its classifier scores.
    """
    names = list(class_names)
    accepted = np.asarray(accepted, np.int64)
    rejected_by_class = np.asarray(rejected_by_class, np.int64)
    rejected_scores = np.asarray(rejected_scores, np.float64)
    leuk = np.array([roles.get(n) == "leukocyte" for n in names])
    nrbc = np.array([roles.get(n) == "nrbc" for n in names])
    a_total, in_review = int(accepted[leuk].sum()), int(rejected_by_class.sum())
    n = a_total + in_review
    low, high = clopper_pearson_bounds(accepted[leuk], accepted[leuk] + in_review, n, level)
    expected = accepted[leuk] + rejected_scores[leuk]
    expected_total = float(expected.sum())
    classes = {}
    for i, name in enumerate(np.array(names)[leuk]):
        a = int(accepted[leuk][i])
        classes[str(name)] = {
            "accepted": a,
            "percent_of_accepted": round(100.0 * a / a_total, 2) if a_total else None,
            "range_percent": [round(100.0 * float(low[i]), 2), round(100.0 * float(high[i]), 2)] if n else None,
            "point_percent": round(100.0 * float(expected[i]) / expected_total, 2) if expected_total else None}
    nrbc_accepted = int(accepted[nrbc].sum())
    report = {
        "provisional": in_review > 0,
        "what": ("percentages of leukocytes only (CLSI H20-A2). 'range_percent' holds whatever the review of "
                 f"the {in_review} cells still in review decides, each end widened by its exact "
                 f"{round(100 * level)} % interval; 'percent_of_accepted' leaves the cells in review out and "
                 "is biased where rejection depends on the class; 'point_percent' counts each cell in "
                 "review by its classifier scores" if in_review else
                 f"percentages of leukocytes only (CLSI H20-A2), with exact {round(100 * level)} % intervals "
                 "in 'range_percent'; no cell waits for review"),
        "leukocytes_accepted": a_total,
        "in_review": in_review,
        "classes": classes,
        "nrbc_per_100_leukocytes": {
            "accepted": nrbc_accepted,
            "value": round(100.0 * nrbc_accepted / a_total, 2) if a_total else None},
        "counted_apart": {n: int(c) for n, c, is_l, is_n in zip(names, accepted, leuk, nrbc)
                          if not is_l and not is_n},
        "class_dependent_rejection": class_dependent_rejection(names, leuk, accepted, rejected_by_class,
                                                               bundle_rejection, in_review),
    }
    if a_total + in_review < FEW_LEUKOCYTES:
        report["warning"] = (f"only {a_total} leukocytes counted and {in_review} cells in review: fewer than "
                             f"{FEW_LEUKOCYTES}, so every percentage's interval is wide (CLSI H20-A2 counts 200)")
    return report


def class_dependent_rejection(names, leuk, accepted, rejected_by_class, bundle_rejection, in_review) -> dict:
    """Whether the reject option sends some leukocyte classes to review far more than others, by the
    bundle's calibration figures and by this session's own cells (classes with enough cells)."""
    rates = {}
    if bundle_rejection:
        rates["bundle"] = {n: float(bundle_rejection[n]) for n, is_l in zip(names, leuk)
                           if is_l and n in bundle_rejection}
    seen = accepted + rejected_by_class
    rates["session"] = {n: float(r / s) for n, r, s, is_l in zip(names, rejected_by_class, seen, leuk)
                        if is_l and s >= MIN_CELLS_FOR_A_RATE}
    spreads = {k: (max(v.values()) - min(v.values())) for k, v in rates.items() if len(v) >= 2}
    flagged = in_review > 0 and any(s > CLASS_DEPENDENT_SPREAD for s in spreads.values())
    out = {"flag": flagged, "rejection_by_class": {k: {n: round(r, 3) for n, r in v.items()} for k, v in rates.items()}}
    if flagged:
        source = max(spreads, key=spreads.get)
        v = rates[source]
        hi, lo = max(v, key=v.get), min(v, key=v.get)
        out["message"] = (f"rejection depends on the class ({source}: {hi} {100 * v[hi]:.0f} % to review, "
                          f"{lo} {100 * v[lo]:.0f} %): the accepted-only percentages would mislead; read the "
                          "ranges, or review the cells first")
    return out


def differential_lines(d: dict) -> list[str]:
    """The leukocyte differential for the terminal, saying plainly whether it is provisional."""
    if d["provisional"]:
        head = (f"  PROVISIONAL leukocyte differential: {d['leukocytes_accepted']} leukocytes accepted, "
                f"{d['in_review']} cells await review; the range is what the percentage can still be "
                "after review (95 %)")
    else:
        head = f"  leukocyte differential: {d['leukocytes_accepted']} leukocytes (95 % intervals)"
    lines = [head]
    for name, c in d["classes"].items():
        accepted = "" if c["percent_of_accepted"] is None else f"{c['percent_of_accepted']:5.1f} % of accepted"
        span = "" if c["range_percent"] is None else f"range {c['range_percent'][0]:.1f}-{c['range_percent'][1]:.1f} %"
        point = f", estimate {c['point_percent']:.1f} %" if d["provisional"] and c["point_percent"] is not None else ""
        lines.append(f"  {name:<14} {c['accepted']:>6}  {accepted}  {span}{point}")
    nrbc = d["nrbc_per_100_leukocytes"]
    if nrbc["accepted"] or nrbc["value"] is not None:
        lines.append(f"  NRBC per 100 leukocytes: {nrbc['value'] if nrbc['value'] is not None else '-'} "
                     f"({nrbc['accepted']} accepted)")
    if d["counted_apart"]:
        lines.append("  counted apart, not in the percentages: " +
                     ", ".join(f"{n} {c}" for n, c in d["counted_apart"].items()))
    if d["class_dependent_rejection"]["flag"]:
        lines.append(f"  NOTE {d['class_dependent_rejection']['message']}")
    if d.get("warning"):
        lines.append(f"  WARNING {d['warning']}")
    return lines
