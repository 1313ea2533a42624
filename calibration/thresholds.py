"""Fitting reject thresholds on a calibration set (the deployed model's outputs).

Candidate thresholds are the distinct calibration confidences in descending
order; a threshold accepts confidence >= threshold, and the fitted threshold is
always one of the candidates, i.e. the highest value that accepts exactly the
calibration samples the procedure settled on.

When no candidate reaches the target, the fit returns threshold = math.inf with
`reached=False`: it rejects everything, and `to_dict` writes it as "inf" (read it
back with `float()`). A bundle should not ship such a threshold silently.

Methods (the `method` names of `fit_threshold`, also called the search; the softmax and
ICP baselines live in `calibration.rules` and `calibration.conformal`):

- "descending": the CCL paper's procedure.
- "clopper-pearson": the same scan, held to an upper confidence bound on the
  accepted error rate instead of the observed one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from calibration.binomial import binomial_cdf, clopper_pearson_upper
from calibration.metrics import (RejectMetrics, accept_counts, check_inputs,
                                 reject_metrics, threshold_to_json)


def ccl_confidence(D: np.ndarray) -> np.ndarray:
    """CCL confidence c = 1 - sum_i D_i + max(D) per row (the paper's eq. 4).

    D is (N, C) Gaussian-kernel class scores (rows need not sum to 1). A floating
    dtype is kept, so float32 device outputs give float32 confidences.
    """
    D = np.asarray(D)
    if D.ndim != 2:
        raise ValueError(f"expected class scores of shape (N, C), got {D.shape}")
    if D.dtype.kind != "f":
        D = D.astype(np.float64)
    return 1.0 - D.sum(axis=1) + D.max(axis=1)


@dataclass(frozen=True)
class ThresholdFit:
    """A fitted threshold and the calibration figures at it.

    `error_upper_bound` is the Clopper-Pearson bound (confidence 1 - delta) on the
    accepted error rate at the threshold, for the "clopper-pearson" method only.
    """

    threshold: float
    reached: bool
    target_accuracy: float
    method: str
    delta: float | None
    error_upper_bound: float | None
    n_calibration: int
    calibration: RejectMetrics

    def to_dict(self) -> dict:
        return {
            "threshold": threshold_to_json(self.threshold),
            "reached": self.reached,
            "target_accuracy": self.target_accuracy,
            "method": self.method,
            "delta": self.delta,
            "error_upper_bound": self.error_upper_bound,
            "n_calibration": self.n_calibration,
            "calibration": self.calibration.to_dict(),
        }


def check_target(target_accuracy: float) -> float:
    t = float(target_accuracy)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
    return t


def last_of_first_run(passes: np.ndarray, start: int = 0) -> int | None:
    """Index of the last pass in the run beginning at `start`; None if `start` fails.

    This is the first-crossing rule: walk down from `start` and stop at the first
    failure; later candidates that would pass again are never looked at.
    """
    if start >= len(passes) or not passes[start]:
        return None
    failures = np.flatnonzero(~passes[start:])
    return start + int(failures[0]) - 1 if len(failures) else len(passes) - 1


def _make_fit(conf: np.ndarray, pred: np.ndarray, lab: np.ndarray, thresholds: np.ndarray,
              chosen: int | None, target: float, method: str, delta: float | None,
              bound: float | None) -> ThresholdFit:
    threshold = math.inf if chosen is None else float(thresholds[chosen])
    return ThresholdFit(threshold, chosen is not None, target, method, delta, bound,
                        len(conf), reject_metrics(conf, pred, lab, threshold))


def fit_threshold_descending(confidence, predicted, labels,
                             target_accuracy: float) -> ThresholdFit:
    """The CCL paper's threshold: lower it while accepted accuracy stays >= target.

    Starting from the highest candidate (which accepts only the most confident
    sample or tied group), the threshold is lowered one candidate at a time until
    the accuracy of the accepted samples falls below the target; the last one
    that met the target is kept. This is the FIRST crossing, not the lowest
    threshold that meets the target anywhere: if accuracy dips below the target
    and recovers further down, the recovery is ignored. If the highest candidate
    already misses the target, nothing is accepted (reached=False).
    """
    conf, pred, lab = check_inputs(confidence, predicted, labels)
    target = check_target(target_accuracy)
    thresholds, n_accepted, n_correct = accept_counts(conf, pred == lab)
    chosen = last_of_first_run(n_correct / n_accepted >= target)
    return _make_fit(conf, pred, lab, thresholds, chosen, target, "descending", None, None)


def fit_threshold_guaranteed(confidence, predicted, labels, target_accuracy: float,
                             delta: float = 0.05) -> ThresholdFit:
    """Lowest threshold, by the first-crossing scan, with a guaranteed accepted accuracy.

    A candidate passes when the one-sided Clopper-Pearson upper bound
    (confidence 1 - delta) on the error rate of the samples it accepts is
    <= 1 - target. The scan is a fixed-sequence test: candidates are tested in
    descending order, which depends on the confidences only, and it stops at the
    first failure, so with probability >= 1 - delta (over calibration sets
    exchangeable with the deployment data) every threshold it passed, the
    returned one included, has true accepted accuracy >= target. The scan starts
    at the first candidate accepting enough samples to pass at all with zero
    errors (target^n <= delta); that start ignores the labels, so it keeps
    the guarantee, while starting at the very top would fail on every data set.
    Every candidate it passes also meets the target empirically, so it is at or
    above the "descending" threshold unless that scan stopped before this one
    started (e.g. the most confident sample is wrong).
    """
    conf, pred, lab = check_inputs(confidence, predicted, labels)
    target = check_target(target_accuracy)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    thresholds, n_accepted, n_correct = accept_counts(conf, pred == lab)
    errors = n_accepted - n_correct
    max_error = 1.0 - target
    passes = binomial_cdf(errors, n_accepted, max_error) <= delta
    enough = binomial_cdf(0, n_accepted, max_error) <= delta
    start = int(np.argmax(enough)) if enough.any() else len(enough)
    chosen = last_of_first_run(passes, start)
    bound = None if chosen is None else float(
        clopper_pearson_upper(errors[chosen], n_accepted[chosen], delta))
    return _make_fit(conf, pred, lab, thresholds, chosen, target, "clopper-pearson", delta, bound)


_FITTERS: dict[str, Callable[..., ThresholdFit]] = {
    "descending": lambda c, p, y, target, delta: fit_threshold_descending(c, p, y, target),
    "clopper-pearson": fit_threshold_guaranteed,
}
METHODS: tuple[str, ...] = tuple(_FITTERS)


def fit_threshold(confidence, predicted, labels, target_accuracy: float,
                  method: str = "descending", delta: float = 0.05) -> ThresholdFit:
    """Fit one threshold by `method` (one of METHODS); `delta` is used where it applies."""
    if method not in _FITTERS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return _FITTERS[method](confidence, predicted, labels, target_accuracy, delta)


def per_class_thresholds(confidence, predicted, labels, target_accuracy: float,
                         min_count: int = 30, method: str = "descending",
                         delta: float = 0.05, num_classes: int | None = None
                         ) -> dict[int, float]:
    """A threshold per PREDICTED class (the device knows only that), fitted on its samples.

    Classes with fewer than `min_count` calibration samples predicted as them get
    the global threshold fitted on all samples. Keys are 0..num_classes-1 when
    `num_classes` is given, else the predicted classes present. With
    "clopper-pearson" each class's guarantee holds at 1 - delta on its own, not
    jointly over classes. A class whose fit misses the target gets math.inf.
    """
    conf, pred, lab = check_inputs(confidence, predicted, labels)
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if num_classes is not None and pred.max() >= num_classes:
        raise ValueError(f"predicted class indices must lie in [0, {num_classes})")
    classes = range(num_classes) if num_classes is not None else np.unique(pred)
    global_threshold = fit_threshold(conf, pred, lab, target_accuracy, method, delta).threshold
    result = {}
    for c in classes:
        mask = pred == c
        result[int(c)] = (fit_threshold(conf[mask], pred[mask], lab[mask], target_accuracy,
                                        method, delta).threshold
                          if mask.sum() >= min_count else global_threshold)
    return result


def apply_thresholds(confidence, predicted, threshold: float | dict[int, float]) -> np.ndarray:
    """Accepted mask: confidence >= the threshold (of the predicted class, for a dict).

    NaN confidence is rejected. A predicted class missing from a threshold dict
    is an error, not a silent accept or reject.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    if not isinstance(threshold, dict):
        return conf >= float(threshold)
    pred = np.asarray(predicted)
    if pred.shape != conf.shape:
        raise ValueError(f"confidence {conf.shape} and predicted {pred.shape} differ in shape")
    if not threshold:
        raise ValueError("the threshold dict is empty")
    items = sorted((int(c), float(t)) for c, t in threshold.items())
    classes = np.array([c for c, _ in items], dtype=np.int64)
    values = np.array([t for _, t in items], dtype=np.float64)
    pos = np.minimum(np.searchsorted(classes, pred), len(classes) - 1)
    known = classes[pos] == pred
    if not known.all():
        raise ValueError(f"no threshold for predicted classes {sorted(set(pred[~known].tolist()))}")
    return conf >= values[pos]
