"""`edge eval classify` and `edge eval detect`: a bundle measured exactly as the device runs it."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from calibration.metrics import reject_metrics
from edge.runtime.bundle import load_bundle
from edge.runtime.frame_scale import FrameScale
from edge.evaluation.detection_data import load_detection_dataset, select_classes
from edge.evaluation.detection_metrics import Prediction, Truth, evaluate_detection
from edge.runtime.engine import CLASSIFIER_BATCH, CellCounter
from edge.runtime.frames import IMAGE_SUFFIXES, FrameError, as_bgr8

log = logging.getLogger("edge.eval")


class EvalDataError(ValueError):
    """An evaluation data folder that cannot be used."""


def read_split_file(path: Path, split: str) -> set[str]:
    """The image paths (relative to the data folder, 'class/file') of one split of a split file."""
    try:
        splits = json.loads(Path(path).read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvalDataError(f"cannot read split file {path}: {exc}") from None
    if split not in splits:
        raise EvalDataError(f"split file {path} has no split {split!r}; it has {', '.join(splits)}")
    return set(splits[split])


def read_class_folders(data: Path, class_names: tuple[str, ...],
                       only: set[str] | None = None) -> tuple[list[Path], np.ndarray]:
    """Image paths and bundle class indices from a folder per class (a subset of the bundle's).

    `only` keeps just the images whose 'class/file' path it holds (a split).
    """
    if not data.is_dir():
        raise EvalDataError(f"data folder {data} does not exist")
    folders = sorted(p for p in data.iterdir() if p.is_dir())
    if only is not None:
        folders = [f for f in folders if any(p.startswith(f.name + "/") for p in only)]
    if not folders:
        raise EvalDataError(f"{data} has no class folders" + (" in the split" if only is not None else ""))
    unknown = [f.name for f in folders if f.name not in class_names]
    if unknown:
        raise EvalDataError(f"class folders {unknown} are not classes of the bundle; "
                         f"known: {', '.join(class_names)}")
    paths, labels = [], []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                       and (only is None or f"{folder.name}/{p.name}" in only))
        paths += files
        labels += [class_names.index(folder.name)] * len(files)
    if not paths:
        raise EvalDataError(f"no images under {data}")
    return paths, np.asarray(labels, dtype=np.int64)


def read_cell_view(counter: CellCounter, path: Path, size: int | None = None) -> tuple[np.ndarray, bool]:
    """A single-cell image's cell as the device sees it (edge.runtime.cell_view), for evaluation and
    calibration: (view, found by the detector); FrameError if the image cannot be read."""
    view, found, _ = _read_located_view(counter, path, size)
    return view, found


def _read_located_view(counter: CellCounter, path: Path, size: int | None = None
                       ) -> tuple[np.ndarray, bool, np.ndarray]:
    """(view, found by the detector, the cell's box in the image)."""
    return counter.single_cell_view(as_bgr8(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)), size)


@dataclass
class SingleCellScores:
    """The classifier's scores for the single-cell images that could be read."""

    scores: np.ndarray  # (K, C)
    kept: list[int]     # index into the paths of each scored image
    found: np.ndarray   # (K,) bool: the detector found the cell (else the stand-in framing)
    boxes: np.ndarray   # (K, 4) the cell's box in its image


def single_cell_scores(counter: CellCounter, paths: list[Path]) -> SingleCellScores:
    """Scores of single-cell images, each cell framed as the device frames it; an unreadable image is
    logged and left out."""
    scores, kept, found, boxes = [], [], [], []
    for start in range(0, len(paths), CLASSIFIER_BATCH):
        batch = []
        for i in range(start, min(start + CLASSIFIER_BATCH, len(paths))):
            try:
                view, detected, box = _read_located_view(counter, paths[i])
            except FrameError as exc:
                log.warning("skipped %s: %s", paths[i], exc)
                continue
            batch.append(view)
            kept.append(i)
            found.append(detected)
            boxes.append(box)
        if batch:
            scores.append(counter.classify_crops(np.stack(batch)))
    empty = np.zeros((0, len(counter.bundle.class_names)), np.float32)
    return SingleCellScores(np.concatenate(scores) if scores else empty, kept, np.asarray(found, bool),
                            np.asarray(boxes, np.float32).reshape(-1, 4))


def evaluate_classifier(bundle_path: Path, data: Path, backend: str = "onnxruntime",
                        threads: int | None = None, only: set[str] | None = None) -> dict:
    """Accuracy and reject-option figures of the bundle's classifier on single-cell images.

    Each image's cell is found with the bundle's detector and cut as the device
    cuts it (edge.runtime.cell_view); `framed_by_detector` says for how many images
    the detector found it (the rest are framed by the stand-in rule).
    """
    bundle = load_bundle(bundle_path)
    paths, labels = read_class_folders(data, bundle.class_names, only)
    with CellCounter(bundle, backend=backend, threads=threads) as counter:
        cells = single_cell_scores(counter, paths)
    scores_all, kept, found = cells.scores, cells.kept, int(cells.found.sum())
    if not kept:
        raise EvalDataError(f"no readable images under {data}")
    labels = labels[kept]
    decisions = counter.rule.decide(scores_all)
    # Per-class thresholds become one threshold of 0 on the margin over each cell's own threshold.
    metrics = reject_metrics(decisions.confidence - decisions.threshold, decisions.predicted, labels, 0.0,
                             num_classes=len(bundle.class_names))
    report = metrics.to_dict()
    present = sorted(set(labels.tolist()))
    return {
        "n": report["n"],
        "accuracy": report["accuracy"],
        "rejection_rate": report["rejection_rate"],
        "accepted_accuracy": report["accepted_accuracy"],
        "reliability": report["reliability"],
        "threshold": bundle.thresholds.global_threshold,
        "per_class_thresholds": bundle.thresholds.per_class,
        "target_accuracy": bundle.thresholds.target_accuracy,
        "skipped_images": len(paths) - len(kept),
        "framed_by_detector": found,
        "per_class": {bundle.class_names[c]: _without_threshold(report["per_class"][c]) for c in present},
        "bundle": str(bundle.root),
    }


def _without_threshold(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("threshold", "per_class")}


def evaluate_detector(bundle_path: Path, data: Path, fmt: str, classes: list[str],
                      split: str | None = None, backend: str = "onnxruntime",
                      threads: int | None = None, pixel_size_um: float | None = None) -> dict:
    """Detection and counting figures of the bundle's tiled detector on annotated fields
    (`pixel_size_um`: the fields' pixel size, when it is not the bundle's)."""
    scale = FrameScale(load_bundle(bundle_path), pixel_size_um)
    bundle = scale.bundle
    dataset = select_classes(load_detection_dataset(data, fmt, split=split), classes)
    if len(dataset) == 0:
        raise EvalDataError(f"no images in {data}" + (f" split {split}" if split else ""))
    counter = CellCounter(bundle, backend=backend, threads=threads)
    preds, truths = [], []
    for sample in dataset:
        try:
            image = as_bgr8(cv2.imread(str(sample.image_path), cv2.IMREAD_UNCHANGED))
        except FrameError as exc:
            raise EvalDataError(f"{sample.image_path}: {exc}") from None
        counter.follow_scale(scale.observe(image))
        boxes, scores = counter.detect(image)
        preds.append(Prediction(boxes, scores))
        truths.append(Truth(sample.boxes, sample.difficult))
    counter.close()
    # Every stitched detection already passed the bundle's score threshold: count them all.
    report = evaluate_detection(preds, truths, score_threshold=bundle.tiling.score_threshold)
    report["classes"] = classes
    report["bundle"] = str(bundle.root)
    report["pixel_size"] = scale.record()
    return report
