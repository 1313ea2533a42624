"""Writes off the counting loop's hot path: one background thread that runs submitted writes in
order, so a field's record (review crops, its transaction, the views) is written while the next
field is being counted.

Order is kept, so a field commits only after every field submitted before it (and a skipped frame
after the fields before it): the database never holds a frame whose predecessors are missing, and a
resume after a crash starts right after the last commit. The first failure (a full disk) stops the
writer; `check` and `drain` raise it in the caller's thread, with the frame it stopped at.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

QUEUE_FIELDS = 4  # records waiting at most: each may hold a field image until its crops are cut


class WriteFailed(Exception):
    def __init__(self, frame_id: int | None, cause: BaseException):
        super().__init__(str(cause))
        self.frame_id, self.cause = frame_id, cause


class RecordWriter:
    def __init__(self, name: str = "record-writer"):
        self._jobs: queue.Queue = queue.Queue(maxsize=QUEUE_FIELDS)
        self._failure: WriteFailed | None = None
        self.busy_s = 0.0  # time spent writing, for edge-bench
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, frame_id: int | None, write: Callable[[], None]) -> None:
        """Queue `write` (waits while the queue is full); raises the writer's failure, if any."""
        self.check()
        self._jobs.put((frame_id, write))

    def check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def drain(self) -> None:
        """Wait until every submitted write is done; raises the writer's failure, if any."""
        self._jobs.join()
        self.check()

    def close(self) -> None:
        """Finish the queued writes and stop the thread (failures are kept for `check`)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                frame_id, write = job
                if self._failure is None:  # after a failure nothing more is written
                    start = time.perf_counter()
                    try:
                        write()
                    except BaseException as exc:  # raised in the caller's thread by check / drain
                        self._failure = WriteFailed(frame_id, exc)
                    self.busy_s += time.perf_counter() - start
            finally:
                self._jobs.task_done()
