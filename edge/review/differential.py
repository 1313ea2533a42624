"""The final differential after review: machine-accepted cells plus expert-labelled ones, with 95 % intervals.

A rejected cell counts once an expert gives it a class; "not a cell" removes
it, "unsure" or no answer leaves it out and marks the count incomplete. An
expert's class for a cell of the accepted sample replaces the machine's.
The intervals are exact two-sided Clopper-Pearson intervals on each class's
share of the counted cells: the sampling uncertainty of the differential, not
the classifier's error.
"""
from __future__ import annotations

import numpy as np

from calibration.binomial import clopper_pearson_interval
from edge.counting.differential import leukocyte_differential
from edge.review import NOT_A_CELL, UNSURE
from edge.runtime.class_roles import infer_roles

CONFIDENCE = 0.95


def final_differential(class_names: tuple[str, ...], accepted: dict[str, str], rejected: dict[str, str],
                       labels: dict[str, str], roles: dict[str, str] | None = None) -> dict:
    """accepted and rejected map cell id -> the machine's class; labels map cell id -> the expert's answer;
    roles: each class's role for the leukocyte differential (default: read from the class names)."""
    index = {n: i for i, n in enumerate(class_names)}
    machine = np.zeros(len(class_names), np.int64)
    expert = np.zeros(len(class_names), np.int64)
    qc = {"checked": 0, "agreed": 0, "relabelled": 0, "not_a_cell": 0, "unsure": 0}
    for cell, predicted in accepted.items():
        answer = labels.get(cell)
        if answer is None or answer == UNSURE:
            machine[index[predicted]] += 1
            qc["unsure"] += answer == UNSURE
            continue
        qc["checked"] += 1
        qc["agreed"] += answer == predicted
        if answer == NOT_A_CELL:
            qc["not_a_cell"] += 1
        else:
            qc["relabelled"] += answer != predicted
            expert[index[answer]] += 1
    answers = [labels.get(cell) for cell in rejected]
    for answer in answers:
        if answer in index:
            expert[index[answer]] += 1
    counts = machine + expert
    total = int(counts.sum())
    pending = answers.count(None)
    unsure = answers.count(UNSURE)
    report = {
        "complete": pending == 0 and unsure == 0,
        "counted": total,
        "counts": _by_class(class_names, counts),
        "differential_percent": _by_class(class_names, 100.0 * counts / total if total else 0.0 * counts),
        "ci95_percent": None,
        "counts_by_origin": {"machine": _by_class(class_names, machine), "expert": _by_class(class_names, expert)},
        "rejected": {"total": len(answers), "labelled": sum(a in index for a in answers),
                     "not_a_cell": answers.count(NOT_A_CELL), "unsure": unsure, "pending": pending},
        "accepted_sample": {**qc, "agreement": None, "agreement_ci95": None},
        "method": ("rejected cells counted under the expert's class; 'not a cell' removed; 'unsure' and "
                   "unlabelled cells left out (complete=false); 95 % intervals are exact two-sided "
                   "Clopper-Pearson on each class's share of the counted cells"),
    }
    pending_by_class = np.bincount([index[rejected[c]] for c in rejected if labels.get(c) is None],
                                   minlength=len(class_names))
    report["leukocyte_differential"] = leukocyte_differential(
        class_names, roles or infer_roles(class_names), counts, pending_by_class, pending_by_class.astype(float),
        level=CONFIDENCE)
    report["leukocyte_differential"]["reported_apart"] = {
        "smudge_or_not_a_cell": answers.count(NOT_A_CELL) + qc["not_a_cell"],
        "unidentified_unsure": unsure}
    if total:
        low, high = clopper_pearson_interval(counts, total, CONFIDENCE)
        report["ci95_percent"] = {n: [round(100 * lo, 3), round(100 * hi, 3)] for n, lo, hi in zip(class_names, low, high)}
    if qc["checked"]:
        report["accepted_sample"]["agreement"] = qc["agreed"] / qc["checked"]
        low, high = clopper_pearson_interval(qc["agreed"], qc["checked"], CONFIDENCE)
        report["accepted_sample"]["agreement_ci95"] = [float(low), float(high)]
    return report


def _by_class(class_names: tuple[str, ...], values: np.ndarray) -> dict:
    return {n: (int(v) if np.issubdtype(np.asarray(values).dtype, np.integer) else round(float(v), 4))
            for n, v in zip(class_names, values)}
