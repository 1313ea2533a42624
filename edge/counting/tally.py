"""The running differential count."""
from __future__ import annotations

import numpy as np

from edge.runtime.decision import Decisions


class Tally:
    def __init__(self, class_names: tuple[str, ...]):
        self.class_names = class_names
        self.accepted = np.zeros(len(class_names), dtype=np.int64)
        self.rejected = 0

    def add(self, decisions: Decisions) -> None:
        self.accepted += np.bincount(decisions.predicted[decisions.accepted],
                                     minlength=len(self.class_names))
        self.rejected += int((~decisions.accepted).sum())

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
