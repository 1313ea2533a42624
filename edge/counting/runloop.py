"""`edge run`: the counting loop at the microscope.

Fields come from a source, go through the threaded stages (edge/counting/pipeline.py),
and are recorded here, in order, in the caller's thread: the session (durable),
the tally, the progress line, the annotated field, the stop rules. SIGINT and
SIGTERM stop taking new fields; the fields already taken are finished and the
final results written.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edge.counting.annotate import FieldWriter
from edge.counting.differential import differential_lines
from edge.runtime.bundle import load_bundle
from edge.runtime.frame_scale import FrameScale
from edge.counting.display import LiveWindow
from edge.runtime.drift import Alarm, DriftBands, DriftHistory, DriftMonitor
from edge.runtime.engine import CellCounter
from edge.counting.field_overlap import OverlapFilter
from edge.counting.firmware_fields import FirmwareFieldSource
from edge.counting.pipeline import FieldJob, Pipeline
from edge.counting.progress import Progress
from edge.runtime.quality import QualityGate, QualityLimits
from edge.counting.session import Session, SessionError
from edge.counting.sources import CameraSource, FrameSource, VideoFileSource, open_source
from edge.counting.stage_source import StageSource
from edge.counting.stillness import StillnessTrigger

log = logging.getLogger("edge.run")
SIM_BAUD = 115200  # the simulated line runs at a real UART's pace


@dataclass
class RunOptions:
    source: str = "demo"
    backend: str = "onnxruntime"
    threads: int | None = None
    max_fields: int | None = None       # stop after this many fields (counted or skipped)
    target: int | None = None           # stop when this many nucleated cells have been found
    save_fields: bool = True            # annotated fields under <out>/fields/
    sequential: bool | None = None      # the stages one after another; None: chosen (pipeline_mode)
    display: bool = False               # a live window (needs OpenCV with a GUI)
    field_trigger: str = "auto"         # every | still | auto (still for cameras, videos and stages)
    still_seconds: float = 0.3          # how long the image must rest before a field is taken
    serial: str | None = None           # the firmware's serial port, or "sim" for the simulator
    sim_fields: int = 12                # fields the simulator's stage visits (--serial sim)
    sim_noise: float = 0.0              # share of corrupted bytes on the simulated line
    quality: dict | None = None         # quality gate settings over the bundle's (edge.runtime.quality.QualityLimits)
    drift_history: str | None = None    # the drift history file (default: drift-history.jsonl beside the session)
    pixel_size_um: float | None = None  # the camera's micrometres per pixel (None: as the bundle's camera)


def run_session(bundle_path: Path | None, source_spec: str | FrameSource | None, out_dir: Path | None,
                backend: str = "onnxruntime", threads: int | None = None, max_frames: int | None = None,
                live=None, *, target: int | None = None, resume: bool = False, save_fields: bool = True,
                sequential: bool | None = None, display: bool = False, serial: str | None = None,
                sim_fields: int = 12, sim_noise: float = 0.0, field_trigger: str = "auto",
                still_seconds: float = 0.3, quality: dict | None = None,
                drift_history: Path | None = None, pixel_size_um: float | None = None) -> dict:
    """Count a source's fields into a session folder (or continue one); return the results.

    `source_spec` is a source string (see edge.counting.sources) or an open FrameSource.
    `pixel_size_um`: the camera's pixel size; frames are resampled so the detector sees cells at the
    bundle's scale (edge.runtime.bundle.Tiling.for_pixel_size)."""
    stream = live or sys.stdout
    if resume:
        bundle_path, source_spec, pixel_size_um = _resume_defaults(out_dir, bundle_path, source_spec, pixel_size_um)
    given = source_spec if isinstance(source_spec, FrameSource) else None
    options = RunOptions(source=given.description if given else source_spec or "demo", backend=backend,
                         threads=threads, max_fields=max_frames, target=target, save_fields=save_fields,
                         sequential=sequential, display=display, serial=serial, sim_fields=sim_fields,
                         sim_noise=sim_noise, field_trigger=field_trigger, still_seconds=still_seconds,
                         quality=quality, drift_history=str(drift_history) if drift_history else None,
                         pixel_size_um=pixel_size_um)
    frame_scale = FrameScale(load_bundle(bundle_path), pixel_size_um)
    bundle = frame_scale.bundle
    limits = quality_limits(bundle.quality, quality)
    out_dir = Path(out_dir) if out_dir else Path("edge-out") / time.strftime("session-%Y%m%dT%H%M%S")
    with contextlib.ExitStack() as cleanup:
        window = LiveWindow() if display else None
        if window is not None:
            cleanup.callback(window.close)
        source = given or open_source(options.source)
        cleanup.callback(source.close)
        firmware = _open_firmware(options, cleanup) if serial else None
        if firmware is not None:
            source = FirmwareFieldSource(firmware, source)
        session = (Session.resume(out_dir, bundle) if resume else
                   Session(out_dir, bundle, source.description, settings=asdict(options)))
        session.sections["pixel_size"] = frame_scale.record()
        progress = Progress(stream)
        progress.message(f"session {session.session_id} {'resumed' if resume else 'started'}: "
                         f"{source.description} -> {out_dir}")
        counter = cleanup.enter_context(CellCounter(bundle, backend=backend, threads=threads))
        writer = FieldWriter(out_dir / "fields") if save_fields else None
        if writer is not None:
            cleanup.callback(writer.close)
        trigger = _field_trigger(options, source, firmware)
        sequential = pipeline_mode(sequential, source.live)
        options = replace(options, sequential=sequential)
        pipeline = Pipeline(counter, source, trigger.update if trigger else lambda frame: True,
                            live=source.live, skip_through=session.last_frame_id(), sequential=sequential,
                            quality_gate=QualityGate(limits) if limits.enabled else None,
                            frame_scale=frame_scale if frame_scale.ruler is not None else None)
        overlap = OverlapFilter(out_dir) if trigger or firmware else None
        history = DriftHistory(Path(drift_history) if drift_history else out_dir.parent / "drift-history.jsonl")
        drift = DriftMonitor(bundle.drift or DriftBands(), bundle.class_names, bundle.classifier.sha256, history)
        recorder = _Recorder(session, pipeline, progress, writer, window, firmware, overlap, options, drift)
        try:
            with _stop_on_signals(recorder):
                recorder.consume()
        except BaseException as exc:
            recorder.stop_reason = f"stopped by an error: {exc}"
            raise
        finally:
            recorder.finish_drift()
            target = recorder.target_section()
            if target is not None:
                session.sections["target"] = target
            results = session.close(recorder.stop_reason, recorder.loop_stats())
            progress.finish()
    progress.message(_summary(results))
    return results


def pipeline_mode(sequential: bool | None, live: bool) -> bool:
    """Whether to run the stages one after another. Asked for, or chosen: threads for a live source
    (its grab must never wait for the loop, or the camera's buffer serves stale frames) and on more
    than two cores; one after another otherwise, since on two cores ONNX Runtime's own threads
    already fill both and the pipeline measured no gain (benchmarks/realtime_loop.py)."""
    if sequential is not None:
        return sequential
    return not live and (os.cpu_count() or 1) <= 2


def quality_limits(from_bundle: QualityLimits | None, overrides: dict | None) -> QualityLimits:
    """The gate's limits: the defaults, then the bundle's quality section, then the run's overrides."""
    limits = from_bundle or QualityLimits()
    try:
        return limits.with_overrides(overrides) if overrides else limits
    except (TypeError, ValueError) as exc:
        raise SessionError(f"--quality: {exc}") from None


class _Recorder:
    """The last stage: record fields in order and apply the stop rules."""

    def __init__(self, session: Session, pipeline: Pipeline, progress: Progress,
                 writer: FieldWriter | None, window: LiveWindow | None, firmware,
                 overlap: OverlapFilter | None, options: RunOptions, drift: DriftMonitor | None = None):
        self.session, self.pipeline, self.progress = session, pipeline, progress
        self.writer, self.window, self.firmware, self.options = writer, window, firmware, options
        self.overlap, self.drift = overlap, drift
        self.stop_reason = "end of source"
        self.latencies: list[float] = []
        self.fields_handled = 0
        self._told_provisional = False
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
                if self.firmware is not None and self.options.target is not None:
                    self.firmware.target_reached(self._leukocytes())
        self.session.flush()  # a write that failed after the last field stops the run as one that failed before
        self._tell_provisional()
        ended_by = getattr(self.pipeline.source, "ended_by", "")
        if ended_by and self.stop_reason == "end of source":
            self.stop_reason = ended_by

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.pipeline.stop()

    def _leukocytes(self) -> int:
        return self.session.tally.leukocytes(self.session.bundle.class_roles)

    def target_section(self) -> dict | None:
        """results.json's word on the target: reached, or where the count stopped below it."""
        o = self.options
        if o.target is None:
            return None
        counted = self._leukocytes()
        section = {"target_leukocytes": o.target, "leukocytes": counted, "reached": counted >= o.target}
        if counted < o.target:
            section["warning"] = (f"the count stopped at {counted} leukocytes, below the target of {o.target} "
                                  f"({self.stop_reason}): the differential covers fewer cells than asked for")
        return section

    def _limit_reached(self) -> bool:
        o = self.options
        if o.target is not None and self._leukocytes() >= o.target:
            self.stop_reason = f"target of {o.target} leukocytes reached"
            return True
        if o.max_fields is not None and self.fields_handled >= o.max_fields:
            self.stop_reason = f"{o.max_fields} fields done"
            return True
        return False

    def _record(self, job: FieldJob) -> None:
        if job.error is not None:
            refused = job.quality is not None and not job.quality.passed
            log.warning("frame %s %s: %s", job.frame_id, "refused" if refused else "skipped", job.error)
            self.session.skip(job.frame_id, job.error)
            self.progress.message(f"frame {job.frame_id:>5}  {'not counted, ' if refused else 'skipped: '}{job.error}")
            if refused:
                self._tell_firmware("FIELD_QUALITY", f"field {job.frame_id} not counted, {job.error}")
            return
        image, result = job.frame.image, job.result
        duplicates, shift = (self.overlap.duplicates(image, result.boxes) if self.overlap is not None
                             else (None, None))
        if self.drift is not None:
            d = result.decisions
            counted = slice(None) if duplicates is None else ~duplicates
            angle = job.quality.measures.get("stain_angle") if job.quality is not None else None
            for alarm in self.drift.add_field(job.frame_id, d.predicted[counted], d.confidence[counted],
                                              d.accepted[counted], angle):
                self._raise(alarm)
            self.session.sections["drift"] = self.drift.summary()
        if self.pipeline.frame_scale is not None:
            self.session.sections["pixel_size"] = self.pipeline.frame_scale.record()
        self.session.record(job.frame, result, duplicates, shift)
        if self.overlap is not None:
            self.overlap.remember(image, result.boxes)
        self.latencies.append(time.perf_counter() - job.grabbed)
        names = self.session.bundle.class_names
        if self.writer is not None:
            self.writer.put(job.frame_id, image, result, names, duplicates)
        seen = int(duplicates.sum()) if duplicates is not None else 0
        self.progress.field(job.frame_id, len(result) - seen, seen, self.session.tally)
        if self.window is not None and not self.window.show(image, result, names, self.session.tally,
                                                            duplicates):
            self.request_stop("stopped from the window")
        if self.firmware is not None:
            tally = self.session.tally
            self.firmware.show_tally(tally.accepted, tally.rejected, self.options.target or 0)
            if tally.rejected and not self._told_provisional:
                self._tell_provisional()

    def _tell_provisional(self) -> None:
        """STATUS PROVISIONAL: the first time a cell goes to review, and once more when counting ends."""
        rejected = self.session.tally.rejected
        if self.firmware is None or not rejected:
            return
        self._told_provisional = True
        self._tell_firmware("PROVISIONAL", f"differential provisional: {rejected} cell(s) in review "
                                           f"may change it; final after expert review")

    def finish_drift(self) -> None:
        """The across-session drift check, the history row of this session, and the final drift section."""
        if self.drift is None:
            return
        for alarm in self.drift.finish():
            self._raise(alarm)
        self.session.sections["drift"] = self.drift.summary()
        try:
            self.drift.history.append(self.drift.history_row(self.session.session_id,
                                                             self.session.bundle.manifest_sha256))
        except OSError as exc:
            log.error("drift history %s not written: %s", self.drift.history.path, exc)

    def _raise(self, alarm: Alarm) -> None:
        self.progress.message(f"DRIFT ALARM {alarm.message}")
        self._tell_firmware("DRIFT_ALARM", alarm.message)

    def _tell_firmware(self, code: str, text: str) -> None:
        """A STATUS message to the microscope; firmware that predates it refuses it, which is logged."""
        if self.firmware is None:
            return
        from firmware_bridge import CommandRefused, LinkError, StatusCode
        try:
            self.firmware.show_status(StatusCode[code], text)
        except (CommandRefused, LinkError) as exc:
            log.warning("firmware did not take the %s status: %s", code, exc)

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
            "fields_not_registered": self.overlap.unregistered if self.overlap is not None else None,
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


def _field_trigger(options: RunOptions, source: FrameSource, firmware) -> StillnessTrigger | None:
    """None when every frame is a field (image folders, synthetic fields, firmware-announced fields)."""
    mode = options.field_trigger
    if mode == "auto":
        continuous = isinstance(source, (CameraSource, VideoFileSource, StageSource))
        mode = "still" if continuous and firmware is None else "every"
    if mode == "every":
        return None
    if mode != "still":
        raise SessionError(f"unknown field trigger {mode!r}: use every, still or auto")
    return StillnessTrigger(still_seconds=options.still_seconds)


def _open_firmware(options: RunOptions, cleanup: contextlib.ExitStack):
    """The serial link, to a real port or to a simulator started here (`--serial sim`)."""
    from firmware_bridge import FirmwareLink
    port = options.serial
    if port == "sim":
        from firmware_bridge.simulator import FirmwareSimulator
        simulator = cleanup.enter_context(FirmwareSimulator(fields=options.sim_fields, noise=options.sim_noise,
                                                            seed=0, baud=SIM_BAUD))
        port = simulator.path
    return cleanup.enter_context(FirmwareLink(port).open())


def _resume_defaults(out_dir: Path | None, bundle_path: Path | None, source_spec: str | None,
                     pixel_size_um: float | None) -> tuple[Path, str, float | None]:
    """A resumed session keeps its bundle, source and pixel size unless told otherwise."""
    if out_dir is None:
        raise SessionError("--resume needs the session folder (--resume DIR)")
    meta_file = Path(out_dir) / "session.json"
    if not meta_file.exists():
        raise SessionError(f"{out_dir} holds no session to resume")
    meta = json.loads(meta_file.read_text())
    settings = meta["settings"]
    return (Path(bundle_path or meta["bundle"]), source_spec or settings["source"],
            pixel_size_um if pixel_size_um is not None else settings.get("pixel_size_um"))


def _pixel_size_lines(record: dict | None) -> list[str]:
    """The frames' scale, said when it was given or estimated (not simply the bundle's own)."""
    given = record and record["source"].startswith("setting")
    if not record or record.get("um_per_pixel") is None or not (given or "estimate" in record):
        return []
    estimate = record.get("estimate") or {}
    low, high = estimate.get("interval95") or (None, None)
    span = f", 95 % {low:.4f}-{high:.4f}" if low is not None else ""
    read = f" over {estimate['fields_read']} fields" if estimate.get("fields_read") else ""
    return [f"  pixel size {record['um_per_pixel']:.4f} um: {record['source']}{read}{span}"]


def _summary(results: dict) -> str:
    lines = [f"done ({results.get('stop_reason', 'finished')}): {results['frames']['counted']} fields "
             f"counted, {results['frames']['skipped']} skipped, {results['fields_rejected_for_quality']['count']} "
             f"rejected for quality; {results['accepted']} cells counted, {results['rejected']} sent to review"]
    by_check = results["fields_rejected_for_quality"]["by_check"]
    if by_check:
        lines.append("  not counted for quality: " + ", ".join(f"{k} {v}" for k, v in by_check.items()))
    lines += _pixel_size_lines(results.get("pixel_size"))
    alarms = (results.get("drift") or {}).get("alarms") or []
    for alarm in alarms:
        lines.append(f"  DRIFT ALARM {alarm['message']}")
    lines += differential_lines(results["leukocyte_differential"])
    if (results.get("target") or {}).get("warning"):
        lines.append(f"  WARNING {results['target']['warning']}")
    loop = results.get("loop") or {}
    if loop.get("latency_ms"):
        lines.append(f"  {loop['fields_per_s']:.2f} fields/s, latency p50 {loop['latency_ms']['p50']:.0f} ms, "
                     f"p99 {loop['latency_ms']['p99']:.0f} ms, {loop['dropped']} dropped")
    return "\n".join(lines)
