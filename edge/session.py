"""A counting session's folder: every cell in cells.csv, the rejected ones in the review
queue, and results.json, rewritten atomically after each field so a crash leaves a
consistent snapshot."""
from __future__ import annotations

import csv
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np

from edge.bundle import Bundle
from edge.engine import FieldResult
from edge.frames import Frame
from edge.review_queue import RejectedCell, ReviewQueue
from edge.tally import Tally

CELL_COLUMNS = ["cell_id", "session_id", "frame_id", "frame_origin", "x1", "y1", "x2", "y2",
                "detection_score", "predicted", "confidence", "threshold", "accepted"]


class SessionError(RuntimeError):
    """A session folder that cannot be used."""


class Session:
    def __init__(self, out_dir: Path, bundle: Bundle, source: str):
        self.out_dir = Path(out_dir)
        if (self.out_dir / "session.json").exists():
            raise SessionError(f"{self.out_dir} already holds a session; choose a new --out folder")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.session_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.bundle = bundle
        self.tally = Tally(bundle.class_names)
        self.review = ReviewQueue(self.out_dir / "review")
        self.started = time.time()
        self.frames_counted = 0
        self.skipped: list[dict] = []
        self._atomic_json("session.json", {
            "session_id": self.session_id, "source": source, "started": self.started,
            "bundle": str(bundle.root), "bundle_manifest_sha256": bundle.manifest_sha256})
        self._cells_file = open(self.out_dir / "cells.csv", "w", newline="")
        self._cells = csv.writer(self._cells_file)
        self._cells.writerow(CELL_COLUMNS)
        self.source = source

    def record(self, frame: Frame, result: FieldResult) -> None:
        """Store one counted field: review queue first, then the cell list, then the tally."""
        d = result.decisions
        names = self.bundle.class_names
        ids = [f"{self.session_id}-f{frame.frame_id:06d}-c{i:04d}" for i in range(len(result))]
        rejected = np.flatnonzero(~d.accepted)
        if len(rejected):
            self.review.add(
                [RejectedCell(ids[i], self.session_id, frame.frame_id,
                              tuple(float(v) for v in result.boxes[i]), names[d.predicted[i]],
                              float(d.confidence[i]), float(d.threshold[i]),
                              {n: float(s) for n, s in zip(names, result.class_scores[i])},
                              frame.timestamp)
                 for i in rejected],
                [_review_crop(frame.image, result.boxes[i], self.bundle.tiling.crop_context)
                 for i in rejected])
        for i in range(len(result)):
            x1, y1, x2, y2 = (round(float(v), 1) for v in result.boxes[i])
            self._cells.writerow([ids[i], self.session_id, frame.frame_id, frame.origin, x1, y1, x2, y2,
                                  round(float(result.detection_scores[i]), 4), names[d.predicted[i]],
                                  round(float(d.confidence[i]), 6), round(float(d.threshold[i]), 6),
                                  int(d.accepted[i])])
        self._cells_file.flush()
        os.fsync(self._cells_file.fileno())
        self.tally.add(d)
        self.frames_counted += 1
        self._write_results(finished=False)

    def skip(self, frame_id: int | None, reason: str) -> None:
        self.skipped.append({"frame_id": frame_id, "reason": reason})
        self._write_results(finished=False)

    def close(self) -> dict:
        self._cells_file.close()
        self.review.close()
        return self._write_results(finished=True)

    def results(self, finished: bool) -> dict:
        t = self.bundle.thresholds
        return {
            "session_id": self.session_id,
            "source": self.source,
            "bundle": {"path": str(self.bundle.root), "manifest_sha256": self.bundle.manifest_sha256},
            "started": self.started,
            "updated": time.time(),
            "finished": finished,
            "frames": {"counted": self.frames_counted, "skipped": len(self.skipped)},
            "skipped_frames": self.skipped,
            "counts": self.tally.counts(),
            "differential_percent": self.tally.differential(),
            "accepted": self.tally.total_accepted,
            "rejected": self.tally.rejected,
            "thresholds": {"global": t.global_threshold, "target_accuracy": t.target_accuracy,
                           "per_class": t.per_class},
        }

    def _write_results(self, finished: bool) -> dict:
        results = self.results(finished)
        self._atomic_json("results.json", results)
        return results

    def _atomic_json(self, name: str, data: dict) -> None:
        tmp = self.out_dir / (name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.out_dir / name)


def _review_crop(image: np.ndarray, box: np.ndarray, context: float) -> np.ndarray:
    """The cell with some surroundings at the camera's own resolution, for the expert."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) * context / 2
    h, w = image.shape[:2]
    x1, y1 = int(max(0, cx - half)), int(max(0, cy - half))
    x2, y2 = int(min(w, np.ceil(cx + half))), int(min(h, np.ceil(cy + half)))
    return image[y1:y2, x1:x2]
