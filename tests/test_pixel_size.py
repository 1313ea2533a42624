"""Physical scale: the bundle states the pixel size its detector expects; a camera of another pixel size
(another objective or sensor) gets its frames resampled, and every result says which size was used."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge.cli import main
from edge.runtime.boxes import box_iou
from edge.runtime.bundle import BundleError, Tiling, load_bundle
from edge.runtime.engine import CellCounter
from edge.synthetic.smear import SmearConfig, render_field
from tests.helpers import SYNTHETIC_BUNDLE


def test_the_tiling_for_another_pixel_size_keeps_the_detectors_scale():
    tiling = Tiling(256, 96, scale=0.5, pixel_size_um=0.1)
    assert tiling.detector_pixel_size() == pytest.approx(0.2)
    finer = tiling.for_pixel_size(0.05)  # twice the magnification: shrink twice as much
    assert finer.scale == pytest.approx(0.25) and finer.detector_pixel_size() == pytest.approx(0.2)
    assert finer.to_dict()["pixel_size_um"] == 0.05
    with pytest.raises(BundleError, match="outside"):
        tiling.for_pixel_size(2.0)
    with pytest.raises(BundleError, match="positive"):
        tiling.for_pixel_size(float("nan"))
    with pytest.raises(BundleError, match="does not state the pixel size"):
        Tiling(256, 96).for_pixel_size(0.1)


def recall(counter: CellCounter, field) -> float:
    found = counter.count_field(field.image).boxes
    return float((box_iou(field.boxes, found).max(1) >= 0.5).mean()) if len(found) else 0.0


@pytest.mark.parametrize("px_per_um", [2.0, 8.0])
def test_a_field_at_another_magnification_is_counted_once_its_pixel_size_is_given(px_per_um):
    bundle = load_bundle(SYNTHETIC_BUNDLE)
    assert bundle.tiling.pixel_size_um == 0.25  # the synthetic fields it learned from: 4 px per um
    field = render_field(SmearConfig(width=int(160 * px_per_um), height=int(120 * px_per_um),
                                     px_per_um=px_per_um), seed=3)
    assert len(field.boxes) >= 4
    with CellCounter(bundle, threads=1) as as_is, \
            CellCounter(bundle.at_pixel_size(1 / px_per_um), threads=1) as rescaled:
        before, after = recall(as_is, field), recall(rescaled, field)
    assert after >= 0.95 and before < 0.7, (before, after)


def test_a_session_records_its_pixel_size_and_a_resume_keeps_it(tmp_path):
    out = tmp_path / "session"
    args = ["run", "--bundle", str(SYNTHETIC_BUNDLE), "--source", "synthetic:frames=2,seed=4", "--out", str(out),
            "--no-save-fields", "--threads", "1"]
    assert main(args + ["--pixel-size", "0.2", "--max-frames", "1"]) in (0, 1)
    first = json.loads((out / "results.json").read_text())["pixel_size"]
    assert first["um_per_pixel"] == 0.2 and first["source"].startswith("setting")
    assert first["frame_scale"] == pytest.approx(0.8)
    assert main(["run", "--resume", "--out", str(out), "--no-save-fields", "--threads", "1"]) in (0, 1)
    assert json.loads((out / "results.json").read_text())["pixel_size"] == first

    plain = tmp_path / "plain"
    assert main(args[:5] + ["--out", str(plain), "--no-save-fields", "--max-frames", "1"]) in (0, 1)
    record = json.loads((plain / "results.json").read_text())["pixel_size"]
    assert record["um_per_pixel"] == 0.25 and record["source"].startswith("the bundle's camera")


def test_a_bundle_without_a_pixel_size_refuses_the_setting_clearly(tmp_path, capsys):
    root = tmp_path / "b"
    shutil.copytree(SYNTHETIC_BUNDLE, root)
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["tiling"]["pixel_size_um"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(root).tiling.pixel_size_um is None
    assert main(["run", "--bundle", str(root), "--source", "synthetic:frames=1", "--out", str(tmp_path / "s"),
                 "--pixel-size", "0.1"]) == 2
    assert "does not state the pixel size" in capsys.readouterr().err
    with pytest.raises(BundleError, match="pixel_size_um must be a positive"):
        manifest["tiling"]["pixel_size_um"] = -1
        (root / "manifest.json").write_text(json.dumps(manifest))
        load_bundle(root)
    assert np.isfinite(load_bundle(SYNTHETIC_BUNDLE).tiling.detector_pixel_size())
