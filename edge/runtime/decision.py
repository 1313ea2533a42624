"""Turning classifier outputs into a prediction, a confidence and accept/reject."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.thresholds import ccl_confidence
from edge.runtime.bundle import Bundle


@dataclass(frozen=True)
class Decisions:
    predicted: np.ndarray   # (N,) int class index
    confidence: np.ndarray  # (N,) float
    threshold: np.ndarray   # (N,) float, the threshold each cell was held to
    accepted: np.ndarray    # (N,) bool


def confidence_of(scores: np.ndarray, head: str) -> np.ndarray:
    """CCL: c = 1 - sum D + max D (the paper's eq. 4); softmax: the top probability."""
    return ccl_confidence(scores) if head == "ccl" else scores.max(axis=1)


class RejectRule:
    """Applies a bundle's head type and thresholds to classifier outputs."""

    def __init__(self, bundle: Bundle):
        self.head = bundle.classifier_head
        self.per_class_threshold = np.array(
            [bundle.thresholds.for_class(n) for n in bundle.class_names], dtype=np.float64)

    def decide(self, scores: np.ndarray) -> Decisions:
        if not np.all(np.isfinite(scores)):
            raise FloatingPointError("the classifier produced NaN or Inf")
        predicted = scores.argmax(axis=1)
        confidence = confidence_of(scores, self.head)
        threshold = self.per_class_threshold[predicted]
        return Decisions(predicted, confidence, threshold, confidence >= threshold)
