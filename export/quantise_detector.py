"""INT8 for the detector: calibrated on real tiles at the bundle's scale, judged against FP32 on the same tiles.

The tiles are a VOC or YOLO data set's fields resized by the bundle's
`tiling.scale` and cut as the device cuts them (export.detector_training's
`field_tiles`). The decoding tail (sigmoid, peak max-pool, top-k, box
arithmetic) follows the last convolution and so stays FP32 with the
classifier's rule (export.quantise.head_tail_nodes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.runtime.backends import open_runner
from edge.runtime.bundle import Bundle
from edge.evaluation.detection_metrics import Prediction, Truth, evaluate_detection
from edge.runtime.preprocess import to_model_input
from export.detector_training import DetectionDatasetSource, Sample, field_tiles
from export.quantise import ImageCalibrationReader, quantise_int8

BATCH = 16


def bundle_tiles(bundle: Bundle, data: Path, format: str, classes: tuple[str, ...], split: str) -> list[Sample]:
    """(tile, boxes) of one split of a detection data set, at the bundle's scale and tile size."""
    source = DetectionDatasetSource.from_folder(data, format, classes, split, bundle.tiling.scale)
    return field_tiles(source, bundle.tiling.tile_size)


def detector_figures(path: Path, tiles: list[Sample], bundle: Bundle, threads: int | None = None) -> dict:
    """`edge eval detect`'s figures for the detector at `path` on the tiles, at the bundle's score threshold."""
    spec = bundle.detector
    preds = []
    with open_runner("onnxruntime", path, threads=threads) as runner:
        for i in range(0, len(tiles), BATCH):
            x = to_model_input(np.stack([t for t, _ in tiles[i:i + BATCH]]), None, spec.normalisation)
            out = runner.infer({spec.input_name: x})
            preds += [Prediction(b, s) for b, s in zip(out["boxes"], out["scores"])]
    truths = [Truth(boxes, np.zeros(len(boxes), bool)) for _, boxes in tiles]
    return evaluate_detection(preds, truths, bundle.tiling.score_threshold)


def quantise_detector(bundle: Bundle, tiles: list[Sample], dst: Path, method: str = "minmax",
                      calibration_tiles: int = 64, symmetric: bool = False,
                      calibration_cache: Path | None = None) -> Path:
    """The bundle's detector as INT8 QDQ, calibrated on up to `calibration_tiles` evenly spread tiles.

    `symmetric` and `calibration_cache` as for export.quantise.quantise_int8 (True: the TensorRT twin).
    """
    pick = np.linspace(0, len(tiles) - 1, min(calibration_tiles, len(tiles))).round().astype(int)
    reader = ImageCalibrationReader(np.stack([tiles[i][0] for i in pick]), bundle.detector.input_name,
                                    bundle.detector.normalisation, batch=8)
    return quantise_int8(bundle.model_path(bundle.detector), dst, reader, method, symmetric=symmetric,
                         calibration_cache=calibration_cache)
