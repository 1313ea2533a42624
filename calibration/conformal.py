"""Inductive conformal predictor (ICP) on class probabilities: the baseline of Guo et al.
(2022) that the CCL paper compares against (Papadopoulos et al. 2002; Vovk et al. 2005).

Class-conditional (Mondrian) p-values. The nonconformity of class c for a cell
is -q_c, its probability of class c (the usual 1 - q_c less a constant; the
negation keeps the comparisons below exact in floating point). The calibration
cells of class c give a sorted array A_c of their nonconformity for their own
class, and a cell's p-value for class c is

    p_c = (#{a in A_c : a >= -q_c} + 1) / (|A_c| + 1),

counted by binary search (np.searchsorted): O(C log n) per cell, against the
O(C x n) of comparing with every calibration score. A class is plausible at
level epsilon when p_c > epsilon; a cell is accepted when exactly one class is
plausible, and that class is its prediction. Both empty sets (no class fits)
and sets of several classes go to review.

Fitting epsilon needs labelled cells the p-values did not come from: the
calibration set is split at random into a proper calibration part (the arrays
A_c) and a fitting part, on which epsilon is scanned from strict to loose with
the same first-crossing rule, and the same Clopper-Pearson test, as the
thresholds in `calibration.thresholds`. Given the proper part the fitting
part's p-values do not depend on its labels, so the guarantee holds as it does
for a threshold.

Where every class's probability cut (`class_cuts`) is above 0.5, "exactly one
class plausible" is the same as "the top probability reaches its class's cut",
because at most one probability can exceed 0.5: the device's per-class
threshold rule then runs this ICP exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.binomial import binomial_cdf
from calibration.metrics import RejectReport, check_inputs, reject_report
from calibration.thresholds import METHODS as SEARCHES, check_target, last_of_first_run


@dataclass(frozen=True)
class ConformalPredictor:
    """Sorted calibration nonconformity scores, one array per class."""

    sorted_scores: tuple[np.ndarray, ...]

    @classmethod
    def fit(cls, probabilities, labels, num_classes: int | None = None) -> ConformalPredictor:
        q, lab = _check_probabilities(probabilities, labels)
        num_classes = q.shape[1] if num_classes is None else num_classes
        if q.shape[1] != num_classes or lab.max() >= num_classes:
            raise ValueError(f"probabilities and labels must cover {num_classes} classes")
        own = q[np.arange(len(lab)), lab]
        return cls(tuple(np.sort(-own[lab == c]) for c in range(num_classes)))

    @property
    def class_counts(self) -> np.ndarray:
        return np.array([len(s) for s in self.sorted_scores], dtype=np.int64)

    def p_values(self, probabilities) -> np.ndarray:
        """(N, C) class-conditional p-values of the cells with these class probabilities."""
        q = np.asarray(probabilities, dtype=np.float64)
        if q.ndim != 2 or q.shape[1] != len(self.sorted_scores):
            raise ValueError(f"expected probabilities of shape (N, {len(self.sorted_scores)}), got {q.shape}")
        out = np.empty(q.shape, dtype=np.float64)
        for c, scores in enumerate(self.sorted_scores):
            at_least = len(scores) - np.searchsorted(scores, -q[:, c], side="left")
            out[:, c] = (at_least + 1) / (len(scores) + 1)
        return out

    def class_cuts(self, epsilon: float) -> np.ndarray:
        """Per class, the least probability q_c with p_c > epsilon (inf: never plausible).

        Each finite cut is the probability of one calibration cell, so comparing a
        device's float32 probability with it is exact.
        """
        cuts = np.empty(len(self.sorted_scores), dtype=np.float64)
        for c, scores in enumerate(self.sorted_scores):
            n = len(scores)
            levels = (np.arange(n + 1) + 1) / (n + 1)  # p_c for k = 0..n scores at or above
            k = int(np.searchsorted(levels, epsilon, side="right"))  # least k with p_c > epsilon
            cuts[c] = 0.0 if k == 0 else (np.inf if k > n else -scores[n - k])
        return cuts


def icp_decisions(p_values: np.ndarray, epsilon: float, probabilities: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, accepted) at level epsilon: accepted when exactly one p-value exceeds it.

    The prediction is the class of the largest p-value (the one plausible class of
    an accepted cell); a tie, possible only in a rejected cell, goes to the
    higher probability.
    """
    top = p_values == p_values.max(axis=1, keepdims=True)
    predicted = np.where(top, probabilities, -np.inf).argmax(axis=1)
    return predicted, (p_values > epsilon).sum(axis=1) == 1


def icp_confidence(p_values: np.ndarray) -> np.ndarray:
    """The conformal confidence 1 - (second largest p-value), which ranks cells for the
    risk-coverage curve: a cell is accepted at levels from there up to its largest
    p-value. A cell whose two largest p-values tie is never accepted and gets 0."""
    top2 = np.sort(p_values, axis=1)[:, -2:]
    return np.where(top2[:, 1] > top2[:, 0], 1.0 - top2[:, 0], 0.0)


@dataclass(frozen=True)
class IcpFit:
    """An ICP with its fitted level and the figures on the fitting part of the calibration set."""

    predictor: ConformalPredictor
    epsilon: float
    reached: bool
    target_accuracy: float
    search: str
    delta: float | None
    n_proper: int
    n_fitting: int
    fitting: RejectReport

    def decide(self, probabilities) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(confidence, predicted, accepted) for cells with these class probabilities."""
        q = np.asarray(probabilities, dtype=np.float64)
        p = self.predictor.p_values(q)
        predicted, accepted = icp_decisions(p, self.epsilon, q)
        return icp_confidence(p), predicted, accepted

    def to_dict(self) -> dict:
        return {"epsilon": self.epsilon, "reached": self.reached, "target_accuracy": self.target_accuracy,
                "search": self.search, "delta": self.delta, "n_proper": self.n_proper,
                "n_fitting": self.n_fitting}


def fit_icp(probabilities, labels, target_accuracy: float, search: str = "descending",
            delta: float = 0.05, fit_fraction: float = 0.5, seed: int = 0,
            num_classes: int | None = None) -> IcpFit:
    """Split the calibration cells, build the ICP on one part, fit epsilon on the other.

    Candidate levels are all the p-values the proper part allows, k / (n_c + 1),
    scanned from the highest down (strict to loose: at a high level most sets
    are empty, and lowering it admits cells in order of credibility until sets of
    several classes appear, which is rejection's other side). The
    first candidate tested is the first that accepts a cell ("descending") or
    that accepts enough cells to pass with no error at all ("clopper-pearson");
    the scan stops at the first failure. Of the levels it passed, all covered by
    the guarantee, the one accepting the most cells is chosen: unlike a threshold,
    a looser level can accept fewer cells, as more sets become empty. When no
    level passes, epsilon is 0 and nothing is accepted (reached=False).
    """
    q, lab = _check_probabilities(probabilities, labels)
    target = check_target(target_accuracy)
    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}; known: {', '.join(SEARCHES)}")
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
    order = np.random.default_rng(seed).permutation(len(lab))
    n_fit = int(round(len(lab) * fit_fraction))
    if n_fit < 1 or n_fit >= len(lab):
        raise ValueError(f"{len(lab)} calibration cells are too few to split for the ICP")
    proper, fitting = order[n_fit:], order[:n_fit]
    predictor = ConformalPredictor.fit(q[proper], lab[proper], num_classes or q.shape[1])
    empty = [c for c, n in enumerate(predictor.class_counts) if n == 0]
    if empty:
        raise ValueError(f"the ICP needs calibration cells of every class; classes {empty} have none "
                         "in its proper calibration part")

    p = predictor.p_values(q[fitting])
    top2 = np.sort(p, axis=1)[:, -2:]
    correct = icp_decisions(p, 0.0, q[fitting])[0] == lab[fitting]
    # every p-value the proper part allows: fixed before the fitting cells are looked at
    levels = np.unique(np.concatenate([(np.arange(n + 1) + 1) / (n + 1)
                                       for n in predictor.class_counts]))[::-1]
    # accepted at level e: second p-value <= e < top p-value
    n_acc = _count_at_most(top2[:, 0], levels) - _count_at_most(top2[:, 1], levels)
    n_cor = (_count_at_most(top2[correct, 0], levels) - _count_at_most(top2[correct, 1], levels))
    chosen = _scan(n_acc, n_cor, target, search, delta)
    epsilon = 0.0 if chosen is None else float(levels[chosen])
    predicted, accepted = icp_decisions(p, epsilon, q[fitting])
    report = reject_report(icp_confidence(p), predicted, lab[fitting], accepted, epsilon,
                           num_classes or q.shape[1])
    return IcpFit(predictor, epsilon, chosen is not None, target, search,
                  delta if search == "clopper-pearson" else None, len(proper), len(fitting), report)


def _scan(n_acc: np.ndarray, n_cor: np.ndarray, target: float, search: str,
          delta: float) -> int | None:
    safe_n = np.maximum(n_acc, 1)
    if search == "descending":
        passes = (n_acc > 0) & (n_cor >= target * n_acc)
        started = n_acc > 0
    else:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        passes = (n_acc > 0) & (binomial_cdf(n_acc - n_cor, safe_n, 1.0 - target) <= delta)
        started = binomial_cdf(0, n_acc, 1.0 - target) <= delta
    start = int(np.argmax(started)) if started.any() else len(started)
    last = last_of_first_run(passes, start)
    if last is None:
        return None
    # every level the scan passed keeps the guarantee; loose levels accept fewer (empty sets)
    return start + int(np.argmax(n_acc[start:last + 1]))


def _count_at_most(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.sort(values), levels, side="right")


def _check_probabilities(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(probabilities)
    if q.ndim != 2 or q.shape[1] < 2 or q.dtype.kind != "f":
        raise ValueError(f"expected float class probabilities of shape (N, C >= 2), got {q.shape} {q.dtype}")
    _, _, lab = check_inputs(np.zeros(len(q)), np.zeros(len(q), dtype=np.int64), labels)
    if not np.isfinite(q).all():
        raise ValueError("class probabilities contain NaN or Inf")
    return q.astype(np.float64), lab
