"""Run-time stain normalisation: each field's colours moved toward the classifier's own lab.

Reinhard et al. (2001): in CIELAB, each channel of the field is shifted and
scaled so that its mean and standard deviation become the reference's, the
averages over the classifier's training images. The statistics are taken on
the whole field (shrunk, which changes them little), and the transform is
applied to the classifier's views only: the detector keeps the field as the
camera gave it, since it is trained with stain augmentation on fields.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

STATS_AREA_PX = 250_000  # fields are shrunk to about this many pixels for their statistics


@dataclass(frozen=True)
class StainReference:
    lab_mean: tuple[float, float, float]  # OpenCV 8-bit LAB, as cv2.COLOR_BGR2LAB gives
    lab_std: tuple[float, float, float]
    source: str = ""

    def to_dict(self) -> dict:
        return {"lab_mean": list(self.lab_mean), "lab_std": list(self.lab_std), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "StainReference":
        mean, std = d.get("lab_mean"), d.get("lab_std")
        for name, v in (("lab_mean", mean), ("lab_std", std)):
            if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and math.isfinite(x)
                                                               for x in v)):
                raise ValueError(f"stain_normalisation.{name} must be three finite numbers")
        if not all(0 <= x <= 255 for x in mean) or not all(0 < x <= 128 for x in std):
            raise ValueError("stain_normalisation: lab_mean must lie in [0, 255] and lab_std in (0, 128]")
        return cls(tuple(map(float, mean)), tuple(map(float, std)), str(d.get("source", "")))


def lab_statistics(image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel LAB mean and standard deviation of a BGR uint8 image (shrunk first if large)."""
    shrink = min(1.0, math.sqrt(STATS_AREA_PX / (image_bgr.shape[0] * image_bgr.shape[1])))
    if shrink < 1.0:
        image_bgr = cv2.resize(image_bgr, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float32)
    return lab.mean(0), lab.std(0)


def reference_from_images(images, source: str) -> StainReference:
    """The reference: the average LAB mean and standard deviation of the given BGR images."""
    stats = [lab_statistics(im) for im in images]
    if not stats:
        raise ValueError("no images to take a stain reference from")
    mean = np.mean([s[0] for s in stats], axis=0)
    std = np.mean([s[1] for s in stats], axis=0)
    return StainReference(tuple(map(float, mean)), tuple(map(float, std)), source)


class StainNormaliser:
    """Moves images (a field's views) from the field's LAB statistics to the reference's."""

    def __init__(self, reference: StainReference):
        self.mean = np.asarray(reference.lab_mean, np.float32)
        self.std = np.asarray(reference.lab_std, np.float32)

    def transform_for(self, field_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gain, offset) per LAB channel taking this field's statistics to the reference's."""
        mean, std = lab_statistics(field_bgr)
        gain = self.std / np.maximum(std, 1e-3)
        return gain, self.mean - mean * gain

    @staticmethod
    def apply(images_bgr: np.ndarray, gain: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """`images_bgr` (..., H, W, 3) uint8 with LAB = LAB * gain + offset, back in BGR uint8."""
        if images_bgr.size == 0:
            return images_bgr
        flat = images_bgr.reshape(-1, images_bgr.shape[-2], 3)  # cvtColor takes 2-D images: stack rows
        lab = cv2.cvtColor(flat, cv2.COLOR_BGR2LAB).astype(np.float32) * gain + offset
        out = cv2.cvtColor(np.clip(lab + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)
        return out.reshape(images_bgr.shape)

    def normalise_views(self, field_bgr: np.ndarray, views: np.ndarray) -> np.ndarray:
        gain, offset = self.transform_for(field_bgr)
        return self.apply(views, gain, offset)
