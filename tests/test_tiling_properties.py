"""Stitching against whole-frame truth, for random cell layouts and random tile grids.

The oracle detector reports, in each tile, the visible part of every cell
(clipped to the tile, as a detector trained on clipped boxes would). Under the
conditions in edge.runtime.tiling's docstring (cells disjoint, at least
`corner_distance` wide and tall, overlap at least max(2, corner_distance) and
more than 2 * edge_tolerance) stitching must return each cell, clipped to the
frame, exactly once with its exact box: whatever its size, wherever it lies.
"""
from dataclasses import replace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.runtime.backends import Runner, TensorSpec
from edge.runtime.bundle import load_bundle
from edge.runtime.engine import CellCounter
from edge.runtime.tiling import TileGrid, _close_pairs, make_grid, stitch
from tests.helpers import SYNTHETIC_BUNDLE

CORNER_DISTANCE = 8.0  # stitch's default; layouts draw overlaps of at least this (> 2 * edge tolerance 2)
FAST = settings(max_examples=150, deadline=None)


def oracle_detections(cells: np.ndarray, grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    """(T, K, 4), (T, K): the visible part of every cell in every tile, in tile pixels."""
    t = grid.tile_size
    local = (cells[None] - np.tile(grid.origins, 2)[:, None, :]).clip(0, t)
    seen = (local[..., 2] - local[..., 0] > 1) & (local[..., 3] - local[..., 1] > 1)
    k = max(1, int(seen.sum(axis=1).max(initial=0)))
    boxes = np.zeros((len(grid), k, 4), np.float32)
    scores = np.zeros((len(grid), k), np.float32)
    for tile, mask in enumerate(seen):
        boxes[tile, :mask.sum()] = local[tile, mask]
        scores[tile, :mask.sum()] = 0.9
    return boxes, scores


def assert_same_boxes(found: np.ndarray, truth: np.ndarray) -> None:
    def rows(b):
        b = np.asarray(b, np.float32).reshape(-1, 4)
        return b[np.lexsort(b.T[::-1])]
    assert len(found) == len(truth), f"{len(found)} found for {len(truth)} cells:\n{rows(found)}\n{rows(truth)}"
    np.testing.assert_array_equal(rows(found), rows(truth))


def _lines(grid: TileGrid, axis: int) -> list[float]:
    """Where tile edges, ownership cuts and frame borders lie along one axis."""
    starts = np.unique(grid.origins[:, axis])
    owned = grid.owned[:, [axis, axis + 2]]
    return sorted({0.0, float(grid.frame_size[axis]), *map(float, starts),
                   *map(float, starts + grid.tile_size), *map(float, owned[np.isfinite(owned)])})


def _extent(draw, length: int, lines: list[float], small: float, large: float) -> tuple[float, float]:
    """A cell's extent along one axis: free, or with its centre or an edge on a tile line or cut."""
    side = draw(st.one_of(st.integers(16, int(2 * small)), st.integers(16, int(2 * large)))) / 2
    anchor = draw(st.sampled_from(["free", "centre", "low", "high"]))
    if anchor == "free":
        low = draw(st.integers(-int(2 * side), 2 * length)) / 2
    else:
        line = draw(st.sampled_from(lines))
        low = {"centre": line - side / 2, "low": line, "high": line - side}[anchor]
    return low, low + side


def _disjoint_in_frame(cells: list[tuple[float, float, float, float]], width: int, height: int,
                       min_side: float) -> np.ndarray:
    """Cells clipped to the frame, dropping those thinner than `min_side` or overlapping an earlier one."""
    kept: list[np.ndarray] = []
    for cell in np.asarray(cells, np.float64).reshape(-1, 4).clip(0, [width, height, width, height]):
        if min(cell[2] - cell[0], cell[3] - cell[1]) < min_side:
            continue
        if all(min(cell[2], k[2]) <= max(cell[0], k[0]) or min(cell[3], k[3]) <= max(cell[1], k[1])
               for k in kept):
            kept.append(cell)
    return np.asarray(kept, np.float64).reshape(-1, 4)


@st.composite
def layouts(draw, largest: str = "any") -> tuple[np.ndarray, TileGrid]:
    """A tile grid and disjoint cells on it; `largest` "overlap" keeps every cell within the overlap."""
    tile = draw(st.integers(16, 96))
    overlap = draw(st.integers(8, tile * 3 // 4))
    width, height = draw(st.integers(8, 4 * tile)), draw(st.integers(8, 4 * tile))
    grid = make_grid(width, height, tile, overlap)
    large = overlap if largest == "overlap" else 2.5 * tile
    small = min(overlap, large)
    lines_x, lines_y = _lines(grid, 0), _lines(grid, 1)
    cells = []
    for _ in range(draw(st.integers(0, 40))):
        x1, x2 = _extent(draw, width, lines_x, small, large)
        y1, y2 = _extent(draw, height, lines_y, small, large)
        cells.append((x1, y1, x2, y2))
    return _disjoint_in_frame(cells, width, height, CORNER_DISTANCE), grid


@FAST
@given(layouts())
def test_stitch_finds_every_cell_once_whatever_its_size(layout):
    cells, grid = layout
    boxes, scores = oracle_detections(cells, grid)
    found, _ = stitch(boxes, scores, grid, 0.5)
    assert_same_boxes(found, cells)


@FAST
@given(layouts(largest="overlap"))
def test_ownership_alone_is_exact_for_cells_within_the_overlap(layout):
    cells, grid = layout
    boxes, scores = oracle_detections(cells, grid)
    found, _ = stitch(boxes, scores, grid, 0.5, corner_distance=0, twin_margin=0)
    assert_same_boxes(found, cells)


@pytest.mark.parametrize("width,height,cell,parts", [
    (416, 416, [150, 150, 300, 300], 4),  # cut by the edges of both tile pairs: a four-tile corner
    (576, 256, [100, 100, 500, 200], 3),  # wider than a tile: the middle tile sees a full-width part
    (416, 416, [0, 0, 416, 416], 4),      # the whole frame
])
def test_corner_merge_joins_a_cell_larger_than_the_overlap(width, height, cell, parts):
    grid = make_grid(width, height, 256, 96)
    boxes, scores = oracle_detections(np.array([cell], np.float64), grid)
    found, _ = stitch(boxes, scores, grid, 0.5)
    assert_same_boxes(found, [cell])
    unmerged, _ = stitch(boxes, scores, grid, 0.5, corner_distance=0)
    assert len(unmerged) == parts, "ownership alone counts each part"


@pytest.mark.parametrize("top,bottom,merged", [
    (3, 3, True), (7.9, 7.9, True), (0, 15.8, True), (8.1, 8.1, False), (0, 16.2, False)])
def test_corner_merge_tolerates_misaligned_corners_up_to_the_corner_distance(top, bottom, merged):
    grid = make_grid(416, 256, 256, 96)  # two tiles, edges at x = 160 and 256
    boxes = np.zeros((2, 1, 4), np.float32)
    boxes[0, 0] = [100, 50, 256, 150]  # reaches the right edge of tile 0
    boxes[1, 0] = [0, 50 + top, 200, 150 + bottom]  # reaches the left edge of tile 1 (x = 160)
    found, _ = stitch(boxes, np.full((2, 1), 0.9, np.float32), grid, 0.5)
    if merged:
        assert_same_boxes(found, [[100, 50, 360, 150 + bottom]])
    else:
        assert len(found) == 2


def test_corner_merge_takes_c1_from_the_closest_corners_as_the_paper_does():
    """Parts that meet corner to corner: the top-top and bottom-bottom distances (9, 9) average
    under epsilon = 10, but the paper's C1 is the bottom-top pair (1) and C2 the top-bottom one (19)."""
    grid = make_grid(416, 256, 256, 96)
    boxes = np.zeros((2, 1, 4), np.float32)
    boxes[0, 0] = [100, 50, 256, 60]
    boxes[1, 0] = [0, 59, 200, 69]
    found, _ = stitch(boxes, np.full((2, 1), 0.9, np.float32), grid, 0.5, corner_distance=10)
    assert len(found) == 2


def test_corner_merge_needs_an_overlap_wider_than_twice_the_edge_tolerance():
    """The limit of the exactness conditions: two touching cells across a 4-pixel overlap join."""
    grid = make_grid(508, 256, 256, 4)  # tile 0 ends at 256, tile 1 starts at 252
    cells = np.array([[200, 40, 254, 120], [254, 40, 300, 120]], np.float64)
    boxes, scores = oracle_detections(cells, grid)
    assert len(stitch(boxes, scores, grid, 0.5)[0]) == 1
    assert_same_boxes(stitch(boxes, scores, grid, 0.5, edge_tolerance=1.9)[0], cells)


def test_twins_at_a_four_tile_corner_keep_the_best():
    grid = make_grid(416, 416, 256, 96)  # cuts at 208
    cell = np.array([168.0, 168, 248, 248])
    jitter = np.array([[-4, -4], [4, -4], [-4, 4], [4, 4]])  # each in its own tile's quarter
    boxes = (cell + np.tile(jitter, 2) - np.tile(grid.origins, 2)).astype(np.float32)[:, None, :]
    scores = np.array([[0.7], [0.95], [0.8], [0.9]], np.float32)
    found, kept_scores = stitch(boxes, scores, grid, 0.5)
    assert len(found) == 1 and kept_scores[0] == pytest.approx(0.95)


def test_stitching_leaves_duplicates_within_one_tile_alone():
    """Merging and twin suppression join detections of different tiles only."""
    grid = make_grid(416, 256, 256, 96)  # tiles at x = 0 and 160, cut at 208
    boxes = np.zeros((2, 2, 4), np.float32)
    boxes[0] = [[100, 50, 256, 150], [101, 50, 256, 150]]  # both reach tile 0's right edge
    boxes[1] = [[32, 100, 72, 140], [33, 100, 73, 140]]  # centres 4 and 4.5 pixels past the cut
    found, _ = stitch(boxes, np.full((2, 2), 0.9, np.float32), grid, 0.5)
    assert len(found) == 4


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(-50, 50), st.floats(-50, 50)), max_size=60),
       st.floats(0.5, 20))
def test_close_pairs_equals_all_pairs(points, radius):
    key = np.array([p[0] for p in points], np.int64)
    pos = np.array([p[1:] for p in points], np.float64).reshape(-1, 2)
    i, j = _close_pairs(key, pos, radius)
    expected = {(a, b) for a in range(len(pos)) for b in range(a + 1, len(pos))
                if key[a] == key[b] and (np.abs(pos[a] - pos[b]) < radius).all()}
    assert sorted(zip(i.tolist(), j.tolist())) == sorted(expected)


# ------------------------------------------------------------ several frames in one batch

class RectangleDetector(Runner):
    """Finds white rectangles on black: the visible part of each, from the tile's pixels alone."""

    def __init__(self, tile: int, static_batch: int | None = None, k: int = 64):
        self.tile, self.static_batch, self.k = tile, static_batch, k
        self.batches: list[int] = []

    @property
    def inputs(self):
        return [TensorSpec("image", (self.static_batch, 3, self.tile, self.tile), "float32")]

    @property
    def outputs(self):
        return [TensorSpec("boxes", (self.static_batch, self.k, 4), "float32"),
                TensorSpec("scores", (self.static_batch, self.k), "float32")]

    def infer(self, feed):
        x = feed["image"]
        self.batches.append(len(x))
        boxes = np.zeros((len(x), self.k, 4), np.float32)
        scores = np.zeros((len(x), self.k), np.float32)
        for t, tile in enumerate(x):
            n, _, stats, _ = cv2.connectedComponentsWithStats((tile[0] > 0).astype(np.uint8), connectivity=4)
            found = stats[1:, :4].astype(np.float32)
            boxes[t, :n - 1] = np.concatenate([found[:, :2], found[:, :2] + found[:, 2:]], axis=1)
            scores[t, :n - 1] = 0.9
        return {"boxes": boxes, "scores": scores}


def _rectangle_frame(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A black frame with white, separated rectangles of 10 to 180 pixels, and their boxes."""
    rng = np.random.default_rng(seed)
    sides = rng.integers(10, [[60, 60]] * 30 + [[180, 180]] * 5)
    corners = rng.integers(0, [width, height], size=(len(sides), 2))
    grown = np.concatenate([corners - 1, corners + sides + 1], axis=1)  # keep a one-pixel gap
    cells = _disjoint_in_frame(grown.tolist(), width, height, 12)
    cells = (cells + [1, 1, -1, -1]).astype(np.int64)
    image = np.zeros((height, width, 3), np.uint8)
    for x1, y1, x2, y2 in cells:
        image[y1:y2, x1:x2] = 255
    return image, cells


@pytest.fixture(scope="module")
def counter():
    with CellCounter(load_bundle(SYNTHETIC_BUNDLE), threads=1) as c:
        yield c


@pytest.mark.parametrize("static_batch,batch", [(None, None), (None, 5), (4, None)])
def test_detect_many_equals_detect_per_frame(counter, static_batch, batch):
    bundle = counter.bundle
    tile = bundle.tiling.tile_size
    counter.detector = RectangleDetector(tile, static_batch)
    if static_batch:
        counter.bundle = replace(bundle, detector=replace(
            bundle.detector, input_shape=(static_batch,) + bundle.detector.input_shape[1:]))
    try:
        frames = [_rectangle_frame(w, h, seed) for seed, (w, h) in
                  enumerate([(700, 500), (200, 150), (1000, 300), (257, 600)])]
        together = counter.detect_many([image for image, _ in frames], batch=batch)
        batches = list(counter.detector.batches)
        one_by_one = [counter.detect(image) for image, _ in frames]
    finally:
        counter.bundle = bundle
    if static_batch:
        assert set(batches) == {static_batch}
    elif batch:
        assert max(batches) == batch
    for (boxes, scores), (alone, alone_scores), (_, cells) in zip(together, one_by_one, frames):
        np.testing.assert_array_equal(boxes, alone)
        np.testing.assert_array_equal(scores, alone_scores)
        assert_same_boxes(boxes, cells)
