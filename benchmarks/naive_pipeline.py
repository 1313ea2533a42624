"""The naive reference pipeline that the engine's speed is measured against.

What a researcher writes first, end to end on one field: the torch models in
eager FP32; the frame cut into the engine's overlapping tiles and detected one
tile at a time; the tiles' boxes merged by NMS over the whole frame; then every
cell cropped, preprocessed and classified on its own; the same CCL decision and
tally. Crops, preprocessing and the decision rule are the engine's, so the
difference is batching, the runtime and the stitching.

    from benchmarks.naive_pipeline import NaivePipeline, load_classifier
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.tiled_vs_naive import naive_detect
from edge.runtime.bundle import Bundle
from edge.runtime.cell_view import cell_views
from edge.runtime.decision import Decisions, RejectRule
from edge.runtime.preprocess import to_model_input
from edge.runtime.stain_normaliser import StainNormaliser
from export.models.classifier import build_classifier

# The torch checkpoints the synthetic bundle (tests.bundles.SYNTHETIC_BUNDLE) was exported from
# (`edge export synthetic-bundle` writes them): the benchmarks on synthetic fields compare the two.
DETECTOR_CHECKPOINT = Path("runs/synthetic-bundle/detector/last.pt")
CLASSIFIER_CHECKPOINT = Path("runs/synthetic-bundle/classifier/last.pt")
CLASSIFIER_ARCH = "crossformer_tiny_test"  # the synthetic bundle's, from its provenance


def load_classifier(checkpoint: Path, bundle: Bundle, arch: str = CLASSIFIER_ARCH) -> torch.nn.Module:
    model = build_classifier(arch, bundle.classifier.input_hw[0], len(bundle.class_names),
                             head=bundle.classifier_head)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return model.eval()


class NaivePipeline:
    """`float32=True` preprocesses tiles in float32 rather than NumPy's float64; `batch_cells=True`
    classifies all of a field's cells in one torch call rather than one call per cell."""

    def __init__(self, detector: torch.nn.Module, classifier: torch.nn.Module, bundle: Bundle,
                 float32: bool = False, batch_cells: bool = False):
        self.detector, self.classifier, self.bundle = detector, classifier, bundle
        self.dtype = np.float32 if float32 else np.float64
        self.batch_cells = batch_cells
        self.rule = RejectRule(bundle)
        self.normaliser = StainNormaliser(bundle.stain_reference) if bundle.stain_reference else None

    @torch.no_grad()
    def count_field(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, Decisions]:
        """Boxes (N, 4), class scores (N, C) and decisions for one BGR field."""
        t, spec = self.bundle.tiling, self.bundle.classifier
        scaled = image if t.scale == 1 else cv2.resize(image, None, fx=t.scale, fy=t.scale,
                                                       interpolation=cv2.INTER_AREA)
        boxes = naive_detect(self.detector, scaled, t.tile_size, t.overlap, t.score_threshold,
                             self.bundle.detector.normalisation, self.dtype) / np.float32(t.scale)
        if self.batch_cells:
            x = to_model_input(self._views(image, boxes), None, spec.normalisation)
            scores = self.classifier(torch.from_numpy(x)).numpy() if len(boxes) else \
                np.zeros((0, len(self.bundle.class_names)), np.float32)
        else:
            scores = np.zeros((len(boxes), len(self.bundle.class_names)), np.float32)
            for i, box in enumerate(boxes):
                x = to_model_input(self._views(image, box[None]), None, spec.normalisation)
                scores[i] = self.classifier(torch.from_numpy(x))[0].numpy()
        return boxes, scores, self.rule.decide(scores)

    def _views(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        views = cell_views(image, boxes, self.bundle.classifier.input_hw[0], self.bundle.tiling.crop_context)
        return views if self.normaliser is None else self.normaliser.normalise_views(image, views)
