import json
import math

import numpy as np
import pytest

from calibration import (METHODS, apply_thresholds, ccl_confidence, clopper_pearson_upper,
                         fit_threshold, fit_threshold_descending, fit_threshold_guaranteed,
                         per_class_thresholds, reject_metrics)


def from_correctness(correct, conf=None):
    """Samples of one class; `correct` says which predictions are right."""
    correct = np.asarray(correct, dtype=bool)
    if conf is None:
        conf = np.linspace(1.0, 0.1, len(correct))
    pred = np.zeros(len(correct), dtype=int)
    return np.asarray(conf, dtype=float), pred, np.where(correct, 0, 1)


def synthetic(n, seed, decimals=None):
    """Confidence ~ U(0, 1); a prediction is right with probability 0.85 + 0.15 * conf."""
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    if decimals is not None:
        conf = np.round(conf, decimals)
    pred = rng.integers(0, 4, n)
    right = rng.random(n) < 0.85 + 0.15 * conf
    return conf, pred, np.where(right, pred, (pred + 1) % 4)


def reference_scan(conf, pred, labels, passes, start_ok=lambda m: True):
    """Literal loop: lower the threshold over the distinct values, stop at the first failure."""
    kept, started = math.inf, False
    for t in sorted(set(conf.tolist()), reverse=True):
        m = reject_metrics(conf, pred, labels, t)
        if not started and not start_ok(m):
            continue
        started = True
        if not passes(m):
            break
        kept = t
    return kept


def test_ccl_confidence_eq4():
    D = np.array([[0.9, 0.05, 0.05], [0.5, 0.5, 0.1], [0.2, 0.1, 0.0]], dtype=np.float32)
    c = ccl_confidence(D)
    assert c.dtype == np.float32
    np.testing.assert_allclose(c, [0.9, 0.4, 0.9], rtol=1e-6)
    assert ccl_confidence(np.array([[1, 0]])).dtype == np.float64
    with pytest.raises(ValueError):
        ccl_confidence(np.array([0.1, 0.2]))


def test_descending_is_the_first_crossing():
    # accepted accuracy going down: 1, 1, 1, .75, .8, .833, .857, .875, .778, .7
    conf, pred, labels = from_correctness([1, 1, 1, 0, 1, 1, 1, 1, 0, 0])
    fit = fit_threshold_descending(conf, pred, labels, 0.8)
    assert fit.reached and fit.threshold == conf[2]  # not conf[7], the lowest that meets 0.8
    assert fit.calibration.n_accepted == 3 and fit.calibration.accepted_accuracy == 1.0
    assert fit.method == "descending" and fit.delta is None and fit.error_upper_bound is None
    assert fit.n_calibration == 10 and fit.target_accuracy == 0.8
    # equality meets the target: 3/4 at conf[3] passes, and the scan runs on
    assert fit_threshold_descending(conf, pred, labels, 0.75).threshold == conf[8]  # 7/9 >= .75


def test_descending_accepts_everything_when_it_never_fails():
    conf, pred, labels = from_correctness([1, 1, 0, 1, 1, 1, 1, 1, 1, 1])
    fit = fit_threshold_descending(conf, pred, labels, 0.66)
    assert fit.threshold == conf.min() and fit.calibration.rejection_rate == 0.0


def test_descending_keeps_tied_samples_together():
    conf, pred, labels = from_correctness([1, 1, 0, 1], conf=[0.9, 0.8, 0.8, 0.7])
    fit = fit_threshold_descending(conf, pred, labels, 0.9)
    assert fit.threshold == 0.9  # accepting the correct 0.8 alone is impossible


def test_descending_top_sample_wrong_rejects_everything():
    conf, pred, labels = from_correctness([0, 1, 1, 1, 1])
    fit = fit_threshold_descending(conf, pred, labels, 0.5)
    assert not fit.reached and fit.threshold == math.inf
    assert fit.calibration.n_accepted == 0 and fit.calibration.reliability == 0.0
    d = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert d["threshold"] == "inf" and d["reached"] is False
    assert not apply_thresholds(conf, pred, fit.threshold).any()


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, 2), (2, 3), (3, None)])
def test_fits_match_a_literal_loop(seed, decimals):
    conf, pred, labels = synthetic(600, seed, decimals)
    target, delta, eps = 0.96, 0.05, 0.04
    d = fit_threshold_descending(conf, pred, labels, target)
    assert d.threshold == reference_scan(conf, pred, labels,
                                         lambda m: m.accepted_accuracy >= target)

    def bound(m):
        return clopper_pearson_upper(m.n_accepted - round(m.accepted_accuracy * m.n_accepted),
                                     m.n_accepted, delta)

    g = fit_threshold_guaranteed(conf, pred, labels, target, delta)
    assert g.threshold == reference_scan(conf, pred, labels, lambda m: bound(m) <= eps,
                                         start_ok=lambda m: (1 - eps) ** m.n_accepted <= delta)


def test_guaranteed_is_stricter_and_its_bound_holds():
    conf, pred, labels = synthetic(5000, seed=7)
    target, delta = 0.97, 0.05
    d = fit_threshold_descending(conf, pred, labels, target)
    g = fit_threshold_guaranteed(conf, pred, labels, target, delta)
    assert d.reached and g.reached
    assert g.threshold >= d.threshold
    assert g.calibration.rejection_rate >= d.calibration.rejection_rate
    assert g.method == "clopper-pearson" and g.delta == delta
    m = g.calibration
    errors = m.n_accepted - round(m.accepted_accuracy * m.n_accepted)
    assert g.error_upper_bound == pytest.approx(
        float(clopper_pearson_upper(errors, m.n_accepted, delta)))
    assert 1 - m.accepted_accuracy <= g.error_upper_bound <= 1 - target
    # the next lower candidate fails the bound (first crossing)
    below = conf[conf < g.threshold].max()
    mb = reject_metrics(conf, pred, labels, below)
    errors_below = mb.n_accepted - round(mb.accepted_accuracy * mb.n_accepted)
    assert clopper_pearson_upper(errors_below, mb.n_accepted, delta) > 1 - target
    json.dumps(g.to_dict(), allow_nan=False)


def test_guarantee_holds_on_fresh_data_far_more_often_than_the_paper_rule():
    # With P(right | c) = 0.85 + 0.15 c and c ~ U(0, 1), the true accuracy of
    # samples with c >= t is 0.85 + 0.075 (1 + t): 0.97 needs t >= 0.6.
    target, delta, misses = 0.97, 0.05, {"descending": 0, "clopper-pearson": 0}
    runs = 60
    for seed in range(runs):
        conf, pred, labels = synthetic(1500, seed=100 + seed)
        for method in misses:
            t = fit_threshold(conf, pred, labels, target, method=method, delta=delta).threshold
            misses[method] += 0.85 + 0.075 * (1 + t) < target
    assert misses["clopper-pearson"] / runs <= 0.15  # delta plus sampling noise
    assert misses["descending"] / runs >= 0.3


def test_guaranteed_needs_enough_samples():
    conf, pred, labels = from_correctness([1] * 100, conf=np.linspace(1, 0.01, 100))
    # (0.97)^n <= 0.05 needs n >= 99: reached with 100 correct samples ...
    fit = fit_threshold_guaranteed(conf, pred, labels, 0.97, delta=0.05)
    assert fit.reached and fit.calibration.n_accepted == 100
    assert fit.error_upper_bound == pytest.approx(1 - 0.05 ** (1 / 100))
    # ... but 0.98 needs n >= 149, and 1.0 is never guaranteed
    for target in (0.98, 1.0):
        fit = fit_threshold_guaranteed(conf, pred, labels, target, delta=0.05)
        assert not fit.reached and fit.threshold == math.inf and fit.error_upper_bound is None


def test_all_correct_and_all_wrong():
    conf, pred, labels = from_correctness([1] * 20)
    fit = fit_threshold_descending(conf, pred, labels, 1.0)
    assert fit.threshold == conf.min() and fit.calibration.accepted_accuracy == 1.0
    conf, pred, labels = from_correctness([0] * 20)
    for method in METHODS:
        assert not fit_threshold(conf, pred, labels, 0.5, method=method).reached


def test_per_class_uses_predicted_class_and_falls_back():
    rng = np.random.default_rng(3)
    # predicted 0: 40 samples, all right -> accepts all of them
    c0 = rng.uniform(0.5, 0.9, 40)
    # predicted 2: 40 samples, the 10 least confident wrong
    c2 = np.linspace(1.0, 0.6, 40)
    y2 = np.where(np.arange(40) < 30, 2, 1)
    # predicted 1: 5 samples, too few for its own threshold
    c1 = np.array([0.95, 0.3, 0.2, 0.1, 0.05])
    conf = np.concatenate([c0, c2, c1])
    pred = np.concatenate([np.zeros(40, int), np.full(40, 2), np.ones(5, int)])
    labels = np.concatenate([np.zeros(40, int), y2, np.array([1, 1, 0, 0, 0])])
    th = per_class_thresholds(conf, pred, labels, 0.9, min_count=30, num_classes=4)
    global_t = fit_threshold_descending(conf, pred, labels, 0.9).threshold
    assert sorted(th) == [0, 1, 2, 3]
    assert th[0] == c0.min()
    assert th[2] == c2[32]  # 30/33 >= 0.9 > 30/34
    assert th[1] == th[3] == global_t
    assert th[0] != global_t and th[2] != global_t
    without = per_class_thresholds(conf, pred, labels, 0.9, min_count=30)
    assert sorted(without) == [0, 1, 2]
    guaranteed = per_class_thresholds(conf, pred, labels, 0.9, method="clopper-pearson")
    assert all(guaranteed[c] >= th[c] for c in guaranteed)
    accepted = apply_thresholds(conf, pred, th)
    np.testing.assert_array_equal(accepted, conf >= np.array([th[p] for p in pred]))


def test_apply_thresholds():
    conf = np.array([0.2, 0.5, 0.5, np.nan, 0.9])
    pred = np.array([0, 0, 1, 1, 1])
    np.testing.assert_array_equal(apply_thresholds(conf, pred, 0.5),
                                  [False, True, True, False, True])
    np.testing.assert_array_equal(apply_thresholds(conf, pred, {0: 0.1, 1: 0.6}),
                                  [True, True, False, False, True])
    with pytest.raises(ValueError, match=r"\[1\]"):
        apply_thresholds(conf, pred, {0: 0.1, 2: 0.6})
    with pytest.raises(ValueError):
        apply_thresholds(conf, pred, {})


def test_large_random_input():
    conf, pred, labels = synthetic(10_000, seed=11, decimals=4)
    for method in METHODS:
        fit = fit_threshold(conf, pred, labels, 0.97, method=method)
        assert fit.reached and fit.calibration.accepted_accuracy >= 0.97
    th = per_class_thresholds(conf, pred, labels, 0.97, method="clopper-pearson")
    assert sorted(th) == [0, 1, 2, 3]


@pytest.mark.parametrize("call", [
    lambda: fit_threshold_descending([], [], [], 0.9),
    lambda: fit_threshold_guaranteed([], [], [], 0.9),
    lambda: per_class_thresholds([], [], [], 0.9),
    lambda: fit_threshold_descending([0.5], [0], [0], 0.0),
    lambda: fit_threshold_descending([0.5], [0], [0], 1.5),
    lambda: fit_threshold_guaranteed([0.5], [0], [0], 0.9, delta=0.0),
    lambda: fit_threshold([0.5], [0], [0], 0.9, method="magic"),
    lambda: per_class_thresholds([0.5], [0], [0], 0.9, min_count=0),
    lambda: per_class_thresholds([0.5], [3], [0], 0.9, num_classes=2),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
