"""A bundle from a `train-detector` run: the run's detector, another bundle's classifier.

The detector is exported from the run's checkpoint; the classifier, class
names, CCL sigma, reject thresholds and crop context come unchanged from a
classifier bundle (by default the shipped one). Tiling: the run's tile size,
the frame scale the run was trained for (or another), and an overlap of at
least the largest expected cell, so that centre-ownership stitching counts
each cell once (see ``auto_overlap``).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from edge.runtime.bundle import Bundle, ModelSpec, Tiling, copy_model_files, load_bundle, write_bundle
from edge.evaluation.detection_data import load_detection_dataset
from edge.runtime.frames import IMAGE_SUFFIXES
from edge.runtime.preprocess import Normalisation
from edge.runtime.quality import QualityLimits, fit_quality_limits
from edge.synthetic.smear import SmearConfig, max_cell_diameter_px
from export.deployed import git_commit, staged_bundle
from export.detector_training import CHECKPOINT, RUN_FILE
from export.models.detector import DecodedDetector, build_detector
from export.onnx_export import export_onnx

OVERLAP_MULTIPLE = 8


def auto_overlap(largest_box_px: float | None, scale: float) -> int:
    """The tile overlap: the largest expected cell diameter in tile pixels, rounded up to a multiple of 8.

    The largest expected cell is the larger of the run's largest real box
    (frame pixels, over its training images) times `scale`, and the synthetic
    generator's largest cell at its own 4 px/µm, the pixel size the detector
    was trained at. BCCD WBC at 0.28: max(289 x 0.28 = 81, 88.2) -> 96.
    """
    largest = max((largest_box_px or 0.0) * scale, max_cell_diameter_px(SmearConfig()))
    return int(math.ceil(largest / OVERLAP_MULTIPLE) * OVERLAP_MULTIPLE)


def load_run_detector(run: Path) -> tuple[torch.nn.Module, dict]:
    """The detector of run folder `run` at its last checkpoint (eval mode), and that checkpoint."""
    state = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    model = build_detector(state["config_name"], max_detections=state["config"]["max_detections"])
    model.load_state_dict(state["model"])
    return model.eval(), state


def bundle_from_detector_run(run: Path, out: Path, classifier_bundle: Path | None = None,
                             scale: float | None = None, overlap: int | None = None,
                             score_threshold: float = 0.3, crop_context_from: Path | None = None) -> dict:
    """Write bundle `out` from detector run `run` and a classifier bundle; return what was chosen.

    `scale` defaults to the run's training scale and `overlap` to ``auto_overlap``.
    The crop context is the classifier bundle's, or with `crop_context_from`
    (the classifier's training images) fitted by ``fit_crop_context``.
    """
    from edge import DEFAULT_BUNDLE
    info = json.loads((run / RUN_FILE).read_text())
    recipe = info["recipe"]
    model, state = load_run_detector(run)
    tile = int(state["tile_size"])
    scale = float(recipe["scale"] if scale is None else scale)
    rule = "given" if overlap is not None else (
        "auto: the largest expected cell in tile pixels, rounded up to a multiple of 8")
    overlap = auto_overlap(info["largest_box_px"], scale) if overlap is None else int(overlap)
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} px does not fit tiles of {tile} px: "
                         "train with a larger --tile or bundle with a smaller --scale")
    source = load_bundle(classifier_bundle or DEFAULT_BUNDLE)
    quality, quality_note = _quality_limits(recipe, source)

    with staged_bundle(out) as staging:
        export_onnx(DecodedDetector(model), tile, staging / "detector.onnx", output_names=("boxes", "scores"))
        copy_model_files(source, source.classifier, staging)
        if source.ccl_centroids is not None:  # the classifier scores against them; the thresholds are bound to them
            shutil.copyfile(source.root / source.ccl_centroids.file, staging / source.ccl_centroids.file)
        tiling = Tiling(tile, overlap, scale, score_threshold, source.tiling.crop_context)
        provenance = {"data": recipe["data"] or "synthetic smear generator (edge.synthetic.smear) only",
                      "detector_recipe": recipe, "detector_run": str(run), "epoch": int(state["epoch"]),
                      "detector_training_commit": info["code_commit"],
                      "overlap_rule": rule, "largest_box_px": info["largest_box_px"], "quality": quality_note,
                      "classifier_from": str(source.root), "classifier_provenance": source.provenance,
                      "code_commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
                      "script": "edge export detector-bundle"}
        contents = dict(class_names=list(source.class_names), classifier_head=source.classifier_head,
                        ccl_sigma=source.ccl_sigma, classifier=source.classifier, thresholds=source.thresholds,
                        class_roles=source.class_roles if source.class_roles_stated else None,
                        ccl_centroids=source.ccl_centroids, quality=quality, detector=ModelSpec("detector.onnx", "0" * 64, "image", (-1, 3, tile, tile),
                                                            ("boxes", "scores"), normalisation=Normalisation()))
        write_bundle(staging, tiling=tiling, provenance=provenance, **contents)
        if crop_context_from is not None:
            context, framed = fit_crop_context(staging, crop_context_from)
            tiling = replace(tiling, crop_context=context)
            provenance["crop_context"] = (f"{context}: the median framing of {framed} images of "
                                          f"{crop_context_from} under this detector (fit_crop_context)")
            write_bundle(staging, tiling=tiling, provenance=provenance, **contents)
    return {"bundle": str(out), "tiling": tiling.to_dict(), "detector_epoch": int(state["epoch"]),
            "classifier_from": str(source.root), "quality": quality_note,
            "crop_context": provenance.get("crop_context", f"{tiling.crop_context} from {source.root}")}


def fit_crop_context(bundle: Path, data: Path, max_images: int = 200, seed: int = 0) -> tuple[float, int]:
    """The crop context that frames a detected cell as the classifier's training images frame theirs.

    The classifier learned from single-cell images (a folder per class, e.g.
    PBC's, where the image is about 2.5 cell diameters wide); the device crops
    `crop_context` x a detection's longer side around it. This is the median,
    over up to `max_images` of `data`'s images (drawn with `seed`), of the
    image's longer side over the longer side of the bundle's most confident
    detection in it; with the number of images that had a detection.
    """
    from edge.runtime.engine import CellCounter
    paths = sorted(p for p in Path(data).glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{data} holds no images in class folders")
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), min(max_images, len(paths)), replace=False))]
    ratios = []
    with CellCounter(load_bundle(bundle), threads=1) as counter:
        for path in chosen:
            image = cv2.imread(str(path))
            if image is None:
                raise ValueError(f"cannot read image {path}")
            boxes, scores = counter.detect(image)
            if len(boxes):
                x0, y0, x1, y1 = boxes[int(np.argmax(scores))][:4]
                ratios.append(max(image.shape[:2]) / max(x1 - x0, y1 - y0, 1.0))
    if not ratios:
        raise ValueError(f"the detector finds no cell in the {len(chosen)} images drawn from {data}")
    return round(float(np.median(ratios)), 2), len(ratios)


def _quality_limits(recipe: dict, source: Bundle) -> tuple[QualityLimits | None, str]:
    """The field quality gate's limits: fitted on the run's real training fields, else the classifier bundle's."""
    if not recipe.get("data"):
        return source.quality, f"from {source.root} (the detector trained on synthetic fields only)"
    fields = [cv2.imread(str(sample.image_path)) for split in recipe["splits"]
              for sample in load_detection_dataset(recipe["data"], recipe["format"], split)]
    limits = fit_quality_limits(fields, source.quality or QualityLimits())
    return limits, (f"min_focus, stain_reference and max_stain_angle fitted on the {len(fields)} fields of "
                    f"{recipe['data']} {'+'.join(recipe['splits'])} (edge.runtime.quality.fit_quality_limits)")
