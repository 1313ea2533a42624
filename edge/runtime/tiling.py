"""Overlapping tiles of a frame and stitching their detections back together.

Every tile owns a rectangle of the frame: neighbouring tiles split their overlap
at its middle (the ownership cut), and edge tiles own up to the frame border.
Stitching takes time linear in the number of detections, in three steps:

1. Centre ownership: a detection is kept only by the tile that owns its centre.
   Alone it is exact when the overlap is at least the largest cell diameter: the
   cell whose centre a tile owns then lies wholly inside that tile.
2. Corner-distance merge (`merge_cut_cells`, the stitching paper's fast
   stitching model): a cell larger than the overlap reaches past the edges of
   both neighbouring tiles, each reports its part, both parts pass ownership,
   and the merge joins them into one box.
3. Twin suppression: two tiles may place one cell's centre a pixel apart on
   either side of their cut; of such a pair only the higher score stays.

With a detector that reports, in each tile, the visible part of every cell, the
result is every cell (clipped to the frame) once and with its exact box, for
cells of any size, when distinct cells do not overlap (they may touch), every
cell is at least `corner_distance` wide and tall, and the overlap is at least
max(2, corner_distance) pixels and more than 2 * `edge_tolerance`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np



@dataclass(frozen=True)
class TileGrid:
    frame_size: tuple[int, int]  # width, height
    tile_size: int
    origins: np.ndarray  # (T, 2) int: x, y of each tile's top-left corner
    owned: np.ndarray    # (T, 4) float: x1, y1, x2, y2 of the region each tile owns
    index: np.ndarray    # (T, 2) int: column, row of each tile
    shape: tuple[int, int]  # columns, rows

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
    return TileGrid((width, height), tile_size, origins, owned,
                    np.stack([gx, gy], axis=1), (len(xs), len(ys)))


def cut_tiles(image: np.ndarray, grid: TileGrid, which: slice = slice(None)) -> np.ndarray:
    """(T, tile, tile, 3) tiles (`which` of the grid's); a frame smaller than a tile is padded
    with its median colour."""
    t = grid.tile_size
    h, w = image.shape[:2]
    if h < t or w < t:
        fill = np.median(image.reshape(-1, image.shape[2]), axis=0).tolist()
        image = cv2.copyMakeBorder(image, 0, max(0, t - h), 0, max(0, t - w),
                                   cv2.BORDER_CONSTANT, value=fill)
    return np.stack([image[y:y + t, x:x + t] for x, y in grid.origins[which]])


def stitch(boxes: np.ndarray, scores: np.ndarray, grid: TileGrid, score_threshold: float,
           duplicate_iou: float = 0.5, *, twin_margin: float = 16.0,
           corner_distance: float = 8.0, edge_tolerance: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Tile detections (T, K, 4) and (T, K) -> frame boxes (N, 4) and scores (N,).

    Keeps detections above the score threshold whose centre lies in the region
    their tile owns and inside the frame; merges the parts of cells cut by both
    tiles' edges (`merge_cut_cells`; corner_distance=0 turns it off); of twins
    from different tiles (centres closer than `twin_margin` in x and y, IoU
    above `duplicate_iou`) keeps the higher scored.
    """
    kept, kept_scores, tile_of = _owned_detections(boxes, scores, grid, score_threshold)
    kept, kept_scores, tile_of = merge_cut_cells(kept, kept_scores, tile_of, grid,
                                                 corner_distance, edge_tolerance)
    unique = ~_twins_to_drop(kept, kept_scores, tile_of, grid, duplicate_iou, twin_margin)
    kept, kept_scores = kept[unique], kept_scores[unique]
    w, h = grid.frame_size
    kept[:, [0, 2]] = kept[:, [0, 2]].clip(0, w)
    kept[:, [1, 3]] = kept[:, [1, 3]].clip(0, h)
    return kept.astype(np.float32), kept_scores.astype(np.float32)


def _owned_detections(boxes: np.ndarray, scores: np.ndarray, grid: TileGrid,
                      score_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame boxes, scores and tile indices of the detections whose centre their tile owns."""
    tile_of, slot = np.nonzero(scores >= score_threshold)
    frame_boxes = boxes[tile_of, slot].astype(np.float64) + np.tile(grid.origins, 2)[tile_of]
    centre = (frame_boxes[:, :2] + frame_boxes[:, 2:]) / 2
    owned = grid.owned[tile_of]
    keep = ((centre >= owned[:, :2]) & (centre < owned[:, 2:])
            & (centre >= 0) & (centre < grid.frame_size)).all(axis=1)
    return frame_boxes[keep], scores[tile_of[keep], slot[keep]], tile_of[keep]


def merge_cut_cells(boxes: np.ndarray, scores: np.ndarray, tile_of: np.ndarray, grid: TileGrid,
                    corner_distance: float, edge_tolerance: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge the parts of a cell that neighbouring tiles each saw cut by their edge.

    The stitching paper's rule, for two parts from 4-neighbouring tiles: zeta =
    (C1 + C2) / 2, with C1 the smallest distance between a corner of one and a
    corner of the other, and C2 the smallest between the corners left; zeta <
    `corner_distance` (the paper's epsilon) merges them into their union. The
    paper's patches meet at a shared edge; these tiles overlap, so only parts
    that reach (within `edge_tolerance`) the tile edge facing the neighbour take
    part, each projected onto the ownership cut between the two tiles, where
    they meet as the paper's parts do. The corners are those on the cut; the
    others lie about half the overlap or more away from it. Merging is transitive:
    the four parts of a cell where four tiles meet become one box, with the
    best part's score.
    """
    if corner_distance <= 0 or len(boxes) == 0:
        return boxes, scores, tile_of
    part, edge, side, along = _edge_parts(boxes, tile_of, grid, edge_tolerance)
    # zeta is at least the mean of the top-top and bottom-bottom distances, so
    # pairs closer than 2 * corner_distance in both include every pair to merge
    i, j = _close_pairs(edge, along, 2 * corner_distance)
    joined = (side[i] != side[j]) & (_corner_zeta(along[i], along[j]) < corner_distance)
    if not joined.any():
        return boxes, scores, tile_of
    root = _components(len(boxes), part[i[joined]], part[j[joined]])
    member = np.flatnonzero(root != np.arange(len(boxes)))  # folded into their component's root
    merged, best = boxes.copy(), scores.copy()
    np.minimum.at(merged, (root[member], slice(0, 2)), boxes[member, :2])
    np.maximum.at(merged, (root[member], slice(2, 4)), boxes[member, 2:])
    np.maximum.at(best, root[member], scores[member])
    keep = np.ones(len(boxes), dtype=bool)
    keep[member] = False
    return merged[keep], best[keep], tile_of[keep]


def _corner_zeta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The paper's (C1 + C2) / 2 for parts whose two corners on a cut lie at a, b (n, 2) along it."""
    straight = np.abs(a - b)           # top with top, bottom with bottom
    crossed = np.abs(a - b[:, ::-1])  # top with bottom, bottom with top
    # C2 pairs the two corners that C1 left, so it is the other distance of C1's matching
    c1_straight = straight.min(axis=1) <= crossed.min(axis=1)
    return np.where(c1_straight, straight.mean(axis=1), crossed.mean(axis=1))


def _edge_parts(boxes: np.ndarray, tile_of: np.ndarray, grid: TileGrid, tolerance: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One row per (box, inner tile edge it reaches): box index, edge id, side, coordinates along.

    An edge id names the cut between two 4-neighbouring tiles; side is 0 for the
    left or upper tile. The coordinates along are the box's extent along the cut.
    """
    columns, rows = grid.shape
    col, row = grid.index[tile_of].T
    near = grid.origins[tile_of] + tolerance
    far = grid.origins[tile_of] + grid.tile_size - tolerance
    right_cut = row * columns + col  # vertical cuts, then horizontal ones
    lower_cut = columns * rows + right_cut
    reaches = [  # (reaches the edge, edge id, side, box columns along the cut)
        ((col < columns - 1) & (boxes[:, 2] >= far[:, 0]), right_cut, 0, [1, 3]),
        ((col > 0) & (boxes[:, 0] <= near[:, 0]), right_cut - 1, 1, [1, 3]),
        ((row < rows - 1) & (boxes[:, 3] >= far[:, 1]), lower_cut, 0, [0, 2]),
        ((row > 0) & (boxes[:, 1] <= near[:, 1]), lower_cut - columns, 1, [0, 2]),
    ]
    picks = [np.flatnonzero(mask) for mask, *_ in reaches]
    return (np.concatenate(picks),
            np.concatenate([ids[p] for p, (_, ids, _, _) in zip(picks, reaches)]),
            np.concatenate([np.full(len(p), s) for p, (_, _, s, _) in zip(picks, reaches)]),
            np.concatenate([boxes[p][:, cols] for p, (_, _, _, cols) in zip(picks, reaches)]))


def _twins_to_drop(boxes: np.ndarray, scores: np.ndarray, tile_of: np.ndarray, grid: TileGrid,
                   iou_threshold: float, margin: float) -> np.ndarray:
    """Mask of detections that a twin from another tile outscores (ties: the lower index stays).

    Twins sit on either side of a cut, so only centres within `margin` of their
    tile's ownership cut are candidates, and they are paired through a grid hash.
    """
    dropped = np.zeros(len(boxes), dtype=bool)
    if margin <= 0:
        return dropped
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    owned = grid.owned[tile_of]
    near_cut = ((centre - owned[:, :2] < margin) | (owned[:, 2:] - centre < margin)).any(axis=1)
    candidates = np.flatnonzero(near_cut)
    i, j = _close_pairs(np.zeros(len(candidates), np.int64), centre[candidates], margin)
    i, j = candidates[i], candidates[j]
    twin = (tile_of[i] != tile_of[j]) & (_paired_iou(boxes[i], boxes[j]) > iou_threshold)
    i, j = i[twin], j[twin]
    dropped[np.where(scores[i] >= scores[j], j, i)] = True
    return dropped


def _paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[k] with b[k] for each k."""
    inter = (np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2])).clip(0).prod(axis=1)
    union = (a[:, 2:] - a[:, :2]).prod(axis=1) + (b[:, 2:] - b[:, :2]).prod(axis=1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _close_pairs(key: np.ndarray, pos: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j with equal `key` and every coordinate of `pos` (n, d) closer than `radius`.

    Points are hashed to cubes of side `radius` and compared only with points of
    the same or a neighbouring cube: linear time while the number of points
    within `radius` of any one point is bounded.
    """
    n, dims = pos.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cube = np.floor(pos / radius).astype(np.int64)
    cube -= cube.min(axis=0)
    span = cube.max(axis=0) + 2  # a spare value, so that no neighbour's code is another cube's
    stride = np.array([np.prod(span[d + 1:]) for d in range(dims)], dtype=np.int64)
    code = key.astype(np.int64) * np.prod(span) + cube @ stride
    offsets = np.array(list(itertools.product((-1, 0, 1), repeat=dims))) @ stride
    order = np.argsort(code, kind="stable")
    ordered = code[order]
    target = (code[:, None] + offsets[None, :]).ravel()
    lo = np.searchsorted(ordered, target, "left")
    count = np.searchsorted(ordered, target, "right") - lo
    i = np.repeat(np.repeat(np.arange(n), len(offsets)), count)
    j = order[np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())]
    close = (i < j) & (np.abs(pos[i] - pos[j]) < radius).all(axis=1)
    return i[close], j[close]


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of n nodes joined by the edges a[k]-b[k]: each node's smallest member."""
    root = np.arange(n)
    while True:
        low = np.minimum(root[a], root[b])
        new = root.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]
        if np.array_equal(new, root):
            return root
        root = new
