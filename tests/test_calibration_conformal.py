"""The inductive conformal predictor and the three reject rules on one interface."""
import json

import numpy as np
import pytest

from calibration import (ConformalPredictor, class_probabilities, fit_icp, fit_rule, fit_threshold,
                         icp_decisions, per_class_thresholds, rules_for_head)


def softmax_data(n, seed, classes=4, margin=2.5, decimals=None):
    """Probabilities of a classifier that is right more often when it is sure."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += margin
    q = np.exp(logits)
    q /= q.sum(axis=1, keepdims=True)
    if decimals is not None:
        q = np.round(q, decimals)
    return q, labels


def literal_p_values(cal_q, cal_y, q):
    """Compare with every calibration score of the class (the naive ICP)."""
    out = np.empty(q.shape)
    for i in range(len(q)):
        for c in range(q.shape[1]):
            own = -cal_q[cal_y == c, c]
            out[i, c] = (np.sum(own >= -q[i, c]) + 1) / (len(own) + 1)
    return out


@pytest.mark.parametrize("decimals", [None, 2])
def test_p_values_by_binary_search_equal_the_naive_count(decimals):
    cal_q, cal_y = softmax_data(300, seed=1, decimals=decimals)
    q, _ = softmax_data(200, seed=2, decimals=decimals)
    q = np.vstack([q, cal_q[:20]])  # calibration values themselves: ties
    p = ConformalPredictor.fit(cal_q, cal_y).p_values(q)
    np.testing.assert_array_equal(p, literal_p_values(cal_q, cal_y, q))


def test_class_cuts_are_exactly_the_plausibility_rule():
    cal_q, cal_y = softmax_data(400, seed=3, decimals=3)
    icp = ConformalPredictor.fit(cal_q.astype(np.float32).astype(np.float64), cal_y)
    q = np.vstack([softmax_data(500, seed=4, decimals=3)[0], cal_q]).astype(np.float32)
    p = icp.p_values(q)
    for eps in [0.0, 0.004, 0.01, 0.05, 0.2, 0.5, 0.97, 1.0]:
        cuts = icp.class_cuts(eps)
        np.testing.assert_array_equal(q >= cuts, p > eps, err_msg=f"epsilon {eps}")
    assert np.all(icp.class_cuts(0.0) == 0.0) and np.all(np.isinf(icp.class_cuts(1.0)))


def test_accepted_when_exactly_one_class_is_plausible():
    p = np.array([[0.50, 0.02, 0.01], [0.50, 0.40, 0.01], [0.03, 0.02, 0.01], [0.02, 0.02, 0.6]])
    q = np.array([[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    predicted, accepted = icp_decisions(p, 0.05, q)
    np.testing.assert_array_equal(accepted, [True, False, False, True])
    np.testing.assert_array_equal(predicted, [0, 0, 0, 2])
    # a tie of p-values goes to the higher probability
    predicted, _ = icp_decisions(np.array([[0.1, 0.1, 0.0]]), 0.05, np.array([[0.3, 0.6, 0.1]]))
    assert predicted[0] == 1


def reference_icp_level(p, correct, levels, target):
    """Literal scan for the 'descending' search: from the highest level down, stop at the
    first failure, keep the passed level that accepts the most cells."""
    best, best_n, started = None, -1, False
    for e in sorted(levels, reverse=True):
        acc = ((p > e).sum(axis=1) == 1)
        n = acc.sum()
        if not started and n == 0:
            continue
        started = True
        if n == 0 or (correct & acc).sum() < target * n:
            break
        if n > best_n:
            best, best_n = e, n
    return best


def test_fit_icp_matches_a_literal_scan_and_meets_the_target_on_its_fitting_cells():
    q, y = softmax_data(1200, seed=5)
    fit = fit_icp(q, y, 0.95, "descending", seed=3)
    order = np.random.default_rng(3).permutation(len(y))
    fitting = order[:600]
    p = fit.predictor.p_values(q[fitting])
    predicted, _ = icp_decisions(p, 0.0, q[fitting])
    levels = np.unique(np.concatenate([(np.arange(n + 1) + 1) / (n + 1) for n in fit.predictor.class_counts]))
    assert fit.reached and fit.epsilon == reference_icp_level(p, predicted == y[fitting], levels, 0.95)
    m = fit.fitting.metrics
    assert fit.n_proper == fit.n_fitting == 600 and m.n == 600
    assert m.accepted_accuracy >= 0.95 and 0 < m.rejection_rate < 1
    guaranteed = fit_icp(q, y, 0.95, "clopper-pearson", delta=0.05, seed=3)
    if guaranteed.reached:
        assert guaranteed.fitting.metrics.accepted_accuracy >= 0.95
    json.dumps(fit.to_dict(), allow_nan=False)


def test_icp_needs_every_class_and_a_split():
    q, y = softmax_data(200, seed=6)
    with pytest.raises(ValueError, match=r"classes \[3\] have none"):
        fit_icp(q, np.minimum(y, 2), 0.9, num_classes=4)
    with pytest.raises(ValueError, match="too few"):
        fit_icp(q[:1], y[:1], 0.9)
    with pytest.raises(ValueError, match="unknown search"):
        fit_icp(q, y, 0.9, "magic")


def test_threshold_rules_are_the_threshold_fits_on_their_confidence():
    q, y = softmax_data(2000, seed=7, classes=5)
    rule = fit_rule(q, y, "softmax", "softmax", 0.95, search="descending")
    direct = fit_threshold(q.max(1), q.argmax(1), y, 0.95, method="descending")
    assert rule.threshold == direct.threshold and rule.per_class == {}
    assert rule.calibration.metrics == direct.calibration.__class__(**{
        **direct.calibration.__dict__, "per_class": rule.calibration.metrics.per_class})
    per = fit_rule(q, y, "softmax", "softmax", 0.95, search="clopper-pearson", per_class=True, min_per_class=50)
    assert per.per_class == per_class_thresholds(q.max(1), q.argmax(1), y, 0.95, 50, "clopper-pearson",
                                                 0.05, 5)
    conf, pred, accepted = per.decide(q)
    np.testing.assert_array_equal(accepted, conf >= np.array([per.per_class[c] for c in pred]))


def test_ccl_head_gives_all_three_rules_and_derived_probabilities():
    rng = np.random.default_rng(8)
    D = rng.uniform(0.0, 1.0, (500, 4)).astype(np.float32)
    y = D.argmax(1)
    assert rules_for_head("ccl") == ("ccl", "softmax", "icp") and rules_for_head("softmax") == ("softmax", "icp")
    np.testing.assert_allclose(class_probabilities(D, "ccl").sum(1), 1.0)
    ccl = fit_rule(D, y, "ccl", "ccl", 0.9)
    conf, _, _ = ccl.decide(D)
    assert conf.dtype == np.float32  # as the device computes it
    with pytest.raises(ValueError, match="does not apply to a softmax head"):
        fit_rule(D, y, "softmax", "ccl", 0.9)
    with pytest.raises(ValueError, match="class-conditional already"):
        fit_rule(D, y, "ccl", "icp", 0.9, per_class=True)


def test_icp_rule_reports_on_held_out_cells():
    q, y = softmax_data(1500, seed=9, margin=4.0)
    fit = fit_rule(q, y, "softmax", "icp", 0.97, search="clopper-pearson")
    assert fit.reached and fit.icp is not None and fit.n_calibration == 1500
    assert fit.threshold == max(fit.per_class.values())
    q2, y2 = softmax_data(3000, seed=10, margin=4.0)
    report = fit.report(q2, y2)
    _, predicted, accepted = fit.decide(q2)
    assert report.metrics.n_accepted == accepted.sum()
    assert report.metrics.accepted_accuracy == np.mean(predicted[accepted] == y2[accepted])
    d = report.to_dict()
    assert set(d["per_class"][0]) >= {"aurc", "curve", "rejection_rate"} and len(d["curve"]["coverage"]) <= 101
    json.dumps(d, allow_nan=False)
