"""A large camera frame tiled from real fields: what a larger sensor at the same magnification sees.

`mosaic(fields, 6, 6)` lays 36 fields of 640 x 480 side by side into one
3840 x 2880 frame. The fields are cycled through, each in turn flipped or
turned (shape-preserving: as is, left-right, up-down, half a turn), so no
field sits next to an identical copy of itself and a few fields fill a large
frame. The cells keep their size in pixels; only the seams between fields are
not what a camera would see (a cell there is cut, as at a frame's edge).
"""
from __future__ import annotations

import numpy as np

TURNS = 4  # as is, mirrored left-right, mirrored up-down, half a turn


def turned(image: np.ndarray, turn: int) -> np.ndarray:
    """`image` mirrored or turned: one of the TURNS shape-preserving views."""
    return image[::-1 if turn & 2 else 1, ::-1 if turn & 1 else 1]


def mosaic(fields: list[np.ndarray], across: int, down: int, start: int = 0) -> np.ndarray:
    """`across` x `down` fields (all of one shape) in one frame; `start` shifts the cycle of views,
    so successive mosaics of the same fields differ."""
    if not fields or across < 1 or down < 1:
        raise ValueError("a mosaic needs at least one field and one row and column")
    shape = fields[0].shape
    if any(f.shape != shape for f in fields):
        raise ValueError(f"mosaic fields must share one size; got {sorted({f.shape for f in fields})}")
    h, w = shape[:2]
    views = [(field, turn) for turn in range(TURNS) for field in range(len(fields))]
    frame = np.empty((down * h, across * w) + shape[2:], fields[0].dtype)
    placed: dict[tuple[int, int], tuple[int, int]] = {}
    k = start
    for r in range(down):
        for c in range(across):
            while views[k % len(views)] in (placed.get((r, c - 1)), placed.get((r - 1, c))):
                k += 1
            field, turn = placed[r, c] = views[k % len(views)]
            frame[r * h:(r + 1) * h, c * w:(c + 1) * w] = turned(fields[field], turn)
            k += 1
    return frame
