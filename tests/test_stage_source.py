import numpy as np
import pytest

from edge.counting.sources import SourceError, open_source
from edge.counting.stage_source import StageSource

SPEC = "synthetic-stage:fields=3,seed=4,width=160,height=120,step=0.7,still=4,move=3,noise=0"


@pytest.fixture(scope="module")
def tour():
    source = open_source(SPEC)
    frames = list(source)
    return source, frames


def test_stage_rests_at_each_field_and_slides_between_them(tour):
    source, frames = tour
    plan = source.plan
    assert isinstance(source, StageSource) and not source.live
    assert len(frames) == len(plan) == 3 * 4 + 2 * 3
    assert [p.field for p in plan] == [0] * 4 + [-1] * 3 + [1] * 4 + [-1] * 3 + [2] * 4
    assert [p.moving for p in plan] == [p.field == -1 for p in plan]
    xs = [p.origin[0] for p in plan]
    assert xs == sorted(xs) and len(set(xs)) == 3 + 2 * 3  # each moving frame a step further
    assert np.allclose(np.diff([f.timestamp for f in frames]), 1 / 30)


def test_consecutive_fields_overlap_by_the_step(tour):
    source, _ = tour
    steps = np.diff(source.field_origins, axis=0)
    assert np.all(np.abs(steps[:, 0] - 0.7 * 160) <= 160 // 40)
    assert np.all(np.abs(steps[:, 1]) <= 2 * (120 // 8))


def test_still_frames_show_the_slide_at_the_origin_and_moving_ones_are_blurred(tour):
    source, frames = tour
    for frame, truth in zip(frames, source.plan):
        x, y = truth.origin
        view = source.slide.image[y:y + 120, x:x + 160]
        assert np.array_equal(frame.image, view) != truth.moving


def test_cells_in_view_are_the_slide_cells_clipped_to_the_frame(tour):
    source, _ = tour
    origin = tuple(source.field_origins[1])
    ids, boxes = source.cells_in_view(origin)
    shifted = source.slide.boxes - np.tile(origin, 2)
    overlapping = (shifted[:, 2] > 0) & (shifted[:, 0] < 160) & (shifted[:, 3] > 0) & (shifted[:, 1] < 120)
    assert len(ids) and np.array_equal(ids, np.flatnonzero(overlapping))
    assert np.all((boxes >= 0) & (boxes <= [160, 120, 160, 120]))
    whole = ((shifted[ids] >= 0) & (shifted[ids] <= [160, 120, 160, 120])).all(axis=1)
    assert whole.any() and np.array_equal(boxes[whole], shifted[ids][whole])
    union = source.cells_in_fields()
    assert set(ids) <= set(union) and len(union) == len(np.unique(union))


def test_noise_is_fresh_on_every_frame_and_the_tour_repeats_with_its_seed():
    spec = "synthetic-stage:fields=1,seed=2,width=64,height=48,still=2,noise=3"
    a, b = list(open_source(spec)), list(open_source(spec))
    assert not np.array_equal(a[0].image, a[1].image)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))


@pytest.mark.parametrize("spec, message", [
    ("synthetic-stage:fields=0", "fields >= 1"),
    ("synthetic-stage:step=2.5", "0 < step <= 2"),
    ("synthetic-stage:width=8", "width and height >= 32"),
    ("synthetic-stage:step=-0.5", "bad synthetic-stage source option"),
    ("synthetic-stage:zoom=2", "bad synthetic-stage source option"),
])
def test_bad_stage_options_are_refused(spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec)
