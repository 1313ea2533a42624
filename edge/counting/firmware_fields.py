"""Fields announced by the microscope's firmware: FIELD_READY in, one camera frame out.

`FirmwareFieldSource` wraps a camera source and the serial link. Each read waits
for FIELD_READY (the stage has settled), takes the next frame the camera gives,
and tells the firmware NEXT_FIELD at once so the stage moves while the loop
counts. A full loop stops grabbing, so the firmware waits for NEXT_FIELD: the
loop's speed paces the stage and no field is dropped. STOP on the microscope or
the end of the scan ends the source; a lost link is logged and waited out (the
link reconnects by itself); a firmware ERROR is logged and counted.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from firmware_bridge import (Button, ButtonId, DeviceError, FieldReady, FirmwareLink, LinkLost,
                             LinkRestored, ScanComplete)

from edge.runtime.frames import Frame
from edge.counting.sources import FrameSource, SourceError

log = logging.getLogger("edge.firmware")
POLL_S = 0.1  # how often a wait for the firmware looks whether the loop has stopped


class FirmwareFieldSource(FrameSource):
    live = False

    def __init__(self, link: FirmwareLink, camera: FrameSource, idle_timeout_s: float = 60.0):
        super().__init__()
        self.link, self.camera = link, camera
        self.idle_timeout_s = idle_timeout_s
        self.description = f"{camera.description}, fields from the firmware on {link.port}"
        self.device_errors: list[str] = []
        self.link_gaps = 0
        self.ended_by = ""
        self._seen_fields: set[int] = set()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop waiting for the firmware: the loop takes no more fields."""
        self._cancelled.set()

    def _read(self, timeout: float | None) -> Frame | None:
        deadline = time.monotonic() + self.idle_timeout_s
        while True:
            if self._cancelled.is_set():
                self.ended_by = self.ended_by or "cancelled"
                return None
            event = self.link.wait_event(timeout=POLL_S)
            if event is None:
                if time.monotonic() > deadline:
                    raise SourceError(f"no FIELD_READY from the firmware in {self.idle_timeout_s:.0f} s")
                continue
            if isinstance(event, FieldReady):
                if event.field_id in self._seen_fields:  # the firmware restarted its scan
                    log.warning("field %d announced again; not counted twice", event.field_id)
                    self.link.next_field(event.field_id)
                    continue
                return self._take(event)
            if isinstance(event, ScanComplete):
                self.ended_by = f"scan complete ({event.fields} fields)"
                return None
            if isinstance(event, Button) and event.button == ButtonId.STOP:
                self.ended_by = "stopped on the microscope"
                return None
            if isinstance(event, DeviceError):
                self.device_errors.append(f"code {event.code}: {event.text}")
                log.error("firmware error %d: %s", event.code, event.text)
            elif isinstance(event, LinkLost):
                self.link_gaps += 1
                log.warning("serial link lost (%s); waiting for it to return", event.reason)
                deadline = time.monotonic() + self.idle_timeout_s
            elif isinstance(event, LinkRestored):
                log.warning("serial link back after %.1f s", event.gap_s)

    def _take(self, event: FieldReady) -> Frame | None:
        frame = self.camera.read()
        if frame is None:
            self.ended_by = "camera source ended"
            return None
        self._seen_fields.add(event.field_id)
        self.link.next_field(event.field_id)
        origin = (f"field {event.field_id} at x {event.x_nm / 1000:.1f} um, y {event.y_nm / 1000:.1f} um"
                  f" ({frame.origin})")
        return replace(frame, frame_id=event.field_id, origin=origin)

    def stats(self) -> dict:
        s = super().stats()
        link = self.link.stats
        s.update(reconnects=link.reconnects, gap_seconds=link.gap_s, link_gaps=self.link_gaps,
                 serial={"bad_frames": link.bad_frames, "retries": link.retries,
                         "duplicates": link.duplicates},
                 device_errors=self.device_errors, camera=self.camera.stats())
        return s

    def close(self) -> None:
        self.camera.close()
