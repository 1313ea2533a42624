"""The frames edge-bench times, handed over at `grab` as a camera driver hands over a decoded buffer.

A finite source (the demo fields, an image folder or file, a video file,
synthetic fields, a mosaic of real fields) is decoded or rendered before
timing, up to STILL_BYTES, and `grab` is then a copy of one of those frames:
decoding a JPEG or rendering a smear is not work the device does per field. A
camera or stream is read (decoded) at `grab`, since that is what the device
does with it.
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from edge.bench.mosaic import mosaic
from edge.counting.sources import DEMO_FIELDS, SourceError, open_source
from edge.runtime.frames import Frame

STILL_BYTES = 256 << 20   # decoded frames kept in memory at most
DEMO_FIELDS_SPEC = "demo-fields"  # the real BCCD fields in edge/demo_fields (640 x 480, the default bundle's scale)


def source_spec(spec: str, frame_size: tuple[int, int] | None, um_per_px: float | None) -> str:
    """The source string to open: the demo fields' folder for DEMO_FIELDS_SPEC; synthetic fields
    rendered at `frame_size` and, unless the spec says otherwise, at `um_per_px`."""
    if spec == DEMO_FIELDS_SPEC:
        return str(DEMO_FIELDS)
    if spec.split(":", 1)[0] != "synthetic":
        return spec
    extra = []
    if frame_size:
        extra.append(f"width={frame_size[0]},height={frame_size[1]}")
    if um_per_px and "um_per_px=" not in spec:
        extra.append(f"um_per_px={um_per_px:g}")
    return spec + ("," if ":" in spec else ":") + ",".join(extra) if extra else spec


class FrameSupply:
    def __init__(self, spec: str, frame_size: tuple[int, int] | None, needed: int,
                 tiles: tuple[int, int] | None = None, um_per_px: float | None = None):
        """`needed` frames at most are kept; `tiles` (across, down) makes each frame a mosaic of the
        source's frames; `um_per_px` is the pixel size synthetic fields are drawn at."""
        if tiles and frame_size:
            raise ValueError("--mosaic and --frame-size: give one (a mosaic is as large as its fields make it)")
        self.spec = source_spec(spec, frame_size, um_per_px)
        synthetic = self.spec.split(":", 1)[0] == "synthetic"
        self.frame_size = None if synthetic else frame_size  # synthetic fields are rendered at that size
        self.source = open_source(self.spec)
        self.description = ("the demo fields, " + self.source.description if spec == DEMO_FIELDS_SPEC
                            else self.source.description)
        self.still: list[Frame] = []
        if tiles:
            if self.source.live:
                raise ValueError("--mosaic tiles the frames of a finite source (images, a video, synthetic)")
            self.still = self._mosaics(tiles, needed)
        elif not self.source.live:
            self.still = self._read_ahead(needed)
        self._next = 0

    def _read_ahead(self, needed: int, limit: int = STILL_BYTES) -> list[Frame]:
        frames, size = [], 0
        while len(frames) < needed and size < limit and (frame := self.source.read()) is not None:
            frames.append(Frame(frame.frame_id, self._sized(frame.image), frame.timestamp, frame.origin))
            size += frames[-1].image.nbytes
        if not frames:
            raise SourceError(f"source {self.spec!r} gave no frames")
        return frames

    def _mosaics(self, tiles: tuple[int, int], needed: int) -> list[Frame]:
        across, down = tiles
        fields = self._read_ahead(across * down)
        frame_bytes = across * down * fields[0].image.nbytes
        keep = max(1, min(needed, STILL_BYTES // frame_bytes))
        self.description = (f"mosaic of {across} x {down} fields of {fields[0].image.shape[1]}x"
                            f"{fields[0].image.shape[0]}, from {len(fields)} fields of {self.description}")
        return [Frame(i, mosaic([f.image for f in fields], across, down, start=i * (across + 1)), time.time(),
                      f"mosaic {i}") for i in range(keep)]

    def _sized(self, image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, self.frame_size, interpolation=cv2.INTER_AREA) if self.frame_size else image

    def grab(self) -> Frame:
        i = self._next
        self._next += 1
        if self.still:
            f = self.still[i % len(self.still)]
            return Frame(i, f.image.copy(), time.time(), f.origin)
        frame = self.source.read()
        if frame is None:
            raise SourceError(f"source {self.spec!r} gave no frame")
        return Frame(i, self._sized(frame.image), frame.timestamp, frame.origin)

    def close(self) -> None:
        self.source.close()
