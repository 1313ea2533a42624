"""Square cell crops around detected boxes, the classifier's view of a cell."""
from __future__ import annotations

import cv2
import numpy as np


def crop_cells(image: np.ndarray, boxes: np.ndarray, size: int, context: float) -> np.ndarray:
    """(N, size, size, 3) crops centred on each box, side = context x the longer box side.

    Parts of a crop outside the frame repeat the border pixels, so a cell cut by
    the frame edge is still centred in its crop.
    """
    out = np.empty((len(boxes), size, size, image.shape[2]), dtype=image.dtype)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * context
    for i, ((cx, cy), side) in enumerate(zip(centres, np.maximum(sides, 2.0))):
        scale = size / side
        # affine map taking the crop square onto the output, sampled with area-like smoothing
        m = np.array([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]])
        out[i] = cv2.warpAffine(image, m, (size, size),
                                flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out
