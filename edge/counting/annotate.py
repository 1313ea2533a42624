"""Counted fields drawn for people: each cell's box and class, rejected cells marked."""
from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

import cv2
import numpy as np

from edge.runtime.engine import FieldResult

ACCEPTED = (60, 180, 60)     # BGR green
REJECTED = (0, 140, 255)     # orange: sent to review
DUPLICATE = (160, 160, 160)  # grey: counted in the previous field
MAX_SIDE = 1600

log = logging.getLogger("edge.counting.annotate")


def annotate_field(image: np.ndarray, result: FieldResult, class_names: tuple[str, ...],
                   duplicates: np.ndarray | None = None) -> np.ndarray:
    """A copy of the field (long side at most MAX_SIDE) with every cell drawn."""
    scale = min(1.0, MAX_SIDE / max(image.shape[:2]))
    canvas = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image.copy()
    d = result.decisions
    for i, box in enumerate(np.round(result.boxes * scale).astype(int)):
        if duplicates is not None and duplicates[i]:
            colour, label = DUPLICATE, "seen"
        elif d.accepted[i]:
            colour, label = ACCEPTED, class_names[d.predicted[i]]
        else:
            colour, label = REJECTED, f"? {class_names[d.predicted[i]]}"
        x1, y1, x2, y2 = (int(v) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(canvas, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1,
                    cv2.LINE_AA)
    return canvas


class FieldWriter:
    """Writes annotated fields as JPEG files in a thread of its own, so the loop does not wait
    on the disk; at most a few fields wait, then the loop does."""

    def __init__(self, folder: Path, pending: int = 4):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue = queue.Queue(pending)
        self.errors = 0
        self._thread = threading.Thread(target=self._work, name="field-writer", daemon=True)
        self._thread.start()

    def put(self, frame_id: int, image: np.ndarray, result: FieldResult, class_names: tuple[str, ...],
            duplicates: np.ndarray | None = None) -> None:
        self._queue.put((frame_id, image, result, class_names, duplicates))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            frame_id, image, result, class_names, duplicates = item
            path = self.folder / f"f{frame_id:06d}.jpg"
            if not cv2.imwrite(str(path), annotate_field(image, result, class_names, duplicates)):
                self.errors += 1
                log.error("cannot write the annotated field %s", path)
