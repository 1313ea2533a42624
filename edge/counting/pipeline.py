"""The counting stages in threads joined by bounded queues.

    grab -> tile -> detect -> stitch and crop -> classify -> (the caller records)

Each stage is one thread; queues of a few fields keep memory bounded and let
a slow stage hold back the ones before it. When the loop falls behind, the tile
stage takes every field that is waiting (up to `max_batch_fields`) and the
detector runs their tiles together. Fields leave in the order they were
grabbed. A live source never waits for the loop: when the first queue is full,
the oldest field that no stage has started is dropped, and counted. A file,
folder or synthetic source is never dropped: the grab waits instead.

`sequential=True` runs the same stages one after another in the caller's
thread: the reference the pipelined loop is measured against.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from edge.runtime.decision import Decisions
from edge.runtime.engine import CellCounter, FieldResult, FrameTiles
from edge.runtime.frame_scale import FrameScale
from edge.runtime.frames import Frame, FrameError
from edge.runtime.quality import QualityGate, QualityReport
from edge.counting.sources import FrameSource

log = logging.getLogger("edge.counting.pipeline")

_END = object()  # the last item every stage passes on
QUEUE_FIELDS = 2


@dataclass
class FieldJob:
    """One field on its way through the stages."""

    frame_id: int
    frame: Frame | None
    grabbed: float                       # time.perf_counter() when the field was taken
    error: str | None = None             # why the field cannot be counted
    quality: QualityReport | None = None  # the quality gate's measures; refused fields also carry `error`
    boxes: np.ndarray | None = None
    detection_scores: np.ndarray | None = None
    crops: np.ndarray | None = None
    result: FieldResult | None = None
    info: dict = field(default_factory=dict)  # e.g. the firmware's field id and stage position


@dataclass
class LoopCounters:
    frames_read: int = 0
    fields_taken: int = 0
    dropped: int = 0
    read_errors: int = 0
    batches: int = 0
    batched_fields: int = 0
    rejected_for_quality: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Pipeline:
    def __init__(self, counter: CellCounter, source: FrameSource,
                 take_field: Callable[[Frame], bool | dict] = lambda frame: True, *,
                 live: bool = False, skip_through: int = -1, max_batch_fields: int = 4,
                 sequential: bool = False, quality_gate: QualityGate | None = None,
                 frame_scale: FrameScale | None = None):
        self.counter = counter
        self.source = source
        self.take_field = take_field
        self.live = live
        self.skip_through = skip_through  # frames up to this id were counted before a resume
        self.max_batch_fields = max_batch_fields
        self.sequential = sequential
        self.quality_gate = quality_gate  # refuses unfit fields before detection
        self.frame_scale = frame_scale  # the red-cell ruler's pixel size, followed field by field
        self.counters = LoopCounters()
        self._stop = threading.Event()
        self._failed: BaseException | None = None
        self._next_id = 0

    def stop(self) -> None:
        """Take no more fields; those already taken still come out."""
        self._stop.set()
        cancel = getattr(self.source, "cancel", None)  # a source that may wait long for its next field
        if cancel is not None:
            cancel()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def __iter__(self) -> Iterator[FieldJob]:
        return self._run_sequential() if self.sequential else self._run_threaded()

    # ------------------------------------------------------------ grabbing

    def _grab(self) -> FieldJob | None:
        """The next field to count, or None at the end of the source (or after stop)."""
        while not self._stop.is_set():
            frame_id = self._next_id
            try:
                frame = self.source.read()
            except FrameError as exc:
                self._next_id += 1
                self.counters.read_errors += 1
                if frame_id <= self.skip_through:
                    continue
                return FieldJob(frame_id, None, time.perf_counter(), error=str(exc))
            if frame is None:
                return None
            self._next_id = frame.frame_id + 1
            self.counters.frames_read += 1
            if frame.frame_id <= self.skip_through:
                continue
            taken = self.take_field(frame)
            if taken:
                self.counters.fields_taken += 1
                info = taken if isinstance(taken, dict) else {}
                return FieldJob(frame.frame_id, frame, time.perf_counter(), info=info)
        return None

    # ------------------------------------------------------------ the stages' work

    def _tile(self, jobs: list[FieldJob]) -> tuple[list[FieldJob], FrameTiles | None]:
        if self.quality_gate is not None:
            for job in jobs:
                self._check_quality(job)
        good = [j for j in jobs if j.error is None]
        if self.frame_scale is not None and good:  # the batch is cut at the scale its fields read
            for job in good:
                bundle = self.frame_scale.observe(job.frame.image)
            self.counter.follow_scale(bundle)
        self.counters.batches += 1
        self.counters.batched_fields += len(good)
        return jobs, self.counter.cut_tiles([j.frame.image for j in good]) if good else None

    def _check_quality(self, job: FieldJob) -> None:
        if job.error is None:
            job.quality = self.quality_gate.check(job.frame.image)
            if not job.quality.passed:
                job.error = job.quality.reason
                self.counters.rejected_for_quality += 1

    def _detect(self, item: tuple[list[FieldJob], FrameTiles | None]) -> list[FieldJob]:
        jobs, tiles = item
        if tiles is None:
            return jobs
        outputs = self.counter.run_detector(tiles)
        for k, job in enumerate([j for j in jobs if j.error is None]):
            try:
                job.boxes, job.detection_scores = self.counter.stitch_frame(tiles, outputs, k)
            except FloatingPointError as exc:  # this field is skipped and counted, the others go on
                job.error = str(exc)
        return jobs

    def _crop(self, job: FieldJob) -> FieldJob:
        if job.error is None:
            job.crops = self.counter.crop(job.frame.image, job.boxes)
        return job

    def _classify(self, job: FieldJob) -> FieldJob:
        if job.error is not None:
            return job
        scores = self.counter.classify_crops(job.crops)
        try:
            decisions: Decisions = self.counter.rule.decide(scores)
        except FloatingPointError as exc:
            job.error = str(exc)
            return job
        job.result = FieldResult(job.boxes, job.detection_scores, scores, decisions)
        job.crops = None
        return job

    # ------------------------------------------------------------ one after another

    def _run_sequential(self) -> Iterator[FieldJob]:
        while (job := self._grab()) is not None:
            for done in self._detect(self._tile([job])):
                yield self._classify(self._crop(done))

    # ------------------------------------------------------------ threaded

    def _run_threaded(self) -> Iterator[FieldJob]:
        to_tile, to_detect, to_crop, to_classify, done = (queue.Queue(QUEUE_FIELDS) for _ in range(5))
        stages = [("grab", self._grab_loop, None, to_tile),
                  ("tile", self._tile_loop, to_tile, to_detect),
                  ("detect", self._mapper(self._detect, fans_out=True), to_detect, to_crop),
                  ("stitch-crop", self._mapper(self._crop), to_crop, to_classify),
                  ("classify", self._mapper(self._classify), to_classify, done)]
        threads = [threading.Thread(target=self._guard, args=(loop, inp, out), name=name, daemon=True)
                   for name, loop, inp, out in stages]
        for t in threads:
            t.start()
        try:
            while (job := self._get(done)) is not _END:
                yield job
        finally:
            # Normally every stage has ended; if the caller stopped reading early, release them.
            self._abandoned = True
            self._stop.set()
            for t in threads:
                t.join()
        if self._failed is not None:
            raise self._failed

    def _guard(self, loop, inp: queue.Queue | None, out: queue.Queue) -> None:
        """Run a stage; on an unexpected error stop the loop. The end marker always follows."""
        try:
            loop(inp, out)
        except BaseException as exc:  # re-raised in the caller's thread
            log.exception("stage %s failed", threading.current_thread().name)
            if self._failed is None:
                self._failed = exc
            self._stop.set()
        self._put(out, _END)

    def _grab_loop(self, _inp: None, out: queue.Queue) -> None:
        while (job := self._grab()) is not None:
            if self.live:
                self._put_dropping_oldest(out, job)
            elif not self._put(out, job):
                return

    def _put_dropping_oldest(self, out: queue.Queue, job: FieldJob) -> None:
        while True:
            try:
                out.put_nowait(job)
                return
            except queue.Full:
                try:
                    dropped = out.get_nowait()
                except queue.Empty:
                    continue
                self.counters.dropped += 1
                log.info("loop behind: field %s dropped before it was started", dropped.frame_id)

    def _tile_loop(self, inp: queue.Queue, out: queue.Queue) -> None:
        ended = False
        while not ended and (first := self._get(inp)) is not _END:
            jobs = [first]
            while len(jobs) < self.max_batch_fields:
                try:
                    item = inp.get_nowait()
                except queue.Empty:
                    break
                if item is _END:
                    ended = True
                    break
                jobs.append(item)
            if not self._put(out, self._tile(jobs)):
                return

    def _mapper(self, fn, fans_out: bool = False):
        def loop(inp: queue.Queue, out: queue.Queue) -> None:
            while (item := self._get(inp)) is not _END:
                for one in (fn(item) if fans_out else [fn(item)]):
                    if not self._put(out, one):
                        return
        return loop

    _abandoned = False

    def _halted(self) -> bool:
        return self._failed is not None or self._abandoned

    def _put(self, out: queue.Queue, item) -> bool:
        """Blocking put that gives up only when the loop failed or was abandoned."""
        while not self._halted():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _get(self, inp: queue.Queue):
        """Blocking get; the end marker when the loop failed or was abandoned."""
        while not self._halted():
            try:
                return inp.get(timeout=0.05)
            except queue.Empty:
                pass
        return _END
