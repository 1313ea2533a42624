import numpy as np
import pytest

from edge.runtime.frames import Frame
from edge.counting.sources import open_source
from edge.counting.stillness import StillnessTrigger


def _triggers(spec: str, trigger: StillnessTrigger) -> tuple[list, list]:
    """(frame id, truth) of each frame that fired, and the truth of every frame."""
    source = open_source(spec)
    fired = [(f.frame_id, source.truth) for f in source if trigger.update(f)]
    return fired, source.plan


@pytest.mark.parametrize("noise", [2, 8])
def test_one_trigger_per_field_none_while_moving(noise):
    spec = f"synthetic-stage:fields=4,seed=1,width=160,height=120,still=8,move=4,noise={noise}"
    fired, plan = _triggers(spec, StillnessTrigger(still_seconds=0.1))
    assert [truth.field for _, truth in fired] == [0, 1, 2, 3]
    assert not any(truth.moving for _, truth in fired)
    # Each fires 0.1 s (3 frames at 30 fps) after its field's first still frame.
    firsts = [next(i for i, p in enumerate(plan) if p.field == k) for k in range(4)]
    assert [i for i, _ in fired] == [i + 3 for i in firsts]


def test_a_field_shorter_than_still_seconds_is_not_taken():
    spec = "synthetic-stage:fields=3,seed=1,width=160,height=120,still=3,move=4,noise=2"
    fired, _ = _triggers(spec, StillnessTrigger(still_seconds=0.1))  # 3 still frames span only 2/30 s
    assert fired == []


def test_time_comes_from_the_frame_timestamps():
    image = np.full((48, 64, 3), 128, np.uint8)
    trigger = StillnessTrigger(still_seconds=2.0)
    fired = [trigger.update(Frame(i, image, 1000.0 + 0.5 * i)) for i in range(8)]
    assert fired == [False, False, False, False, True, False, False, False]


def test_lamp_flicker_is_not_motion_but_a_moved_stage_is():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 255, (120, 160, 3), np.uint8)
    trigger = StillnessTrigger(still_seconds=0.0)
    assert trigger.update(Frame(0, scene, 0.0))
    brighter = np.clip(scene.astype(int) + 12, 0, 255).astype(np.uint8)
    assert not trigger.update(Frame(1, brighter, 0.1)) and not trigger.moving
    moved = np.roll(scene, 8, axis=1)
    assert not trigger.update(Frame(2, moved, 0.2)) and trigger.moving
    assert trigger.update(Frame(3, moved, 0.3))  # still again after the move


@pytest.mark.parametrize("kwargs", [{"still_seconds": -1}, {"motion_threshold": 0}, {"work_width": 4}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        StillnessTrigger(**kwargs)
