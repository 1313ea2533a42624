"""Frames as the engine sees them, and normalising what cameras and files deliver."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class FrameError(ValueError):
    """A frame the engine cannot count; the loop logs it and counts a skip."""


@dataclass
class Frame:
    frame_id: int
    image: np.ndarray  # (H, W, 3) uint8 BGR
    timestamp: float
    origin: str = ""   # where it came from: a file name, a camera, a synthetic seed


MIN_SIDE = 16
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def as_bgr8(image: np.ndarray | None) -> np.ndarray:
    """Grey, BGRA and 16-bit frames -> (H, W, 3) uint8 BGR; refuse what cannot be a field."""
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        raise FrameError("empty or unreadable frame")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise FrameError(f"frame of shape {image.shape} is not a grey, BGR or BGRA image")
    if min(image.shape[:2]) < MIN_SIDE:
        raise FrameError(f"frame of {image.shape[1]}x{image.shape[0]} pixels is too small to hold a cell")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise FrameError(f"frame of dtype {image.dtype} is not 8- or 16-bit")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[..., :3]
    return np.ascontiguousarray(image)
