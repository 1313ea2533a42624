import numpy as np
import pytest

from edge.counting.registration import RegistrationError, Shift, already_counted, estimate_shift
from edge.counting.sources import open_source
from edge.counting.stillness import StillnessTrigger

TOUR = "synthetic-stage:fields=5,seed={seed},width=320,height=240,step={step},still=5,move=3,noise=3"


def _taken_fields(spec: str):
    """Each field the stillness trigger takes: (frame, true view origin), as the live loop sees them."""
    source = open_source(spec)
    trigger = StillnessTrigger(still_seconds=0.1)
    return source, [(frame, source.truth.origin) for frame in source if trigger.update(frame)]


@pytest.fixture(scope="module")
def tour():
    return _taken_fields(TOUR.format(seed=3, step=0.7))


def test_measured_shift_is_the_true_stage_move_within_a_pixel(tour):
    source, fields = tour
    assert len(fields) == 5
    for (previous, p_origin), (current, c_origin) in zip(fields, fields[1:]):
        shift = estimate_shift(previous.image, current.image)
        true = np.subtract(c_origin, p_origin)
        assert shift.reliable and shift.response > 0.9
        assert abs(shift.dx - true[0]) <= 1 and abs(shift.dy - true[1]) <= 1


def test_sign_convention_a_point_p_in_the_previous_field_is_at_p_minus_shift(tour):
    source, fields = tour
    (previous, p_origin), (current, c_origin) = fields[0], fields[1]
    shift = estimate_shift(previous.image, current.image)
    centre = source.slide.centres[source.cells_in_view(c_origin)[0]]  # a cell seen in both fields
    seen_in_both = np.all((centre - p_origin >= 0) & (centre - p_origin < (320, 240)), axis=1)
    p = centre[seen_in_both][0] - p_origin
    assert np.allclose(p - (shift.dx, shift.dy), centre[seen_in_both][0] - c_origin, atol=1)


def test_fields_that_share_nothing_are_not_registered():
    source, fields = _taken_fields("synthetic-stage:fields=2,seed=5,width=320,height=240,step=1.3,still=4,move=2")
    shift = estimate_shift(fields[0][0].image, fields[1][0].image)
    assert not shift.reliable and shift.response < 0.3
    with pytest.raises(RegistrationError, match="count the field whole"):
        already_counted(np.zeros((1, 4)), np.zeros((1, 4)), shift, (320, 240), radius=3)


def test_an_unmoved_field_registers_at_zero(tour):
    image = tour[1][0][0].image
    shift = estimate_shift(image, image.copy())
    assert shift.reliable and abs(shift.dx) < 0.1 and abs(shift.dy) < 0.1
    with pytest.raises(ValueError, match="different shapes"):
        estimate_shift(image, image[:100])


def test_already_counted_compares_the_part_both_views_share():
    # 100 x 80 fields, the view moved 60 right and 10 down: they share x 60..100, y 10..80 of the previous.
    shift = Shift(60.0, 10.0, 0.95)
    previous = np.array([[70, 20, 80, 30],     # wholly in the shared part
                         [95, 30, 100, 40],    # cut by the previous right border
                         [55, 60, 65, 70],     # whole in the previous, cut by the current left border
                         [20, 20, 30, 30]])    # outside the shared part
    current = np.array([[10, 10, 20, 20],      # = previous 0
                        [35, 20, 45, 30],      # = previous 1, now whole
                        [0, 50, 5, 60],        # = previous 2, now cut
                        [25, 40, 35, 50],      # in the shared part with no partner: new
                        [50, 50, 60, 60]],     # outside the shared part: new
                       np.float32)
    assert already_counted(previous, current, shift, (100, 80), radius=3).tolist() == [True, True, True, False, False]


def test_a_previous_cell_absorbs_at_most_one_current_cell():
    shift = Shift(50.0, 0.0, 0.95)
    previous = np.array([[70, 20, 80, 30]])
    current = np.array([[20, 20, 30, 30], [21, 21, 31, 31]])
    assert already_counted(previous, current, shift, (100, 80), radius=3).tolist() == [True, False]
    assert already_counted(np.zeros((0, 4)), current, shift, (100, 80), radius=3).tolist() == [False, False]


@pytest.mark.parametrize("seed, step", [(3, 0.7), (8, 0.8)])
def test_oracle_count_of_a_stage_tour_counts_every_cell_once(seed, step):
    """With a perfect detector (ground-truth boxes), counting each taken field and dropping the
    cells `already_counted` gives exactly the cells of the union of the fields."""
    source, fields = _taken_fields(TOUR.format(seed=seed, step=step))
    counted, every_sighting, previous_boxes, previous_image = [], 0, None, None
    for frame, origin in fields:
        ids, boxes = source.cells_in_view(origin)
        every_sighting += len(ids)
        new = np.ones(len(ids), bool)
        if previous_image is not None:
            shift = estimate_shift(previous_image, frame.image)
            new = ~already_counted(previous_boxes, boxes, shift, source.size, radius=4)
        counted += ids[new].tolist()
        previous_boxes, previous_image = boxes, frame.image
    union = source.cells_in_fields()
    assert every_sighting > len(union)  # the fields do overlap: a naive count would be wrong
    assert sorted(counted) == union.tolist()
