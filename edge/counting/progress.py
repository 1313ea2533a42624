"""The live view of a session in the terminal: fields, cells, the tally, rejected, speed.

On a terminal one status line is redrawn in place (at most a few times a
second); into a file or a pipe one line is written per field.
"""
from __future__ import annotations

import time
from typing import TextIO

from edge.counting.tally import Tally


class Progress:
    def __init__(self, stream: TextIO, redraw_every: float = 0.25):
        self.stream = stream
        self.in_place = bool(getattr(stream, "isatty", lambda: False)())
        self.redraw_every = redraw_every
        self._started = time.perf_counter()
        self._last_draw = 0.0
        self.fields = 0
        self.cells = 0

    def field(self, frame_id: int, cells: int, duplicates: int, tally: Tally, extra: str = "") -> None:
        self.fields += 1
        self.cells += cells
        if not self.in_place:
            dup = f" (+{duplicates} seen before)" if duplicates else ""
            print(f"frame {frame_id:>5}  cells {cells:>3}{dup}  {tally.line()}{extra}", file=self.stream)
            return
        now = time.perf_counter()
        if now - self._last_draw >= self.redraw_every:
            self._last_draw = now
            line = (f"fields {self.fields}  cells {self.cells}  {self.fields_per_s:4.1f} fields/s  "
                    f"{tally.line()}{extra}")
            print("\r\033[K" + line, end="", file=self.stream, flush=True)

    @property
    def fields_per_s(self) -> float:
        elapsed = time.perf_counter() - self._started
        return self.fields / elapsed if elapsed > 0 else 0.0

    def message(self, text: str) -> None:
        if self.in_place:
            print("\r\033[K", end="", file=self.stream)
        print(text, file=self.stream, flush=True)

    def finish(self) -> None:
        if self.in_place:
            print(file=self.stream)
