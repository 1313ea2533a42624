import json
import math

import numpy as np
import pytest

from calibration import (aurc, reject_metrics, risk_coverage_curve,
                         threshold_from_json, threshold_to_json)

# Hand example: correct = [T, T, F, T, T, F]
CONF = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
PRED = np.array([0, 1, 1, 0, 2, 2])
LABELS = np.array([0, 1, 0, 0, 2, 1])


def test_overall_metrics_by_hand():
    m = reject_metrics(CONF, PRED, LABELS, threshold=0.65)
    assert m.n == 6 and m.n_accepted == 3 and m.threshold == 0.65
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.rejection_rate == pytest.approx(0.5)
    assert m.accepted_accuracy == pytest.approx(2 / 3)
    assert m.reliability == pytest.approx((1 - 0.5) * 2 / 3)


def test_per_class_groups_by_true_label():
    m = reject_metrics(CONF, PRED, LABELS, threshold=0.65)
    assert sorted(m.per_class) == [0, 1, 2]
    c0, c1, c2 = m.per_class[0], m.per_class[1], m.per_class[2]
    # class 0: samples 0, 2, 3 (correct T, F, T); accepted 0 and 2
    assert (c0.n, c0.n_accepted) == (3, 2)
    assert c0.accuracy == pytest.approx(2 / 3)
    assert c0.rejection_rate == pytest.approx(1 / 3)
    assert c0.accepted_accuracy == pytest.approx(1 / 2)
    assert c0.reliability == pytest.approx(1 / 3)
    # class 1: samples 1, 5 (T, F); accepted 1
    assert (c1.n, c1.n_accepted, c1.accuracy) == (2, 1, 0.5)
    assert (c1.rejection_rate, c1.accepted_accuracy, c1.reliability) == (0.5, 1.0, 0.5)
    # class 2: sample 4 (T), rejected: Ra undefined, R = 0
    assert (c2.n, c2.n_accepted, c2.accuracy, c2.rejection_rate) == (1, 0, 1.0, 1.0)
    assert c2.accepted_accuracy is None and c2.reliability == 0.0
    assert c0.per_class == {}


def test_num_classes_lists_empty_classes_and_checks_range():
    m = reject_metrics(CONF, PRED, LABELS, threshold=0.65, num_classes=4)
    assert sorted(m.per_class) == [0, 1, 2, 3]
    empty = m.per_class[3]
    assert empty.n == 0 and empty.n_accepted == 0
    assert empty.accuracy is empty.rejection_rate is empty.accepted_accuracy is None
    assert empty.reliability is None
    with pytest.raises(ValueError, match="class indices"):
        reject_metrics(CONF, PRED, LABELS, threshold=0.65, num_classes=2)


def test_threshold_accepts_ties_together():
    conf = np.array([0.9, 0.7, 0.7, 0.5])
    pred = np.array([1, 1, 1, 1])
    labels = np.array([1, 0, 1, 1])
    m = reject_metrics(conf, pred, labels, threshold=0.7)
    assert m.n_accepted == 3
    assert m.accepted_accuracy == pytest.approx(2 / 3)
    assert reject_metrics(conf, pred, labels, threshold=np.nextafter(0.7, 1)).n_accepted == 1


def test_nothing_accepted_and_everything_accepted():
    none = reject_metrics(CONF, PRED, LABELS, threshold=math.inf)
    assert none.n_accepted == 0 and none.rejection_rate == 1.0
    assert none.accepted_accuracy is None and none.reliability == 0.0
    everything = reject_metrics(CONF, PRED, LABELS, threshold=-math.inf)
    assert everything.rejection_rate == 0.0
    assert everything.accepted_accuracy == everything.reliability == everything.accuracy


def test_to_dict_is_plain_json():
    m = reject_metrics(CONF, PRED, LABELS, threshold=math.inf, num_classes=4)
    d = m.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["threshold"] == "inf" and threshold_from_json(back["threshold"]) == math.inf
    assert set(back) >= {"n", "accuracy", "rejection_rate", "accepted_accuracy",
                         "reliability", "threshold", "per_class"}
    assert back["per_class"]["3"]["accuracy"] is None
    for v in (d["n"], d["n_accepted"], d["accuracy"], d["rejection_rate"], d["reliability"]):
        assert type(v) in (int, float)


def test_threshold_json_round_trip():
    for t in (0.25, -1.5, math.inf, -math.inf):
        assert threshold_from_json(json.loads(json.dumps(threshold_to_json(t)))) == t
    with pytest.raises(ValueError):
        threshold_to_json(math.nan)


def test_risk_coverage_curve_with_ties_and_input_order():
    conf = np.array([0.9, 0.8, 0.8, 0.6])
    pred = np.zeros(4, dtype=int)
    labels = np.array([0, 1, 0, 0])  # correct T, F, T, T
    coverage, risk, thresholds = risk_coverage_curve(conf, pred, labels)
    np.testing.assert_allclose(coverage, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 3, 0.25])
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.6])
    # the tied pair counts together, whatever the order of the input
    perm = np.array([3, 2, 0, 1])
    for a, b in zip(risk_coverage_curve(conf[perm], pred[perm], labels[perm]),
                    (coverage, risk, thresholds)):
        np.testing.assert_allclose(a, b)
    assert aurc(conf, pred, labels) == pytest.approx(0.25 * 0 + 0.5 * (1 / 3) + 0.25 * 0.25)


def test_aurc_without_ties_is_mean_selective_risk():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    pred = np.zeros(4, dtype=int)
    labels = np.array([0, 1, 0, 0])
    assert aurc(conf, pred, labels) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_risk_coverage_matches_reject_metrics_on_random_data():
    rng = np.random.default_rng(1)
    conf = np.round(rng.random(500), 2)  # many ties
    pred = rng.integers(0, 3, 500)
    labels = np.where(rng.random(500) < conf, pred, (pred + 1) % 3)
    coverage, risk, thresholds = risk_coverage_curve(conf, pred, labels)
    assert np.all(np.diff(coverage) > 0) and coverage[-1] == 1.0
    assert np.all(np.diff(thresholds) < 0)
    assert len(thresholds) == len(np.unique(conf))
    for i in (0, 7, len(thresholds) // 2, len(thresholds) - 1):
        m = reject_metrics(conf, pred, labels, thresholds[i])
        assert coverage[i] == pytest.approx(1 - m.rejection_rate)
        assert risk[i] == pytest.approx(1 - m.accepted_accuracy)
    assert 0.0 <= aurc(conf, pred, labels) <= 1.0


def test_all_correct_and_all_wrong():
    conf = np.linspace(0.1, 1.0, 10)
    labels = np.arange(10) % 3
    right = reject_metrics(conf, labels, labels, 0.5)
    assert right.accuracy == right.accepted_accuracy == 1.0
    assert aurc(conf, labels, labels) == 0.0
    wrong = reject_metrics(conf, (labels + 1) % 3, labels, 0.5)
    assert wrong.accuracy == wrong.accepted_accuracy == wrong.reliability == 0.0
    assert aurc(conf, (labels + 1) % 3, labels) == pytest.approx(1.0)


@pytest.mark.parametrize("args, message", [
    (([], [], []), "empty"),
    (([0.5, 0.6], [0], [0]), "length mismatch"),
    (([[0.5]], [[0]], [[0]]), "1-D"),
    (([0.5], [0.0], [0]), "integer"),
    (([0.5], [0], [-1]), "negative"),
    (([math.nan], [0], [0]), "NaN"),
])
def test_bad_inputs_raise(args, message):
    with pytest.raises(ValueError, match=message):
        reject_metrics(*args, threshold=0.5)
    with pytest.raises(ValueError, match=message):
        risk_coverage_curve(*args)


def test_nan_threshold_raises():
    with pytest.raises(ValueError, match="NaN"):
        reject_metrics(CONF, PRED, LABELS, threshold=math.nan)

