"""Reject-option metrics: rejection rate, accepted accuracy, reliability, risk-coverage.

A threshold t accepts every sample whose confidence is >= t (the paper's rule,
shared by the device), so samples with tied confidence are always accepted or
rejected together. Metrics follow the CCL paper (eq. 9):

- Rr, the rejection rate: rejected / all;
- Ra, the accepted accuracy: correct among the accepted;
- R = (1 - Rr) * Ra, the reliability: the share of all cells recognised correctly
  without an expert.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class RejectMetrics:
    """Reject-option figures at one threshold.

    `accepted_accuracy` is None when no sample is accepted (it is undefined, and
    any number would mislead); `reliability` is then 0.0, since no cell is
    recognised. In `per_class` entries for a class with no samples every rate is
    None. `per_class` groups by the TRUE label; its entries have no `per_class`.
    """

    n: int
    n_accepted: int
    threshold: float
    accuracy: float | None
    rejection_rate: float | None
    accepted_accuracy: float | None
    reliability: float | None
    per_class: dict[int, RejectMetrics] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-JSON view; an infinite threshold is written as the string "inf"."""
        return {
            "n": self.n,
            "n_accepted": self.n_accepted,
            "threshold": threshold_to_json(self.threshold),
            "accuracy": self.accuracy,
            "rejection_rate": self.rejection_rate,
            "accepted_accuracy": self.accepted_accuracy,
            "reliability": self.reliability,
            "per_class": {int(c): m.to_dict() for c, m in self.per_class.items()},
        }


def threshold_to_json(threshold: float) -> float | str:
    """A threshold as a JSON value: finite -> float, +-inf -> "inf"/"-inf".

    `float()` reads either form back (see `threshold_from_json`).
    """
    t = float(threshold)
    if math.isnan(t):
        raise ValueError("threshold is NaN")
    return t if math.isfinite(t) else ("inf" if t > 0 else "-inf")


def threshold_from_json(value: float | int | str) -> float:
    """Inverse of `threshold_to_json`."""
    t = float(value)
    if math.isnan(t):
        raise ValueError(f"threshold {value!r} is NaN")
    return t


def check_inputs(confidence, predicted, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate per-sample arrays; return float64 confidence and int64 predicted, labels."""
    conf = np.asarray(confidence)
    pred = np.asarray(predicted)
    lab = np.asarray(labels)
    for name, a in (("confidence", conf), ("predicted", pred), ("labels", lab)):
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not conf.shape == pred.shape == lab.shape:
        raise ValueError(f"length mismatch: confidence {conf.shape[0]}, "
                         f"predicted {pred.shape[0]}, labels {lab.shape[0]}")
    if conf.shape[0] == 0:
        raise ValueError("no samples: confidence, predicted and labels are empty")
    if conf.dtype.kind not in "iuf":
        raise ValueError(f"confidence must be numeric, got dtype {conf.dtype}")
    conf = conf.astype(np.float64)
    if np.isnan(conf).any():
        raise ValueError("confidence contains NaN")
    for name, a in (("predicted", pred), ("labels", lab)):
        if a.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer class indices, got dtype {a.dtype}")
        if a.min() < 0:
            raise ValueError(f"{name} holds a negative class index")
    return conf, pred.astype(np.int64), lab.astype(np.int64)


def check_threshold(threshold: float) -> float:
    t = float(threshold)
    if math.isnan(t):
        raise ValueError("threshold is NaN")
    return t


def _from_counts(n: int, n_correct: int, n_accepted: int, n_accepted_correct: int,
                 threshold: float) -> RejectMetrics:
    if n == 0:
        return RejectMetrics(0, 0, threshold, None, None, None, None)
    rejection_rate = 1.0 - n_accepted / n
    if n_accepted == 0:
        return RejectMetrics(n, 0, threshold, n_correct / n, rejection_rate, None, 0.0)
    accepted_accuracy = n_accepted_correct / n_accepted
    return RejectMetrics(n, n_accepted, threshold, n_correct / n, rejection_rate,
                         accepted_accuracy, (1.0 - rejection_rate) * accepted_accuracy)


def reject_metrics(confidence, predicted, labels, threshold: float,
                   num_classes: int | None = None) -> RejectMetrics:
    """Rr, Ra, R and accuracy at `threshold`, overall and per true class.

    `per_class` covers classes 0..num_classes-1 when `num_classes` is given
    (indices beyond it are an error), else the classes present in `labels`.
    """
    conf, pred, lab = check_inputs(confidence, predicted, labels)
    t = check_threshold(threshold)
    return decision_metrics(conf >= t, pred, lab, t, num_classes)


def decision_metrics(accepted, predicted, labels, threshold: float,
                     num_classes: int | None = None) -> RejectMetrics:
    """`reject_metrics` for accept/reject decisions already made (e.g. by a conformal
    predictor); `threshold` is only recorded. Arrays must be validated by `check_inputs`."""
    accepted = np.asarray(accepted, dtype=bool)
    pred, lab, t = np.asarray(predicted), np.asarray(labels), check_threshold(threshold)
    if accepted.shape != lab.shape:
        raise ValueError(f"accepted {accepted.shape} and labels {lab.shape} differ in shape")
    correct = pred == lab
    if num_classes is None:
        classes = np.unique(lab)
        size = int(classes[-1]) + 1
    else:
        if num_classes < 1 or max(pred.max(), lab.max()) >= num_classes:
            raise ValueError(f"class indices must lie in [0, {num_classes})")
        classes = np.arange(num_classes)
        size = num_classes
    counts = [np.bincount(lab, weights=w, minlength=size).astype(np.int64)
              for w in (None, correct, accepted, accepted & correct)]
    per_class = {int(c): _from_counts(*(int(k[c]) for k in counts), t) for c in classes}
    overall = _from_counts(len(lab), int(correct.sum()), int(accepted.sum()),
                           int((accepted & correct).sum()), t)
    return replace(overall, per_class=per_class)


def accept_counts(confidence: np.ndarray, correct: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accepted and correct counts at every candidate threshold.

    The candidates are the distinct confidence values, in descending order;
    candidate t accepts every sample with confidence >= t, ties included.
    Returns (thresholds, n_accepted, n_accepted_correct).
    """
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    cum_correct = np.cumsum(correct[order], dtype=np.int64)
    last_of_group = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))
    return conf[last_of_group], last_of_group + 1, cum_correct[last_of_group]


def risk_coverage_curve(confidence, predicted, labels
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, risk, thresholds), one point per distinct confidence, descending.

    coverage = accepted / all (strictly increasing, ends at 1), risk = error rate
    of the accepted samples, thresholds = the confidence value giving that point.
    """
    conf, pred, lab = check_inputs(confidence, predicted, labels)
    thresholds, n_accepted, n_correct = accept_counts(conf, pred == lab)
    coverage = n_accepted / len(conf)
    risk = 1.0 - n_correct / n_accepted
    return coverage, risk, thresholds


def aurc(confidence, predicted, labels) -> float:
    """Area under the risk-coverage curve, as a step function from coverage 0.

    Each point's risk holds over the coverage it adds, so without ties this is
    the usual mean over k = 1..N of the error rate of the k most confident samples.
    Lower is better.
    """
    coverage, risk, _ = risk_coverage_curve(confidence, predicted, labels)
    return float(np.sum(risk * np.diff(coverage, prepend=0.0)))


@dataclass(frozen=True)
class RejectReport:
    """One reject rule judged on one data set: the figures at its operating point
    (overall and per true class), and its risk-coverage curve and AURC, overall and
    per true class, from the confidence that ranks the cells.

    The curve of a threshold rule passes through its operating point; a rule that
    also rejects on something else (the conformal predictor's empty sets) may lie
    below its curve's coverage there.
    """

    metrics: RejectMetrics
    aurc: float
    curve: tuple[np.ndarray, np.ndarray]  # coverage, risk
    per_class_aurc: dict[int, float | None]
    per_class_curves: dict[int, tuple[np.ndarray, np.ndarray]]

    def to_dict(self, curve_points: int | None = 101) -> dict:
        """Plain JSON; curves are thinned to about `curve_points` points (None: all, 0: none)."""
        out = self.metrics.to_dict()
        out["aurc"] = self.aurc
        for c, value in self.per_class_aurc.items():
            out["per_class"][int(c)]["aurc"] = value
        if curve_points != 0:
            out["curve"] = _curve_dict(*self.curve, curve_points)
            for c, curve in self.per_class_curves.items():
                out["per_class"][int(c)]["curve"] = _curve_dict(*curve, curve_points)
        return out


def reject_report(confidence, predicted, labels, accepted, threshold: float,
                  num_classes: int | None = None) -> RejectReport:
    """Figures of a rule that accepted `accepted` and ranks cells by `confidence`."""
    conf, pred, lab = check_inputs(confidence, predicted, labels)
    metrics = decision_metrics(accepted, pred, lab, threshold, num_classes)
    coverage, risk, _ = risk_coverage_curve(conf, pred, lab)
    per_aurc, per_curve = {}, {}
    for c in metrics.per_class:
        mask = lab == c
        if not mask.any():
            per_aurc[c] = None
            continue
        cov_c, risk_c, _ = risk_coverage_curve(conf[mask], pred[mask], lab[mask])
        per_aurc[c] = float(np.sum(risk_c * np.diff(cov_c, prepend=0.0)))
        per_curve[c] = (cov_c, risk_c)
    area = float(np.sum(risk * np.diff(coverage, prepend=0.0)))
    return RejectReport(metrics, area, (coverage, risk), per_aurc, per_curve)


def _curve_dict(coverage: np.ndarray, risk: np.ndarray, points: int | None) -> dict:
    if points is not None and len(coverage) > points:
        keep = np.unique(np.searchsorted(coverage, np.linspace(0.0, 1.0, points)).clip(0, len(coverage) - 1))
        coverage, risk = coverage[keep], risk[keep]
    return {"coverage": [round(float(v), 6) for v in coverage], "risk": [round(float(v), 6) for v in risk]}
