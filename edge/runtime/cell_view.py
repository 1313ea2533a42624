"""The one cell view: how a cell in an image becomes the classifier's input.

Training, distillation, quantisation calibration, threshold calibration,
`edge eval classify` and the device all call `cell_views`, so a cell is seen
the same way everywhere and the reject thresholds' guarantee holds for what
the device really classifies.

Framing: a square centred on the cell's box, its side `context` x the box's
longer side. The square is cut at whole-pixel coordinates (parts outside the
image repeat its edge pixels, so a cell cut by the frame edge stays centred)
and resized with area averaging (cv2.INTER_AREA), which is anti-aliased when
it shrinks: a cell cut at 6-8x decimation keeps its granules as averages
instead of aliasing them. Because the square is cut at whole pixels, the view
of a cell inside a field equals its view in any crop image that holds the
whole square (tests/test_cell_view.py).

A single-cell image (a training image, another tool's crop) is framed the
same way: `locate_cell` finds the cell with the bundle's detector (the
detection nearest the image centre); when the detector finds none, the stated
rule `stand_in_box` takes the centred square whose side is the image's longer
side / `context`, which makes the view the whole image.
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Detect = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def view_squares(boxes: np.ndarray, context: float) -> np.ndarray:
    """(N, 3) int64 (left, top, side) of the square each box's view is cut from."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sides = np.maximum(np.floor(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * context + 0.5),
                       2)
    # floor(x + 0.5), not round(): ties must move with an integer shift of the image
    corners = np.floor(centres - sides[:, None] / 2 + 0.5)
    return np.column_stack([corners, sides]).astype(np.int64)


def cell_views(image: np.ndarray, boxes: np.ndarray, size: int, context: float) -> np.ndarray:
    """(N, size, size, C) uint8 views of the cells in `boxes` (N x 4, x0 y0 x1 y1, image pixels)."""
    out = np.empty((len(boxes), size, size, image.shape[2]), dtype=image.dtype)
    h, w = image.shape[:2]
    for i, (left, top, side) in enumerate(view_squares(boxes, context)):
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + side, w), min(top + side, h)
        if x0 >= x1 or y0 >= y1:  # the square lies wholly outside the image: its nearest pixel
            out[i] = image[min(max(top, 0), h - 1), min(max(left, 0), w - 1)]
            continue
        square = image[y0:y1, x0:x1]
        if (x0, y0, x1, y1) != (left, top, left + side, top + side):
            square = cv2.copyMakeBorder(square, y0 - top, top + side - y1, x0 - left, left + side - x1,
                                        cv2.BORDER_REPLICATE)
        out[i] = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    return out


def stand_in_box(shape: tuple[int, ...], context: float) -> np.ndarray:
    """The stated rule for a single-cell image with no detection: the centred square whose side is
    the image's longer side / `context`, so that its view is the whole image."""
    h, w = shape[:2]
    half = max(h, w) / context / 2
    return np.array([w / 2 - half, h / 2 - half, w / 2 + half, h / 2 + half], dtype=np.float32)


def central_detection(boxes: np.ndarray, shape: tuple[int, ...]) -> int:
    """Index of the box whose centre is nearest the image centre."""
    h, w = shape[:2]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return int(np.argmin(np.hypot(centres[:, 0] - w / 2, centres[:, 1] - h / 2)))


def locate_cell(detect: Detect, image: np.ndarray, context: float) -> tuple[np.ndarray, bool]:
    """(box, found) of the cell a single-cell image shows: the detection nearest its centre, or the
    stand-in box (found False) when the detector finds none."""
    boxes, _ = detect(image)
    if len(boxes) == 0:
        return stand_in_box(image.shape, context), False
    return np.asarray(boxes[central_detection(boxes, image.shape)][:4], dtype=np.float32), True
