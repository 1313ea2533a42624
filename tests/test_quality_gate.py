"""The field quality gate on synthetic fields degraded on purpose, its settings, and its place in the loop."""
import io
import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from edge.runtime.bundle import BundleError, load_bundle
from edge.cli import main
from edge.runtime.quality import (FOCUS_MARGIN, QualityGate, QualityLimits, fit_quality_limits, measure_field,
                          parse_override)
from edge.counting.runloop import run_session
from edge.synthetic.smear import SmearConfig, render_field
from tests.helpers import SYNTHETIC_BUNDLE

GOOD = 60  # fields in the imaging conditions of the demo source


def demo_conditions(seed: int) -> SmearConfig:
    rng = np.random.default_rng([seed, 1])
    return SmearConfig(blur_sigma=float(rng.uniform(0, 1.5)), noise_std=float(rng.uniform(0, 6)),
                       illumination=float(rng.uniform(0, 0.5)), stain_shift=float(rng.uniform(0, 0.5)))


def gain(image, g):
    return np.clip(image.astype(np.float32) * g, 0, 255).astype(np.uint8)


def light_falloff(image, low):
    """Light falling linearly to `low` across the field (a misaligned lamp)."""
    ramp = np.linspace(1.0, low, image.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(image * ramp, 0, 255).astype(np.uint8)


def restain(image, hue_degrees=0.0, saturation=1.0):
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + hue_degrees / 2) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


# Each degradation is beyond one default limit, with the check it must break.
DEGRADED = {
    "blur": (lambda im: cv2.GaussianBlur(im, (0, 0), 3.0), "focus"),
    "underexposed": (lambda im: gain(im, 0.55), "exposure"),
    "overexposed": (lambda im: gain(im, 1.3), "clipping"),
    "uneven light": (lambda im: light_falloff(im, 0.35), "illumination"),
    "warmer stain": (lambda im: restain(im, hue_degrees=40), "stain"),
    "bluer stain": (lambda im: restain(im, hue_degrees=-40), "stain"),
    "vivid stain": (lambda im: restain(im, saturation=2.0), "stain"),
}


@pytest.fixture(scope="module")
def good_fields():
    return [render_field(demo_conditions(s), seed=5000 + s).image for s in range(GOOD)]


def test_good_fields_pass_and_fields_degraded_beyond_a_limit_are_refused(good_fields):
    gate = QualityGate()
    refused_good = [i for i, im in enumerate(good_fields) if not gate.check(im).passed]
    assert len(refused_good) <= 0.01 * GOOD
    for name, (degrade, check) in DEGRADED.items():
        reports = [gate.check(degrade(im)) for im in good_fields]
        refused = sum(check in r.checks for r in reports)
        assert refused >= 0.99 * GOOD, (name, refused)


def test_limits_fitted_on_another_microscope_pass_its_fields_and_refuse_its_blur(good_fields):
    # a camera sampling the smear twice as finely as the synthetic one, and a warmer stain
    lab = [restain(cv2.resize(im, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC), hue_degrees=40)
           for im in good_fields[:30]]
    limits = fit_quality_limits(lab[:20])
    focus = sorted(measure_field(im)[0]["focus"] for im in lab[:20])
    assert limits.min_focus == pytest.approx(FOCUS_MARGIN * np.percentile(focus, 5), abs=1e-4)
    assert np.linalg.norm(limits.stain_reference) == pytest.approx(1.0, abs=1e-3)
    assert limits.stain_reference != QualityLimits().stain_reference and limits.max_stain_angle >= 6.0
    assert (limits.min_white, limits.max_stained) == (QualityLimits().min_white, QualityLimits().max_stained)
    default_gate, fitted_gate = QualityGate(), QualityGate(limits)
    assert not any(default_gate.check(im).passed for im in lab[20:])  # the synthetic limits refuse them
    assert all(fitted_gate.check(im).passed for im in lab[20:])  # fields it did not fit on pass
    assert not fitted_gate.check(cv2.GaussianBlur(lab[25], (0, 0), 4.0)).passed  # its own blur is still caught


def test_fitting_needs_fields_with_stained_nuclei():
    with pytest.raises(ValueError, match="no detail or no nucleus-stained pixels"):
        fit_quality_limits([np.full((96, 128, 3), 230, np.uint8)])


def test_density_limits_refuse_thick_and_empty_fields():
    # the default allows an empty field (no wrong count); a lab that wants to skip bare glass sets min_stained
    gate = QualityGate(replace(QualityLimits(), min_stained=0.003))
    dense = [render_field(replace(demo_conditions(s), nucleated_per_mpx=400), seed=7000 + s).image for s in range(15)]
    empty = [render_field(replace(demo_conditions(s), nucleated_per_mpx=0), seed=8000 + s).image for s in range(15)]
    assert all("density" in gate.check(im).checks for im in dense + empty)
    assert all("density" not in QualityGate().check(im).checks for im in empty)


def test_reasons_name_the_measure_and_the_limit(good_fields):
    report = QualityGate().check(cv2.GaussianBlur(good_fields[0], (0, 0), 4.0))
    assert report.checks == ("focus",)
    assert report.reason.startswith("quality: focus: ") and "< 0.45" in report.reason


def test_limits_come_from_the_manifest_and_refuse_unknown_settings(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["quality"] = {"min_focus": 0.3, "stain_reference": [0.3, 0.8, 0.5]}
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    limits = load_bundle(bundle_copy).quality
    assert limits.min_focus == 0.3 and limits.stain_reference == (0.3, 0.8, 0.5)
    assert limits.max_clipped == QualityLimits().max_clipped  # unset keys keep their defaults
    manifest["quality"] = {"min_fokus": 0.3}
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="quality section is invalid: unknown quality setting"):
        load_bundle(bundle_copy)


def test_command_line_overrides_parse():
    assert parse_override("min_focus=0.3") == ("min_focus", 0.3)
    assert parse_override("enabled=off") == ("enabled", False)
    assert parse_override("stain_reference=0.4,0.8,0.5") == ("stain_reference", (0.4, 0.8, 0.5))
    with pytest.raises(ValueError):
        parse_override("min_focus")


def test_a_run_refuses_bad_fields_reports_why_and_counts_the_good_ones(tmp_path, capsys):
    folder = tmp_path / "fields"
    folder.mkdir()
    good = render_field(SmearConfig(), seed=1).image
    for name, image in (("a.png", good), ("b.png", cv2.GaussianBlur(good, (0, 0), 4.0)),
                        ("c.png", gain(good, 0.5)), ("d.png", render_field(SmearConfig(), seed=2).image)):
        cv2.imwrite(str(folder / name), image)
    (folder / "e.png").write_bytes(b"not an image")
    out = tmp_path / "s"
    code = main(["run", "--bundle", str(SYNTHETIC_BUNDLE), "--source", str(folder), "--out", str(out), "--threads", "1", "--no-save-fields"])
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["frames"] == {"counted": 2, "skipped": 1}
    refused = results["fields_rejected_for_quality"]
    assert refused["count"] == 2 and refused["by_check"] == {"exposure": 1, "focus": 1}
    assert [f["frame_id"] for f in refused["fields"]] == [1, 2]
    assert "cannot decode" in results["skipped_frames"][0]["reason"]
    assert "frame     1  not counted, quality: focus:" in printed
    assert "rejected for quality" in printed

    # the same fields with the gate off: every decodable field is counted
    results = run_session(SYNTHETIC_BUNDLE, str(folder), tmp_path / "s2", threads=1, save_fields=False,
                          live=io.StringIO(), quality={"enabled": False})
    assert results["frames"] == {"counted": 4, "skipped": 1}
    assert results["fields_rejected_for_quality"]["count"] == 0


def test_a_bad_override_is_one_error_line(tmp_path, capsys):
    code = main(["run", "--source", "synthetic:frames=1", "--out", str(tmp_path / "s"), "--quality", "min_fokus=1"])
    assert code == 2
    assert "unknown quality setting(s) min_fokus" in capsys.readouterr().err
