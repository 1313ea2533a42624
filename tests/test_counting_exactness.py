"""The counting path with a perfect detector: each cell of a field is counted exactly once,
including every cell that straddles a tile border."""
import numpy as np

from edge.runtime.backends import Runner, TensorSpec
from edge.runtime.bundle import load_bundle
from edge.runtime.engine import CellCounter
from edge.synthetic.smear import SmearConfig, render_field
from edge.runtime.boxes import box_iou
from edge.runtime.tiling import make_grid
from tests.helpers import SYNTHETIC_BUNDLE


class PerfectTileDetector(Runner):
    """Reports, for each tile of one known field, the visible part of every cell in it."""

    def __init__(self, boxes: np.ndarray, origins: np.ndarray, tile: int, k: int = 100):
        self.boxes, self.origins, self.tile, self.k = boxes, origins, tile, k
        self.next_tile = 0  # tiles arrive in order, in batches of any size

    @property
    def inputs(self):
        return [TensorSpec("image", (None, 3, self.tile, self.tile), "float32")]

    @property
    def outputs(self):
        return [TensorSpec("boxes", (None, self.k, 4), "float32"), TensorSpec("scores", (None, self.k), "float32")]

    def infer(self, feed):
        n = len(feed["image"])
        origins = self.origins[self.next_tile:self.next_tile + n]
        assert len(origins) == n, "more tiles than the field has"
        self.next_tile += n
        boxes = np.zeros((n, self.k, 4), np.float32)
        scores = np.zeros((n, self.k), np.float32)
        for t, origin in enumerate(origins):
            local = (self.boxes - np.tile(origin, 2)).clip(0, self.tile)
            seen = local[(local[:, 2] - local[:, 0] > 1) & (local[:, 3] - local[:, 1] > 1)]
            boxes[t, :len(seen)], scores[t, :len(seen)] = seen, 0.95
        return {"boxes": boxes, "scores": scores}


def test_every_cell_counted_once_across_tile_borders():
    bundle = load_bundle(SYNTHETIC_BUNDLE)
    t = bundle.tiling
    config = SmearConfig(width=1500, height=1100, nucleated_per_mpx=150, touching_fraction=0.3)
    field = render_field(config, seed=11)
    assert t.overlap >= field.diameters.max(), "the bundle's overlap covers the largest cell"
    grid = make_grid(config.width, config.height, t.tile_size, t.overlap)
    straddling = sum(
        ((field.boxes[:, 0] < x + t.tile_size) & (field.boxes[:, 2] > x + t.tile_size)).sum()
        for x in np.unique(grid.origins[:, 0]))
    assert straddling > 10, "the test field must have cells on tile borders"

    with CellCounter(bundle) as counter:
        counter.detector = PerfectTileDetector(field.boxes, grid.origins, t.tile_size)
        result = counter.count_field(field.image)
        assert counter.detector.next_tile == len(grid), "every tile was detected once"

    assert len(result) == len(field.boxes)
    iou = box_iou(field.boxes, result.boxes)
    assert (iou.max(axis=1) > 0.99).all(), "every true cell found"
    assert (iou.max(axis=0) > 0.99).all(), "no cell found twice"
    d = result.decisions
    assert d.accepted.sum() + (~d.accepted).sum() == len(field.boxes)
