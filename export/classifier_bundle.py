"""A bundle from a trained classifier run, so it is measured exactly as a deployed model.

The classifier is exported from the run's checkpoint; its reject threshold is
fitted on the exported ONNX model's outputs over the run's calibration split;
the detector, tiling (crop context included) and field quality limits come
from an existing bundle, whose detector also frames every cell.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from calibration.metrics import reject_metrics
from calibration.thresholds import fit_threshold
from edge.runtime.class_roles import infer_roles
from edge.runtime.bundle import ModelSpec, Thresholds, copy_model_files, load_bundle, sha256_file, write_bundle
from edge.runtime.decision import confidence_of
from edge.runtime.cell_view import cell_views
from edge.runtime.preprocess import Normalisation
from export.cell_boxes import find_cell_boxes
from export.classifier_training import load_weights
from export.deployed import git_commit, onnx_scores, staged_bundle
from export.datasets import Split
from export.models.classifier import build_classifier
from export.onnx_export import export_onnx


def read_split_images(data: Path, split: Split, name: str, size: int, framing: Path,
                      boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) BGR cell views of one split, each cell found and cut as the device does
    (edge.runtime.cell_view) with the detector and crop context of bundle `framing`; `boxes`: found before."""
    items = split.items(name)
    paths = [rel for rel, _ in items]
    if boxes is None:
        boxes, _, context = find_cell_boxes(data, paths, framing)
    else:
        context = load_bundle(framing).tiling.crop_context
    views = []
    for rel, box in zip(paths, boxes):
        image = cv2.imread(str(data / rel), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read image {data / rel}")
        views.append(cell_views(image, box[None], size, context)[0])
    return np.stack(views), np.array([label for _, label in items], dtype=np.int64)


def bundle_from_run(run: Path, data: Path, out: Path, split_file: Path | None = None,
                    detector_bundle: Path | None = None, target_accuracy: float = 0.99,
                    method: str = "descending", checkpoint: str = "best.pt") -> dict:
    """Write a bundle for the classifier of training run `run`; return its figures."""
    from edge import DEFAULT_BUNDLE
    state = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    meta = state["meta"]
    model = build_classifier(meta["arch"], meta["img_size"], len(meta["class_names"]), meta["head"])
    load_weights(model, run / checkpoint)
    split = Split.from_json(json.loads((split_file or run / "split.json").read_text()))
    if list(split.class_names) != list(meta["class_names"]):
        raise ValueError("the split file's classes are not the ones the run was trained on")
    norm = Normalisation.from_dict(meta["normalisation"])
    detector_source = load_bundle(detector_bundle or DEFAULT_BUNDLE)

    with staged_bundle(out) as staging:
        onnx_path = export_onnx(model.eval(), meta["img_size"], staging / "classifier.onnx", output_name="scores")
        copy_model_files(detector_source, detector_source.detector, staging)

        figures = {}
        for name in ("calibration", "validation"):
            images, labels = read_split_images(data, split, name, meta["img_size"], detector_source.root)
            scores = onnx_scores(onnx_path, images, norm)
            figures[name] = (confidence_of(scores, meta["head"]), scores.argmax(1), labels)
        fit = fit_threshold(*figures["calibration"], target_accuracy, method=method)
        if not fit.reached:
            raise ValueError(f"no threshold reaches accepted accuracy {target_accuracy} on the calibration split")
        validation = reject_metrics(*figures["validation"], fit.threshold, num_classes=len(meta["class_names"]))
        size = meta["img_size"]
        write_bundle(
            staging, class_names=list(meta["class_names"]), classifier_head=meta["head"],
            ccl_sigma=float(model.head.sigma) if meta["head"] == "ccl" else None,
            detector=detector_source.detector,
            classifier=ModelSpec("classifier.onnx", "0" * 64, "image", (-1, 3, size, size), ("scores",),
                                 normalisation=norm),
            thresholds=Thresholds(float(fit.threshold), target_accuracy, method,
                                  calibration={"calibration": fit.calibration.to_dict(),
                                               "validation": validation.to_dict()},
                                  classifier_sha256=sha256_file(onnx_path), rule=meta["head"],
                                  confidence=1 - fit.delta if fit.delta is not None else None),
            tiling=detector_source.tiling, quality=detector_source.quality,
            class_roles=infer_roles(meta["class_names"]),
            provenance={"data": str(data), "split_file": str(split_file or run / "split.json"),
                        "classifier_run": str(run), "checkpoint": checkpoint, "epoch": int(state["epoch"]),
                        "detector_from": str(detector_source.root),
                        "detector_provenance": detector_source.provenance,
                        "code_commit": git_commit(),
                        "date": time.strftime("%Y-%m-%d"), "script": "edge export classifier-bundle"})
    return {"bundle": str(out), "threshold": fit.to_dict(), "validation": validation.to_dict()}

