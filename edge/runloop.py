"""`edge run`: the counting loop at the microscope.

Fields come from a source, go through the threaded stages (edge/pipeline.py),
and are recorded here, in order, in the caller's thread: the session (durable),
the tally, the progress line, the annotated field, the stop rules. SIGINT and
SIGTERM stop taking new fields; the fields already taken are finished and the
final results written.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.annotate import FieldWriter
from edge.bundle import load_bundle
from edge.engine import CellCounter
from edge.pipeline import FieldJob, Pipeline
from edge.progress import Progress
from edge.session import Session, SessionError
from edge.sources import open_source

log = logging.getLogger("edge.run")


@dataclass
class RunOptions:
    source: str = "demo"
    backend: str = "onnxruntime"
    threads: int | None = None
    max_fields: int | None = None       # stop after this many fields (counted or skipped)
    target: int | None = None           # stop when this many nucleated cells have been found
    save_fields: bool = True            # annotated fields under <out>/fields/
    sequential: bool = False            # the stages one after another (the benchmark's reference)


def run_session(bundle_path: Path | None, source_spec: str | None, out_dir: Path | None,
                backend: str = "onnxruntime", threads: int | None = None, max_frames: int | None = None,
                live=None, *, target: int | None = None, resume: bool = False, save_fields: bool = True,
                sequential: bool = False) -> dict:
    """Count a source's fields into a session folder (or continue one); return the results."""
    stream = live or sys.stdout
    if resume:
        bundle_path, source_spec = _resume_defaults(out_dir, bundle_path, source_spec)
    options = RunOptions(source=source_spec or "demo", backend=backend, threads=threads,
                         max_fields=max_frames, target=target, save_fields=save_fields, sequential=sequential)
    bundle = load_bundle(bundle_path)
    source = open_source(options.source)
    try:
        if out_dir is None:
            out_dir = Path("edge-out") / time.strftime("session-%Y%m%dT%H%M%S")
        session = (Session.resume(out_dir, bundle) if resume else
                   Session(out_dir, bundle, source.description, settings=asdict(options)))
    except BaseException:
        source.close()
        raise
    progress = Progress(stream)
    verb = "resumed" if resume else "started"
    progress.message(f"session {session.session_id} {verb}: {source.description} -> {out_dir}")
    counter = CellCounter(bundle, backend=backend, threads=threads)
    writer = FieldWriter(Path(out_dir) / "fields") if save_fields else None
    pipeline = Pipeline(counter, source, live=getattr(source, "live", False),
                        skip_through=session.last_frame_id(), sequential=sequential)
    recorder = _Recorder(session, pipeline, progress, writer, options)
    try:
        with _stop_on_signals(recorder):
            recorder.consume()
    finally:
        results = session.close(recorder.stop_reason, recorder.loop_stats())
        if writer is not None:
            writer.close()
        source.close()
        counter.close()
        progress.finish()
    progress.message(_summary(results))
    return results


class _Recorder:
    """The last stage: record fields in order and apply the stop rules."""

    def __init__(self, session: Session, pipeline: Pipeline, progress: Progress,
                 writer: "FieldWriter | None", options: RunOptions):
        self.session, self.pipeline, self.progress = session, pipeline, progress
        self.writer, self.options = writer, options
        self.stop_reason = "end of source"
        self.latencies: list[float] = []
        self.fields_handled = 0
        self.not_counted_after_stop = 0
        self._started = time.perf_counter()

    def consume(self) -> None:
        for job in self.pipeline:
            if self._limit_reached():
                # Taken before the stop rule fired, and not counted: the count stops where the rule says.
                self.not_counted_after_stop += 1
                continue
            self._record(job)
            self.fields_handled += 1
            if self._limit_reached():
                self.pipeline.stop()

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.pipeline.stop()

    def _limit_reached(self) -> bool:
        o = self.options
        if o.target is not None and self.session.tally.total_accepted + self.session.tally.rejected >= o.target:
            self.stop_reason = f"target of {o.target} cells reached"
            return True
        if o.max_fields is not None and self.fields_handled >= o.max_fields:
            self.stop_reason = f"{o.max_fields} fields done"
            return True
        return False

    def _record(self, job: FieldJob) -> None:
        if job.error is not None:
            log.warning("frame %s skipped: %s", job.frame_id, job.error)
            self.session.skip(job.frame_id, job.error)
            self.progress.message(f"frame {job.frame_id:>5}  skipped: {job.error}")
            return
        self.session.record(job.frame, job.result)
        self.latencies.append(time.perf_counter() - job.grabbed)
        if self.writer is not None:
            self.writer.put(job.frame.frame_id, job.frame.image, job.result,
                            self.session.bundle.class_names)
        self.progress.field(job.frame_id, len(job.result), 0, self.session.tally)

    def loop_stats(self) -> dict:
        elapsed = time.perf_counter() - self._started
        lat = np.array(self.latencies) * 1000.0
        stats = {
            "mode": "sequential" if self.options.sequential else "pipelined",
            "elapsed_s": round(elapsed, 3),
            "fields_per_s": round(len(self.latencies) / elapsed, 3) if elapsed > 0 else 0.0,
            "latency_ms": ({k: round(float(np.percentile(lat, q)), 1)
                            for k, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}
                           if len(lat) else None),
            "not_counted_after_stop": self.not_counted_after_stop,
            **self.pipeline.counters.to_dict(),
        }
        source_stats = getattr(self.pipeline.source, "stats", None)
        if callable(source_stats):
            stats["source"] = source_stats()
        return stats


@contextmanager
def _stop_on_signals(recorder: _Recorder):
    """SIGINT / SIGTERM: finish the fields in hand, then stop (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        recorder.request_stop(f"stopped by {signal.Signals(signum).name}")
        recorder.progress.message(f"{signal.Signals(signum).name}: finishing the fields in hand")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _resume_defaults(out_dir: Path | None, bundle_path: Path | None, source_spec: str | None
                     ) -> tuple[Path, str]:
    """A resumed session keeps its bundle and source unless told otherwise."""
    if out_dir is None:
        raise SessionError("--resume needs the session folder (--resume DIR)")
    meta_file = Path(out_dir) / "session.json"
    if not meta_file.exists():
        raise SessionError(f"{out_dir} holds no session to resume")
    meta = json.loads(meta_file.read_text())
    return Path(bundle_path or meta["bundle"]), source_spec or meta["settings"]["source"]


def _summary(results: dict) -> str:
    lines = [f"done ({results.get('stop_reason', 'finished')}): {results['frames']['counted']} fields "
             f"counted, {results['frames']['skipped']} skipped; {results['accepted']} cells counted, "
             f"{results['rejected']} sent to review"]
    for name, d in results["differential"].items():
        lines.append(f"  {name:<14} {d['count']:>6}  {d['percent']:5.1f} %  (95 % CI {d['ci_low']:.1f}-{d['ci_high']:.1f})")
    loop = results.get("loop") or {}
    if loop.get("latency_ms"):
        lines.append(f"  {loop['fields_per_s']:.2f} fields/s, latency p50 {loop['latency_ms']['p50']:.0f} ms, "
                     f"p99 {loop['latency_ms']['p99']:.0f} ms, {loop['dropped']} dropped")
    return "\n".join(lines)
