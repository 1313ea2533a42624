"""Validity over many random calibration/test splits of data with known behaviour: the
guaranteed fits meet the target on fresh cells in at least 1 - delta of the trials,
the CCL paper's plain descending search does not."""
import numpy as np

from calibration import fit_icp, fit_threshold, icp_decisions

TRIALS = 300
DELTA = 0.1


def allowance(trials: int, rate: float) -> float:
    """Three binomial standard deviations of an observed miss rate."""
    return 3 * np.sqrt(rate * (1 - rate) / trials)


def scored_cells(rng, n):
    """Confidence c ~ U(0, 1); right with probability 0.85 + 0.15 c, so the true
    accuracy of the cells with c >= t is 0.85 + 0.075 (1 + t)."""
    conf = rng.random(n)
    pred = rng.integers(0, 4, n)
    right = rng.random(n) < 0.85 + 0.15 * conf
    return conf, pred, np.where(right, pred, (pred + 1) % 4), right


def test_guaranteed_threshold_holds_in_1_minus_delta_of_splits_and_the_paper_rule_does_not():
    target = 0.97
    rng = np.random.default_rng(2024)
    misses = {"descending": 0, "clopper-pearson": 0}
    fresh_misses = dict(misses)
    for _ in range(TRIALS):
        conf, pred, labels, right = scored_cells(rng, 1600)
        cal, test = np.split(rng.permutation(1600), 2)  # a random calibration/test split
        for method in misses:
            t = fit_threshold(conf[cal], pred[cal], labels[cal], target, method=method, delta=DELTA).threshold
            misses[method] += 0.85 + 0.075 * (1 + min(t, 1.0)) < target
            accepted = conf[test] >= t
            fresh_misses[method] += accepted.any() and right[test][accepted].mean() < target
    assert misses["clopper-pearson"] / TRIALS <= DELTA + allowance(TRIALS, DELTA)
    assert misses["descending"] / TRIALS >= 0.3, "the plain search should miss often"
    # on the fresh half too, the guaranteed threshold misses far less often than the plain one
    assert fresh_misses["clopper-pearson"] < fresh_misses["descending"]


def softmax_cells(rng, n, classes=4):
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += 2.0
    q = np.exp(logits)
    return q / q.sum(axis=1, keepdims=True), labels


def test_guaranteed_icp_holds_in_1_minus_delta_of_splits():
    target, trials = 0.95, 100
    rng = np.random.default_rng(7)
    fresh_q, fresh_y = softmax_cells(rng, 40_000)  # stands in for the population
    misses = {"descending": 0, "clopper-pearson": 0}
    for seed in range(trials):
        q, y = softmax_cells(rng, 1200)
        for search in misses:
            fit = fit_icp(q, y, target, search, delta=DELTA, seed=seed)
            if not fit.reached:
                continue
            predicted, accepted = icp_decisions(fit.predictor.p_values(fresh_q), fit.epsilon, fresh_q)
            misses[search] += (predicted[accepted] == fresh_y[accepted]).mean() < target
    assert misses["clopper-pearson"] / trials <= DELTA + allowance(trials, DELTA)
    assert misses["descending"] > misses["clopper-pearson"]
