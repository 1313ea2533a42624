"""The one cell view (edge.runtime.cell_view): the same cell gives the same classifier input everywhere."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.runtime.bundle import load_bundle
from edge.runtime.cell_view import cell_views, central_detection, locate_cell, stand_in_box, view_squares
from edge.runtime.engine import CellCounter
from edge.evaluation.evaluate import read_cell_view
from edge.synthetic.smear import SmearConfig, render_field
from tests.helpers import SYNTHETIC_BUNDLE


@pytest.fixture(scope="module")
def field():
    return render_field(SmearConfig(width=640, height=480, nucleated_per_mpx=60.0), seed=3)


def test_view_of_a_cell_in_its_field_equals_its_view_in_a_crop_image(field):
    context, size = 1.6, 48
    inside = cell_views(field.image, field.boxes, size, context)
    for box, expected in zip(field.boxes, inside):
        left, top, side = view_squares(box[None], context)[0]
        if left < 0 or top < 0 or left + side > field.image.shape[1] or top + side > field.image.shape[0]:
            continue  # the crop image below must hold the whole square
        # a crop image with a margin of its own around the cell, as another tool would save it
        x0, y0 = max(left - 7, 0), max(top - 5, 0)
        crop = field.image[y0:top + side + 9, x0:left + side + 3].copy()
        shifted = box - np.array([x0, y0, x0, y0], np.float32)
        np.testing.assert_array_equal(cell_views(crop, shifted[None], size, context)[0], expected)


def test_the_device_cuts_cells_with_the_cell_view(field):
    bundle = load_bundle(SYNTHETIC_BUNDLE)
    with CellCounter(bundle, threads=1) as counter:
        size = bundle.classifier.input_hw[0]
        np.testing.assert_array_equal(counter.crop(field.image, field.boxes),
                                      cell_views(field.image, field.boxes, size, bundle.tiling.crop_context))


def test_shrinking_is_anti_aliased():
    # a one-pixel checkerboard decimated 7x must become flat grey, not a moire pattern
    board = ((np.indices((350, 350)).sum(axis=0) % 2) * 255).astype(np.uint8)
    image = np.repeat(board[:, :, None], 3, axis=2)
    view = cell_views(image, np.array([[0, 0, 350, 350]], np.float32), 50, 1.0)[0]
    assert abs(float(view.mean()) - 127.5) < 2 and view.std() < 6


def test_a_cell_cut_by_the_frame_edge_stays_centred():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :10] = 200  # the edge column block the view must repeat beyond the frame
    view = cell_views(image, np.array([[-10, 40, 10, 60]], np.float32), 20, 2.0)[0]
    assert view.shape == (20, 20, 3)
    assert (view[:, :10] == 200).all()  # left of the frame: the replicated edge
    outside = cell_views(image, np.array([[500, 500, 520, 520]], np.float32), 8, 1.0)[0]
    assert outside.shape == (8, 8, 3)  # a box wholly outside gives the nearest edge pixels, not a crash


def test_the_stand_in_box_views_the_whole_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)
    for context in (1.0, 2.45):
        box = stand_in_box(image.shape, context)
        np.testing.assert_array_equal(cell_views(image, box[None], 30, context)[0],
                                      cv2.resize(image, (30, 30), interpolation=cv2.INTER_AREA))


def test_locate_cell_takes_the_detection_nearest_the_centre():
    image = np.zeros((100, 120, 3), np.uint8)
    boxes = np.array([[0, 0, 20, 20], [50, 40, 70, 62], [90, 70, 110, 95]], np.float32)
    assert central_detection(boxes, image.shape) == 1
    box, found = locate_cell(lambda im: (boxes, np.ones(3, np.float32)), image, 2.0)
    assert found and np.array_equal(box, boxes[1])
    box, found = locate_cell(lambda im: (np.zeros((0, 4), np.float32), np.zeros(0, np.float32)), image, 2.0)
    assert not found and np.allclose(box, stand_in_box(image.shape, 2.0))


def test_a_single_cell_image_is_read_as_the_device_frames_its_cell(field, tmp_path):
    bundle = load_bundle(SYNTHETIC_BUNDLE)
    box = field.boxes[0]
    cx, cy = (box[:2] + box[2:]) / 2
    half = int(max(box[2] - box[0], box[3] - box[1]) * 1.5)
    x0, y0 = max(int(cx) - half, 0), max(int(cy) - half, 0)
    crop = field.image[y0:int(cy) + half, x0:int(cx) + half]
    path = tmp_path / "cell.png"
    cv2.imwrite(str(path), crop)
    with CellCounter(bundle, threads=1) as counter:
        view, found = read_cell_view(counter, path)
        located, _ = counter.locate_cell(crop)
        expected = cell_views(crop, located[None], bundle.classifier.input_hw[0], bundle.tiling.crop_context)[0]
    np.testing.assert_array_equal(view, expected)
    assert found  # the synthetic detector finds the synthetic cell
