"""The counting path of one field cut into timed stages, for edge-bench.

`StagedCounter.count` is `CellCounter.count_field` itself, given a StageClock
that charges the wall time of each of its steps to a stage, so edge-bench times
the engine's own code (tests/test_bench_pipeline.py checks the cells and
decisions are the same). `preprocess` collects every call of the shared
preprocessing: the frame's colour/scale step and the normalisation of tiles and
crops, so that `detect` and `classify` are the models alone.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from edge.runtime.bundle import Bundle, BundleError, Tiling
from edge.runtime.engine import DETECTOR_BATCH, CellCounter, Clock, FieldResult, FrameTiles, untimed

STAGES = ("grab", "quality", "preprocess", "tile", "detect", "stitch", "crop", "classify", "decide", "tally",
          "review_io")


class StageClock:
    """Milliseconds spent in each stage during one field."""

    def __init__(self) -> None:
        self.ms = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[stage] += (time.perf_counter() - start) * 1000.0


def tiling_for(bundle: Bundle, tile: int | None, detector_hw: tuple[int | None, int | None]) -> Tiling:
    """The bundle's tiling with tiles of `tile` pixels of the (bundle-scaled) frame.

    A detector of fixed input size cannot take another tile size, so the frame
    is resized by input / tile before tiling, which is the same as cutting
    `tile`-pixel tiles and shrinking each to the input: cells look smaller to a
    detector trained at the bundle's scale, and the overlap keeps its size in
    frame pixels. A detector with a dynamic height and width takes the tiles as
    they are.
    """
    t = bundle.tiling
    if tile is None or tile == t.tile_size:
        return t
    if tile <= t.overlap:
        raise BundleError(f"--tile {tile} must be larger than the bundle's overlap of {t.overlap} pixels")
    h, w = detector_hw
    if h is None and w is None:
        return replace(t, tile_size=tile)
    if h != w:
        raise BundleError(f"--tile needs a square detector input; {bundle.detector.file} takes {h}x{w}")
    factor = h / tile
    return replace(t, tile_size=h, scale=t.scale * factor, overlap=math.ceil(t.overlap * factor))


class StagedCounter(CellCounter):
    """`CellCounter` with the tile size and detector batch as options, counting what its models ran:
    edge-bench times `count_field` itself with a StageClock."""

    def __init__(self, bundle: Bundle, backend: str = "onnxruntime", threads: int | None = None,
                 batch: int | None = None, tile: int | None = None):
        self.tile = tile
        self.detector_hw = tuple(d if d > 0 else None for d in bundle.detector.input_shape[2:4])
        tiling = tiling_for(bundle, tile, self.detector_hw)
        bundle = replace(bundle, tiling=tiling)
        super().__init__(bundle, backend, threads, self.batch_for(bundle.detector, batch or DETECTOR_BATCH))
        self.tiling, self.batch = tiling, self.detector_batch
        self.detector_inputs = 0     # tiles run through the detector so far
        self.classifier_inputs = 0   # crops run through the classifier so far

    def follow_scale(self, bundle: Bundle) -> None:
        """The engine's, with this counter's tile size kept at the new pixel size."""
        super().follow_scale(replace(bundle, tiling=tiling_for(bundle, self.tile, self.detector_hw)))
        self.tiling = self.bundle.tiling

    def run_detector(self, tiles: FrameTiles, batch: int | None = None, clock: Clock = untimed
                     ) -> dict[str, np.ndarray]:
        self.detector_inputs += len(tiles)
        return super().run_detector(tiles, batch, clock)

    def classify_crops(self, crops: np.ndarray, clock: Clock = untimed) -> np.ndarray:
        self.classifier_inputs += len(crops)
        return super().classify_crops(crops, clock)

    def count(self, image: np.ndarray, clock: StageClock) -> FieldResult:
        return self.count_field(image, clock)
