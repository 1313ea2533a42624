"""Run-time stain normalisation: views move to the reference's LAB statistics, the detector and the
expert's review crops keep the camera's colours, and the manifest section is checked on load."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.runtime.bundle import BundleError, load_bundle
from edge.runtime.engine import CellCounter
from edge.runtime.stain_normaliser import StainNormaliser, StainReference, lab_statistics, reference_from_images
from edge.synthetic.smear import SmearConfig, render_field
from tests.helpers import SYNTHETIC_BUNDLE


def cast(image: np.ndarray, bgr_gain=(1.15, 0.9, 0.8)) -> np.ndarray:
    return np.clip(image * np.array(bgr_gain), 0, 255).astype(np.uint8)


def test_a_field_like_the_reference_is_left_as_it_is():
    field = render_field(SmearConfig(), seed=1).image
    normaliser = StainNormaliser(reference_from_images([field], "itself"))
    out = normaliser.normalise_views(field, field[None])[0]
    assert np.abs(out.astype(int) - field).mean() < 1.5


def test_a_colour_cast_is_taken_back_toward_the_reference():
    field = render_field(SmearConfig(), seed=2).image
    ref = reference_from_images([field], "the lab")
    tinted = cast(field)
    out = StainNormaliser(ref).normalise_views(tinted, tinted[None])[0]
    before = np.abs(lab_statistics(tinted)[0] - ref.lab_mean).sum()
    after = np.abs(lab_statistics(out)[0] - ref.lab_mean).sum()
    assert after < 0.2 * before
    assert np.abs(out.astype(int) - field).mean() < np.abs(tinted.astype(int) - field).mean() / 2


def test_views_are_normalised_with_the_whole_fields_statistics():
    field = cast(render_field(SmearConfig(), seed=3).image)
    normaliser = StainNormaliser(StainReference((180.0, 135.0, 120.0), (40.0, 10.0, 12.0)))
    views = np.stack([field[:64, :64], field[100:164, 200:264]])
    gain, offset = normaliser.transform_for(field)
    expected = np.stack([normaliser.apply(v, gain, offset) for v in views])
    assert np.array_equal(normaliser.normalise_views(field, views), expected)
    assert normaliser.normalise_views(field, views[:0]).shape == (0, 64, 64, 3)


@pytest.fixture(scope="module")
def normalised(tmp_path_factory):
    root = tmp_path_factory.mktemp("stain")
    ref = root / "reference" / "some-class"
    ref.mkdir(parents=True)
    for seed in range(3):
        cv2.imwrite(str(ref / f"{seed}.png"), cast(render_field(SmearConfig(), seed=seed).image, (0.9, 1.0, 1.1)))
    assert main(["site", "stain", "--bundle", str(SYNTHETIC_BUNDLE), "--reference", str(root / "reference"),
                 "--out", str(root / "bundle")]) == 0
    return root / "bundle"


def test_site_stain_states_the_reference_and_off_removes_it(normalised, tmp_path):
    bundle = load_bundle(normalised)
    assert bundle.stain_reference is not None and "3 images" in bundle.stain_reference.source
    assert bundle.provenance["stain_normalisation"]["images"] == 3
    assert main(["site", "stain", "--bundle", str(normalised), "--off", "--out", str(tmp_path / "off")]) == 0
    assert load_bundle(tmp_path / "off").stain_reference is None


def test_the_engine_normalises_the_classifiers_views_but_not_the_detectors_field(normalised):
    field = render_field(SmearConfig(), seed=5).image
    with CellCounter(load_bundle(SYNTHETIC_BUNDLE), threads=1) as plain, \
            CellCounter(load_bundle(normalised), threads=1) as adjusted:
        boxes = plain.detect(field)[0]
        assert np.array_equal(boxes, adjusted.detect(field)[0])
        assert len(boxes)
        assert not np.array_equal(plain.crop(field, boxes), adjusted.crop(field, boxes))
        gain, offset = adjusted.normaliser.transform_for(field)
        assert np.array_equal(adjusted.crop(field, boxes), adjusted.normaliser.apply(plain.crop(field, boxes),
                                                                                     gain, offset))


@pytest.mark.parametrize("section", [{"lab_mean": [1, 2], "lab_std": [1, 1, 1]},
                                     {"lab_mean": [100, 128, 128], "lab_std": [0, 5, 5]},
                                     {"lab_mean": [100, 128, 128], "lab_std": [5, 5, 5], "gain": 2}])
def test_a_bad_stain_section_is_refused(normalised, tmp_path, section):
    root = tmp_path / "b"
    shutil.copytree(normalised, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["stain_normalisation"] = section
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="stain_normalisation"):
        load_bundle(root)
