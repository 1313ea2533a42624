"""The one preprocessing path shared by training, export and the device.

Images travel through the engine as OpenCV BGR uint8 arrays (H, W, 3). A model
sees them resized, converted to RGB, scaled to [0, 1], normalised with the
bundle's mean and std, and laid out NCHW float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


def to_model_input(images_bgr: np.ndarray, size: tuple[int, int] | None,
                   norm: Normalisation) -> np.ndarray:
    """Batch of BGR uint8 images (N, H, W, 3) -> float32 NCHW, RGB, normalised.

    `size` is (height, width); None keeps the images' own size.
    """
    if images_bgr.ndim != 4 or images_bgr.shape[-1] != 3:
        raise ValueError(f"expected a batch of BGR images (N, H, W, 3), got shape {images_bgr.shape}")
    if size is not None and images_bgr.shape[1:3] != tuple(size):
        h, w = size
        images_bgr = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
                               for im in images_bgr])
    x = images_bgr[..., ::-1].astype(np.float32) * (1.0 / 255.0)
    x -= np.asarray(norm.mean, dtype=np.float32)
    x /= np.asarray(norm.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
