"""The final differential: how each kind of answer counts, and the exact intervals."""
import numpy as np
import pytest

from calibration.binomial import clopper_pearson_interval
from edge.review.differential import final_differential

NAMES = ("neutrophil", "lymphocyte", "monocyte")


def test_clopper_pearson_matches_published_values():
    # 95 % exact intervals for 0, 1, 5 and 10 successes of 10 (standard tables)
    ci = np.stack(clopper_pearson_interval([0, 1, 5, 10], 10), axis=1)
    np.testing.assert_allclose(ci, [[0, 0.30850], [0.00253, 0.44502], [0.18709, 0.81291], [0.69150, 1]],
                               atol=5e-5)


def test_each_answer_counts_as_documented():
    accepted = {"a1": "neutrophil", "a2": "neutrophil", "a3": "lymphocyte", "a4": "monocyte"}
    rejected = {"r1": "neutrophil", "r2": "monocyte", "r3": "monocyte", "r4": "lymphocyte"}
    labels = {"a2": "monocyte",          # the expert corrects an accepted cell
              "a3": "not_a_cell",        # ... or removes it
              "a4": "unsure",            # an unsure check keeps the machine's class
              "r1": "lymphocyte", "r2": "not_a_cell", "r3": "unsure"}   # r4 unlabelled
    report = final_differential(NAMES, accepted, rejected, labels)
    assert report["counts"] == {"neutrophil": 1, "lymphocyte": 1, "monocyte": 2}
    assert report["counts_by_origin"]["expert"] == {"neutrophil": 0, "lymphocyte": 1, "monocyte": 1}
    assert report["rejected"] == {"total": 4, "labelled": 1, "not_a_cell": 1, "unsure": 1, "pending": 1}
    assert not report["complete"]
    qc = report["accepted_sample"]
    assert (qc["checked"], qc["agreed"], qc["relabelled"], qc["not_a_cell"], qc["unsure"]) == (2, 0, 1, 1, 1)
    assert report["differential_percent"]["monocyte"] == pytest.approx(50.0)
    lo, hi = report["ci95_percent"]["monocyte"]
    assert lo == pytest.approx(6.76, abs=0.01) and hi == pytest.approx(93.24, abs=0.01)


def test_an_empty_count_has_no_intervals():
    report = final_differential(NAMES, {}, {"r1": "neutrophil"}, {"r1": "not_a_cell"})
    assert report["counted"] == 0 and report["ci95_percent"] is None and report["complete"]
    assert report["differential_percent"] == {n: 0.0 for n in NAMES}
