"""Taking a field without firmware: the stage has come to rest when the image stops changing.

Each frame is shrunk to a small, slightly blurred grey image (averaging away
most camera noise) and compared with the first frame of the current still period: its mean
absolute difference, less its median (a uniform brightness offset: lamp
flicker, auto exposure), is the motion. Comparing with the start of the period rather than
the previous frame also catches a stage creeping a fraction of a pixel per
frame. Time comes from the frame timestamps, so a recorded video or a test
behaves as the live camera did.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.runtime.frames import Frame

# Timestamps are seconds since the epoch; their rounding must not cost a 30 fps camera a frame.
TIME_TOLERANCE = 1e-6


class StillnessTrigger:
    """`update(frame)` is True once per still period: for the first frame that has been still for
    `still_seconds` after motion (or since the start). `motion_threshold` is in grey levels of
    mean absolute difference on the shrunken image."""

    def __init__(self, still_seconds: float = 0.3, motion_threshold: float = 2.0, work_width: int = 80):
        if still_seconds < 0 or motion_threshold <= 0 or work_width < 8:
            raise ValueError("need still_seconds >= 0, motion_threshold > 0 and work_width >= 8")
        self.still_seconds, self.motion_threshold, self.work_width = still_seconds, motion_threshold, work_width
        self.motion = 0.0    # of the last frame, for displays and logs
        self.moving = False
        self._reference: np.ndarray | None = None  # first frame of the current still period
        self._still_since = 0.0
        self._armed = True   # a field is due when the stage next rests

    def update(self, frame: Frame) -> bool:
        small = self._shrink(frame.image)
        if self._reference is None or small.shape != self._reference.shape:
            self._restart(small, frame.timestamp)
            return self._take(frame.timestamp)
        difference = small - self._reference
        self.motion = float(np.abs(difference - np.median(difference)).mean())
        self.moving = self.motion > self.motion_threshold
        if self.moving:
            self._restart(small, frame.timestamp)
            self._armed = True
            return False
        return self._take(frame.timestamp)

    def _take(self, timestamp: float) -> bool:
        if self._armed and timestamp - self._still_since >= self.still_seconds - TIME_TOLERANCE:
            self._armed = False
            return True
        return False

    def _restart(self, small: np.ndarray, timestamp: float) -> None:
        self._reference, self._still_since = small, timestamp

    def _shrink(self, image: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        height = max(1, round(grey.shape[0] * self.work_width / grey.shape[1]))
        small = cv2.resize(grey, (self.work_width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
        return cv2.GaussianBlur(small, (0, 0), 1.0)
