"""Reliability: bad inputs, each with its defined outcome (a clear refusal or a counted skip).

Damaged image files, odd frames (empty, 1x1, 16-bit, grey, BGRA, float, changing size), models
that output NaN or Inf (real ONNX models built here), damaged bundles, manifests with wrong
types, extra fields or an unknown version, and bundle paths that escape their folder.
The 20000 x 20000 frame is in test_reliability_large_frame.py.
"""
import csv
import io
import json
import os
import shutil
import tarfile

import cv2
import numpy as np
import pytest

from edge.runtime.bundle import BundleError, load_bundle
from edge.runtime.engine import CellCounter
from edge.runtime.frames import Frame
from edge.counting.runloop import run_session
from edge.counting.sources import CaptureSpec, FrameSource, VideoFileSource
from edge.synthetic.smear import render_field
from edge.runtime.tiling import make_grid
from tests.helpers import SYNTHETIC_BUNDLE, tiny_bundle

# ---------------------------------------------------------------- tiny real models

TILES_640x480 = len(make_grid(640, 480, 256, 96))  # the default bundle's tiling: 4 x 3 tiles


class ListSource(FrameSource):
    """Frames handed in as arrays, in order; a file-like (never dropped) source."""

    def __init__(self, images):
        super().__init__()
        self.images, self.description = list(images), "list of frames"

    def _read(self, timeout):
        if self.frames_read >= len(self.images):
            return None
        i = self.frames_read
        return Frame(i, self.images[i], 0.0, f"frame {i}")


def run(out, source, bundle=SYNTHETIC_BUNDLE, **kwargs):
    with open(os.devnull, "w") as sink:
        return run_session(bundle, source, out, threads=1, live=sink, save_fields=False,
                           field_trigger="every", **kwargs)


def cells(out):
    """(frame origin, box, class, accepted) of every counted cell, from the session's cells.csv."""
    with open(out / "cells.csv") as fh:
        return sorted((r["frame_origin"], r["x1"], r["y1"], r["x2"], r["y2"], r["predicted"], r["accepted"])
                      for r in csv.DictReader(fh))


# ---------------------------------------------------------------- damaged files, odd frames

@pytest.fixture(scope="module")
def field_image():
    return render_field(seed=11).image


def test_damaged_image_files_are_counted_skips_and_odd_formats_are_normalised(tmp_path, field_image):
    """PNG carries CRCs, so its damage is refused; JPEG carries no checksum, so a flipped byte in
    its entropy data decodes to a damaged picture that is counted as seen; a truncated JPEG
    does not decode here and is skipped. 16-bit, grey and BGRA files are converted."""
    folder = tmp_path / "frames"
    folder.mkdir()
    png = cv2.imencode(".png", field_image)[1].tobytes()
    jpg = cv2.imencode(".jpg", field_image)[1].tobytes()
    files = {
        "a_good.png": png,
        "b_truncated.png": png[:len(png) // 2],
        "c_flipped.png": png[:len(png) // 2] + bytes([png[len(png) // 2] ^ 0xFF]) + png[len(png) // 2 + 1:],
        "d_truncated.jpg": jpg[:len(jpg) // 2],
        "e_header_only.jpg": jpg[:64],
        "f_empty.png": b"",
        "g_1x1.png": cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes(),
        "h_16bit.png": cv2.imencode(".png", field_image.astype(np.uint16) * 257)[1].tobytes(),
        "i_bgra.png": cv2.imencode(".png", cv2.cvtColor(field_image, cv2.COLOR_BGR2BGRA))[1].tobytes(),
        "j_grey.png": cv2.imencode(".png", cv2.cvtColor(field_image, cv2.COLOR_BGR2GRAY))[1].tobytes(),
        "k_flipped.jpg": jpg[:len(jpg) // 2] + bytes([jpg[len(jpg) // 2] ^ 0xFF]) + jpg[len(jpg) // 2 + 1:],
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    results = run(tmp_path / "s", str(folder))
    names = sorted(files)
    skipped = {names[s["frame_id"]]: s["reason"] for s in results["skipped_frames"]}
    assert results["frames"] == {"counted": 5, "skipped": 6}
    assert skipped == {"b_truncated.png": "cannot decode image b_truncated.png",
                       "c_flipped.png": "cannot decode image c_flipped.png",
                       "d_truncated.jpg": "image d_truncated.jpg is truncated (no JPEG end marker)",
                       "e_header_only.jpg": "cannot decode image e_header_only.jpg",
                       "f_empty.png": "cannot decode image f_empty.png",
                       "g_1x1.png": "frame of 1x1 pixels is too small to hold a cell"}
    by_file = {}
    for origin, *cell in cells(tmp_path / "s"):
        by_file.setdefault(origin, []).append(cell)
    assert by_file["a_good.png"], "the good field has cells"
    assert by_file["h_16bit.png"] == by_file["i_bgra.png"] == by_file["a_good.png"]


class ScriptedCapture:
    """Stands in for cv2.VideoCapture on a video file: returns the given frames, then ends."""

    def __init__(self, frames):
        self.frames = list(frames)

    def isOpened(self):
        return True

    def read(self):
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self):
        self.frames = []


def test_odd_frames_from_a_capture_are_skipped_or_normalised_and_sizes_may_change(tmp_path, field_image):
    small = render_field(seed=12).image[:240, :320]
    large = cv2.resize(render_field(seed=13).image, (1280, 960))
    frames = [field_image, np.zeros((0, 0, 3), np.uint8), np.zeros((1, 1, 3), np.uint8),
              field_image.astype(np.uint16) * 257, cv2.cvtColor(field_image, cv2.COLOR_BGR2GRAY),
              cv2.cvtColor(field_image, cv2.COLOR_BGR2BGRA), field_image.astype(np.float32),
              np.zeros((480, 640, 2), np.uint8), large, small, field_image]
    source = VideoFileSource(CaptureSpec("scope.avi", cv2.CAP_ANY, "video file"),
                             lambda spec: ScriptedCapture(frames))
    results = run(tmp_path / "s", source)
    assert results["frames"] == {"counted": 7, "skipped": 4}
    assert [s["frame_id"] for s in results["skipped_frames"]] == [1, 2, 6, 7]
    per_frame = {}
    for origin, *cell in cells(tmp_path / "s"):
        per_frame.setdefault(int(origin.rsplit(" ", 1)[-1]), []).append(cell)
    assert per_frame[0] == per_frame[3] == per_frame[5] == per_frame[10]
    with CellCounter(load_bundle(SYNTHETIC_BUNDLE), threads=1) as counter:
        for frame_id, image in ((8, large), (9, small)):
            assert len(per_frame.get(frame_id, [])) == len(counter.count_field(image))


# ---------------------------------------------------------------- NaN and Inf from a model

def test_a_detector_that_outputs_nan_skips_that_field_and_counts_the_others(tmp_path):
    bundle = tiny_bundle(tmp_path / "b", detector_nan=True)
    bright, dark = np.full((480, 640, 3), 220, np.uint8), np.full((480, 640, 3), 20, np.uint8)
    # flat test frames are no smear: without the quality gate they reach the models this test is about
    results = run(tmp_path / "s", ListSource([bright, dark, bright]), bundle=bundle, quality={"enabled": False})
    assert results["frames"] == {"counted": 2, "skipped": 1}
    assert results["skipped_frames"] == [{"frame_id": 1, "reason": "the detector produced NaN or Inf"}]
    with CellCounter(load_bundle(bundle), threads=1) as counter:
        per_field = len(counter.count_field(bright))
        with pytest.raises(FloatingPointError, match="detector produced NaN"):
            counter.count_field(dark)
    assert per_field == TILES_640x480  # every tile owns the centre of its one box
    assert results["accepted"] + results["rejected"] == 2 * per_field


def test_a_classifier_that_outputs_inf_skips_that_field(tmp_path):
    bundle = tiny_bundle(tmp_path / "b", classifier_inf=True)
    bright, dark = np.full((480, 640, 3), 220, np.uint8), np.full((480, 640, 3), 20, np.uint8)
    results = run(tmp_path / "s", ListSource([dark, bright]), bundle=bundle, quality={"enabled": False})
    assert results["frames"] == {"counted": 1, "skipped": 1}
    assert results["skipped_frames"] == [{"frame_id": 0, "reason": "the classifier produced NaN or Inf"}]
    assert results["accepted"] + results["rejected"] == TILES_640x480


# ---------------------------------------------------------------- bundles

def _edit_manifest(root, change):
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["detector.onnx", "classifier.onnx"])
@pytest.mark.parametrize("damage", ["first byte", "last byte", "appended byte", "truncated"])
def test_any_changed_byte_in_a_model_file_is_refused(bundle_copy, name, damage):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    if damage == "first byte":
        data[0] ^= 0x80
    elif damage == "last byte":
        data[-1] ^= 0x01
    elif damage == "appended byte":
        data.append(0)
    else:
        del data[-100:]
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name} fails its SHA-256 check"):
        load_bundle(bundle_copy)


def test_a_changed_byte_in_the_manifest_is_refused_or_changes_the_bundle_identity(bundle_copy):
    """The manifest has no checksum of its own: a change that still parses and passes every field
    check gives a bundle with another manifest SHA-256, which every session records and a resume
    refuses. Every 11th byte position of the manifest is tried (all of them take 25 s; the
    fuzz tests and benchmarks/reliability_runner.py go further)."""
    original = (bundle_copy / "manifest.json").read_bytes()
    identity = load_bundle(bundle_copy).manifest_sha256
    outcomes = {"refused": 0, "new identity": 0}
    for i in range(0, len(original), 11):
        damaged = bytearray(original)
        damaged[i] ^= 0x01
        (bundle_copy / "manifest.json").write_bytes(bytes(damaged))
        try:
            assert load_bundle(bundle_copy).manifest_sha256 != identity
            outcomes["new identity"] += 1
        except BundleError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > outcomes["new identity"] > 0


@pytest.mark.parametrize("change, message", [
    (lambda m: m["tiling"].update(overlapp=100), "tiling has unknown fields: overlapp"),
    (lambda m: m["thresholds"].update(globl=0.5), "thresholds has unknown fields: globl"),
    (lambda m: m["models"]["detector"].update(mean=[0, 0, 0]), "models.detector has unknown fields: mean"),
    (lambda m: m["models"]["detector"]["normalisation"].update(scale=2), "normalisation"),
    (lambda m: m["tiling"].update(overlap=False), "tiling.overlap must be an integer"),
    (lambda m: m["tiling"].update(tile_size=256.0), "tiling.tile_size must be a positive integer"),
    (lambda m: m["tiling"].update(scale="1"), "tiling.scale"),
    (lambda m: m["models"]["classifier"]["normalisation"].update(mean=[float("nan"), 0, 0]), "normalisation"),
    (lambda m: m["models"]["classifier"]["normalisation"].update(std=[float("inf"), 1, 1]), "normalisation"),
    (lambda m: m.update(ccl_sigma=float("nan")), "ccl_sigma"),
    (lambda m: m["thresholds"].update(target_accuracy=True), "target_accuracy"),
    (lambda m: m["thresholds"]["per_class"].update(neutrophil=float("inf")), "per_class"),
    (lambda m: m["models"]["detector"].update(outputs="boxes"), "outputs must be a list"),
    (lambda m: m["models"].update(extra={}), "models must name exactly"),
    (lambda m: m.update(class_names=["a", "a", "b", "c", "d"]), "duplicates"),
    (lambda m: m.update(provenance=[]), "provenance must be an object"),
])
def test_manifest_fields_of_the_wrong_type_or_unknown_are_refused(bundle_copy, change, message):
    _edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("version", [0, 2, "1", None, [1]])
def test_an_unknown_format_version_is_refused(bundle_copy, version):
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match="unknown bundle format version"):
        load_bundle(bundle_copy)


def test_model_paths_that_escape_the_bundle_are_refused(bundle_copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copy(bundle_copy / "detector.onnx", outside)
    for file in (str(outside), "../outside.onnx", "sub/../../outside.onnx"):
        _edit_manifest(bundle_copy, lambda m: m["models"]["detector"].update(file=file))
        with pytest.raises(BundleError, match="points outside the bundle"):
            load_bundle(bundle_copy)
    (bundle_copy / "link.onnx").symlink_to(outside)
    _edit_manifest(bundle_copy, lambda m: m["models"]["detector"].update(file="link.onnx"))
    with pytest.raises(BundleError, match="points outside the bundle"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("member", ["traversal", "absolute", "link out"])
def test_tar_bundles_whose_members_escape_are_refused(bundle_copy, tmp_path, member):
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(bundle_copy, arcname="bundle")
        if member == "link out":
            info = tarfile.TarInfo("bundle/evil.onnx")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo("../evil" if member == "traversal" else str(tmp_path / "evil"))
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    # tarfile's "data" filter refuses links and paths out of the folder; an absolute path is made
    # relative, and the extra top-level entry it makes leaves no bundle at the top
    with pytest.raises(BundleError, match="no manifest.json" if member == "absolute" else "cannot unpack"):
        load_bundle(archive)
    assert not (tmp_path / "evil").exists()
