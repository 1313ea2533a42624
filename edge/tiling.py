"""Overlapping tiles of a frame and stitching their detections back together.

Every tile owns a rectangle of the frame: neighbouring tiles split their
overlap at its middle, and edge tiles own up to the frame border. A detection is
kept only by the tile that owns its centre, so each cell is counted once. The
rule is exact when the overlap is at least the largest cell diameter: the cell
whose centre a tile owns then lies wholly inside that tile.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.boxes import box_iou


@dataclass(frozen=True)
class TileGrid:
    frame_size: tuple[int, int]  # width, height
    tile_size: int
    origins: np.ndarray  # (T, 2) int: x, y of each tile's top-left corner
    owned: np.ndarray    # (T, 4) float: x1, y1, x2, y2 of the region each tile owns

    def __len__(self) -> int:
        return len(self.origins)


def _axis_positions(length: int, tile: int, overlap: int) -> np.ndarray:
    """Tile starts along one axis: stride tile - overlap, the last flush with the end."""
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    stride = tile - overlap
    count = int(np.ceil((length - tile) / stride)) + 1
    starts = np.arange(count, dtype=np.int64) * stride
    starts[-1] = length - tile
    return np.unique(starts)


def _axis_ownership(starts: np.ndarray, tile: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Owned [lo, hi) along one axis: split each overlap at its middle."""
    cuts = (starts[1:] + starts[:-1] + tile) / 2.0
    lo = np.concatenate([[-np.inf], cuts])
    hi = np.concatenate([cuts, [np.inf]])
    return lo, hi


def make_grid(width: int, height: int, tile_size: int, overlap: int) -> TileGrid:
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap {overlap} must be in [0, tile size {tile_size})")
    xs, ys = _axis_positions(width, tile_size, overlap), _axis_positions(height, tile_size, overlap)
    x_lo, x_hi = _axis_ownership(xs, tile_size, width)
    y_lo, y_hi = _axis_ownership(ys, tile_size, height)
    gx, gy = np.meshgrid(np.arange(len(xs)), np.arange(len(ys)))
    gx, gy = gx.ravel(), gy.ravel()
    origins = np.stack([xs[gx], ys[gy]], axis=1)
    owned = np.stack([x_lo[gx], y_lo[gy], x_hi[gx], y_hi[gy]], axis=1)
    return TileGrid((width, height), tile_size, origins, owned)


def cut_tiles(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """(T, tile, tile, 3) tiles; a frame smaller than a tile is padded with its median colour."""
    t = grid.tile_size
    h, w = image.shape[:2]
    if h < t or w < t:
        fill = np.median(image.reshape(-1, image.shape[2]), axis=0).tolist()
        image = cv2.copyMakeBorder(image, 0, max(0, t - h), 0, max(0, t - w),
                                   cv2.BORDER_CONSTANT, value=fill)
    return np.stack([image[y:y + t, x:x + t] for x, y in grid.origins])


def stitch(boxes: np.ndarray, scores: np.ndarray, grid: TileGrid,
           score_threshold: float, duplicate_iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Tile detections (T, K, 4) and (T, K) -> frame boxes (N, 4) and scores (N,).

    Keeps detections above the score threshold whose centre lies in the region
    their tile owns and inside the frame. Two tiles can place the same cell's
    centre a pixel apart on either side of their shared cut; such pairs (IoU
    above `duplicate_iou`, from different tiles) keep only the higher score.
    """
    frame_boxes = boxes + np.tile(grid.origins, 2)[:, None, :]
    cx = (frame_boxes[..., 0] + frame_boxes[..., 2]) / 2
    cy = (frame_boxes[..., 1] + frame_boxes[..., 3]) / 2
    o = grid.owned[:, None, :]
    w, h = grid.frame_size
    keep = ((scores >= score_threshold)
            & (cx >= o[..., 0]) & (cx < o[..., 2]) & (cy >= o[..., 1]) & (cy < o[..., 3])
            & (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h))
    tile_of = np.broadcast_to(np.arange(len(grid))[:, None], keep.shape)[keep]
    kept, kept_scores = frame_boxes[keep], scores[keep]
    unique = _drop_cross_tile_duplicates(kept, kept_scores, tile_of, duplicate_iou)
    kept, kept_scores = kept[unique], kept_scores[unique]
    kept[:, [0, 2]] = kept[:, [0, 2]].clip(0, w)
    kept[:, [1, 3]] = kept[:, [1, 3]].clip(0, h)
    return kept.astype(np.float32), kept_scores.astype(np.float32)


def _drop_cross_tile_duplicates(boxes: np.ndarray, scores: np.ndarray, tile_of: np.ndarray,
                                iou_threshold: float) -> np.ndarray:
    """Indices to keep after removing lower-scored twins found by another tile."""
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes[order], boxes[order])
    twin = (iou > iou_threshold) & (tile_of[order][:, None] != tile_of[order][None, :])
    dropped = np.zeros(len(order), dtype=bool)
    for i in np.flatnonzero(twin.any(axis=1)):
        if not dropped[i]:
            dropped[i + 1:] |= twin[i, i + 1:]
    return np.sort(order[~dropped])
