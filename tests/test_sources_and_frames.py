import cv2
import numpy as np
import pytest

from edge.frames import FrameError, as_bgr8
from edge.sources import SourceError, open_source


def test_synthetic_source_is_seeded_and_finite():
    a = [f.image for f in open_source("synthetic:frames=3,seed=5,width=320,height=240")]
    b = [f.image for f in open_source("synthetic:frames=3,seed=5,width=320,height=240")]
    assert len(a) == 3 and a[0].shape == (240, 320, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_folder_source_reads_sorted_and_reports_corrupt_frames(tmp_path):
    cv2.imwrite(str(tmp_path / "b.png"), np.full((40, 50, 3), 20, np.uint8))
    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 50), 10, np.uint8))  # grey
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    source = open_source(str(tmp_path))
    first = source.read()
    assert first.origin == "a.png" and first.image.shape == (40, 50, 3)
    assert source.read().origin == "b.png"
    with pytest.raises(FrameError, match="c.jpg"):
        source.read()
    assert source.read() is None


@pytest.mark.parametrize("spec, message", [
    ("synthetic:frames=x", "bad synthetic source option"),
    ("/no/such/thing.png", "unknown source"),
])
def test_bad_sources_are_refused(spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(SourceError, match="holds no images"):
        open_source(str(tmp_path))


def test_frame_normalisation():
    assert as_bgr8(np.zeros((20, 30), np.uint8)).shape == (20, 30, 3)
    assert as_bgr8(np.zeros((20, 30, 4), np.uint8)).shape == (20, 30, 3)
    assert as_bgr8(np.full((20, 30, 3), 65535, np.uint16)).max() == 255
    for bad in (None, np.zeros((0, 0, 3), np.uint8), np.zeros((1, 1, 3), np.uint8),
                np.zeros((20, 30, 3), np.float32), np.zeros((20, 30, 2), np.uint8)):
        with pytest.raises(FrameError):
            as_bgr8(bad)


def test_synthetic_vary_changes_imaging_but_not_the_cells():
    plain, varied = open_source("synthetic:frames=1,seed=3"), open_source("synthetic:frames=1,seed=3,vary=1")
    a, b = plain.read().image, varied.read().image
    assert not np.array_equal(a, b)
    assert np.array_equal(plain.last_field.boxes, varied.last_field.boxes)
