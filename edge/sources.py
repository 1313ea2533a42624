"""Frame sources, chosen by one string (jetson-inference's videoSource habit).

    synthetic[:frames=N,seed=S,width=W,height=H,vary=0|1]   the smear generator; vary=1 draws
                                                   blur, noise, uneven light and stain per field
    demo                                           the built-in demo fields (synthetic, varied, fixed seed)
    PATH/TO/FOLDER                                 images in sorted name order
    PATH/TO/VIDEO.mp4                              a video file
    0, 1, ... or /dev/videoN                       a camera

Every source has one verb, `read()`, returning the next Frame, or None at the
end. A frame that cannot be decoded raises FrameError from `read()`; the loop
logs it, counts the skip and carries on.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from edge.frames import IMAGE_SUFFIXES, Frame, FrameError, as_bgr8

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm"}
DEMO_SPEC = "synthetic:frames=12,seed=2026,vary=1"


class SourceError(ValueError):
    """A source that cannot be opened at all."""


class FrameSource:
    description = ""

    def read(self) -> Frame | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; sources with nothing open need not override."""

    def __iter__(self):
        while (frame := self.read()) is not None:
            yield frame


class SyntheticSource(FrameSource):
    def __init__(self, frames: int = 12, seed: int = 0, width: int = 640, height: int = 480,
                 vary: int = 0):
        from edge.synthetic import SmearConfig
        self.config = SmearConfig(width=width, height=height)
        self.frames, self.seed, self.vary, self._next = frames, seed, bool(vary), 0
        self.description = f"synthetic:frames={frames},seed={seed},width={width},height={height},vary={int(vary)}"
        self.last_field = None  # ground truth of the frame last read, for tests and demos

    def read(self) -> Frame | None:
        from edge.synthetic import render_field
        if self._next >= self.frames:
            return None
        i = self._next
        self._next += 1
        self.last_field = render_field(self._config_for(self.seed + i), seed=self.seed + i)
        return Frame(i, self.last_field.image, time.time(), f"synthetic seed {self.seed + i}")

    def _config_for(self, seed: int):
        """The base config, or with vary=1 one with its own imaging conditions per field."""
        if not self.vary:
            return self.config
        rng = np.random.default_rng([seed, 1])
        return replace(self.config, blur_sigma=float(rng.uniform(0, 1.5)), noise_std=float(rng.uniform(0, 6)),
                       illumination=float(rng.uniform(0, 0.5)), stain_shift=float(rng.uniform(0, 0.5)))


class FolderSource(FrameSource):
    def __init__(self, folder: Path):
        self.files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.description = f"folder {folder} ({len(self.files)} images)"
        self._next = 0

    def read(self) -> Frame | None:
        if self._next >= len(self.files):
            return None
        i, path = self._next, self.files[self._next]
        self._next += 1
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise FrameError(f"cannot decode image {path.name}")
        return Frame(i, as_bgr8(image), time.time(), path.name)


class CaptureSource(FrameSource):
    """A video file or a camera through OpenCV's VideoCapture."""

    def __init__(self, target: str | int, is_file: bool):
        self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            kind = "video file" if is_file else "camera"
            raise SourceError(f"cannot open {kind} {target}")
        self.description = f"{'video' if is_file else 'camera'} {target}"
        self._next = 0

    def read(self) -> Frame | None:
        ok, image = self.capture.read()
        if not ok:
            return None
        i = self._next
        self._next += 1
        return Frame(i, as_bgr8(image), time.time(), f"{self.description} frame {i}")

    def close(self) -> None:
        self.capture.release()


def open_source(spec: str) -> FrameSource:
    """Open a source from its string; raise SourceError with the reason if it cannot be."""
    if spec == "demo":
        spec = DEMO_SPEC
    if spec.split(":", 1)[0] == "synthetic":
        return SyntheticSource(**_synthetic_options(spec))
    if spec.isdigit():
        return CaptureSource(int(spec), is_file=False)
    if spec.startswith("/dev/video"):
        return CaptureSource(spec, is_file=False)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return CaptureSource(str(path), is_file=True)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return _SingleImageSource(path)
    raise SourceError(f"unknown source {spec!r}: give 'demo', 'synthetic[:frames=N,seed=S]', "
                      "an image folder, an image or video file, or a camera index")


class _SingleImageSource(FolderSource):
    def __init__(self, path: Path):
        self.files = [path]
        self.description = f"image {path}"
        self._next = 0


def _synthetic_options(spec: str) -> dict:
    options: dict[str, int] = {}
    _, _, rest = spec.partition(":")
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in ("frames", "seed", "width", "height", "vary") or not value.isdigit():
            raise SourceError(f"bad synthetic source option {item!r}; use frames=, seed=, width=, height=, vary=")
        options[key] = int(value)
    return options
