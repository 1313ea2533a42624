"""Classifier data cut from synthetic fields exactly as the device cuts crops.

Crops come from `edge.runtime.cell_view.cell_views` around ground-truth boxes jittered like
a detector's boxes, so the classifier trains on the view it will get on the
device, border-cut cells and neighbours included.
"""
from __future__ import annotations

import numpy as np

from edge.runtime.cell_view import cell_views
from edge.synthetic.smear import SmearConfig, render_field


def synthetic_cell_crops(n: int, size: int, context: float, seed: int,
                         box_jitter: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """About `n` crops (N, size, size, 3) uint8 BGR and their labels, from seeded fields.

    Each field draws its own blur, noise, illumination and stain shift, so the
    data carry the variation a real microscope shows.
    """
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    total, field_seed = 0, seed * 100_003
    while total < n:
        config = SmearConfig(
            blur_sigma=float(rng.uniform(0, 1.2)), noise_std=float(rng.uniform(0, 4)),
            illumination=float(rng.uniform(0, 0.4)), stain_shift=float(rng.uniform(0, 0.3)),
            nucleated_per_mpx=80.0)
        field = render_field(config, seed=field_seed)
        field_seed += 1
        if len(field.boxes) == 0:
            continue
        boxes = _jitter(field.boxes, box_jitter, rng)
        crops.append(cell_views(field.image, boxes, size, context))
        labels.append(field.labels)
        total += len(field.boxes)
    return np.concatenate(crops)[:n], np.concatenate(labels)[:n].astype(np.int64)


def _jitter(boxes: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Move each box edge by up to `amount` of the box size."""
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    return (boxes + rng.uniform(-amount, amount, boxes.shape) * wh).astype(np.float32)
