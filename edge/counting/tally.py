"""The running differential count."""
from __future__ import annotations

import numpy as np

from edge.runtime.decision import Decisions


class Tally:
    def __init__(self, class_names: tuple[str, ...]):
        self.class_names = class_names
        self.accepted = np.zeros(len(class_names), dtype=np.int64)
        self.rejected = 0
        self.rejected_by_class = np.zeros(len(class_names), dtype=np.int64)  # by the classifier's first class
        self.rejected_scores = np.zeros(len(class_names), dtype=np.float64)  # sum of normalised scores

    def add(self, decisions: Decisions, class_scores: np.ndarray | None = None) -> None:
        """Count one field's decisions; `class_scores` (N, C), when given, feed the point estimate
        of what the cells in review are."""
        self.accepted += np.bincount(decisions.predicted[decisions.accepted],
                                     minlength=len(self.class_names))
        rejected = ~decisions.accepted
        self.rejected += int(rejected.sum())
        self.rejected_by_class += np.bincount(decisions.predicted[rejected], minlength=len(self.class_names))
        if class_scores is not None and rejected.any():
            self.add_review_scores(np.asarray(class_scores, np.float64)[rejected])

    def add_review_scores(self, scores: np.ndarray) -> None:
        """Add cells in review by their scores (rows normalised to sum to 1; an all-zero row is uniform)."""
        sums = scores.sum(axis=1, keepdims=True)
        self.rejected_scores += np.where(sums > 0, scores / np.where(sums > 0, sums, 1.0),
                                         1.0 / scores.shape[1]).sum(axis=0)

    def leukocytes(self, roles: dict[str, str]) -> int:
        """Cells the classifier calls leukocytes, accepted or in review: what `--target` counts."""
        leuk = np.array([roles.get(n) == "leukocyte" for n in self.class_names])
        return int(self.accepted[leuk].sum() + self.rejected_by_class[leuk].sum())

    @property
    def total_accepted(self) -> int:
        return int(self.accepted.sum())

    def counts(self) -> dict[str, int]:
        return {n: int(c) for n, c in zip(self.class_names, self.accepted)}

    def differential(self) -> dict[str, float]:
        """Percent of accepted cells per class (rejected cells await review and are not in it)."""
        total = self.total_accepted
        return {n: (100.0 * int(c) / total if total else 0.0)
                for n, c in zip(self.class_names, self.accepted)}

    def line(self) -> str:
        parts = [f"{n} {c}" for n, c in self.counts().items()]
        return f"counted {self.total_accepted} | " + "  ".join(parts) + f" | to review {self.rejected}"
