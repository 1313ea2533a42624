"""How far the stage moved between two fields, and which cells of the new field were counted already.

Sign convention: Shift(dx, dy) is the move of the view over the slide from the
previous field to the current one, in pixels (current origin - previous
origin). A point at p in the previous field is at p - (dx, dy) in the current
one; a cell at c in the current field was at c + (dx, dy) in the previous one.

The shift is found in two steps. Coarse: phase correlation of the two fields
shrunk to about WORK_WIDTH pixels, without a window: a large stage move leaves
the shared part at opposite borders of the two images, exactly where a Hanning
window would fade it out (of 300 random moves between 320 x 240 smear fields
sharing 20 % or more of the field, windowed correlation missed 10 by more than
a pixel; unwindowed, none). Phase correlation is circular, so a move of 0.7 of
a field reads as -0.3 of one; each aliased reading is scored by the normalised
cross-correlation of the overlap it implies, and the best kept. Fine: phase correlation with a Hanning
window of a central patch of the two overlapping parts at full resolution,
which adds the sub-pixel remainder. The peak of that fine correlation is the
response: near 1 when both parts show the same smear, near 0 when they do not
(no overlap, refocused, a different slide), so a caller can count a field
whole when the registration cannot be trusted.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORK_WIDTH = 320
MIN_RESPONSE = 0.3   # matching smear overlaps score about 0.99, unrelated ones below 0.15
MIN_OVERLAP = 0.05   # fraction of the field two views must share to be registered at all
MIN_SIDE = 16        # pixels; a narrower overlap is no overlap
REFINE_SIDE = 256    # the fine step looks at most this much of the overlap: ample for sub-pixel, and fast


class RegistrationError(ValueError):
    """De-duplication was asked to trust a shift that is not reliable."""


@dataclass(frozen=True)
class Shift:
    dx: float
    dy: float
    response: float  # fine phase-correlation peak, 0..1; 0 when the views share too little to register

    @property
    def reliable(self) -> bool:
        return self.response >= MIN_RESPONSE


def estimate_shift(previous_bgr: np.ndarray, current_bgr: np.ndarray, work_width: int = WORK_WIDTH) -> Shift:
    """The stage move from the previous field to the current one (see the module's sign convention).
    Either field may be BGR or grey."""
    if previous_bgr.shape[:2] != current_bgr.shape[:2]:
        raise ValueError(f"fields of different shapes {previous_bgr.shape} and {current_bgr.shape}")
    previous, current = _grey(previous_bgr), _grey(current_bgr)
    scale = min(1.0, work_width / previous.shape[1])
    coarse = _coarse_shift(_shrink(previous, scale), _shrink(current, scale))
    if coarse is None:
        return Shift(0.0, 0.0, 0.0)
    return _refine(previous, current, round(coarse[0] / scale), round(coarse[1] / scale))


def already_counted(previous_boxes: np.ndarray, current_boxes: np.ndarray, shift: Shift,
                    frame_size: tuple[int, int], radius: float) -> np.ndarray:
    """Mask of the current cells that were counted in the previous field.

    Boxes are (N, 4) x1, y1, x2, y2 in each field's own pixels; `frame_size` is (width, height)
    of both fields. Both sets are clipped to the part of the slide the two views share, so a
    cell cut by either frame's border is compared by the same visible part in both. A current
    cell is a duplicate when the centre of that part lies within `radius` pixels of a previous
    cell's and the two are each other's nearest; cells outside the shared part, and cells in it
    with no partner, are new and must be counted. Refuses (RegistrationError) a shift that is
    not reliable: count that field whole instead.
    """
    if not shift.reliable:
        raise RegistrationError(f"registration response {shift.response:.2f} is below {MIN_RESPONSE}; "
                                "count the field whole")
    current = np.asarray(current_boxes, np.float64).reshape(-1, 4) + [shift.dx, shift.dy, shift.dx, shift.dy]
    width, height = frame_size
    shared = (max(0.0, shift.dx), max(0.0, shift.dy), min(width, width + shift.dx), min(height, height + shift.dy))
    duplicate = np.zeros(len(current), bool)
    previous_centres, previous_in = _visible_centres(previous_boxes, shared)
    current_centres, current_in = _visible_centres(current, shared)
    if not previous_in.any() or not current_in.any():
        return duplicate
    a, b = current_centres[current_in], previous_centres[previous_in]
    distance = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    nearest_previous, nearest_current = distance.argmin(axis=1), distance.argmin(axis=0)
    rows = np.arange(len(a))
    duplicate[current_in] = (nearest_current[nearest_previous] == rows) & (distance[rows, nearest_previous] <= radius)
    return duplicate


def _visible_centres(boxes: np.ndarray, region: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the boxes clipped to `region`, and whether any of each box lies inside it."""
    x1, y1, x2, y2 = region
    clipped = np.clip(np.asarray(boxes, np.float64).reshape(-1, 4), [x1, y1, x1, y1], [x2, y2, x2, y2])
    inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return (clipped[:, :2] + clipped[:, 2:]) / 2, inside


def _grey(image: np.ndarray) -> np.ndarray:
    """BGR or already grey (a kept previous field) -> float32 grey."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return grey.astype(np.float32)


def _shrink(grey: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return grey
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def _coarse_shift(previous: np.ndarray, current: np.ndarray) -> tuple[int, int] | None:
    """Integer shift at this scale whose overlap matches best, among the aliases of the correlation peak."""
    height, width = previous.shape
    a, b = _trim_for_dft(previous, current)
    (sx, sy), _ = cv2.phaseCorrelate(a - a.mean(), b - b.mean())
    best, best_score = None, -np.inf
    for dx in _aliases(-sx, width):
        for dy in _aliases(-sy, height):
            parts = _overlap(previous, current, dx, dy)
            if parts is None or parts[0].size < MIN_OVERLAP * previous.size:
                continue
            score = _normalised_correlation(*parts)
            if score > best_score:
                best, best_score = (dx, dy), score
    return best


def _aliases(offset: float, period: int) -> set[int]:
    """The shifts within one period either way that a circular correlation peak at `offset` stands for."""
    near = int(round(offset))
    return {near, near - period if near > 0 else near + period}


def _overlap(previous: np.ndarray, current: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The parts of both images that show the same slide area under an integer shift."""
    height, width = previous.shape
    x1, y1, x2, y2 = max(0, dx), max(0, dy), min(width, width + dx), min(height, height + dy)
    if x2 - x1 < MIN_SIDE or y2 - y1 < MIN_SIDE:
        return None
    return previous[y1:y2, x1:x2], current[y1 - dy:y2 - dy, x1 - dx:x2 - dx]


def _normalised_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-9))


def _refine(previous: np.ndarray, current: np.ndarray, dx: int, dy: int) -> Shift:
    parts = _overlap(previous, current, dx, dy)
    if parts is None:
        return Shift(float(dx), float(dy), 0.0)
    a, b = _trim_for_dft(*(_centre_patch(part, REFINE_SIDE) for part in parts))
    window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F)
    # phaseCorrelate applies the window to its inputs in place (OpenCV 5.0), so hand it copies.
    (sx, sy), response = cv2.phaseCorrelate(a.copy(), b.copy(), window)
    return Shift(dx - sx, dy - sy, float(response))


def _centre_patch(image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return image[top:top + side, left:left + side]


def _trim_for_dft(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images cut to the same even, fast DFT size: OpenCV 5.0's phaseCorrelate reads a shift
    half a pixel off along any side whose DFT size is odd (25, 27, 45, ... 225 pixels)."""
    height, width = (_even_dft_size(n) for n in a.shape)
    return a[:height, :width], b[:height, :width]


def _even_dft_size(n: int) -> int:
    size = n
    while size > 2 and (size % 2 or cv2.getOptimalDFTSize(size) != size):
        size -= 1
    return size
