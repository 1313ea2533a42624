"""The synthetic smear generator: determinism, ground truth, densities, class appearance and knobs."""
from dataclasses import replace

import cv2
import numpy as np
import pytest

from edge.synthetic.smear import (DEFAULT_CLASSES, Field, SmearConfig, max_cell_diameter_px, render_cell_crops,
                            render_field)

SMALL = SmearConfig(width=320, height=240)


def _fields(config: SmearConfig, seeds: range) -> list[Field]:
    return [render_field(config, seed) for seed in seeds]


def test_same_seed_same_field_and_other_seed_differs():
    a, b, c = render_field(SMALL, 7), render_field(SMALL, 7), render_field(SMALL, 8)
    assert np.array_equal(a.image, b.image)
    for name in ("boxes", "centres", "labels", "diameters"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("width, height, density", [(640, 480, 40), (64, 64, 2000), (333, 97, 500)])
def test_field_shapes_and_dtypes(width, height, density):
    f = render_field(replace(SMALL, width=width, height=height, nucleated_per_mpx=density), seed=1)
    n = len(f.labels)
    assert f.image.shape == (height, width, 3) and f.image.dtype == np.uint8
    assert f.boxes.shape == (n, 4) and f.boxes.dtype == np.float32
    assert f.centres.shape == (n, 2) and f.centres.dtype == np.float32
    assert f.labels.shape == (n,) and f.labels.dtype == np.int64
    assert f.diameters.shape == (n,) and f.diameters.dtype == np.float32
    assert f.class_names == DEFAULT_CLASSES
    assert n > 0


def test_empty_field_has_empty_ground_truth():
    f = render_field(replace(SMALL, nucleated_per_mpx=0), seed=0)
    assert f.boxes.shape == (0, 4) and f.centres.shape == (0, 2) and f.labels.shape == (0,)
    assert f.image.shape == (240, 320, 3)


def test_boxes_inside_frame_contain_centres_and_fit_the_largest_diameter():
    config = replace(SMALL, nucleated_per_mpx=300)
    largest = max_cell_diameter_px(config)
    for f in _fields(config, range(5)):
        x1, y1, x2, y2 = f.boxes.T
        cx, cy = f.centres.T
        assert np.all((x1 >= 0) & (y1 >= 0) & (x2 <= config.width) & (y2 <= config.height))
        assert np.all((0 < cx) & (cx < config.width) & (0 < cy) & (cy < config.height))
        assert np.all((x1 < cx) & (cx < x2) & (y1 < cy) & (cy < y2))
        assert np.all(f.diameters <= largest)
        assert np.all((x2 - x1 <= largest) & (y2 - y1 <= largest))
        # An uncut box is about as wide as the cell's nominal diameter.
        uncut = (x1 > 0) & (y1 > 0) & (x2 < config.width) & (y2 < config.height)
        ratio = (x2 - x1)[uncut] / f.diameters[uncut]
        assert np.all((ratio > 0.8) & (ratio < 1.2))


def test_border_cut_cells_exist():
    config = replace(SMALL, nucleated_per_mpx=200)
    cut = 0
    for f in _fields(config, range(4)):
        x1, y1, x2, y2 = f.boxes.T
        smaller = np.minimum(x2 - x1, y2 - y1) < 0.8 * f.diameters
        on_edge = (x1 == 0) | (y1 == 0) | (x2 == config.width) | (y2 == config.height)
        cut += int(np.sum(smaller & on_edge))
    assert cut > 0


def test_counts_follow_density():
    config = SmearConfig(width=500, height=500, nucleated_per_mpx=160, rbc_per_mpx=0, platelets_per_mpx=0)
    counts = [len(f.labels) for f in _fields(config, range(6))]
    assert abs(np.mean(counts) - 40) < 8  # Poisson mean 40; sd of the mean of 6 is 2.6
    doubled = [len(f.labels) for f in _fields(replace(config, nucleated_per_mpx=320), range(6))]
    assert 1.6 < np.mean(doubled) / np.mean(counts) < 2.4


def test_red_cell_density_changes_red_coverage():
    def red_fraction(rbc_per_mpx: float) -> float:
        image = render_field(replace(SMALL, rbc_per_mpx=rbc_per_mpx, nucleated_per_mpx=0), seed=2).image
        b, g, r = (image[..., k].astype(int) for k in range(3))
        return float(np.mean(r - g > 40))
    none, some, many = red_fraction(0), red_fraction(300), red_fraction(900)
    assert none < 0.01 < some < many


def test_touching_fraction_controls_contacts():
    def contacts(fraction: float) -> int:
        total = 0
        for f in _fields(replace(SMALL, nucleated_per_mpx=150, touching_fraction=fraction), range(4)):
            d = np.hypot(*(f.centres[:, None] - f.centres[None]).transpose(2, 0, 1))
            reach = (f.diameters[:, None] + f.diameters[None]) / 2
            total += int(np.sum(np.triu(d < reach, 1)))
        return total
    assert contacts(1.0) > contacts(0.0) + 5


def test_every_class_appears_with_its_size():
    config = replace(SMALL, nucleated_per_mpx=400)
    fields = _fields(config, range(3))
    labels = np.concatenate([f.labels for f in fields])
    diameters = np.concatenate([f.diameters for f in fields]) / config.px_per_um
    assert set(labels.tolist()) == set(range(len(DEFAULT_CLASSES)))
    mean_um = {name: diameters[labels == k].mean() for k, name in enumerate(DEFAULT_CLASSES)}
    assert 7 <= mean_um["lymphocyte"] <= 10
    assert 15 <= mean_um["monocyte"] <= 20
    assert mean_um["lymphocyte"] < mean_um["neutrophil"] < mean_um["monocyte"]


def test_class_subset_and_order_are_respected():
    config = replace(SMALL, classes=("monocyte", "lymphocyte"), nucleated_per_mpx=300)
    f = render_field(config, seed=0)
    assert f.class_names == ("monocyte", "lymphocyte")
    assert set(f.labels.tolist()) == {0, 1}
    assert f.diameters[f.labels == 0].min() > f.diameters[f.labels == 1].max()
    assert max_cell_diameter_px(replace(config, classes=("lymphocyte",))) < max_cell_diameter_px(config)


def test_unknown_class_is_rejected_with_the_known_ones():
    with pytest.raises(ValueError, match="neutrophil") as err:
        SmearConfig(classes=("neutrophil", "megakaryocyte"))
    assert "megakaryocyte" in str(err.value) and "monocyte" in str(err.value)


@pytest.mark.parametrize("knob", [dict(touching_fraction=1.5), dict(illumination=-0.1), dict(stain_shift=2.0),
                                  dict(noise_std=-1.0), dict(width=0)])
def test_out_of_range_knobs_are_rejected(knob):
    with pytest.raises(ValueError):
        replace(SMALL, **knob)


def test_knobs_change_the_image_but_not_the_layout():
    base = render_field(SMALL, seed=4)

    def with_knob(**knob) -> Field:
        f = render_field(replace(SMALL, **knob), seed=4)
        assert np.array_equal(f.boxes, base.boxes) and np.array_equal(f.labels, base.labels)
        assert not np.array_equal(f.image, base.image), knob
        return f

    def sharpness(image: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())

    assert sharpness(with_knob(blur_sigma=2.0).image) < 0.5 * sharpness(base.image)
    assert sharpness(with_knob(noise_std=8.0).image) > 1.5 * sharpness(base.image)
    lit = with_knob(illumination=1.0).image.astype(float)
    assert np.abs(lit - base.image).mean() > 10
    stained = with_knob(stain_shift=1.0).image.astype(float)
    assert np.abs(stained.mean((0, 1)) - base.image.mean((0, 1))).max() > 3
    with_knob(stain_shift=-1.0)  # sign only mirrors the random direction


def test_large_field_renders():
    config = SmearConfig(width=4096, height=3000)
    f = render_field(config, seed=0)
    assert f.image.shape == (3000, 4096, 3)
    expected = config.nucleated_per_mpx * 4096 * 3000 / 1e6
    assert abs(len(f.labels) - expected) < 5 * np.sqrt(expected)
    assert f.image.std() > 10  # a real scene, not a blank canvas


def test_cell_crops_shapes_and_determinism():
    labels = np.array([0, 1, 2, 3, 4, 0])
    a = render_cell_crops(labels, 48, seed=3)
    assert a.shape == (6, 48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_cell_crops(labels, 48, seed=3))
    assert not np.array_equal(a, render_cell_crops(labels, 48, seed=4))
    assert not np.array_equal(a[0], a[5])  # same class, different cell
    # A crop depends on its own index and label only.
    other = render_cell_crops(np.array([0, 3]), 48, seed=3)
    assert np.array_equal(other[0], a[0])
    assert render_cell_crops(np.array([], np.int64), 48).shape == (0, 48, 48, 3)
    with pytest.raises(ValueError):
        render_cell_crops(np.array([5]), 48)


def test_cell_crops_centre_a_nucleated_cell_on_background():
    crops = render_cell_crops(np.arange(5), 64, seed=0).astype(float)
    # Stained cell in the middle is darker than the pale smear at the corners.
    centre = crops[:, 24:40, 24:40].mean((1, 2, 3))
    corners = np.concatenate([crops[:, :6, :6], crops[:, :6, -6:], crops[:, -6:, :6], crops[:, -6:, -6:]], 1)
    assert np.all(centre < np.median(corners.reshape(5, -1), axis=1) - 20)


def _colour_histogram(crops: np.ndarray) -> np.ndarray:
    """Coarse 4x4x4 BGR histogram of each crop's central region."""
    side = crops.shape[1]
    centre = crops[:, side // 5: -side // 5, side // 5: -side // 5] // 64
    bins = (centre[..., 0].astype(int) * 16 + centre[..., 1] * 4 + centre[..., 2]).reshape(len(crops), -1)
    return np.stack([np.bincount(b, minlength=64) / b.size for b in bins])


def test_classes_are_distinguishable_but_varied():
    labels = np.repeat(np.arange(len(DEFAULT_CLASSES)), 16)
    train = _colour_histogram(render_cell_crops(labels, 32, seed=10))
    test = _colour_histogram(render_cell_crops(labels, 32, seed=11))
    centroids = np.stack([train[labels == k].mean(0) for k in range(len(DEFAULT_CLASSES))])
    predicted = np.argmin(((test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.mean(predicted == labels) >= 0.8
    # Within each class the cells still vary.
    spread = [np.abs(train[labels == k] - centroids[k]).sum(1).mean() for k in range(len(DEFAULT_CLASSES))]
    assert min(spread) > 0.05
