"""What every frame source is: the one verb `read(timeout)`, its statistics, its errors, and the
parsing of a source string's options (edge.counting.sources lists the sources)."""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

import numpy as np

from edge.runtime.frames import Frame, FrameError

FPS_WINDOW = 30  # frames over which the delivered rate is measured


class SourceError(ValueError):
    """A source that cannot be opened at all, or a camera gone for longer than allowed."""


class ReadTimeout(Exception):
    """`read(timeout)` of a live source found no frame in time; the source is still open."""


class FrameSource:
    description = ""
    live = False

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._delivered: deque[float] = deque(maxlen=FPS_WINDOW)
        self.frames_read = 0
        self.read_errors = 0

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None at the end of a finite source."""
        try:
            frame = self._read(timeout)
        except FrameError:
            self.read_errors += 1
            raise
        if frame is not None:
            self.frames_read += 1
            self._delivered.append(self._clock())
        return frame

    def _read(self, timeout: float | None) -> Frame | None:
        raise NotImplementedError

    def stats(self) -> dict:
        span = self._delivered[-1] - self._delivered[0] if len(self._delivered) > 1 else 0.0
        return {"fps": (len(self._delivered) - 1) / span if span > 0 else 0.0, "frames": self.frames_read,
                "read_errors": self.read_errors, "reconnects": 0, "gap_seconds": 0.0}

    def close(self) -> None:
        """Release the device or file; sources with nothing open need not override."""

    def __iter__(self):
        while (frame := self.read()) is not None:
            yield frame


def count(value: str) -> int:
    """A whole number >= 0 written in digits (a source option)."""
    if not value.isdigit():
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def number(value: str) -> float:
    """A finite number >= 0 (a source option)."""
    result = float(value)
    if not np.isfinite(result) or result < 0:
        raise ValueError(f"{value!r} is not a finite number >= 0")
    return result


def parse_options(spec: str, allowed: dict[str, Callable[[str], object]]) -> dict:
    """`name:key=value,...` -> {key: value} of the allowed keys and types; SourceError otherwise."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = allowed[key](value)
        except (KeyError, ValueError):
            keys = ", ".join(f"{k}=" for k in allowed)
            raise SourceError(f"bad {name} source option {item!r}; use {keys}") from None
    return options
