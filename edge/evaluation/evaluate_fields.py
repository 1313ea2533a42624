"""`edge eval fields`: labelled cells in whole fields, through the whole device path.

For a lab whose labels name the class of one boxed cell per field (BCCD's
wbc_subtypes.csv: file, class, split, xmin, ymin, xmax, ymax), each field goes
through what the device does: detect, cut each cell's view, classify, decide.
The labelled cell is the detection that overlaps its box best (IoU at least
MATCH_IOU); a labelled cell with no such detection is counted as missed by the
detector, never scored. The figures are over the found cells: accuracy, the
share rejected, accepted accuracy, R = (1 - Rr) Ra, and the share of the wrong
predictions that the reject option sent to review (`errors_caught`).
"""
from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from calibration.metrics import reject_metrics
from edge.runtime.boxes import box_iou
from edge.runtime.bundle import load_bundle
from edge.runtime.frame_scale import FrameScale
from edge.runtime.engine import CellCounter, FieldResult
from edge.evaluation.evaluate import EvalDataError
from edge.runtime.frames import FrameError, as_bgr8

MATCH_IOU = 0.3
COLUMNS = ("file", "class", "xmin", "ymin", "xmax", "ymax")


def read_field_labels(path: Path, class_names: tuple[str, ...], split: str | None = None
                      ) -> list[tuple[str, int, np.ndarray]]:
    """(file, class index, box) per labelled cell of the CSV, only `split`'s rows when given."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise EvalDataError(f"cannot read labels {path}: {exc}") from None
    if not rows or any(c not in rows[0] for c in COLUMNS):
        raise EvalDataError(f"{path} needs the columns {', '.join(COLUMNS)}")
    if split is not None:
        if "split" not in rows[0]:
            raise EvalDataError(f"{path} has no split column")
        rows = [r for r in rows if r["split"] == split]
    unknown = sorted({r["class"] for r in rows} - set(class_names))
    if unknown:
        raise EvalDataError(f"classes {unknown} of {path} are not classes of the bundle; "
                            f"known: {', '.join(class_names)}")
    if not rows:
        raise EvalDataError(f"no labelled cells in {path}" + (f" for split {split}" if split else ""))
    return [(r["file"], class_names.index(r["class"]),
             np.array([float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")], np.float32)) for r in rows]


def _image_path(data: Path, name: str) -> Path:
    for candidate in (data / "JPEGImages" / name, data / "images" / name, data / name):
        if candidate.is_file():
            return candidate
    raise EvalDataError(f"field image {name} not found under {data} (JPEGImages/, images/ or the folder itself)")


@dataclass(frozen=True)
class FoundCell:
    """A labelled cell the detector found: its field, the field's counting result and the matched detection."""

    label: int
    image: np.ndarray
    result: FieldResult
    index: int


def found_cells(counter: CellCounter, scale: FrameScale, data: Path, cells: list[tuple[str, int, np.ndarray]],
                missed: dict[str, int]) -> Iterator[FoundCell]:
    """Each labelled cell's field through the device path; a cell that no detection matches is
    counted in `missed` (per class name) and not yielded."""
    names = counter.bundle.class_names
    for name, label, box in cells:
        try:
            image = as_bgr8(cv2.imread(str(_image_path(data, name)), cv2.IMREAD_UNCHANGED))
        except FrameError as exc:
            raise EvalDataError(f"{name}: {exc}") from None
        counter.follow_scale(scale.observe(image))
        result = counter.count_field(image)
        iou = box_iou(box[None], result.boxes)[0] if len(result) else np.zeros(0)
        if iou.size == 0 or iou.max() < MATCH_IOU:
            missed[names[label]] = missed.get(names[label], 0) + 1
            continue
        yield FoundCell(label, image, result, int(iou.argmax()))


def evaluate_field_cells(bundle_path: Path, data: Path, labels: Path, split: str | None = None,
                         backend: str = "onnxruntime", threads: int | None = None,
                         pixel_size_um: float | None = None) -> dict:
    """Figures of the device path on labelled cells in fields (see the module docstring)."""
    scale = FrameScale(load_bundle(bundle_path), pixel_size_um)
    bundle = scale.bundle
    cells = read_field_labels(labels, bundle.class_names, split)
    truth, scores, missed = [], [], {}
    with CellCounter(bundle, backend=backend, threads=threads) as counter:
        for cell in found_cells(counter, scale, data, cells, missed):
            truth.append(cell.label)
            scores.append(cell.result.class_scores[cell.index])
    if not truth:
        raise EvalDataError("the detector found none of the labelled cells")
    decisions = counter.rule.decide(np.stack(scores))
    labels_found = np.array(truth)
    metrics = reject_metrics(decisions.confidence - decisions.threshold, decisions.predicted, labels_found, 0.0,
                             num_classes=len(bundle.class_names)).to_dict()
    wrong = decisions.predicted != labels_found
    caught = wrong & ~decisions.accepted
    present = sorted(set(truth))
    return {
        "pixel_size": scale.record(),
        "labelled_cells": len(cells),
        "found": len(truth),
        "missed_by_detector": missed,
        "accuracy": metrics["accuracy"],
        "rejection_rate": metrics["rejection_rate"],
        "accepted_accuracy": metrics["accepted_accuracy"],
        "reliability": metrics["reliability"],
        "errors": int(wrong.sum()),
        "errors_caught": float(caught.sum() / wrong.sum()) if wrong.any() else None,
        "per_class": {bundle.class_names[c]: {k: metrics["per_class"][c][k] for k in
                                              ("n", "accuracy", "rejection_rate", "accepted_accuracy")}
                      for c in present},
        "confusion": _confusion(labels_found, decisions.predicted, bundle.class_names),
        "split": split,
        "bundle": str(bundle.root),
    }


def _confusion(truth: np.ndarray, predicted: np.ndarray, names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """For each true class present, how many were predicted as each class (before the reject option)."""
    out = {}
    for c in sorted(set(truth.tolist())):
        counts = np.bincount(predicted[truth == c], minlength=len(names))
        out[names[c]] = {names[k]: int(n) for k, n in enumerate(counts) if n}
    return out
