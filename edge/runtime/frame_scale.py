"""The pixel size fields are counted at: a setting, the red-cell ruler's estimate, or the bundle's own.

With no `--pixel-size` and a bundle that states its red-cell ruler, every field
is read (until the estimate settles) and the bundle's tiling follows the
median of the readings, so the detector sees cells at its own scale. A field
with too few red cells leaves the estimate as it was.
"""
from __future__ import annotations

import logging

from edge.runtime.bundle import Bundle, BundleError
from edge.runtime.red_cell_ruler import PixelSizeRuler

log = logging.getLogger("edge.frame_scale")

RESCALE_STEP = 0.02  # the tiling follows the estimate once it has moved by more than this share


class FrameScale:
    def __init__(self, bundle: Bundle, pixel_size_um: float | None = None, estimate: bool = True):
        self.base = bundle
        self.setting = pixel_size_um
        chord = bundle.tiling.red_cell_chord_um
        self.ruler = PixelSizeRuler(chord) if estimate and pixel_size_um is None and chord else None
        self.bundle = bundle.at_pixel_size(pixel_size_um)  # the bundle the next field is counted with

    def observe(self, image_bgr) -> Bundle:
        """Reads `image_bgr`'s red cells (when estimating) and returns the bundle to count it with."""
        if self.ruler is None:
            return self.bundle
        reading = self.ruler.observe(image_bgr)
        if reading is not None and reading.chord_px is not None:  # a new reading: follow the median
            estimate = self.ruler.pixel_size_um
            current = self.bundle.tiling.pixel_size_um
            if abs(estimate / current - 1) > RESCALE_STEP:
                try:
                    self.bundle = self.base.at_pixel_size(estimate)
                except BundleError as exc:  # not a microscope's scale: what looked like red cells was not
                    self.ruler.reject_last(f"the estimate would need an impossible resize ({exc})")
                    log.warning("pixel size estimate %.4g um ignored: %s", estimate, exc)
        return self.bundle

    def record(self) -> dict:
        """What results say about the frames' scale: the pixel size used and where it came from."""
        tiling = self.bundle.tiling
        record = {"um_per_pixel": tiling.pixel_size_um, "frame_scale": tiling.scale}
        if self.setting is not None:
            return record | {"source": "setting (--pixel-size)"}
        if self.ruler is not None and self.ruler.estimates:
            return record | {"source": "estimated from the red cells in the fields", "estimate": self.ruler.record()}
        if self.ruler is not None:
            why = self.ruler.last_reason or "no field read yet"
            return record | {"source": f"the bundle's camera: no estimate from the red cells ({why})",
                             "estimate": self.ruler.record()}
        if tiling.pixel_size_um is not None:
            return record | {"source": "the bundle's camera (no --pixel-size given, and the bundle states "
                                       "no red-cell ruler: frames assumed to be at the bundle's scale)"}
        return record | {"source": "not stated (the bundle gives no pixel size; frames assumed to be "
                                   "like its training fields)"}
