"""The walking skeleton's bundle: a tiny detector and a tiny CrossFormer-CCL trained on
synthetic smears, exported to ONNX, the reject threshold fitted on the exported model."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from calibration.thresholds import ccl_confidence, fit_threshold
from calibration.metrics import reject_metrics
from edge.runtime.bundle import ModelSpec, Thresholds, Tiling, sha256_file, write_bundle
from edge.runtime.preprocess import Normalisation
from edge.synthetic.smear import DEFAULT_CLASSES, SmearConfig, max_cell_diameter_px
from export.classifier_training import ClassifierTrainConfig, train_classifier_arrays
from export.deployed import git_commit, onnx_scores, staged_bundle
from export.detector_training import train_detector
from export.models.classifier import build_classifier
from export.models.detector import DecodedDetector, build_detector
from export.onnx_export import export_onnx
from export.synthetic_cells import synthetic_cell_crops

log = logging.getLogger("export.bundle")


@dataclass(frozen=True)
class SyntheticBundleRecipe:
    classifier_arch: str = "crossformer_tiny_test"
    crop_size: int = 64
    crop_context: float = 1.3
    classifier_epochs: int = 10
    classifier_lr: float = 1e-3  # from scratch; the paper's 1e-4 assumes pretrained weights
    n_train: int = 6000
    n_calibration: int = 2000
    n_validation: int = 2000
    detector_arch: str = "detector_tiny_test"
    tile_size: int = 256
    detector_epochs: int = 12
    detector_steps: int = 60
    detector_batch: int = 16
    max_detections: int = 100
    score_threshold: float = 0.3
    target_accuracy: float = 0.99
    threshold_method: str = "descending"
    seed: int = 0


def make_synthetic_bundle(out: Path, recipe: SyntheticBundleRecipe, work: Path) -> dict:
    """Train, export, calibrate and write a bundle to `out`; return the report."""
    torch.manual_seed(recipe.seed)
    norm = Normalisation()
    work.mkdir(parents=True, exist_ok=True)
    with staged_bundle(out) as staging:
        started = time.time()

        classifier_report, fitted = _make_classifier(staging / "classifier.onnx", recipe, norm, work)
        detector_report = _make_detector(staging / "detector.onnx", recipe, work)

        overlap = int(np.ceil(max_cell_diameter_px(SmearConfig()) / 8) * 8)
        write_bundle(
            staging,
            class_names=list(DEFAULT_CLASSES),
            classifier_head="ccl",
            ccl_sigma=classifier_report["sigma"],
            detector=ModelSpec("detector.onnx", "0" * 64, "image", (-1, 3, recipe.tile_size, recipe.tile_size),
                               ("boxes", "scores"), normalisation=norm),
            classifier=ModelSpec("classifier.onnx", "0" * 64, "image", (-1, 3, recipe.crop_size, recipe.crop_size),
                                 ("scores",), normalisation=norm),
            thresholds=Thresholds(fitted["threshold"], recipe.target_accuracy, recipe.threshold_method,
                                  calibration={"calibration": fitted["calibration"],
                                               "validation": classifier_report["validation"]},
                                  classifier_sha256=sha256_file(staging / "classifier.onnx"), rule="ccl"),
            tiling=Tiling(recipe.tile_size, overlap, 1.0, recipe.score_threshold, recipe.crop_context),
            provenance={"data": "synthetic smear generator (edge.synthetic.smear), no real images",
                        "recipe": asdict(recipe), "code_commit": git_commit(),
                        "date": time.strftime("%Y-%m-%d"), "script": "edge export synthetic-bundle"},
        )
    report = {"bundle": str(out), "classifier": classifier_report, "detector": detector_report,
              "threshold": fitted, "minutes": round((time.time() - started) / 60, 1)}
    (work / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _make_classifier(path: Path, r: SyntheticBundleRecipe, norm: Normalisation, work: Path) -> tuple[dict, dict]:
    log.info("rendering classifier crops")
    train_x, train_y = synthetic_cell_crops(r.n_train, r.crop_size, r.crop_context, seed=r.seed + 1)
    cal_x, cal_y = synthetic_cell_crops(r.n_calibration, r.crop_size, r.crop_context, seed=r.seed + 2)
    val_x, val_y = synthetic_cell_crops(r.n_validation, r.crop_size, r.crop_context, seed=r.seed + 3)
    model = build_classifier(r.classifier_arch, r.crop_size, len(DEFAULT_CLASSES), head="ccl")
    history = train_classifier_arrays(model, train_x, train_y,
                                      ClassifierTrainConfig(epochs=r.classifier_epochs, lr=r.classifier_lr,
                                                            seed=r.seed),
                                      norm, checkpoint_dir=work / "classifier")
    model.eval()
    export_onnx(model, r.crop_size, path, output_name="scores")
    # Thresholds belong to the deployed model: fit them on the exported graph's outputs.
    cal_scores = onnx_scores(path, cal_x, norm)
    val_scores = onnx_scores(path, val_x, norm)
    fit = fit_threshold(ccl_confidence(cal_scores), cal_scores.argmax(1), cal_y,
                        r.target_accuracy, method=r.threshold_method)
    if not fit.reached:
        raise RuntimeError(f"the classifier does not reach accepted accuracy {r.target_accuracy} at any "
                           "threshold on the calibration split; train longer")
    validation = reject_metrics(ccl_confidence(val_scores), val_scores.argmax(1), val_y, fit.threshold).to_dict()
    report = {"arch": r.classifier_arch, "input": r.crop_size, "history": history,
              "sigma": float(model.head.sigma), "validation": validation}
    return report, {"threshold": float(fit.threshold), "calibration": fit.calibration.to_dict()}


def _make_detector(path: Path, r: SyntheticBundleRecipe, work: Path) -> dict:
    model = build_detector(r.detector_arch, max_detections=r.max_detections)
    history = train_detector(model, tile_size=r.tile_size, epochs=r.detector_epochs,
                             steps_per_epoch=r.detector_steps, batch_size=r.detector_batch,
                             seed=r.seed, ckpt_dir=work / "detector", log=log.info)
    model.eval()
    export_onnx(DecodedDetector(model), r.tile_size, path, output_names=("boxes", "scores"))
    return {"arch": r.detector_arch, "tile": r.tile_size, "history": history}
