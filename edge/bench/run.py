"""One edge-bench measurement: warm-up, then timed fields through the staged counting path."""
from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.bench.machine import Tegrastats, describe_machine
from edge.bench.pipeline import STAGES, StageClock, StagedCounter
from edge.bench.roofline import RooflineUnavailable, count_ops, measure_peak
from edge.runtime.bundle import Bundle, BundleError, load_bundle, pixel_size_record
from edge.runtime.frames import Frame
from edge.counting.session import Session
from edge.counting.sources import DEMO_SPEC, SourceError, SyntheticSource, open_source
from edge.counting.tally import Tally

RENDERED_BYTES = 256 << 20  # synthetic frames kept in memory at most


@dataclass(frozen=True)
class BenchConfig:
    bundle: Path
    source: str = "synthetic:seed=100"
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


class FrameSupply:
    """Frames to time. A synthetic source is rendered before timing, since rendering is not
    grabbing: `grab` then hands out a copy, as a camera driver hands over a buffer. Other
    sources are read (decoded) at `grab` and reopened when they end."""

    def __init__(self, spec: str, frame_size: tuple[int, int] | None, needed: int):
        self.spec, self.frame_size = spec, frame_size
        if frame_size and (spec == "demo" or spec.split(":", 1)[0] == "synthetic"):
            base = DEMO_SPEC if spec == "demo" else spec
            spec = base + ("," if ":" in base else ":") + f"width={frame_size[0]},height={frame_size[1]}"
            self.frame_size = None  # rendered at that size
        self.source = open_source(spec)
        self.description = self.source.description
        self.rendered: list[Frame] = []
        if isinstance(self.source, SyntheticSource):
            cfg = self.source.config
            keep = max(1, min(self.source.frames, needed, RENDERED_BYTES // (cfg.width * cfg.height * 3)))
            self.rendered = [self.source.read() for _ in range(keep)]
        self._next = 0

    def grab(self) -> Frame:
        i = self._next
        self._next += 1
        if self.rendered:
            f = self.rendered[i % len(self.rendered)]
            return Frame(i, f.image.copy(), time.time(), f.origin)
        frame = self.source.read()
        if frame is None:
            self.source.close()
            self.source = open_source(self.spec)
            frame = self.source.read()
            if frame is None:
                raise SourceError(f"source {self.spec!r} gave no frames")
        image = frame.image
        if self.frame_size:
            image = cv2.resize(image, self.frame_size, interpolation=cv2.INTER_AREA)
        return Frame(i, image, frame.timestamp, frame.origin)

    def close(self) -> None:
        self.source.close()


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
    bundle = load_bundle(cfg.bundle).at_pixel_size(cfg.pixel_size_um)
    precision = check_precision(bundle, cfg.precision)
    supply = FrameSupply(cfg.source, cfg.frame_size, cfg.warmup + cfg.frames)
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    tally = Tally(bundle.class_names)
    try:
        with StagedCounter(bundle, cfg.backend, cfg.threads, cfg.batch, cfg.tile) as counter, \
                tempfile.TemporaryDirectory(prefix="edge-bench-", dir=cfg.review_dir) as tmp:
            session = Session(Path(tmp) / "session", counter.bundle, supply.description)
            try:
                for _ in range(cfg.warmup):
                    _time_field(counter, supply, session, Tally(bundle.class_names), StageClock())
                inputs_before = counter.detector_inputs, counter.classifier_inputs
                with Tegrastats() as tegra:
                    cpu_start, wall_start = time.process_time(), time.perf_counter()
                    for _ in range(cfg.frames):
                        clock = StageClock()
                        frame = _time_field(counter, supply, session, tally, clock)
                        for stage, ms in clock.ms.items():
                            samples[stage].append(ms)
                    wall = time.perf_counter() - wall_start
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
    return {
        "fields_per_s": cfg.frames / wall,
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
        "cells": cells,
        "accepted": tally.total_accepted,
        "rejected": tally.rejected,
        "counts": tally.counts(),
        "detector_tile_px": tiling.tile_size,
        "frame_scale": tiling.scale,
        "pixel_size": pixel_size_record(bundle, cfg.pixel_size_um),
        "cpu_use": cpu / wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tegrastats": tegra.summary(),
        "bundle": str(bundle.root),
        "source": supply.description,
        "samples_ms": {s: [round(v, 4) for v in samples[s]] for s in STAGES},
    }


def _time_field(counter: StagedCounter, supply: FrameSupply, session: Session, tally: Tally,
                clock: StageClock) -> Frame:
    """One field through every stage `edge run` goes through; the review I/O is the session's record
    (review queue, cells.csv, results.json; its own tally update is inside it)."""
    with clock("grab"):
        frame = supply.grab()
    result = counter.count(frame.image, clock)
    with clock("tally"):
        tally.add(result.decisions)
    with clock("review_io"):
        session.record(frame, result)
    return frame


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
