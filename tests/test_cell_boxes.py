"""Training images are framed by the deployed detector, found once and kept beside the split."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge.runtime.cell_view import stand_in_box
from edge.synthetic.datasets import write_crop_folders
from export import cell_boxes
from export.cell_boxes import cell_boxes_file, find_cell_boxes, split_boxes
from export.datasets import stratified_split
from tests.helpers import SYNTHETIC_BUNDLE


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    write_crop_folders(root, per_class=4, size=96, seed=2)
    return root


def test_boxes_are_found_then_reused_from_the_cache(crops, tmp_path, monkeypatch):
    paths = sorted(p.relative_to(crops).as_posix() for p in crops.glob("*/*.png"))
    cache = tmp_path / "boxes.json"
    boxes, found, context = find_cell_boxes(crops, paths, SYNTHETIC_BUNDLE, cache)
    assert boxes.shape == (len(paths), 4) and found.dtype == bool and context > 0
    assert found.mean() > 0.5  # the synthetic detector finds most synthetic cells
    for box, hit in zip(boxes, found):
        if not hit:
            np.testing.assert_allclose(box, stand_in_box((96, 96), context), atol=0.01)

    class NoDetector:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the cache should have answered")
    monkeypatch.setattr(cell_boxes, "CellCounter", NoDetector)
    again, found_again, _ = find_cell_boxes(crops, paths, SYNTHETIC_BUNDLE, cache)
    np.testing.assert_allclose(again, boxes, atol=0.01)
    assert (found_again == found).all()


def test_a_cache_for_another_detector_is_not_used(crops, tmp_path):
    paths = sorted(p.relative_to(crops).as_posix() for p in crops.glob("*/*.png"))[:3]
    cache = tmp_path / "boxes.json"
    cache.write_text(json.dumps({"key": {"detector_sha256": "0" * 64}, "boxes": {p: [0, 0, 1, 1, True] for p in paths}}))
    boxes, _, _ = find_cell_boxes(crops, paths, SYNTHETIC_BUNDLE, cache)
    assert not np.allclose(boxes, [0, 0, 1, 1])


def test_split_boxes_follow_each_split_in_order(crops, tmp_path):
    split_file = tmp_path / "split.json"
    split = stratified_split(crops, split_file)
    boxes, context, shares = split_boxes(crops, split, SYNTHETIC_BUNDLE, cell_boxes_file(split_file))
    assert cell_boxes_file(split_file).is_file()
    assert set(shares) == set(split.class_names) and all(0 <= v <= 1 for v in shares.values())
    for name in ("train", "calibration", "validation"):
        assert boxes[name].shape == (len(split.items(name)), 4)
    first = split.items("validation")[0][0]
    alone, _, _ = find_cell_boxes(crops, [first], SYNTHETIC_BUNDLE, cell_boxes_file(split_file))
    np.testing.assert_allclose(boxes["validation"][0], alone[0])


def test_the_cache_key_ignores_the_stated_pixel_size_but_not_the_tiling():
    from dataclasses import replace

    from edge.runtime.bundle import load_bundle
    bundle = load_bundle(SYNTHETIC_BUNDLE)
    other_camera = bundle.at_pixel_size(0.125)  # another scale: other boxes
    restated = replace(bundle, tiling=replace(bundle.tiling, pixel_size_um=0.3))  # same frames, same boxes
    assert cell_boxes._key(restated) == cell_boxes._key(bundle) != cell_boxes._key(other_camera)
