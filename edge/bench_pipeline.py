"""The counting path of one field cut into timed stages, for edge-bench.

`StagedCounter.count` calls the public functions that `CellCounter.count_field`
calls, in the same order and with the same arguments, and charges the wall time
of each call to a stage; the cells and decisions are the same
(tests/test_bench_pipeline.py checks it). `preprocess` collects every call of
the shared preprocessing: the frame's colour/scale step and the normalisation of
tiles and crops, so that `detect` and `classify` are the models alone.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import replace

import cv2
import numpy as np

from edge.bundle import Bundle, BundleError, Tiling
from edge.cell_view import cell_views
from edge.engine import CLASSIFIER_BATCH, DETECTOR_BATCH, CellCounter, FieldResult, run_batched
from edge.frames import as_bgr8
from edge.preprocess import to_model_input
from edge.tiling import cut_tiles, make_grid, stitch

STAGES = ("grab", "preprocess", "tile", "detect", "stitch", "crop", "classify", "decide", "tally",
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


class StagedCounter:
    """`CellCounter.count_field` in stages, with the detector batch and tile size as options."""

    def __init__(self, bundle: Bundle, backend: str = "onnxruntime", threads: int | None = None,
                 batch: int | None = None, tile: int | None = None):
        self._counter = CellCounter(bundle, backend=backend, threads=threads)
        detector_input = {t.name: t for t in self._counter.detector.inputs}[bundle.detector.input_name]
        try:
            self.tiling = tiling_for(bundle, tile, detector_input.shape[2:4])
        except BundleError:
            self._counter.close()
            raise
        self.bundle = replace(bundle, tiling=self.tiling)
        self.batch = batch or DETECTOR_BATCH
        fixed = bundle.detector.input_shape[0]
        if fixed > 0:
            self.batch = -(-self.batch // fixed) * fixed
        self.rule = self._counter.rule
        self.detector_inputs = 0     # tiles run through the detector so far
        self.classifier_inputs = 0   # crops run through the classifier so far

    def close(self) -> None:
        self._counter.close()

    def __enter__(self) -> "StagedCounter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def count(self, image: np.ndarray, clock: StageClock) -> FieldResult:
        t = self.tiling
        det, cls = self.bundle.detector, self.bundle.classifier
        with clock("preprocess"):
            image = as_bgr8(image)
            scaled = image if t.scale == 1.0 else cv2.resize(image, None, fx=t.scale, fy=t.scale,
                                                             interpolation=cv2.INTER_AREA)
        with clock("tile"):
            grid = make_grid(scaled.shape[1], scaled.shape[0], t.tile_size, t.overlap)
            tiles = cut_tiles(scaled, grid)
        parts = []
        for start in range(0, len(tiles), self.batch):
            with clock("preprocess"):
                x = to_model_input(tiles[start:start + self.batch], None, det.normalisation)
            with clock("detect"):
                parts.append(run_batched(self._counter.detector, det, x, self.batch))
        self.detector_inputs += len(tiles)
        with clock("stitch"):
            out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            boxes, det_scores = stitch(out["boxes"], out["scores"], grid, t.score_threshold)
            boxes = boxes / np.float32(t.scale)
        scores = np.zeros((0, len(self.bundle.class_names)), dtype=np.float32)
        if len(boxes):
            with clock("crop"):
                crops = cell_views(image, boxes, cls.input_hw[0], t.crop_context)
            with clock("preprocess"):
                x = to_model_input(crops, None, cls.normalisation)
            with clock("classify"):
                scores = run_batched(self._counter.classifier, cls, x, CLASSIFIER_BATCH)[cls.outputs[0]]
            self.classifier_inputs += len(boxes)
        with clock("decide"):
            decisions = self.rule.decide(scores)
        return FieldResult(boxes, det_scores, scores, decisions)
