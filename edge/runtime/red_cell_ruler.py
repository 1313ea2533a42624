"""The camera's pixel size read off the red cells in the fields.

Red cells are about 7.5 um across in every lab, so their size in a field is a
ruler. The reading does not try to outline each cell (smears are crowded and
cells touch): it thresholds the stained area, fills the pale centres, and
collects the lengths of every horizontal and vertical run through it (chords).
The chords of round cells of one size pile up just below their diameter;
touching cells add longer chords and cut or pale cells shorter ones, which
move the pile's peak little. The peak is taken on a log scale, first weighting
each chord by its length (so specks and granules do not decide it), then
unweighted among the chords near that first peak. White cells are read with
the red ones; in a smear red cells outnumber them hundreds to one, and a
session's estimate is the median over fields, so a field crowded with white
cells does not move it.

Thresholding eats part of each cell's pale rim, so the modal chord is a fixed
share of the diameter for a given way of staining and imaging. A bundle states
that chord in micrometres as measured at its own lab (`tiling.red_cell_chord_um`),
so the same ruler is read the same way in both places:
pixel size = red_cell_chord_um / modal chord in pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

RED_CELL_DIAMETER_UM = 7.5
MIN_RED_CELLS = 8          # fewer in a field and its reading is not used
READ_AREA_PX = 1_000_000   # fields are shrunk to about this many pixels before reading
MIN_CHORD_PX = 6           # at the reading's resolution; shorter runs are noise
SETTLED_READINGS = 20      # after this many good readings, read one field in READ_EVERY
PLAUSIBLE_UM_PER_PX = (0.01, 1.0)  # blood smears are counted between about 10x and 150x objectives
READ_EVERY = 10


@dataclass(frozen=True)
class RedCellReading:
    chord_px: float | None  # modal red-cell chord in the frame's own pixels (None: no reading)
    red_cells: float        # about how many red cells the stained area holds
    reason: str | None = None  # why there is no reading


def read_red_cells(image_bgr: np.ndarray) -> RedCellReading:
    """The modal red-cell chord of one BGR uint8 field, in the field's pixels."""
    shrink = min(1.0, math.sqrt(READ_AREA_PX / (image_bgr.shape[0] * image_bgr.shape[1])))
    small = image_bgr if shrink == 1.0 else cv2.resize(image_bgr, None, fx=shrink, fy=shrink,
                                                       interpolation=cv2.INTER_AREA)
    mask = _stained_area(small)
    chords = np.concatenate([_run_lengths(mask), _run_lengths(mask.T)])
    chords = chords[chords >= MIN_CHORD_PX]
    if chords.size == 0:
        return RedCellReading(None, 0.0, "no stained cells found in the field")
    first = _log_mode(chords, weighted=True)
    near = chords[(chords >= 0.4 * first) & (chords <= 2.5 * first)]
    chord = _log_mode(near, weighted=False)
    red_cells = float(mask.sum()) / (math.pi / 4 * chord ** 2)
    if red_cells < MIN_RED_CELLS:
        return RedCellReading(None, red_cells, f"too few red cells to read their size "
                                               f"(about {red_cells:.0f}, at least {MIN_RED_CELLS} needed)")
    return RedCellReading(chord / shrink, red_cells)


def _stained_area(image_bgr: np.ndarray) -> np.ndarray:
    """Cells against the background: green optical density above Otsu's threshold, closed, holes filled."""
    green = image_bgr[..., 1].astype(np.float32)
    density = cv2.GaussianBlur(-np.log((green + 1.0) / 256.0), (5, 5), 0)
    top = float(np.percentile(density, 95))
    if top <= 0:
        return np.zeros(density.shape, np.uint8)
    scaled = (np.clip(density / top, 0, 1) * 255).astype(np.uint8)
    _, mask = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # close rims broken by a pale centre, or the centre is not filled and each cell reads as two half chords
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    outside = np.pad(mask, 1)  # flood the background from the border; what it cannot reach is a hole
    cv2.floodFill(outside, None, (0, 0), 1)
    return mask | (outside[1:-1, 1:-1] == 0).astype(np.uint8)


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """Lengths of the runs of 1 along each row, leaving out runs cut by the frame's edge."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    steps = np.diff(padded, axis=1)
    starts = np.flatnonzero(steps == 1)
    ends = np.flatnonzero(steps == -1)  # row-major: the k-th end closes the k-th start
    width = mask.shape[1]
    inside = (starts % (width + 1) > 0) & (ends % (width + 1) < width)
    return (ends - starts)[inside]


def _log_mode(chords: np.ndarray, weighted: bool) -> float:
    """Peak of the smoothed histogram of log chord lengths (1.5 % bins)."""
    logs = np.log(chords)
    lo, hi = logs.min(), logs.max() + 1e-6
    bins = max(1, int(math.ceil((hi - lo) / 0.015)))
    hist, edges = np.histogram(logs, bins=bins, range=(lo, hi), weights=chords if weighted else None)
    kernel = np.exp(-0.5 * (np.arange(-12, 13) / 4.0) ** 2)
    smooth = np.convolve(hist.astype(np.float64), kernel, mode="same")
    i = int(smooth.argmax())
    return float(math.exp((edges[i] + edges[i + 1]) / 2))


@dataclass
class PixelSizeRuler:
    """Pixel size estimated over a session's fields: the median of every field's reading.

    A field without a reading (too few red cells) leaves the estimate as it was."""
    chord_um: float  # the bundle's tiling.red_cell_chord_um
    estimates: list[float] = field(default_factory=list)
    fields_seen: int = 0
    without_reading: int = 0
    last_reason: str | None = None

    def wants(self) -> bool:
        """Whether the next field should be read (every field until the estimate settles)."""
        return len(self.estimates) < SETTLED_READINGS or self.fields_seen % READ_EVERY == 0

    def observe(self, image_bgr: np.ndarray) -> RedCellReading | None:
        self.fields_seen += 1
        if not self.wants():
            return None
        reading = read_red_cells(image_bgr)
        if reading.chord_px is not None:
            estimate = self.chord_um / reading.chord_px
            lo, hi = PLAUSIBLE_UM_PER_PX
            if lo <= estimate <= hi:
                self.estimates.append(estimate)
                return reading
            reading = RedCellReading(None, reading.red_cells, f"what was read as red cells gives {estimate:.3g} um "
                                                              f"per pixel, outside a microscope's {lo}-{hi}")
        self.without_reading += 1
        self.last_reason = reading.reason
        return reading

    def reject_last(self, reason: str) -> None:
        """Take back the last reading (it gave an impossible scale): counted as a field without one."""
        self.estimates.pop()
        self.without_reading += 1
        self.last_reason = reason

    @property
    def pixel_size_um(self) -> float | None:
        return float(np.median(self.estimates)) if self.estimates else None

    def record(self) -> dict:
        """What results say about the estimate: value, a 95 % interval for it, and what it rests on."""
        low, high = median_interval(self.estimates)
        return {"um_per_pixel": self.pixel_size_um, "interval95": [low, high],
                "fields_read": len(self.estimates), "fields_without_reading": self.without_reading,
                "last_reason_without_reading": self.last_reason, "red_cell_chord_um": self.chord_um}


def median_interval(values: list[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """Distribution-free interval for a median from order statistics (binomial(n, 1/2) ranks);
    (None, None) for fewer than 6 values, where no such interval reaches 95 %."""
    n = len(values)
    if n < 6:
        return None, None
    ordered = sorted(values)
    tail = (1 - level) / 2
    cumulative, k = 0.0, 0
    while True:  # largest k with P(X <= k - 1) <= tail, X ~ Binomial(n, 1/2)
        p = math.comb(n, k) / 2 ** n
        if cumulative + p > tail:
            break
        cumulative += p
        k += 1
    k = max(k, 1)
    return float(ordered[k - 1]), float(ordered[n - k])
