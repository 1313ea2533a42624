"""One edge-bench measurement: warm-up, then timed fields through the staged counting path."""
from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.bench.machine import Tegrastats, describe_machine
from edge.bench.pipeline import STAGES, StageClock, StagedCounter
from edge.bench.roofline import RooflineUnavailable, count_ops, measure_peak
from edge.bench.supply import DEMO_FIELDS_SPEC, FrameSupply
from edge.runtime.bundle import Bundle, BundleError, load_bundle
from edge.runtime.frame_scale import FrameScale
from edge.runtime.frames import Frame
from edge.runtime.quality import QualityGate
from edge.counting.runloop import quality_limits
from edge.counting.session import Session
from edge.counting.tally import Tally


@dataclass(frozen=True)
class BenchConfig:
    bundle: Path
    source: str = DEMO_FIELDS_SPEC
    frames: int = 20
    warmup: int = 2
    frame_size: tuple[int, int] | None = None  # width, height
    backend: str = "onnxruntime"
    precision: str | None = None
    batch: int | None = None
    tile: int | None = None
    threads: int | None = None
    review_dir: Path | None = None  # where the throwaway session is written (default: the temp folder)
    pixel_size_um: float | None = None  # the frames' pixel size (None: the bundle's)
    mosaic: tuple[int, int] | None = None  # fields across and down in one frame (edge.bench.mosaic)


def check_precision(bundle: Bundle, wanted: str | None) -> str:
    """The bundle's precision; refuse a --precision its models were not built for."""
    det, cls = bundle.detector.precision, bundle.classifier.precision
    if wanted and (det != wanted or cls != wanted):
        raise BundleError(f"--precision {wanted}: bundle {bundle.root} holds a {det} detector and a {cls} "
                          f"classifier; a bundle has one precision per model, so give a {wanted} bundle")
    return det if det == cls else f"{det}/{cls}"


def run_bench(cfg: BenchConfig) -> dict:
    if cfg.frames < 1 or cfg.warmup < 0:
        raise ValueError(f"--frames must be at least 1 and --warmup at least 0 (got {cfg.frames}, {cfg.warmup})")
    scale = FrameScale(load_bundle(cfg.bundle), cfg.pixel_size_um)
    bundle = scale.bundle
    precision = check_precision(bundle, cfg.precision)
    limits = quality_limits(bundle.quality, None)
    gate = QualityGate(limits) if limits.enabled else None
    supply = FrameSupply(cfg.source, cfg.frame_size, cfg.warmup + cfg.frames, cfg.mosaic,
                         cfg.pixel_size_um or scale.base.tiling.pixel_size_um)
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    outcomes: list[FieldOutcome] = []
    tally = Tally(bundle.class_names)
    try:
        with StagedCounter(bundle, cfg.backend, cfg.threads, cfg.batch, cfg.tile) as counter, \
                tempfile.TemporaryDirectory(prefix="edge-bench-", dir=cfg.review_dir) as tmp:
            session = Session(Path(tmp) / "session", counter.bundle, supply.description)
            try:
                for _ in range(cfg.warmup):
                    _time_field(counter, supply, session, Tally(bundle.class_names), StageClock(), scale, gate)
                session.flush()  # the warm-up's writes stay out of the timed fields
                inputs_before = counter.detector_inputs, counter.classifier_inputs
                writes_before = session.write_seconds
                with Tegrastats() as tegra:
                    cpu_start, wall_start = time.process_time(), time.perf_counter()
                    for _ in range(cfg.frames):
                        clock = StageClock()
                        outcomes.append(_time_field(counter, supply, session, tally, clock, scale, gate))
                        for stage, ms in clock.ms.items():
                            samples[stage].append(ms)
                    session.flush()  # the timed fields' writes are finished inside the timed window
                    wall = time.perf_counter() - wall_start
                    background_writes_s = session.write_seconds - writes_before
                    cpu = time.process_time() - cpu_start
            finally:
                session.close()
            inputs = (counter.detector_inputs - inputs_before[0], counter.classifier_inputs - inputs_before[1])
            tiling = counter.tiling
            batch = counter.batch
            roofline = _roofline(counter, samples, inputs, cfg.threads)
    finally:
        supply.close()
    field_ms = np.sum([samples[s] for s in STAGES], axis=0)
    cells = int(tally.total_accepted + tally.rejected)
    fields = field_summary(outcomes)
    frame = outcomes[-1].frame
    return {
        "fields_per_s": cfg.frames / wall,
        "counted_fields_per_s": fields["counted"] / wall,
        "cells_per_s": cells / wall,
        "latency_ms": percentiles(field_ms),
        "stages": {s: {"p50_ms": float(np.percentile(v, 50)), "p90_ms": float(np.percentile(v, 90)),
                       "p99_ms": float(np.percentile(v, 99)), "max_ms": float(np.max(v)),
                       "share": float(np.sum(v) / field_ms.sum())} for s, v in samples.items()},
        "backend": cfg.backend,
        "precision": precision,
        "batch": batch,
        "tile": cfg.tile or bundle.tiling.tile_size,
        "frame_size": f"{frame.image.shape[1]}x{frame.image.shape[0]}",
        "threads": cfg.threads,
        "machine": describe_machine(),
        "roofline": roofline,
        "frames": cfg.frames,
        "warmup": cfg.warmup,
        "fields": fields,
        "quality_gate": limits.to_dict() if gate is not None else None,
        "cells": cells,
        "accepted": tally.total_accepted,
        "rejected": tally.rejected,
        "counts": tally.counts(),
        "detector_tile_px": tiling.tile_size,
        "frame_scale": tiling.scale,
        "pixel_size": scale.record(),
        # the record (crops, context image, SQLite, cells.csv, results.json) is written on a background
        # thread while the next field is counted; `review_io` is the hand-over on the counting thread
        "background_writes": {"ms_per_field": background_writes_s * 1000 / cfg.frames,
                              "share_of_wall": background_writes_s / wall},
        "cpu_use": cpu / wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tegrastats": tegra.summary(),
        "bundle": str(bundle.root),
        "source": supply.description,
        "samples_ms": {s: [round(v, 4) for v in samples[s]] for s in STAGES},
    }


@dataclass(frozen=True)
class FieldOutcome:
    frame: Frame
    cells: int | None                 # cells found; None: refused by the quality gate
    refused_for: tuple[str, ...] = ()  # the gate's broken checks


def field_summary(outcomes: list[FieldOutcome]) -> dict:
    """Fields counted and refused (by check), and the cells found per counted field."""
    cells = [o.cells for o in outcomes if o.cells is not None]
    refused_by: dict[str, int] = {}
    for o in outcomes:
        for check in o.refused_for:
            refused_by[check] = refused_by.get(check, 0) + 1
    return {"timed": len(outcomes), "counted": len(cells), "refused": len(outcomes) - len(cells),
            "refused_by": refused_by,
            "cells_per_field": {"mean": float(np.mean(cells)), "min": min(cells), "max": max(cells)}
            if cells else None}


def _time_field(counter: StagedCounter, supply: FrameSupply, session: Session, tally: Tally,
                clock: StageClock, scale: FrameScale, gate: QualityGate | None) -> FieldOutcome:
    """One field through every stage `edge run` goes through: the quality gate (a refused field is
    recorded as skipped, as `edge run` does), the pixel-size reading, the counting path, and the
    session's record (review queue, cells.csv, results.json; its own tally update is inside it)."""
    with clock("grab"):
        frame = supply.grab()
    if gate is not None:
        with clock("quality"):
            quality = gate.check(frame.image)
        if not quality.passed:
            with clock("review_io"):
                session.skip(frame.frame_id, quality.reason)
            return FieldOutcome(frame, None, quality.checks)
    if scale.ruler is not None:
        with clock("preprocess"):
            counter.follow_scale(scale.observe(frame.image))
    result = counter.count(frame.image, clock)
    with clock("tally"):
        tally.add(result.decisions)
    with clock("review_io"):
        session.record(frame, result)
    return FieldOutcome(frame, len(result))


def percentiles(ms) -> dict:
    ms = np.asarray(ms)
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


def _roofline(counter: StagedCounter, samples: dict[str, list[float]], inputs: tuple[int, int],
              threads: int | None) -> dict:
    """Per model: operations per input, achieved operations per second in its stage, and the peak."""
    out = {}
    models = (("detector", counter.bundle.detector, "detect", inputs[0], counter.tiling.tile_size),
              ("classifier", counter.bundle.classifier, "classify", inputs[1], None))
    for role, spec, stage, n, side in models:
        batch = spec.input_shape[0] if spec.input_shape[0] > 0 else 1
        h, w = (side, side) if side else spec.input_hw
        ops = count_ops(str(counter.bundle.model_path(spec)), spec.input_name,
                        (batch, spec.input_shape[1], h, w), spec.dtype)
        seconds = sum(samples[stage]) / 1000
        entry = {"ops_per_input": ops["ops_per_input"], "by_op": ops["by_op"], "inputs": n,
                 "precision": spec.precision,
                 "achieved_ops_per_s": ops["ops_per_input"] * n / seconds if n and seconds else None,
                 "peak_ops_per_s": None, "fraction_of_peak": None}
        try:
            entry["peak_ops_per_s"] = measure_peak(spec.precision, threads)
        except RooflineUnavailable as exc:
            entry["note"] = str(exc)
        if entry["achieved_ops_per_s"] and entry["peak_ops_per_s"]:
            entry["fraction_of_peak"] = entry["achieved_ops_per_s"] / entry["peak_ops_per_s"]
        out[role] = entry
    return out
