"""Frame sources, chosen by one string (jetson-inference's videoSource habit).

    synthetic[:frames=N,seed=S,width=W,height=H,vary=0|1,um_per_px=U]   the smear generator; vary=1
                                                   draws blur, noise, uneven light and stain per field;
                                                   um_per_px draws the smear at that pixel size
                                                   (default 0.25, the synthetic bundle's)
    synthetic-stage[:fields=N,step=F,still=K,move=M,...]   a stage touring one large smear
                                                   (edge/counting/stage_source.py)
    demo                                           the built-in demo: six real BCCD smear fields
                                                   (edge/demo_fields), then synthetic varied fields
    PATH/TO/FOLDER                                 images in sorted name order
    PATH/TO/IMAGE.png                              one image
    PATH/TO/VIDEO.mp4                              a video file
    0, 1, ...                                      a camera by OpenCV index
    /dev/videoN                                    a V4L2 camera
    rtsp://..., http(s)://...                      a network stream (FFmpeg)
    "nvarguscamerasrc ! ... ! appsink"             a GStreamer pipeline (a Jetson CSI camera)

Every source has one verb, `read(timeout=None)`, returning the next Frame, or
None at the end of a finite source. A frame that cannot be decoded raises
FrameError from `read()`; the loop logs it, counts the skip and carries on.
`live` says whether the loop may drop frames it cannot keep up with (cameras
and streams) or must count every one (files, folders, synthetic sources).
`stats()` reports the delivered frame rate, frames, read errors, reconnects
and the seconds lost to outages.

A camera or stream that stops delivering is reopened with exponential backoff;
each gap is logged and counted, and an outage longer than the policy allows
raises SourceError. While it waits, `read(timeout)` raises ReadTimeout when the
timeout runs out, so a grabbing thread can look up from the wait.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edge.counting.frame_source import FrameSource, ReadTimeout, SourceError, count, number, parse_options
from edge.runtime.frames import IMAGE_SUFFIXES, Frame, FrameError, as_bgr8

log = logging.getLogger("edge.counting.sources")

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm"}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://")
DEMO_FIELDS = Path(__file__).resolve().parents[1] / "demo_fields"  # real fields, licence and provenance in its README
DEMO_SPEC = "synthetic:frames=12,seed=2026,vary=1"  # the synthetic part of the demo
# A stalled stream must fail its read rather than block the grabbing thread forever.
STREAM_TIMEOUTS_MS = (cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000)


class SyntheticSource(FrameSource):
    def __init__(self, frames: int = 12, seed: int = 0, width: int = 640, height: int = 480,
                 vary: int = 0, um_per_px: float | None = None):
        from edge.synthetic.smear import SmearConfig
        super().__init__()
        self.config = SmearConfig(width=width, height=height)
        if um_per_px is not None:
            self.config = self.config.at_pixel_size(um_per_px)
        self.frames, self.seed, self.vary, self._next = frames, seed, bool(vary), 0
        self.description = (f"synthetic:frames={frames},seed={seed},width={width},height={height},vary={int(vary)}"
                            + (f",um_per_px={um_per_px:g}" if um_per_px is not None else ""))
        self.last_field = None  # ground truth of the frame last read, for tests and demos

    def _read(self, timeout: float | None) -> Frame | None:
        from edge.synthetic.smear import render_field
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
        super().__init__()
        self.files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.description = f"folder {folder} ({len(self.files)} images)"
        self._next = 0

    def _read(self, timeout: float | None) -> Frame | None:
        if self._next >= len(self.files):
            return None
        i, path = self._next, self.files[self._next]
        self._next += 1
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise FrameError(f"cannot decode image {path.name}")
        if path.suffix.lower() in (".jpg", ".jpeg") and not _ends_with_jpeg_marker(path):
            # libjpeg fills the missing rows with grey and says nothing the caller can see
            raise FrameError(f"image {path.name} is truncated (no JPEG end marker)")
        return Frame(i, as_bgr8(image), time.time(), path.name)


def _ends_with_jpeg_marker(path: Path) -> bool:
    """A whole JPEG ends with its end-of-image marker (some cameras pad it with zero bytes)."""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 4096))
        return fh.read().rstrip(b"\x00").endswith(b"\xff\xd9")


class ChainedSource(FrameSource):
    """The frames of finite sources one after another, numbered on from the first."""

    def __init__(self, sources: list[FrameSource]):
        super().__init__()
        if not sources:
            raise SourceError("a chain of sources needs at least one")
        self.sources = list(sources)
        self.description = " then ".join(s.description for s in self.sources)
        self._current = 0

    def _read(self, timeout: float | None) -> Frame | None:
        while self._current < len(self.sources):
            frame = self.sources[self._current].read(timeout)
            if frame is not None:
                return replace(frame, frame_id=self.frames_read + self.read_errors)
            self._current += 1
        return None

    def close(self) -> None:
        for source in self.sources:
            source.close()


class _SingleImageSource(FolderSource):
    def __init__(self, path: Path):
        FrameSource.__init__(self)
        self.files = [path]
        self.description = f"image {path}"
        self._next = 0


# ---------------------------------------------------------------- OpenCV captures

@dataclass(frozen=True)
class CaptureSpec:
    """How OpenCV opens a source string: its target, backend (cv2.CAP_*) and kind."""
    target: str | int
    api: int
    kind: str  # "camera", "stream", "GStreamer pipeline" or "video file"

    @property
    def live(self) -> bool:
        return self.kind != "video file"

    @property
    def params(self) -> list[int]:
        return list(STREAM_TIMEOUTS_MS) if self.kind == "stream" else []


def capture_spec(spec: str) -> CaptureSpec | None:
    """The OpenCV capture a source string names, or None if it names no capture."""
    if " ! " in spec:
        return CaptureSpec(spec, cv2.CAP_GSTREAMER, "GStreamer pipeline")
    if spec.lower().startswith(STREAM_PREFIXES):
        return CaptureSpec(spec, cv2.CAP_FFMPEG, "stream")
    if spec.isdigit():
        return CaptureSpec(int(spec), cv2.CAP_ANY, "camera")
    if spec.startswith("/dev/video"):
        return CaptureSpec(spec, cv2.CAP_V4L2, "camera")
    path = Path(spec)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return CaptureSpec(spec, cv2.CAP_ANY, "video file")
    return None


def open_capture(spec: CaptureSpec):
    """A cv2.VideoCapture for the spec (opened or not); refuses what this OpenCV cannot do at all."""
    if spec.api == cv2.CAP_GSTREAMER and not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        raise SourceError("this OpenCV is built without GStreamer, so it cannot open the pipeline "
                          f"{spec.target!r}; use an OpenCV built with GStreamer (on a Jetson, JetPack's)")
    return cv2.VideoCapture(spec.target, spec.api, spec.params)


CaptureFactory = Callable[[CaptureSpec], "cv2.VideoCapture"]


class VideoFileSource(FrameSource):
    """A video file: every frame in order, None at its end."""

    def __init__(self, spec: CaptureSpec, capture_factory: CaptureFactory = open_capture):
        super().__init__()
        self.capture = capture_factory(spec)
        if not self.capture.isOpened():
            raise SourceError(f"cannot open video file {spec.target}")
        self.description = f"video {spec.target}"
        self._next = 0

    def _read(self, timeout: float | None) -> Frame | None:
        ok, image = self.capture.read()
        if not ok:
            return None
        i = self._next
        self._next += 1
        return Frame(i, as_bgr8(image), time.time(), f"{self.description} frame {i}")

    def close(self) -> None:
        self.capture.release()


@dataclass(frozen=True)
class ReconnectPolicy:
    """Backoff for a camera or stream that stops delivering: wait `initial_delay` seconds before
    the first reopen, double the wait after each failed one up to `max_delay`, and give up
    (SourceError) once the outage has lasted `max_outage` seconds."""
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_outage: float = 120.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_delay <= self.max_delay or self.max_outage <= 0:
            raise SourceError("reconnect delays must satisfy 0 < initial <= maximum, and the outage limit be positive")


class CameraSource(FrameSource):
    """A camera, stream or GStreamer pipeline; reopened with backoff when it stops delivering."""
    live = True

    def __init__(self, spec: CaptureSpec, reconnect: ReconnectPolicy = ReconnectPolicy(),
                 capture_factory: CaptureFactory = open_capture,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        super().__init__(clock)
        self.spec, self.policy, self._factory, self._sleep = spec, reconnect, capture_factory, sleep
        self.description = f"{spec.kind} {spec.target}"
        self.capture = capture_factory(spec)
        if not self.capture.isOpened():
            self.capture.release()
            raise SourceError(f"cannot open {self.description}")
        self.reconnects, self.gap_seconds = 0, 0.0
        self._outage_start: float | None = None
        self._next_attempt = 0.0  # clock time of the next reopen, during an outage
        self._delay = reconnect.initial_delay
        self._attempts = 0
        self._next = 0

    def _read(self, timeout: float | None) -> Frame | None:
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            if self.capture is not None:
                image = self._grab()
                if image is not None:
                    return self._deliver(image)
                self._lose_device()
            self._wait_and_reopen(deadline)

    def _grab(self) -> np.ndarray | None:
        try:
            ok, image = self.capture.read()
        except cv2.error as exc:
            log.warning("%s: read failed: %s", self.description, exc)
            ok, image = False, None
        if not ok or image is None:
            self.read_errors += 1
            return None
        return image

    def _deliver(self, image: np.ndarray) -> Frame:
        if self._outage_start is not None:
            gap = self._clock() - self._outage_start
            self.reconnects += 1
            self.gap_seconds += gap
            log.warning("%s: back after a %.1f s gap (%d reopen attempts)", self.description, gap, self._attempts)
            self._outage_start = None
        i = self._next
        self._next += 1
        return Frame(i, as_bgr8(image), time.time(), f"{self.description} frame {i}")

    def _lose_device(self) -> None:
        self.capture.release()
        self.capture = None
        if self._outage_start is None:
            log.warning("%s: no frame; reopening with backoff", self.description)
            self._outage_start, self._delay, self._attempts = self._clock(), self.policy.initial_delay, 0
        self._schedule_reopen()

    def _schedule_reopen(self) -> None:
        self._next_attempt = self._clock() + self._delay
        self._delay = min(2 * self._delay, self.policy.max_delay)

    def _wait_and_reopen(self, deadline: float | None) -> None:
        if self._next_attempt - self._outage_start > self.policy.max_outage:
            outage = self._clock() - self._outage_start
            raise SourceError(f"{self.description} gone for {outage:.0f} s ({self._attempts} reopen attempts); "
                              "giving up")
        now = self._clock()
        if deadline is not None and self._next_attempt > deadline:
            self._sleep(max(0.0, deadline - now))
            raise ReadTimeout(f"{self.description}: no frame within the timeout (reconnecting)")
        self._sleep(max(0.0, self._next_attempt - now))
        self._attempts += 1
        try:
            capture = self._factory(self.spec)
        except cv2.error as exc:
            log.warning("%s: reopen failed: %s", self.description, exc)
            capture = None
        if capture is not None and capture.isOpened():
            self.capture = capture
            return
        if capture is not None:
            capture.release()
        self._schedule_reopen()

    def stats(self) -> dict:
        return super().stats() | {"reconnects": self.reconnects, "gap_seconds": self.gap_seconds}

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()


# ---------------------------------------------------------------- choosing a source

def open_source(spec: str, reconnect: ReconnectPolicy = ReconnectPolicy(),
                capture_factory: CaptureFactory = open_capture) -> FrameSource:
    """Open a source from its string; raise SourceError with the reason if it cannot be."""
    if spec == "demo":
        return ChainedSource([FolderSource(DEMO_FIELDS), _open_synthetic(DEMO_SPEC, "synthetic")])
    head = spec.split(":", 1)[0]
    if head in ("synthetic", "synthetic-stage"):
        return _open_synthetic(spec, head)
    capture = capture_spec(spec)
    if capture is not None and capture.live:
        return CameraSource(capture, reconnect, capture_factory)
    if capture is not None:
        return VideoFileSource(capture, capture_factory)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return _SingleImageSource(path)
    raise SourceError(f"unknown source {spec!r}: give 'demo', 'synthetic[:frames=N,seed=S]', "
                      "'synthetic-stage[:fields=N]', an image folder, an image or video file, a camera index "
                      "or /dev/videoN, an rtsp:// or http(s):// stream, or a GStreamer pipeline")


def _open_synthetic(spec: str, head: str) -> FrameSource:
    if head == "synthetic":
        make, allowed = SyntheticSource, dict.fromkeys(("frames", "seed", "width", "height", "vary"), count)
        allowed["um_per_px"] = number
    else:
        from edge.counting.stage_source import STAGE_OPTIONS, StageSource
        make, allowed = StageSource, STAGE_OPTIONS
    try:
        return make(**parse_options(spec, allowed))
    except SourceError:
        raise
    except ValueError as exc:
        raise SourceError(f"bad {head} source {spec!r}: {exc}") from None
