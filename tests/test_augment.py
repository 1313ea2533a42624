"""Training augmentation: each transform does what it says; Augment keeps shape and dtype and obeys its seed."""
from __future__ import annotations

from dataclasses import fields

import cv2
import numpy as np
import pytest

from edge.synthetic.smear import render_cell_crops
from export.augment import (MEAN_BGR, Augment, adjust_brightness, adjust_contrast, adjust_gamma,
                            adjust_saturation, blur, crop_resize, erase, jitter_stains, jpeg, light_augment,
                            random_crop_box, random_erase_box, rotate, shift_hue, turn)


@pytest.fixture(scope="module")
def cell() -> np.ndarray:
    return render_cell_crops(np.array([0]), 96, seed=3)[0]


def _gradient_energy(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_turn_is_a_right_angle_rotation_and_a_mirror(cell):
    np.testing.assert_array_equal(turn(cell, 1, False), np.rot90(cell))
    np.testing.assert_array_equal(turn(cell, 2, True), np.rot90(cell, 2)[:, ::-1])
    assert turn(cell, 3, True).flags.c_contiguous


def test_rotation_by_a_right_angle_matches_rot90(cell):
    np.testing.assert_array_equal(rotate(cell, 90.0), np.rot90(cell))
    np.testing.assert_array_equal(rotate(cell, 0.0), cell)


def _dark_centroid(image: np.ndarray) -> np.ndarray:
    """(x, y) centre of mass of the pixels darker than mid-grey inside the inscribed circle.

    Outside it a rotation shows reflected copies of the image, by design.
    """
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    inside = np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2) < min(h, w) / 2
    ys, xs = np.nonzero((cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) < 128) & inside)
    return np.array([xs.mean(), ys.mean()])


def test_rotation_keeps_the_cell_centred_and_whole(cell):
    # A dark disk (the cell) at the centre and a small mark to its right, on a light background.
    disk = np.full((96, 96, 3), 220, np.uint8)
    cv2.circle(disk, (95, 95), 40, (60, 40, 90), -1, lineType=cv2.LINE_AA, shift=1)  # at (47.5, 47.5)
    centre = np.array([47.5, 47.5])
    for degrees in (17.0, 45.0, 73.0):
        rotated = rotate(disk, degrees)
        assert rotated.shape == disk.shape and rotated.dtype == np.uint8
        np.testing.assert_allclose(_dark_centroid(rotated), centre, atol=0.3)
        dark = (cv2.cvtColor(rotated, cv2.COLOR_BGR2GRAY) < 128).sum()
        assert dark == pytest.approx((cv2.cvtColor(disk, cv2.COLOR_BGR2GRAY) < 128).sum(), rel=0.03)

        mark = np.full((96, 96, 3), 220, np.uint8)
        mark[46:50, 76:80] = 0  # centre (77.5, 47.5), 30 px right of the image centre
        t = np.radians(degrees)  # counter-clockwise on screen, where y points down
        expected = centre + 30 * np.array([np.cos(t), -np.sin(t)])
        np.testing.assert_allclose(_dark_centroid(rotate(mark, degrees)), expected, atol=0.5)

        # Corners are filled from the image (light background), not black.
        assert rotate(cell, degrees)[[0, 0, -1, -1], [0, -1, 0, -1]].min() > 60


def test_crop_resize_and_torchvision_crop_boxes(cell):
    np.testing.assert_array_equal(crop_resize(cell, (0, 0, 96, 96)), cell)
    np.testing.assert_array_equal(crop_resize(cell, (24, 24, 48, 48)),
                                  cv2.resize(cell[24:72, 24:72], (96, 96), interpolation=cv2.INTER_LINEAR))
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_crop_box(90, 120, rng)
        assert 0 <= top and top + h <= 90 and 0 <= left and left + w <= 120
        assert 0.08 * 0.9 <= h * w / (90 * 120) <= 1.0
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # A scale the image cannot hold falls back to the largest central box.
    assert random_crop_box(10, 40, rng, scale=(5.0, 6.0)) == (0, 13, 10, 13)


def test_colour_adjustments_follow_torchvision(cell):
    image = (cell // 2 + 40).astype(np.uint8)  # away from 0 and 255, so no clipping
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    for adjust in (adjust_brightness, adjust_contrast, adjust_saturation):
        np.testing.assert_array_equal(adjust(image, 1.0), image)
    assert adjust_brightness(image, 1.2).mean() == pytest.approx(1.2 * image.mean(), rel=0.01)
    low = adjust_contrast(image, 0.5)
    assert cv2.cvtColor(low, cv2.COLOR_BGR2GRAY).std() == pytest.approx(0.5 * grey.std(), rel=0.02)
    assert cv2.cvtColor(low, cv2.COLOR_BGR2GRAY).mean() == pytest.approx(grey.mean(), abs=0.6)
    washed = adjust_saturation(image, 0.0).astype(int)
    assert np.abs(washed - washed[..., :1]).max() == 0
    vivid = adjust_saturation(image, 1.3).astype(int)
    assert np.ptp(vivid, axis=2).mean() > 1.25 * np.ptp(image.astype(int), axis=2).mean()


def test_stain_jitter_works_in_optical_density(cell):
    same = jitter_stains(cell, np.ones(3), np.zeros(3))
    assert np.abs(same.astype(int) - cell).max() <= 1
    # More haematoxylin: more optical density everywhere it is, i.e. darker.
    darker = jitter_stains(cell, np.array([1.3, 1.0, 1.0]), np.zeros(3))
    assert darker.mean() < cell.mean() - 1
    # A shift adds stain to the background too.
    tinted = jitter_stains(cell, np.ones(3), np.array([0.0, 0.1, 0.0]))
    assert tinted[:4, :4].mean() < cell[:4, :4].mean() - 3


def test_hue_shift_moves_the_colour_round_the_circle():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 2] = 255
    green = shift_hue(red, 1 / 3)
    assert np.abs(green.astype(int) - [0, 255, 0]).max() <= 8
    assert np.abs(shift_hue(red, 1.0).astype(int) - red).max() <= 2


def test_gamma_bends_the_mid_tones_and_keeps_the_ends():
    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (2, 1, 3))
    light = adjust_gamma(ramp, 0.7)
    assert light[0, 0, 0] == 0 and light[0, 255, 0] == 255
    assert light[0, 128, 0] > 128 and adjust_gamma(ramp, 1.4)[0, 128, 0] < 128
    np.testing.assert_array_equal(adjust_gamma(ramp, 1.0), ramp)


def test_blur_and_jpeg_degrade_but_keep_the_picture(cell):
    blurred = blur(cell, 1.5)
    assert _gradient_energy(blurred) < 0.5 * _gradient_energy(cell)
    assert abs(blurred.mean() - cell.mean()) < 1
    compressed = jpeg(cell, 30)
    assert compressed.shape == cell.shape and compressed.dtype == np.uint8
    assert 0 < np.abs(compressed.astype(int) - cell).mean() < 6


def test_erase_paints_one_box_with_the_mean_colour(cell):
    erased = erase(cell, (10, 20, 30, 15), MEAN_BGR)
    assert (erased[10:40, 20:35] == MEAN_BGR).all()
    outside = np.ones(cell.shape[:2], bool)
    outside[10:40, 20:35] = False
    np.testing.assert_array_equal(erased[outside], cell[outside])
    rng = np.random.default_rng(1)
    for _ in range(200):
        box = random_erase_box(64, 80, rng)
        if box is not None:
            top, left, h, w = box
            assert top + h <= 64 and left + w <= 80 and 0.02 * 0.9 <= h * w / (64 * 80) <= 0.33 * 1.1
    assert random_erase_box(64, 80, rng, scale=(1.0, 1.0)) is None


def test_augment_keeps_shape_and_dtype_and_follows_its_seed(cell):
    augment = Augment()
    outputs = [augment(cell, np.random.default_rng(s)) for s in (7, 7, 8)]
    for out in outputs:
        assert out.shape == cell.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])
    odd = np.ascontiguousarray(cell[:, :70])
    assert augment(odd, np.random.default_rng(0)).shape == odd.shape
    with pytest.raises(ValueError, match="uint8 BGR"):
        augment(cell.astype(np.float32), np.random.default_rng(0))


def test_augment_with_every_probability_zero_is_the_identity(cell):
    off = Augment(**{f.name: 0.0 for f in fields(Augment) if f.name.startswith("p_")})
    np.testing.assert_array_equal(off(cell, np.random.default_rng(0)), cell)


def test_augment_fires_each_step_about_as_often_as_asked(cell):
    # Only the colour step: with p = 0.5 about half the images change.
    only_colour = Augment(**{f.name: 0.0 for f in fields(Augment) if f.name.startswith("p_")} | {"p_colour": 0.5})
    rng = np.random.default_rng(0)
    changed = sum(not np.array_equal(only_colour(cell, rng), cell) for _ in range(200))
    assert 75 < changed < 125


def test_light_augment_keeps_shape_and_dtype(cell):
    out = light_augment(cell, np.random.default_rng(0))
    assert out.shape == cell.shape and out.dtype == np.uint8


def test_box_jitter_rescales_and_moves_about_the_centre():
    from export.augment import jitter_box
    box = np.array([10, 20, 30, 60], np.float32)
    same = jitter_box(box, 1.0, (0.0, 0.0))
    np.testing.assert_allclose(same, box)
    wider = jitter_box(box, 1.5, (0.0, 0.0))
    np.testing.assert_allclose(wider, [5, 10, 35, 70])
    moved = jitter_box(box, 1.0, (0.1, -0.1))  # a tenth of the longer side (40 px)
    np.testing.assert_allclose(moved, [14, 16, 34, 56])


def test_augment_jitters_boxes_within_its_ranges():
    from export.augment import Augment
    aug = Augment(p_frame=1.0)
    rng = np.random.default_rng(0)
    box = np.array([0, 0, 100, 100], np.float32)
    for _ in range(50):
        b = aug.jitter_box(box, rng)
        side = b[2] - b[0]
        assert 80 - 1e-3 <= side <= 125 + 1e-3
        centre = (b[:2] + b[2:]) / 2
        assert np.all(np.abs(centre - 50) <= 8 + 1e-3)


def test_noise_keeps_the_image_and_has_its_strength():
    from export.augment import add_noise
    image = np.full((64, 64, 3), 128, np.uint8)
    noisy = add_noise(image, 5.0, np.random.default_rng(0))
    assert noisy.dtype == np.uint8 and noisy.shape == image.shape
    assert 4.0 < float(noisy.astype(np.float32).std()) < 6.0
