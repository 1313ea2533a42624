"""`edge run --display`: a window with the newest field, its cells and the running tally.

Needs an OpenCV build with a GUI (opencv-python; the default opencv-python-headless
has none). Pressing q or Esc in the window stops the session like SIGINT does.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.counting.annotate import annotate_field
from edge.runtime.engine import FieldResult
from edge.counting.tally import Tally

WINDOW = "edge: live count"
PANEL_HEIGHT = 28


class DisplayError(RuntimeError):
    """The window cannot be opened."""


class LiveWindow:
    def __init__(self):
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise DisplayError("--display needs OpenCV with a GUI and a screen; this OpenCV cannot open "
                               "windows (pip install opencv-python instead of opencv-python-headless)"
                               ) from None

    def show(self, image: np.ndarray, result: FieldResult, class_names: tuple[str, ...], tally: Tally,
             duplicates: np.ndarray | None = None) -> bool:
        """Draw the field; False when the user asked to stop."""
        canvas = annotate_field(image, result, class_names, duplicates)
        panel = np.full((PANEL_HEIGHT, canvas.shape[1], 3), 32, np.uint8)
        cv2.putText(panel, tally.line(), (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (240, 240, 240), 1, cv2.LINE_AA)
        cv2.imshow(WINDOW, np.vstack([canvas, panel]))
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        cv2.destroyWindow(WINDOW)
