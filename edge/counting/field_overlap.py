"""Not counting a cell twice when the stage moved less than a whole field.

Each counted field is registered against the previous one (phase correlation,
edge/counting/registration.py); cells of the new field that sit where a cell of the
previous field was are marked as already counted. When the registration cannot
be trusted (no overlap, refocus, another slide) the field is counted whole and
the event is logged and counted.

The previous field (grey image and every detected box) is kept on disk next to
the session, so a resumed session de-duplicates its first field too.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from edge.runtime.atomic import write_atomic
from edge.counting.registration import Shift, already_counted, estimate_shift

log = logging.getLogger("edge.overlap")
# A cell of the new field is the old one when their centres are this close, relative
# to the cell's size: far below the distance between two touching cells' centres.
RADIUS_OF_DIAMETER = 0.4
MIN_RADIUS = 4.0


class OverlapFilter:
    def __init__(self, state_dir: Path):
        self.image_file = Path(state_dir) / "previous_field.png"
        self.boxes_file = Path(state_dir) / "previous_field.json"
        self.unregistered = 0
        self._previous: np.ndarray | None = None
        self._previous_boxes = np.zeros((0, 4))
        if self.image_file.exists() and self.boxes_file.exists():
            self._previous = cv2.imread(str(self.image_file), cv2.IMREAD_GRAYSCALE)
            self._previous_boxes = np.array(json.loads(self.boxes_file.read_text()), np.float64).reshape(-1, 4)

    def duplicates(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, Shift | None]:
        """Mask of `boxes` counted in the previous field, and the shift (None for a first field).
        Call `remember` once the field is recorded."""
        mask = np.zeros(len(boxes), bool)
        shift = None
        if self._previous is not None and self._previous.shape == image.shape[:2]:
            shift = estimate_shift(self._previous, image)
            if shift.reliable:
                sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else [0]
                radius = max(MIN_RADIUS, RADIUS_OF_DIAMETER * float(np.median(sides)))
                mask = already_counted(self._previous_boxes, boxes, shift, (image.shape[1], image.shape[0]), radius)
            else:
                self.unregistered += 1  # no overlap with the previous field, or not one to trust
                log.info("field not registered with the previous one (response %.2f): counted whole",
                         shift.response)
        return mask, shift

    def remember(self, image: np.ndarray, boxes: np.ndarray) -> None:
        """This field, now recorded, is the one the next field is compared with."""
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        self._previous, self._previous_boxes = grey, np.asarray(boxes, np.float64)
        ok, png = cv2.imencode(".png", grey, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise OSError(f"cannot encode {self.image_file.name}")
        write_atomic(self.image_file, png.tobytes())
        write_atomic(self.boxes_file, json.dumps(np.round(self._previous_boxes, 2).tolist()))
