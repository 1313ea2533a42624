"""`edge site fit`: a lab's own good fields, without labels, fit the bundle's field quality limits, pixel
size and drift bands; the new bundle's gate accepts that lab's good fields and still refuses bad ones."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge import DEFAULT_BUNDLE
from edge.cli import main
from edge.runtime.bundle import load_bundle
from edge.runtime.quality import QualityGate
from edge.counting.sources import DEMO_FIELDS
from edge.synthetic.smear import SmearConfig, render_field


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Another lab (the synthetic smears: their stain is 20 degrees from the default bundle's BCCD)."""
    root = tmp_path_factory.mktemp("site")
    fields = root / "fields"
    fields.mkdir()
    for seed in range(8):
        cv2.imwrite(str(fields / f"field_{seed}.png"), render_field(SmearConfig(), seed=seed).image)
    (fields / "damaged.png").write_bytes(b"not a picture")
    out = root / "bundle"
    assert main(["site", "fit", "--source", str(fields), "--out", str(out), "--pixel-size", "0.25",
                 "--json", str(root / "report.json"), "--threads", "1"]) == 0
    return root, json.loads((root / "report.json").read_text())


def test_the_labs_good_fields_pass_the_fitted_gate_where_the_bundles_own_refused_them(site):
    root, report = site
    assert report["gate_before"]["passed"] == 0 and report["gate_after"]["passed"] == report["fields_read"] == 8
    assert report["unreadable"] == 1
    bundle = load_bundle(root / "bundle")
    assert bundle.provenance["site"]["source"] == str(root / "fields")
    assert bundle.thresholds == load_bundle(DEFAULT_BUNDLE).thresholds  # no labels, no new thresholds
    new = render_field(SmearConfig(), seed=100).image  # a field the fit never saw
    assert QualityGate(bundle.quality).check(new).passed
    assert not QualityGate(load_bundle(DEFAULT_BUNDLE).quality).check(new).passed


@pytest.mark.parametrize("spoil", ["blur", "dark", "crowded", "another stain"])
def test_the_fitted_gate_still_refuses_bad_fields(site, spoil):
    root, _ = site
    gate = QualityGate(load_bundle(root / "bundle").quality)
    good = render_field(SmearConfig(), seed=101).image
    bad = {"blur": lambda: cv2.GaussianBlur(good, (0, 0), 6),
           "dark": lambda: (good * 0.15).astype(np.uint8),
           "crowded": lambda: render_field(SmearConfig(nucleated_per_mpx=400), seed=101).image,
           "another stain": lambda: cv2.imread(str(sorted(DEMO_FIELDS.glob("*.jpg"))[0]))}[spoil]()
    assert gate.check(good).passed
    assert not gate.check(bad).passed, spoil


def test_the_site_bundle_states_the_sites_pixel_size_so_the_device_needs_no_setting(site):
    root, report = site
    bundle = load_bundle(root / "bundle")
    default = load_bundle(DEFAULT_BUNDLE)
    assert bundle.tiling.pixel_size_um == report["pixel_size"]["um_per_pixel"] == 0.25
    assert bundle.tiling.detector_pixel_size() == pytest.approx(default.tiling.detector_pixel_size())


def test_too_few_fields_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "few").mkdir()
    for seed in range(2):
        cv2.imwrite(str(tmp_path / "few" / f"f{seed}.png"), render_field(SmearConfig(), seed=seed).image)
    assert main(["site", "fit", "--source", str(tmp_path / "few"), "--out", str(tmp_path / "b")]) == 2
    assert "needs at least 5 good fields" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
