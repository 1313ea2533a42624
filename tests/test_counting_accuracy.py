"""End to end with the shipped bundle on synthetic fields whose ground truth is known:
per-class counts, accepted-cell accuracy, and cells on tile borders counted once."""
import numpy as np
import pytest

from edge.runtime.boxes import box_iou
from edge.runtime.bundle import load_bundle
from edge.runtime.engine import CellCounter
from edge.synthetic.smear import SmearConfig, render_field
from edge.runtime.tiling import make_grid
from tests.helpers import SYNTHETIC_BUNDLE


@pytest.fixture(scope="module")
def counted():
    bundle = load_bundle(SYNTHETIC_BUNDLE)
    config = SmearConfig(width=1200, height=900, nucleated_per_mpx=60)
    fields = [render_field(config, seed=7000 + i) for i in range(4)]
    with CellCounter(bundle) as counter:
        results = [counter.count_field(f.image) for f in fields]
    return bundle, config, fields, results


def _match(field, result, iou=0.5):
    """For each detection, the index of its true cell or -1."""
    if len(result) == 0 or len(field.boxes) == 0:
        return np.full(len(result), -1)
    m = box_iou(result.boxes, field.boxes)
    best = m.argmax(axis=1)
    return np.where(m.max(axis=1) >= iou, best, -1)


def test_per_class_counts_match_ground_truth(counted):
    bundle, _, fields, results = counted
    assert bundle.class_names == fields[0].class_names
    truth = sum(np.bincount(f.labels, minlength=len(bundle.class_names)) for f in fields)
    found = sum(np.bincount(r.decisions.predicted, minlength=len(bundle.class_names)) for r in results)
    for name, t, n in zip(bundle.class_names, truth, found):
        assert abs(int(n) - int(t)) <= max(3, 0.15 * t), f"{name}: counted {n}, truth {t}"


def test_accepted_cells_are_right_and_no_cell_is_counted_twice(counted):
    _, _, fields, results = counted
    right = accepted = found = 0
    for field, result in zip(fields, results):
        match = _match(field, result)
        hit = match >= 0
        assert len(np.unique(match[hit])) == hit.sum(), "a true cell matched by two detections"
        found += hit.sum()
        a = result.decisions.accepted & hit
        accepted += a.sum()
        right += (result.decisions.predicted[a] == field.labels[match[a]]).sum()
    assert found >= 0.93 * sum(len(f.boxes) for f in fields), "recall of the tiled detector"
    assert right / accepted >= 0.95


def test_cells_on_tile_borders_are_found_once(counted):
    bundle, config, fields, results = counted
    t = bundle.tiling
    grid = make_grid(config.width, config.height, t.tile_size, t.overlap)
    edges = np.unique(grid.origins[:, 0])[1:]  # the left edges of tiles after the first column
    border_cells = 0
    for field, result in zip(fields, results):
        straddles = ((field.boxes[:, 0][:, None] < edges) & (field.boxes[:, 2][:, None] > edges)).any(axis=1)
        match = _match(field, result)
        for i in np.flatnonzero(straddles):
            border_cells += 1
            assert (match == i).sum() <= 1, f"cell {field.boxes[i]} on a tile border counted twice"
    assert border_cells > 10
