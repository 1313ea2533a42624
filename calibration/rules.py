"""The reject rules on one interface: fit on a classifier's calibration outputs, then decide.

- "ccl": the CCL confidence c = 1 - sum D + max D against a threshold (the paper);
- "softmax": the top class probability against a threshold (the thesis baseline);
- "icp": the inductive conformal predictor of `calibration.conformal`.

Outputs are what the deployed classifier emits: kernel values D for a CCL head,
probabilities for a softmax head. The softmax and ICP rules need probabilities;
for a CCL head they are derived as q_c = D_c / sum_j D_j (the kernel values
normalised to sum 1), so the three rules can be compared on the same model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from calibration.conformal import IcpFit, fit_icp
from calibration.metrics import RejectReport, reject_report, threshold_to_json
from calibration.thresholds import (apply_thresholds, ccl_confidence, fit_threshold,
                                    per_class_thresholds)

RULES = ("ccl", "softmax", "icp")
HEADS = ("ccl", "softmax")


def rules_for_head(head: str) -> tuple[str, ...]:
    """The rules that can be judged on a head's outputs (CCL needs kernel values)."""
    _check_head(head)
    return RULES if head == "ccl" else ("softmax", "icp")


def class_probabilities(scores, head: str) -> np.ndarray:
    """Class probabilities from a head's outputs (a CCL head's D normalised to sum 1)."""
    _check_head(head)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"expected class scores of shape (N, C), got {s.shape}")
    if head == "softmax":
        return s
    total = s.sum(axis=1, keepdims=True)
    return np.divide(s, total, out=np.full_like(s, 1.0 / s.shape[1]), where=total > 0)


def rule_confidence(scores, head: str, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, predicted) of a threshold rule ("ccl" or "softmax")."""
    if rule == "ccl":
        if head != "ccl":
            raise ValueError("the ccl rule needs a CCL head's kernel outputs")
        s = np.asarray(scores)  # the device's dtype: float32 outputs give float32 confidences
        return ccl_confidence(s), s.argmax(axis=1)
    if rule == "softmax":
        q = class_probabilities(scores, head)
        return q.max(axis=1), q.argmax(axis=1)
    raise ValueError(f"{rule!r} is not a threshold rule")


@dataclass(frozen=True)
class RuleFit:
    """A fitted reject rule and its figures on the calibration cells it was fitted on.

    `threshold` is the global threshold; `per_class` maps predicted class index
    to its own threshold ({} for one global threshold). For "icp" they are the
    class probability cuts at the fitted level (see `ConformalPredictor.class_cuts`)
    with `threshold` the largest finite cut, and `icp` holds the predictor, which
    makes the decisions. An unreachable target gives threshold inf, reached False.
    """

    rule: str
    head: str
    search: str
    target_accuracy: float
    delta: float | None
    threshold: float
    reached: bool
    n_calibration: int
    calibration: RejectReport
    per_class: dict[int, float] = field(default_factory=dict)
    icp: IcpFit | None = None

    def decide(self, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(confidence, predicted, accepted) for the classifier outputs `scores`."""
        if self.icp is not None:
            return self.icp.decide(class_probabilities(scores, self.head))
        confidence, predicted = rule_confidence(scores, self.head, self.rule)
        return confidence, predicted, apply_thresholds(confidence, predicted, self.per_class or self.threshold)

    def report(self, scores, labels, num_classes: int | None = None) -> RejectReport:
        """This rule's figures on other labelled outputs (e.g. a held-out split)."""
        confidence, predicted, accepted = self.decide(scores)
        return reject_report(confidence, predicted, labels, accepted, self.threshold, num_classes)

    def to_dict(self) -> dict:
        out = {"rule": self.rule, "head": self.head, "search": self.search,
               "target_accuracy": self.target_accuracy, "delta": self.delta,
               "threshold": threshold_to_json(self.threshold), "reached": self.reached,
               "per_class_thresholds": {int(c): threshold_to_json(t) for c, t in self.per_class.items()},
               "n_calibration": self.n_calibration}
        if self.icp is not None:
            out["icp"] = self.icp.to_dict()
        return out


def fit_rule(scores, labels, head: str, rule: str, target_accuracy: float,
             search: str = "clopper-pearson", delta: float = 0.05, per_class: bool = False,
             min_per_class: int = 30, num_classes: int | None = None,
             icp_fit_fraction: float = 0.5, seed: int = 0) -> RuleFit:
    """Fit `rule` on calibration outputs `scores` of a `head` with true `labels`.

    `search` is "descending" (the CCL paper's) or "clopper-pearson" (accepted
    accuracy >= target with confidence 1 - delta). `per_class` fits a threshold
    per predicted class (classes with fewer than `min_per_class` calibration
    cells use the global one); the ICP is class-conditional by construction.
    """
    if rule not in rules_for_head(head):
        raise ValueError(f"rule {rule!r} does not apply to a {head} head; "
                         f"it allows {', '.join(rules_for_head(head))}")
    scores = np.asarray(scores)
    num_classes = num_classes or scores.shape[1]
    d = delta if search == "clopper-pearson" else None
    if rule == "icp":
        if per_class:
            raise ValueError("the ICP is class-conditional already; per-class thresholds apply to ccl and softmax")
        icp = fit_icp(class_probabilities(scores, head), labels, target_accuracy, search, delta,
                      icp_fit_fraction, seed, num_classes)
        cuts = icp.predictor.class_cuts(icp.epsilon) if icp.reached else np.full(num_classes, np.inf)
        finite = cuts[np.isfinite(cuts)]
        return RuleFit(rule, head, search, icp.target_accuracy, d,
                       float(finite.max()) if finite.size else math.inf, icp.reached, len(scores),
                       icp.fitting, {c: float(t) for c, t in enumerate(cuts)}, icp)

    confidence, predicted = rule_confidence(scores, head, rule)
    fit = fit_threshold(confidence, predicted, labels, target_accuracy, method=search, delta=delta)
    per = (per_class_thresholds(confidence, predicted, labels, target_accuracy, min_per_class, search,
                                delta, num_classes) if per_class and fit.reached else {})
    accepted = apply_thresholds(confidence, predicted, per or fit.threshold)
    report = reject_report(confidence, predicted, labels, accepted, fit.threshold, num_classes)
    return RuleFit(rule, head, search, fit.target_accuracy, d, fit.threshold, fit.reached,
                   len(scores), report, per)


def _check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"unknown classifier head {head!r}; known: {', '.join(HEADS)}")
