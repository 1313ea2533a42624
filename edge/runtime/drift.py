"""Drift alarms: is the model still seeing what it was calibrated on?

A model drifting on a new stain shows first as a rising rejection rate and a
falling mean confidence; stain statistics and the class mix move too. Four
statistics are watched over a sliding window of the session, and pooled over
the last sessions at the site (the history, a JSON-lines file):

- rejection rate (cells sent to review): alarm when a one-sided exact binomial
  test says the window's rate is above the band's maximum at level `alpha`;
- mean confidence: alarm when a z-test (standard deviation from calibration)
  says the window's mean is below the band's minimum;
- stain angle of the fields (edge.runtime.quality): alarm when the window's mean is
  above the band's maximum (z-test);
- class mix of accepted cells: alarm when its total variation distance from the
  site's own mix (pooled over the history) exceeds the band by more than
  sampling can explain (Weissman et al.'s bound on the L1 deviation of an
  empirical distribution, P(TV >= t) <= (2^k - 2) exp(-2 n t^2)).

Each statistic alarms once when it leaves its band and again only after it
came back. Bands are fitted by `edge calibrate` on the calibration cells and
stored in the bundle's `drift` section; the tests compare a window of many
cells with them, never a single field, so noise does not raise alarms.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np

from calibration.binomial import binomial_cdf, clopper_pearson_upper
from edge.runtime.settings import check_section

log = logging.getLogger("edge.runtime.drift")

REJECTION_TOLERANCE = 0.05     # band max = upper bound of the calibration rejection rate + this
CONFIDENCE_TOLERANCE = 0.05    # band min = calibration mean confidence - this - its sampling error
STATISTICS = ("rejection_rate", "mean_confidence", "stain_angle", "class_mix")


@dataclass(frozen=True)
class DriftBands:
    """Expected bands of the drift statistics and how they are tested (the manifest's `drift` section)."""

    max_rejection_rate: float | None = None
    min_mean_confidence: float | None = None
    confidence_sd: float | None = None         # per-cell standard deviation of the confidence
    max_stain_angle: float = 3.0               # degrees; the field gate refuses single fields far beyond
    stain_angle_sd: float = 1.0                # per-field standard deviation of the stain angle
    max_class_distance: float = 0.3            # total variation distance from the site's mix
    window_cells: int = 200
    window_fields: int = 20
    alpha: float = 1e-4                        # level of each test
    history_sessions: int = 5                  # sessions pooled for the across-session check
    fitted_on: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_rejection_rate", "min_mean_confidence", "confidence_sd"):
            v = getattr(self, name)
            if v is not None and not (_is_number(v) and math.isfinite(v)):
                raise ValueError(f"drift.{name} must be a number or null")
        for name in ("max_stain_angle", "stain_angle_sd", "max_class_distance"):
            if not (_is_number(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"drift.{name} must be a positive number")
        for name in ("window_cells", "window_fields", "history_sessions"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"drift.{name} must be a positive integer")
        if not (_is_number(self.alpha) and 0 < self.alpha < 0.5):
            raise ValueError("drift.alpha must be in (0, 0.5)")
        if not isinstance(self.fitted_on, dict):
            raise ValueError("drift.fitted_on must be an object")

    @classmethod
    def from_dict(cls, d: dict, class_names=None) -> "DriftBands":
        check_section(d, cls, "drift")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_drift_bands(confidence: np.ndarray, accepted: np.ndarray, note: dict | None = None,
                    base: DriftBands | None = None) -> DriftBands:
    """Bands from the calibration cells' confidences and decisions at the fitted thresholds.

    The rejection band's top is the Clopper-Pearson upper 99.9 % bound of the
    calibration rejection rate plus REJECTION_TOLERANCE (a lab's case mix is not
    the calibration set's); the confidence band's bottom is the calibration mean
    less CONFIDENCE_TOLERANCE and three standard errors. Other settings come from `base`.
    """
    confidence = np.asarray(confidence, np.float64)
    accepted = np.asarray(accepted, bool)
    n = len(confidence)
    if n < 2:
        raise ValueError("drift bands need at least two calibration cells")
    rejected = int((~accepted).sum())
    upper = float(clopper_pearson_upper(rejected, n, 0.001))
    sd = float(confidence.std(ddof=1))
    mean = float(confidence.mean())
    base = base or DriftBands()
    return DriftBands(**{**asdict(base),
                         "max_rejection_rate": min(1.0, upper + REJECTION_TOLERANCE),
                         "min_mean_confidence": mean - CONFIDENCE_TOLERANCE - 3 * sd / math.sqrt(n),
                         "confidence_sd": max(sd, 1e-3),
                         "fitted_on": {"cells": n, "rejection_rate": rejected / n, "mean_confidence": mean,
                                       "date": time.strftime("%Y-%m-%d"), **(note or {})}})


@dataclass
class Alarm:
    statistic: str
    scope: str                 # "session" (the sliding window) or "sessions" (pooled history)
    value: float
    band: float
    n: int                     # cells or fields the statistic was measured on
    frame_id: int | None
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


class DriftHistory:
    """One JSON line per finished session: the sums its drift statistics are made of."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def sessions(self, classifier_sha256: str) -> list[dict]:
        """Earlier sessions counted with this classifier, oldest first; unreadable lines are logged and skipped.

        A session resumed after a stop has a row per run; their sums are added up."""
        if not self.path.is_file():
            return []
        rows: dict[str, dict] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s line %d is not JSON; ignored", self.path, number)
                continue
            if isinstance(row, dict) and row.get("classifier_sha256") == classifier_sha256:
                key = str(row.get("session_id"))
                rows[key] = _add_rows(rows[key], row) if key in rows else row
        return list(rows.values())

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


class DriftMonitor:
    """Feed it each counted field; it returns the alarms that field raised."""

    def __init__(self, bands: DriftBands, class_names: tuple[str, ...], classifier_sha256: str = "",
                 history: DriftHistory | None = None):
        self.bands, self.class_names = bands, tuple(class_names)
        self.classifier_sha256, self.history = classifier_sha256, history
        self.alarms: list[Alarm] = []
        self._active: set[tuple[str, str]] = set()
        self._cells: deque = deque(maxlen=bands.window_cells)     # (rejected, confidence, predicted or -1)
        self._angles: deque = deque(maxlen=bands.window_fields)
        self.totals = {"fields": 0, "cells": 0, "rejected": 0, "confidence_sum": 0.0,
                       "stain_fields": 0, "stain_angle_sum": 0.0,
                       "accepted_counts": [0] * len(self.class_names)}
        earlier = history.sessions(classifier_sha256)[-bands.history_sessions:] if history else []
        self._earlier = earlier
        counts = np.sum([r.get("accepted_counts", [0] * len(self.class_names)) for r in earlier], axis=0) \
            if earlier else np.zeros(len(self.class_names))
        self._site_mix = counts / counts.sum() if counts.sum() >= bands.window_cells else None
        self._z = NormalDist().inv_cdf(1 - bands.alpha)

    # ------------------------------------------------------------ feeding

    def add_field(self, frame_id: int, predicted: np.ndarray, confidence: np.ndarray, accepted: np.ndarray,
                  stain_angle: float | None = None) -> list[Alarm]:
        t = self.totals
        t["fields"] += 1
        for p, c, a in zip(np.asarray(predicted), np.asarray(confidence, np.float64), np.asarray(accepted, bool)):
            self._cells.append((not a, float(c), int(p) if a else -1))
            t["cells"] += 1
            t["rejected"] += int(not a)
            t["confidence_sum"] += float(c)
            if a:
                t["accepted_counts"][int(p)] += 1
        if stain_angle is not None and math.isfinite(stain_angle):
            self._angles.append(float(stain_angle))
            t["stain_fields"] += 1
            t["stain_angle_sum"] += float(stain_angle)
        new = []
        if len(self._cells) == self.bands.window_cells:
            cells = np.array([(r, c) for r, c, _ in self._cells])
            predicted_window = np.array([p for _, _, p in self._cells])
            new += self._test_cells("session", int(cells[:, 0].sum()), float(cells[:, 1].sum()), len(cells),
                                    predicted_window[predicted_window >= 0], frame_id)
        if len(self._angles) == self.bands.window_fields:
            new += self._test_stain("session", sum(self._angles), len(self._angles), frame_id)
        return new

    def finish(self) -> list[Alarm]:
        """The across-session check (this session pooled with the last ones); the history gets this session."""
        t = self.totals
        pooled = self._earlier + [t]
        new = []
        if len(pooled) > 1:
            cells = sum(r.get("cells", 0) for r in pooled)
            if cells >= self.bands.window_cells:
                new += self._test_cells("sessions", sum(r.get("rejected", 0) for r in pooled),
                                        sum(r.get("confidence_sum", 0.0) for r in pooled), cells, None, None)
            stain_n = sum(r.get("stain_fields", 0) for r in pooled)
            if stain_n >= self.bands.window_fields:
                new += self._test_stain("sessions", sum(r.get("stain_angle_sum", 0.0) for r in pooled), stain_n, None)
        return new

    def history_row(self, session_id: str, manifest_sha256: str) -> dict:
        return {"session_id": session_id, "finished": time.time(), "bundle_manifest_sha256": manifest_sha256,
                "classifier_sha256": self.classifier_sha256, **self.totals,
                "alarms": [a.statistic + "/" + a.scope for a in self.alarms]}

    # ------------------------------------------------------------ tests

    def _test_cells(self, scope: str, rejected: int, confidence_sum: float, n: int,
                    accepted_predicted: np.ndarray | None, frame_id: int | None) -> list[Alarm]:
        b, out = self.bands, []
        if b.max_rejection_rate is not None:
            rate = rejected / n
            p_value = 1.0 - float(binomial_cdf(rejected - 1, n, b.max_rejection_rate)) if rejected else 1.0
            out += self._latch("rejection_rate", scope, p_value < b.alpha, rate <= b.max_rejection_rate, rate,
                               b.max_rejection_rate, n, frame_id,
                               f"rejection rate {100 * rate:.1f} % over {n} cells, above the band's "
                               f"{100 * b.max_rejection_rate:.1f} %")
        if b.min_mean_confidence is not None and b.confidence_sd:
            mean = confidence_sum / n
            z = (mean - b.min_mean_confidence) / (b.confidence_sd / math.sqrt(n))
            out += self._latch("mean_confidence", scope, z < -self._z, mean >= b.min_mean_confidence, mean,
                               b.min_mean_confidence, n, frame_id,
                               f"mean confidence {mean:.3f} over {n} cells, below the band's {b.min_mean_confidence:.3f}")
        if accepted_predicted is not None and self._site_mix is not None and len(accepted_predicted) >= 50:
            k = len(self.class_names)
            mix = np.bincount(accepted_predicted, minlength=k) / len(accepted_predicted)
            distance = 0.5 * float(np.abs(mix - self._site_mix).sum())
            noise = math.sqrt(math.log((2 ** k - 2) / b.alpha) / (2 * len(accepted_predicted)))
            out += self._latch("class_mix", scope, distance > b.max_class_distance + noise,
                               distance <= b.max_class_distance, distance, b.max_class_distance,
                               len(accepted_predicted), frame_id,
                               f"class mix {distance:.2f} (total variation) from this site's usual mix over "
                               f"{len(accepted_predicted)} accepted cells, above the band's {b.max_class_distance:.2f}")
        return out

    def _test_stain(self, scope: str, angle_sum: float, n: int, frame_id: int | None) -> list[Alarm]:
        b = self.bands
        mean = angle_sum / n
        z = (mean - b.max_stain_angle) / (b.stain_angle_sd / math.sqrt(n))
        return self._latch("stain_angle", scope, z > self._z, mean <= b.max_stain_angle, mean, b.max_stain_angle,
                           n, frame_id, f"stain {mean:.1f} deg from the reference over {n} fields, above the "
                                        f"band's {b.max_stain_angle:.1f}")

    def _latch(self, statistic: str, scope: str, out_of_band: bool, inside: bool, value: float, band: float,
               n: int, frame_id: int | None, message: str) -> list[Alarm]:
        key = (statistic, scope)
        if key in self._active:
            if inside:
                self._active.discard(key)
            return []
        if not out_of_band:
            return []
        self._active.add(key)
        where = "this session" if scope == "session" else f"the last {self.bands.history_sessions} sessions"
        alarm = Alarm(statistic, scope, round(value, 6), round(band, 6), n, frame_id, f"drift ({where}): {message}")
        self.alarms.append(alarm)
        log.warning("%s", alarm.message)
        return [alarm]

    def summary(self) -> dict:
        """The drift section of results.json."""
        t = self.totals
        return {"bands": self.bands.to_dict(),
                "session": {"fields": t["fields"], "cells": t["cells"],
                            "rejection_rate": t["rejected"] / t["cells"] if t["cells"] else None,
                            "mean_confidence": t["confidence_sum"] / t["cells"] if t["cells"] else None,
                            "mean_stain_angle": t["stain_angle_sum"] / t["stain_fields"] if t["stain_fields"] else None},
                "history": str(self.history.path) if self.history else None,
                "sessions_in_history": len(self._earlier),
                "alarms": [a.to_dict() for a in self.alarms]}


def _add_rows(a: dict, b: dict) -> dict:
    out = dict(b)
    for key in ("fields", "cells", "rejected", "confidence_sum", "stain_fields", "stain_angle_sum"):
        out[key] = a.get(key, 0) + b.get(key, 0)
    out["accepted_counts"] = [x + y for x, y in zip(a.get("accepted_counts", []), b.get("accepted_counts", []))]
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
