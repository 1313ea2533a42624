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
    n, h, w = images_bgr.shape[:3]
    if n == 0:
        return np.zeros((0, 3, h, w), dtype=np.float32)
    # OpenCV does the swap, scaling, normalisation and NCHW layout in one pass,
    # several times faster than the same arithmetic in NumPy on a frame of tiles.
    return cv2.dnn.blobFromImagesWithParams(list(images_bgr), _blob_params(norm, (w, h)))


def _blob_params(norm: Normalisation, size_wh: tuple[int, int]) -> "cv2.dnn.Image2BlobParams":
    """(x / 255 - mean) / std per RGB channel, as (x - 255 mean) * 1 / (255 std)."""
    params = cv2.dnn.Image2BlobParams()
    params.scalefactor = tuple(1.0 / (255.0 * s) for s in norm.std) + (0.0,)
    params.mean = tuple(255.0 * m for m in norm.mean) + (0.0,)
    params.swapRB = True
    params.ddepth = cv2.CV_32F
    params.size = size_wh
    return params
