import cv2
import numpy as np
import pytest

from edge.runtime.frames import FrameError, as_bgr8
from edge.counting.sources import (DEMO_FIELDS, CameraSource, ChainedSource, FolderSource, ReadTimeout, ReconnectPolicy,
                          SourceError, capture_spec, open_source)


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


# ---------------------------------------------------------------- cameras, streams, pipelines, videos

@pytest.mark.parametrize("spec, target, api, kind", [
    ("0", 0, cv2.CAP_ANY, "camera"),
    ("/dev/video2", "/dev/video2", cv2.CAP_V4L2, "camera"),
    ("rtsp://10.0.0.7:554/stream1", "rtsp://10.0.0.7:554/stream1", cv2.CAP_FFMPEG, "stream"),
    ("HTTPS://scope.local/mjpg", "HTTPS://scope.local/mjpg", cv2.CAP_FFMPEG, "stream"),
    ("nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1920,height=1080 ! nvvidconv ! appsink",
     "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1920,height=1080 ! nvvidconv ! appsink",
     cv2.CAP_GSTREAMER, "GStreamer pipeline"),
])
def test_capture_specs_choose_the_backend(spec, target, api, kind):
    parsed = capture_spec(spec)
    assert (parsed.target, parsed.api, parsed.kind, parsed.live) == (target, api, kind, True)
    assert bool(parsed.params) == (kind == "stream")  # streams get open and read timeouts


@pytest.mark.parametrize("spec", ["demo", "synthetic:frames=2", "synthetic-stage", "fields/", "x.png"])
def test_other_specs_name_no_capture(spec):
    assert capture_spec(spec) is None


def test_gstreamer_pipeline_fails_clearly_naming_gstreamer():
    # Without GStreamer in OpenCV (as here) the message says so; with it, this pipeline cannot open.
    with pytest.raises(SourceError, match="GStreamer"):
        open_source("nosuchelement ! appsink")


def test_unreachable_stream_is_refused_at_start():
    with pytest.raises(SourceError, match="cannot open stream rtsp://127.0.0.1:1/none"):
        open_source("rtsp://127.0.0.1:1/none")


def test_video_file_is_read_to_its_end_and_never_live(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    source = open_source(str(path))
    frames = list(source)
    assert not source.live and [f.frame_id for f in frames] == [0, 1, 2, 3]
    assert frames[0].image.shape == (48, 64, 3) and source.read() is None
    assert source.stats()["frames"] == 4


class FakeClock:
    """Monotonic time that moves only when the source sleeps or a frame arrives."""

    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class UnpluggedCamera:
    """Stands in for the device behind cv2.VideoCapture: delivers `before` frames at 20 fps, is
    unplugged (the read fails), refuses `failed_reopens` reopen attempts, then delivers again."""

    def __init__(self, clock: FakeClock, before: int, failed_reopens: float):
        self.clock, self.before, self.failed_reopens = clock, before, failed_reopens
        self.opens, self.reads = 0, 0

    def open(self, spec):
        self.opens += 1
        return _FakeCapture(self, opened=self.opens == 1 or self.opens - 1 > self.failed_reopens)


class _FakeCapture:
    def __init__(self, camera: UnpluggedCamera, opened: bool):
        self.camera, self.opened = camera, opened

    def isOpened(self) -> bool:
        return self.opened

    def read(self):
        camera = self.camera
        camera.reads += 1
        camera.clock.now += 0.05
        if camera.reads == camera.before + 1:
            return False, None
        return True, np.full((32, 48, 3), camera.reads, np.uint8)

    def release(self) -> None:
        self.opened = False


def _camera(before: int, failed_reopens: float, policy: ReconnectPolicy):
    clock = FakeClock()
    device = UnpluggedCamera(clock, before, failed_reopens)
    source = CameraSource(capture_spec("/dev/video0"), policy, device.open, clock=clock, sleep=clock.sleep)
    return source, device, clock


def test_unplugged_camera_is_reopened_with_backoff_and_the_gap_logged(caplog):
    source, device, clock = _camera(before=3, failed_reopens=3, policy=ReconnectPolicy(0.5, 2.0, 60.0))
    frames = [source.read() for _ in range(3)]
    assert source.stats()["fps"] == pytest.approx(20.0)
    with caplog.at_level("WARNING", logger="edge.counting.sources"):
        frames += [source.read() for _ in range(3)]
    assert source.live and [f.frame_id for f in frames] == [0, 1, 2, 3, 4, 5]
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.0]  # the 4th reopen works
    stats = source.stats()
    assert stats["reconnects"] == 1 and stats["read_errors"] == 1 and stats["frames"] == 6
    assert stats["gap_seconds"] == pytest.approx(5.5 + 0.05)  # the backoff plus the first new frame
    assert stats["fps"] == pytest.approx(5 / 5.8)  # the delivered rate, gap included
    assert "back after a 5.5 s gap (4 reopen attempts)" in caplog.text


def test_camera_gone_longer_than_the_outage_limit_raises():
    source, device, clock = _camera(before=1, failed_reopens=float("inf"), policy=ReconnectPolicy(1.0, 4.0, 20.0))
    source.read()
    with pytest.raises(SourceError, match=r"gone for 19 s \(6 reopen attempts\); giving up"):
        source.read()
    assert clock.sleeps == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]  # the next attempt would fall past 20 s


def test_read_timeout_during_an_outage_leaves_the_source_reconnecting():
    source, device, clock = _camera(before=0, failed_reopens=3, policy=ReconnectPolicy(0.5, 8.0, 60.0))
    start = clock.now
    with pytest.raises(ReadTimeout):
        source.read(timeout=2.0)
    assert clock.now - start == pytest.approx(2.0)  # gave up at the timeout, not at the next backoff
    assert source.read().frame_id == 0 and source.stats()["reconnects"] == 1


def test_camera_that_cannot_be_opened_at_start_is_refused():
    with pytest.raises(SourceError, match="cannot open camera /dev/video99"):
        open_source("/dev/video99")


@pytest.mark.parametrize("delays", [(0.0, 1.0, 5.0), (2.0, 1.0, 5.0), (0.5, 1.0, 0.0)])
def test_bad_reconnect_policies_are_refused(delays):
    with pytest.raises(SourceError, match="reconnect delays"):
        ReconnectPolicy(*delays)


def test_file_sources_count_frames_and_bad_frames(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 50, 3), 20, np.uint8))
    (tmp_path / "b.png").write_bytes(b"not an image")
    source = open_source(str(tmp_path))
    source.read()
    with pytest.raises(FrameError):
        source.read()
    assert source.read() is None and not source.live
    assert {k: source.stats()[k] for k in ("frames", "read_errors", "reconnects")} == \
        {"frames": 1, "read_errors": 1, "reconnects": 0}


def test_demo_plays_the_real_fields_then_the_synthetic_ones():
    source = open_source("demo")
    frames = list(source)
    real = sorted(p.name for p in DEMO_FIELDS.glob("*.jpg"))
    assert len(real) == 6 and [f.origin for f in frames[:6]] == real
    assert all(f.image.shape == (480, 640, 3) for f in frames[:6])  # BCCD fields as they are
    assert all(f.origin.startswith("synthetic seed") for f in frames[6:]) and len(frames) == 6 + 12
    assert [f.frame_id for f in frames] == list(range(18))
    assert source.stats()["frames"] == 18 and "then synthetic" in source.description
    source.close()


def test_chained_source_counts_a_bad_frame_and_goes_on(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not an image")
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((32, 32, 3), np.uint8))
    source = ChainedSource([FolderSource(tmp_path), open_source("synthetic:frames=1")])
    with pytest.raises(FrameError, match="a.png"):
        source.read()
    ids = [f.frame_id for f in source]
    assert ids == [1, 2] and source.stats()["read_errors"] == 1
