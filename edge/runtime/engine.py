"""The counting path for one field: tiles -> detection -> stitching -> crops -> classification.

    counter = CellCounter(load_bundle(path))
    result = counter.count_field(image_bgr)

Every step takes an optional `clock`: a callable that, given a stage name
(preprocess, tile, detect, stitch, crop, classify, decide), returns a context
manager timing the work inside it. edge-bench passes one to time these very
steps (edge.bench.pipeline); the device passes none.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

from edge.runtime.backends import BackendError, Runner, open_runner
from edge.runtime.backends.base import CLASSIFIER_BATCH
from edge.runtime.bundle import Bundle, BundleError, ModelSpec
from edge.runtime.cell_view import cell_views, locate_cell
from edge.runtime.centroids import EMBEDDINGS, ccl_kernel, read_centroids
from edge.runtime.decision import Decisions, RejectRule
from edge.runtime.frames import as_bgr8
from edge.runtime.preprocess import to_model_input
from edge.runtime.stain_normaliser import StainNormaliser
from edge.runtime.tiling import TileGrid, cut_tiles, make_grid, stitch

# Tiles per detector call on a CPU backend. A frame's tiles are cut and handed to
# the detector together, but one 475-tile call runs slower than 16-tile calls:
# the activations of a large batch no longer fit in cache (benchmarks/tiled_vs_naive.py).
DETECTOR_BATCH = 16

Clock = Callable[[str], AbstractContextManager]


def untimed(stage: str) -> AbstractContextManager:
    """The clock that times nothing."""
    return nullcontext()


@dataclass
class FieldResult:
    """Every cell found in one field; arrays share the cell index."""

    boxes: np.ndarray         # (N, 4) float32 frame pixels, xyxy
    detection_scores: np.ndarray  # (N,)
    class_scores: np.ndarray  # (N, C): D for a CCL head, probabilities for softmax
    decisions: Decisions

    def __len__(self) -> int:
        return len(self.boxes)


class CellCounter:
    def __init__(self, bundle: Bundle, backend: str = "onnxruntime", threads: int | None = None,
                 detector_batch: int = DETECTOR_BATCH):
        self.bundle = bundle
        self.detector_batch = detector_batch
        self.detector = _open_checked(bundle, bundle.detector, backend, threads, None)
        self.classifier = _open_checked(bundle, bundle.classifier, backend, threads,
                                        len(bundle.class_names))
        self.rule = RejectRule(bundle)
        self.centroids = _centroids_for(bundle, self.classifier)  # None: the graph's own scores
        self.normaliser = StainNormaliser(bundle.stain_reference) if bundle.stain_reference else None

    def follow_scale(self, bundle: Bundle) -> None:
        """Count the next frames with `bundle`, this counter's bundle at another pixel size
        (edge.runtime.frame_scale); frames already cut keep the scale they were cut at."""
        if bundle.tiling.tile_size != self.bundle.tiling.tile_size or bundle.classifier != self.bundle.classifier:
            raise ValueError("follow_scale takes the counter's own bundle at another pixel size")
        self.bundle = bundle

    def close(self) -> None:
        self.detector.close()
        self.classifier.close()

    def __enter__(self) -> "CellCounter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detect(self, image: np.ndarray, clock: Clock = untimed) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) in frame pixels and their scores, each cell once."""
        return self.detect_many([image], clock=clock)[0]

    def detect_many(self, images: Sequence[np.ndarray], batch: int | None = None, clock: Clock = untimed
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`detect` for several frames (sizes may differ), their tiles sharing detector batches.

        `batch` tiles go through the detector at a time (default the counter's
        detector_batch), rounded up to a multiple of a static-batch model's batch.
        """
        if not images:
            return []
        tiles = self.cut_tiles(images, clock)
        return self.stitch_tiles(tiles, self.run_detector(tiles, batch, clock), clock)

    # The stages of `detect_many`, public so that the real-time loop can run them in threads.

    def cut_tiles(self, images: Sequence[np.ndarray], clock: Clock = untimed) -> "FrameTiles":
        """Rescale each frame by the bundle's scale and lay the bundle's tile grid over it;
        the tiles themselves are cut a detector batch at a time (`FrameTiles.cut`)."""
        tiling = self.bundle.tiling
        with clock("preprocess"):
            scaled = [_rescale(image, tiling.scale) for image in images]
        with clock("tile"):
            grids = [make_grid(s.shape[1], s.shape[0], tiling.tile_size, tiling.overlap) for s in scaled]
        return FrameTiles(scaled, grids, tiling.scale)

    def run_detector(self, tiles: "FrameTiles", batch: int | None = None, clock: Clock = untimed
                     ) -> dict[str, np.ndarray]:
        """Detector outputs for all tiles, `batch` (a multiple of a static batch) at a time."""
        spec = self.bundle.detector
        batch = self.batch_for(spec, batch or self.detector_batch)
        # cut and normalised per batch: all the tiles of a frame at once would take about 2.5x the
        # frame's own memory in uint8 (overlapping tiles), and 4x that again as float32
        parts = []
        for i in range(0, len(tiles), batch):
            with clock("tile"):
                cut = tiles.cut(i, i + batch)
            with clock("preprocess"):
                x = to_model_input(cut, None, spec.normalisation)
            with clock("detect"):
                parts.append(run_batched(self.detector, spec, x, batch))
            del cut, x  # one batch's tiles alive at a time, not two
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    @staticmethod
    def batch_for(spec: ModelSpec, batch: int) -> int:
        """`batch` rounded up to a multiple of a static-batch model's batch."""
        fixed = spec.input_shape[0]
        return -(-batch // fixed) * fixed if fixed > 0 else batch

    def stitch_tiles(self, tiles: "FrameTiles", outputs: dict[str, np.ndarray], clock: Clock = untimed
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame: boxes (N, 4) in frame pixels and scores, each cell once."""
        with clock("stitch"):
            return [self.stitch_frame(tiles, outputs, k) for k in range(len(tiles.grids))]

    def stitch_frame(self, tiles: "FrameTiles", outputs: dict[str, np.ndarray], k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Boxes and scores of the k-th frame of `tiles`; FloatingPointError if its detector
        outputs hold NaN or Inf (they would otherwise drop cells without a word)."""
        tiling = self.bundle.tiling
        start = sum(len(g) for g in tiles.grids[:k])
        stop = start + len(tiles.grids[k])
        boxes, scores = outputs["boxes"][start:stop], outputs["scores"][start:stop]
        if not (np.isfinite(scores).all() and np.isfinite(boxes[scores >= tiling.score_threshold]).all()):
            raise FloatingPointError("the detector produced NaN or Inf")
        boxes, scores = stitch(boxes, scores, tiles.grids[k], tiling.score_threshold)
        return boxes / np.float32(tiles.scale), scores

    def classify(self, image: np.ndarray, boxes: np.ndarray, clock: Clock = untimed) -> np.ndarray:
        """(N, C) class scores for the cells in `boxes`."""
        with clock("crop"):
            crops = self.crop(image, boxes)
        return self.classify_crops(crops, clock)

    def crop(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The classifier's view of each cell: (N, S, S, 3) uint8 BGR."""
        size = self.bundle.classifier.input_hw[0]
        views = cell_views(image, boxes, size, self.bundle.tiling.crop_context)
        return views if self.normaliser is None else self.normaliser.normalise_views(image, views)

    def locate_cell(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """(box, found) of the one cell a single-cell image shows: the detection nearest its centre,
        or the stand-in box when none is found (edge.runtime.cell_view)."""
        return locate_cell(self.detect, as_bgr8(image), self.bundle.tiling.crop_context)

    def single_cell_view(self, image: np.ndarray, size: int | None = None) -> tuple[np.ndarray, bool, np.ndarray]:
        """(view, found, box): a single-cell image's cell as the device would cut it from a field,
        whether the detector found it (else the stand-in box frames it), and that box."""
        image = as_bgr8(image)
        box, found = self.locate_cell(image)
        size = size or self.bundle.classifier.input_hw[0]
        view = cell_views(image, box[None], size, self.bundle.tiling.crop_context)
        if self.normaliser is not None:
            view = self.normaliser.normalise_views(image, view)
        return view[0], found, box

    def classify_crops(self, crops: np.ndarray, clock: Clock = untimed) -> np.ndarray:
        """(N, C) class scores: the graph's own, or for a bundle with ccl_centroids the CCL kernel
        of the classifier's embeddings and the bundle's centroids."""
        if self.centroids is None:
            return self._classifier_output(crops, self.bundle.classifier.outputs[0], clock)
        embeddings = self._classifier_output(crops, EMBEDDINGS, clock)
        with clock("classify"):
            return ccl_kernel(embeddings, self.centroids, self.bundle.ccl_sigma)

    def embed_crops(self, crops: np.ndarray, clock: Clock = untimed) -> np.ndarray:
        """(N, C, M) per-class CCL embeddings, for a bundle with ccl_centroids."""
        if self.centroids is None:
            raise BundleError("this bundle states no ccl_centroids; convert it with `edge export expose-embeddings`")
        return self._classifier_output(crops, EMBEDDINGS, clock)

    def _classifier_output(self, crops: np.ndarray, name: str, clock: Clock) -> np.ndarray:
        spec = self.bundle.classifier
        if len(crops) == 0:
            tail = self.centroids.shape if name == EMBEDDINGS else (len(self.bundle.class_names),)
            return np.zeros((0, *tail), dtype=np.float32)
        # normalised per batch, as the detector's tiles are: a frame may hold thousands of cells
        parts = []
        for i in range(0, len(crops), CLASSIFIER_BATCH):
            with clock("preprocess"):
                x = to_model_input(crops[i:i + CLASSIFIER_BATCH], None, spec.normalisation)
            with clock("classify"):
                parts.append(run_batched(self.classifier, spec, x, CLASSIFIER_BATCH)[name])
            del x
        return np.concatenate(parts)

    def count_field(self, image: np.ndarray, clock: Clock = untimed) -> FieldResult:
        with clock("preprocess"):
            image = as_bgr8(image)
        boxes, det_scores = self.detect(image, clock)
        scores = self.classify(image, boxes, clock)
        with clock("decide"):
            decisions = self.rule.decide(scores)
        return FieldResult(boxes, det_scores, scores, decisions)


@dataclass
class FrameTiles:
    """One or more frames (rescaled) and each frame's tile grid; tiles numbered in frame order."""

    frames: list[np.ndarray]  # (H, W, 3) uint8 BGR
    grids: list[TileGrid]
    scale: float = 1.0  # the factor the frames were resized by

    def __len__(self) -> int:
        return sum(len(g) for g in self.grids)

    def cut(self, start: int, stop: int) -> np.ndarray:
        """Tiles start..stop-1 as (n, tile, tile, 3) uint8 BGR."""
        parts, offset = [], 0
        for frame, grid in zip(self.frames, self.grids):
            lo, hi = max(start - offset, 0), min(stop - offset, len(grid))
            if lo < hi:
                parts.append(cut_tiles(frame, grid, slice(lo, hi)))
            offset += len(grid)
        return np.concatenate(parts)


def run_batched(runner: Runner, spec: ModelSpec, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """Run `x` in chunks the model accepts; a static-batch model gets padded chunks."""
    fixed = spec.input_shape[0] if spec.input_shape[0] > 0 else None
    step = fixed or max(1, batch)
    if len(x) == 0:
        raise ValueError("nothing to run")
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n,) + chunk.shape[1:], chunk.dtype)])
        out = runner.infer({spec.input_name: chunk})
        parts.append({k: v[:n] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _rescale(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def _centroids_for(bundle: Bundle, classifier: Runner) -> np.ndarray | None:
    """The bundle's CCL centroids (C, M), checked against the classifier's embeddings output (B, C, M)."""
    spec = bundle.ccl_centroids
    if spec is None:
        return None
    try:
        centroids = read_centroids(bundle.root / spec.file, len(bundle.class_names))
    except ValueError as exc:
        raise BundleError(f"centroids file {spec.file}: {exc}") from None
    shape = {t.name: t for t in classifier.outputs}[EMBEDDINGS].shape
    if len(shape) != 3 or any(a is not None and a != e for a, e in zip(shape[1:], centroids.shape)):
        raise BundleError(f"{bundle.classifier.file} outputs embeddings of shape {list(shape)}, "
                          f"but the centroids file {spec.file} holds {list(centroids.shape)}")
    return centroids


def _open_checked(bundle: Bundle, spec: ModelSpec, backend: str, threads: int | None,
                  classes: int | None) -> Runner:
    """Open a model and check that it is the model the manifest describes.

    TensorRT runs the engine built from the model's TensorRT variant where it has one (an INT8 model).
    """
    path = bundle.tensorrt_path(spec) if backend == "tensorrt" else bundle.model_path(spec)
    try:
        runner = open_runner(backend, path, threads)
    except BackendError as exc:
        raise BundleError(str(exc)) from None
    inputs = {t.name: t for t in runner.inputs}
    if spec.input_name not in inputs:
        raise BundleError(f"{spec.file} has no input {spec.input_name!r} (it has {', '.join(inputs)})")
    actual = inputs[spec.input_name].shape
    expected = spec.input_shape
    if len(actual) != 4 or any(a is not None and e > 0 and a != e for a, e in zip(actual, expected)):
        raise BundleError(f"{spec.file} takes input of shape {actual}, the manifest says {list(expected)}")
    outputs = {t.name: t for t in runner.outputs}
    missing = [o for o in spec.outputs if o not in outputs]
    if missing:
        raise BundleError(f"{spec.file} lacks the outputs {missing} named in the manifest")
    if classes is not None:
        width = outputs[spec.outputs[0]].shape[-1]
        if width is not None and width != classes:
            raise BundleError(f"{spec.file} outputs {width} classes but the manifest names {classes}")
    return runner
