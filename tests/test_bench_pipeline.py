"""The bench's staged counting path gives exactly what CellCounter.count_field gives."""
from dataclasses import replace

import numpy as np
import pytest

from edge.bench.pipeline import STAGES, StageClock, StagedCounter, tiling_for
from edge.runtime.bundle import BundleError, load_bundle
from edge.runtime.engine import CellCounter
from edge.synthetic.smear import SmearConfig, render_field
from tests.helpers import SYNTHETIC_BUNDLE


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(SYNTHETIC_BUNDLE)


@pytest.fixture(scope="module")
def field():
    return render_field(SmearConfig(width=560, height=400), seed=5).image


def assert_same_field(staged, reference):
    assert len(reference) > 3, "the test field must hold cells"
    np.testing.assert_array_equal(staged.boxes, reference.boxes)
    np.testing.assert_array_equal(staged.detection_scores, reference.detection_scores)
    np.testing.assert_array_equal(staged.class_scores, reference.class_scores)
    for name in ("predicted", "confidence", "threshold", "accepted"):
        np.testing.assert_array_equal(getattr(staged.decisions, name), getattr(reference.decisions, name))


def test_staged_path_counts_exactly_like_count_field(bundle, field):
    with StagedCounter(bundle, threads=1) as staged, CellCounter(bundle, threads=1) as engine:
        clock = StageClock()
        assert_same_field(staged.count(field, clock), engine.count_field(field))
    assert set(clock.ms) == set(STAGES)
    for stage in ("preprocess", "tile", "detect", "stitch", "crop", "classify", "decide"):
        assert clock.ms[stage] > 0, stage
    assert clock.ms["grab"] == clock.ms["quality"] == clock.ms["tally"] == clock.ms["review_io"] == 0  # the loop's


def test_tile_override_counts_like_the_engine_on_the_same_tiling(bundle, field):
    with StagedCounter(bundle, threads=1, batch=3, tile=384) as staged:
        assert staged.batch == 3 and staged.tiling.tile_size == bundle.tiling.tile_size
        result = staged.count(field, StageClock())
        tiles = staged.detector_inputs
    with CellCounter(replace(bundle, tiling=staged.tiling), threads=1) as engine:
        reference = engine.count_field(field)
    assert len(result) == len(reference)
    np.testing.assert_allclose(result.boxes, reference.boxes, atol=1e-3)
    np.testing.assert_array_equal(result.decisions.accepted, reference.decisions.accepted)
    np.testing.assert_array_equal(result.decisions.predicted, reference.decisions.predicted)
    with StagedCounter(bundle, threads=1) as native:
        native.count(field, StageClock())
        assert tiles < native.detector_inputs, "larger tiles of the frame mean fewer detector inputs"


def test_fixed_size_detector_gets_the_frame_resized_for_another_tile(bundle):
    t = bundle.tiling
    assert tiling_for(bundle, None, (256, 256)) is t
    doubled = tiling_for(bundle, 2 * t.tile_size, (t.tile_size, t.tile_size))
    assert (doubled.tile_size, doubled.scale, doubled.overlap) == (t.tile_size, t.scale / 2, -(-t.overlap // 2))
    native = tiling_for(bundle, 512, (None, None))
    assert (native.tile_size, native.scale, native.overlap) == (512, t.scale, t.overlap)
    with pytest.raises(BundleError, match="larger than the bundle's overlap"):
        tiling_for(bundle, t.overlap, (256, 256))


def test_following_the_pixel_size_keeps_the_tile_override(bundle, field):
    coarser = bundle.at_pixel_size(0.3)  # what edge.runtime.frame_scale hands over after reading red cells
    with StagedCounter(bundle, threads=1, tile=384) as staged:
        staged.follow_scale(coarser)
        expected = tiling_for(coarser, 384, (bundle.tiling.tile_size,) * 2)
        assert staged.tiling == staged.bundle.tiling == expected
        assert expected.scale == pytest.approx(1.2 * bundle.tiling.tile_size / 384)
        result = staged.count(field, StageClock())
    with CellCounter(replace(coarser, tiling=expected), threads=1) as engine:
        reference = engine.count_field(field)
    assert len(result) == len(reference) > 0
    np.testing.assert_allclose(result.boxes, reference.boxes, atol=1e-3)
    np.testing.assert_array_equal(result.decisions.predicted, reference.decisions.predicted)
