import numpy as np
import pytest

from edge.runtime.boxes import box_iou
from edge.runtime.tiling import cut_tiles, make_grid, stitch


@pytest.mark.parametrize("w,h,tile,overlap", [(640, 480, 256, 96), (100, 80, 256, 96),
                                              (1000, 257, 128, 32), (4096, 3000, 512, 128)])
def test_grid_covers_frame_and_ownership_partitions_it(w, h, tile, overlap):
    grid = make_grid(w, h, tile, overlap)
    assert (grid.origins >= 0).all()
    columns, rows = grid.shape
    assert len(grid) == columns * rows
    assert (np.unique(grid.origins[:, 0], return_inverse=True)[1] == grid.index[:, 0]).all()
    assert (np.unique(grid.origins[:, 1], return_inverse=True)[1] == grid.index[:, 1]).all()
    if w >= tile:
        assert grid.origins[:, 0].max() + tile == w
    if h >= tile:
        assert grid.origins[:, 1].max() + tile == h
    # every pixel centre of the frame is owned by exactly one tile, and lies inside it
    xs, ys = np.meshgrid(np.arange(0, w, 7) + 0.5, np.arange(0, h, 7) + 0.5)
    px, py = xs.ravel()[:, None], ys.ravel()[:, None]
    o = grid.owned[None]
    owners = (px >= o[..., 0]) & (px < o[..., 2]) & (py >= o[..., 1]) & (py < o[..., 3])
    assert (owners.sum(axis=1) == 1).all()
    tile_of = owners.argmax(axis=1)
    ox, oy = grid.origins[tile_of, 0], grid.origins[tile_of, 1]
    assert ((px[:, 0] >= ox) & (px[:, 0] < ox + tile) & (py[:, 0] >= oy) & (py[:, 0] < oy + tile)).all()


def test_owned_region_keeps_half_the_overlap_from_each_tile_edge():
    grid = make_grid(640, 480, 256, 96)
    for (x, y), (x1, y1, x2, y2) in zip(grid.origins, grid.owned):
        for lo, hi, start in ((x1, x2, x), (y1, y2, y)):
            if np.isfinite(lo):
                assert lo - start >= 48
            if np.isfinite(hi):
                assert start + 256 - hi >= 48


def test_cut_tiles_pads_small_frames():
    image = np.full((100, 80, 3), 200, np.uint8)
    grid = make_grid(80, 100, 128, 32)
    tiles = cut_tiles(image, grid)
    assert tiles.shape == (1, 128, 128, 3)
    assert (tiles[0, :100, :80] == 200).all()


def _visible_boxes(boxes, origin, tile):
    """What a perfect detector reports in one tile: the visible part of every cell it sees."""
    local = boxes - np.tile(origin, 2)
    clipped = local.clip(0, tile)
    visible = (clipped[:, 2] > clipped[:, 0] + 1) & (clipped[:, 3] > clipped[:, 1] + 1)
    return clipped[visible]


def test_stitch_counts_every_cell_once_with_a_perfect_detector():
    rng = np.random.default_rng(0)
    w, h, tile, overlap = 900, 700, 256, 96
    centres = rng.uniform([0, 0], [w, h], size=(400, 2))
    radii = rng.uniform(10, overlap / 2, size=(400, 1))
    boxes = np.concatenate([centres - radii, centres + radii], axis=1).clip(0, [w, h, w, h])
    grid = make_grid(w, h, tile, overlap)
    k = 200
    tile_boxes = np.zeros((len(grid), k, 4), np.float32)
    tile_scores = np.zeros((len(grid), k), np.float32)
    for t, origin in enumerate(grid.origins):
        seen = _visible_boxes(boxes, origin, tile)
        tile_boxes[t, :len(seen)] = seen
        tile_scores[t, :len(seen)] = 0.9
    out, scores = stitch(tile_boxes, tile_scores, grid, 0.5, duplicate_iou=1.01,
                         corner_distance=0)  # ownership alone
    assert len(out) == len(boxes)
    assert (box_iou(boxes.astype(np.float32), out).max(axis=1) > 0.999).all()


def test_stitch_drops_a_twin_found_by_the_neighbouring_tile():
    grid = make_grid(416, 256, 256, 96)  # two tiles side by side, cut at x = 208
    cell = np.array([188.0, 100, 228, 140])  # centre 208: on the cut
    boxes = np.zeros((2, 2, 4), np.float32)
    scores = np.zeros((2, 2), np.float32)
    boxes[0, 0] = cell - [0.6, 0, 0.6, 0]  # tile 0 places it at 207.4
    boxes[1, 0] = cell + [0.6, 0, 0.6, 0] - [160, 0, 160, 0]  # tile 1 at 208.6, in its own coordinates
    scores[:, 0] = [0.8, 0.9]
    out, s = stitch(boxes, scores, grid, 0.5)
    assert len(out) == 1 and s[0] == pytest.approx(0.9)
