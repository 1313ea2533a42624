"""The engine's counting path with its classifier in torch eager FP32: the batched torch baseline.

Tiles, detector batches, stitching, cell views and their preprocessing are the
engine's own (`CellCounter`); only the classifier call is a torch module's,
CLASSIFIER_BATCH cells at a time as the engine batches them. Timed against the
engine on an FP32 bundle, it isolates what ONNX Runtime gains over torch eager.
"""
from __future__ import annotations

import numpy as np
import torch

from edge.runtime.backends.base import CLASSIFIER_BATCH
from edge.runtime.bundle import Bundle
from edge.runtime.engine import CellCounter, Clock, untimed
from edge.runtime.preprocess import to_model_input


class EagerClassifierCounter(CellCounter):
    def __init__(self, bundle: Bundle, classifier: torch.nn.Module, threads: int | None = None):
        super().__init__(bundle, threads=threads)
        self.torch_classifier = classifier

    @torch.no_grad()
    def classify_crops(self, crops: np.ndarray, clock: Clock = untimed) -> np.ndarray:
        spec = self.bundle.classifier
        parts = [np.zeros((0, len(self.bundle.class_names)), np.float32)]
        for i in range(0, len(crops), CLASSIFIER_BATCH):
            with clock("preprocess"):
                x = torch.from_numpy(to_model_input(crops[i:i + CLASSIFIER_BATCH], None, spec.normalisation))
            with clock("classify"):
                parts.append(self.torch_classifier(x).numpy())
        return np.concatenate(parts)
