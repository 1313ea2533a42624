"""edge-bench's frames: the demo fields decoded before timing, mosaics of them, synthetic fields at
the bundle's pixel size."""
import cv2
import numpy as np
import pytest

from edge.bench.mosaic import TURNS, mosaic, turned
from edge.bench.supply import DEMO_FIELDS_SPEC, FrameSupply
from edge.counting.sources import DEMO_FIELDS
from edge.synthetic.smear import SmearConfig, render_field


@pytest.fixture(scope="module")
def demo_fields():
    return [cv2.imread(str(p)) for p in sorted(DEMO_FIELDS.glob("*.jpg"))]


def tiles_of(frame, h, w):
    return {(r, c): frame[r * h:(r + 1) * h, c * w:(c + 1) * w]
            for r in range(frame.shape[0] // h) for c in range(frame.shape[1] // w)}


def test_a_mosaic_is_a_large_frame_made_of_the_demo_fields(demo_fields):
    assert len(demo_fields) == 6 and all(f.shape == (480, 640, 3) for f in demo_fields)
    frame = mosaic(demo_fields, 4, 3)
    assert frame.shape == (3 * 480, 4 * 640, 3)
    tiles = tiles_of(frame, 480, 640)
    views = {(i, t): turned(f, t) for i, f in enumerate(demo_fields) for t in range(TURNS)}
    found = {}
    for where, tile in tiles.items():
        matches = [view for view, image in views.items() if np.array_equal(tile, image)]
        assert matches, f"tile {where} is no demo field, flipped or turned"
        found[where] = matches[0]
    assert {field for field, _ in found.values()} == set(range(6)), "every demo field is used"
    for (r, c), view in found.items():
        assert view != found.get((r, c + 1)) and view != found.get((r + 1, c)), "neighbours differ"


def test_a_mosaic_refuses_fields_of_different_sizes(demo_fields):
    with pytest.raises(ValueError, match="share one size"):
        mosaic([demo_fields[0], demo_fields[1][:240]], 2, 1)


def test_demo_fields_are_decoded_before_timing_and_grab_hands_out_copies(demo_fields):
    supply = FrameSupply(DEMO_FIELDS_SPEC, None, needed=8)
    assert len(supply.still) == 6 and supply.description.startswith("the demo fields")
    grabbed = [supply.grab() for _ in range(7)]
    assert np.array_equal(grabbed[0].image, demo_fields[0]) and np.array_equal(grabbed[6].image, demo_fields[0])
    grabbed[0].image[:] = 0
    assert np.array_equal(supply.still[0].image, demo_fields[0])
    assert [f.frame_id for f in grabbed] == list(range(7))


def test_successive_mosaics_differ():
    supply = FrameSupply(DEMO_FIELDS_SPEC, None, needed=2, tiles=(3, 2))
    a, b = supply.grab().image, supply.grab().image
    assert a.shape == b.shape == (960, 1920, 3) and not np.array_equal(a, b)


def test_synthetic_fields_are_drawn_at_the_given_pixel_size():
    supply = FrameSupply("synthetic:frames=1,seed=3", (320, 240), needed=1, um_per_px=0.125)
    assert "um_per_px=0.125" in supply.description and supply.still[0].image.shape == (240, 320, 3)
    own = FrameSupply("synthetic:frames=1,seed=3,um_per_px=0.25", None, needed=1, um_per_px=0.125)
    assert "um_per_px=0.25" in own.description and "0.125" not in own.description


def test_a_smear_at_another_pixel_size_keeps_its_cells_size_and_density_in_micrometres():
    base = SmearConfig(width=640, height=480)
    twice = base.at_pixel_size(0.125)  # 8 px per um: twice the magnification of the default 4
    assert twice.px_per_um == 8.0 and twice.nucleated_per_mpx == pytest.approx(base.nucleated_per_mpx / 4)
    fine = render_field(SmearConfig(width=1280, height=960, nucleated_per_mpx=400).at_pixel_size(0.125), seed=2)
    coarse = render_field(SmearConfig(width=640, height=480, nucleated_per_mpx=400), seed=2)
    assert np.median(fine.diameters) == pytest.approx(2 * np.median(coarse.diameters), rel=0.25)
    assert len(fine.boxes) == pytest.approx(len(coarse.boxes), rel=0.5)
    with pytest.raises(ValueError, match="um_per_px must be positive"):
        base.at_pixel_size(0)
