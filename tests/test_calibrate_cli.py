"""`edge calibrate`: new bundles whose thresholds belong to their classifier, and the report."""
import json
import logging
import shutil

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from calibration.rules import fit_rule
from edge.runtime.bundle import BundleError, ModelSpec, Thresholds, load_bundle, sha256_file, write_bundle
from edge.evaluation.calibrate import classifier_outputs
from edge.cli import main
from edge.runtime.decision import RejectRule
from edge.runtime.preprocess import Normalisation
from tests.helpers import SYNTHETIC_BUNDLE

COLOURS = {"neutrophil": (200, 120, 160), "lymphocyte": (90, 60, 140), "monocyte": (170, 170, 200),
           "eosinophil": (100, 150, 230), "basophil": (70, 40, 70)}  # BGR


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    out = tmp_path_factory.mktemp("crops")
    assert main(["synth", "crops", "--out", str(out), "--per-class", "50", "--size", "64", "--seed", "11"]) == 0
    return out


def write_split_file(data, path, fraction=0.5, seed=0):
    files = sorted(f"{p.parent.name}/{p.name}" for p in data.glob("*/*.png"))
    order = np.random.default_rng(seed).permutation(len(files))
    cut = int(len(files) * fraction)
    path.write_text(json.dumps({"splits": {"calibration": [files[i] for i in order[:cut]],
                                           "validation": [files[i] for i in order[cut:]]}}))
    return path


def write_colour_crops(out, per_class, seed, spread=20.0):
    """Flat-coloured 32 x 32 crops, each class around its own colour, the classes overlapping a little."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(colour) + rng.normal(0, spread, 3)
            image = np.clip(base + rng.normal(0, 4, (32, 32, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(out / name / f"{i:04d}.png"), image)
    return out


@pytest.fixture(scope="module")
def softmax_bundle(tmp_path_factory):
    """A softmax-head bundle: a nearest-colour classifier (mean colour -> Gemm -> Softmax) as ONNX."""
    root = tmp_path_factory.mktemp("softmax_bundle")
    norm = Normalisation()
    rgb = np.array([c[::-1] for c in COLOURS.values()], dtype=np.float64) / 255.0
    centres = (rgb - np.array(norm.mean)) / np.array(norm.std)
    temperature = 4.0  # logits = -T ||m - centre||^2 up to a term common to all classes
    weight = (2 * temperature * centres).T.astype(np.float32)
    bias = (-temperature * (centres ** 2).sum(1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "W", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["scores"], axis=1)],
        "colour_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(COLOURS)])],
        [helper.make_tensor("W", TensorProto.FLOAT, weight.shape, weight.ravel()),
         helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / "classifier.onnx")
    source = load_bundle(SYNTHETIC_BUNDLE)
    shutil.copy(source.model_path(source.detector), root / source.detector.file)
    write_bundle(root, class_names=list(COLOURS), classifier_head="softmax", ccl_sigma=None,
                 detector=source.detector,
                 classifier=ModelSpec("classifier.onnx", "0" * 64, "image", (-1, 3, 32, 32), ("scores",)),
                 thresholds=Thresholds(0.5, 0.9, "descending", classifier_sha256=sha256_file(root / "classifier.onnx"),
                                       rule="softmax"),
                 tiling=source.tiling, provenance={"data": "none: a hand-made test classifier"})
    return root


def test_calibrate_writes_a_bundle_bound_to_its_classifier_and_a_report(crops, tmp_path, capsys):
    split = write_split_file(crops, tmp_path / "split.json")
    out, report_dir = tmp_path / "calibrated", tmp_path / "report"
    assert main(["calibrate", "--bundle", str(SYNTHETIC_BUNDLE), "--data", str(crops), "--split-file", str(split),
                 "--eval-split", "validation", "--target-accuracy", "0.95", "--out", str(out),
                 "--report", str(report_dir), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    b = load_bundle(out)
    t = b.thresholds
    assert t.classifier_sha256 == sha256_file(out / "classifier.onnx") == b.classifier.sha256
    assert (t.rule, t.method, t.confidence, t.target_accuracy) == ("ccl", "clopper-pearson", 0.95, 0.95)
    assert b.provenance["calibration"]["fit_split"] == "calibration"
    assert t.calibration["calibration"]["n"] == 125 and "aurc" in t.calibration["evaluation"]

    report = json.loads((report_dir / "report.json").read_text())
    rules = [(e["rule"], e["deployed"]) for e in report["entries"]]
    assert rules == [("ccl", True), ("softmax", False), ("icp", False)]
    deployed = report["entries"][0]
    assert deployed["fit"]["threshold"] == t.global_threshold
    for e in report["entries"]:
        ev = e["evaluation"]
        assert ev["n"] == 125 and 0 <= ev["aurc"] <= 1 and set(ev["curve"]) == {"coverage", "risk"}
        if e["fit"]["reached"]:
            assert ev["reliability"] == pytest.approx((1 - ev["rejection_rate"]) * ev["accepted_accuracy"])
        else:  # nothing accepted
            assert (ev["rejection_rate"], ev["accepted_accuracy"], ev["reliability"]) == (1.0, None, 0.0)
        assert set(ev["per_class"]) == {str(c) for c in range(5)}
    md = (report_dir / "report.md").read_text()
    assert "| synthetic_bundle | ccl (deployed) | 125 | held out |" in md and md in printed
    png = cv2.imread(str(report_dir / "risk_coverage.png"))
    assert png is not None and png.shape[1] == 3 * 360

    # the device measures the new bundle on the held-out split exactly as the report says
    assert main(["eval", "classify", "--bundle", str(out), "--data", str(crops), "--split-file", str(split),
                 "--split", "validation", "--threads", "1"]) == 0
    measured = json.loads(capsys.readouterr().out)
    for key in ("n", "rejection_rate", "accepted_accuracy", "reliability"):
        assert measured[key] == pytest.approx(deployed["evaluation"][key]), key


def test_softmax_bundle_deploys_the_icp_and_the_device_runs_it_exactly(softmax_bundle, tmp_path, capsys):
    cal = write_colour_crops(tmp_path / "cal", per_class=120, seed=1)
    fresh = write_colour_crops(tmp_path / "fresh", per_class=120, seed=2)
    out = tmp_path / "icp"
    assert main(["calibrate", "--bundle", str(softmax_bundle), "--data", str(cal), "--method", "icp",
                 "--target-accuracy", "0.97", "--out", str(out), "--threads", "1"]) == 0
    b = load_bundle(out)
    assert b.thresholds.rule == "icp" and set(b.thresholds.per_class) == set(COLOURS)
    assert all(v > 0.5 for v in b.thresholds.per_class.values())
    assert 0 < b.thresholds.calibration["icp"]["epsilon"] < 1
    report = json.loads((tmp_path / "icp-report" / "report.json").read_text())
    assert [(e["rule"], e["deployed"]) for e in report["entries"]] == [("softmax", False), ("icp", True)]

    scores, labels, _ = classifier_outputs(load_bundle(softmax_bundle), cal, threads=1)
    fit = fit_rule(scores, labels, "softmax", "icp", 0.97, num_classes=5)  # the same fit, refitted
    fresh_scores, _, _ = classifier_outputs(b, fresh, threads=1)
    device = RejectRule(b).decide(fresh_scores)
    _, predicted, accepted = fit.decide(fresh_scores)
    assert 0 < accepted.sum() < len(accepted)
    np.testing.assert_array_equal(device.accepted, accepted)
    np.testing.assert_array_equal(device.predicted[accepted], predicted[accepted])


def test_an_icp_the_device_cannot_run_exactly_is_not_written(softmax_bundle, tmp_path, capsys):
    # well separated colours: the ICP's level is low and some class cuts fall below 0.5
    cal = write_colour_crops(tmp_path / "cal", per_class=120, seed=1, spread=12.0)
    assert main(["calibrate", "--bundle", str(softmax_bundle), "--data", str(cal), "--method", "icp",
                 "--target-accuracy", "0.97", "--out", str(tmp_path / "icp"), "--threads", "1"]) == 2
    assert "cannot run that ICP exactly" in capsys.readouterr().err
    assert not (tmp_path / "icp").exists()


def _edit_thresholds(root, change):
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest["thresholds"])
    path.write_text(json.dumps(manifest))


def test_thresholds_fitted_for_another_classifier_are_refused(bundle_copy, crops, tmp_path, capsys):
    _edit_thresholds(bundle_copy, lambda t: t.update(classifier_sha256="ab" * 32))
    with pytest.raises(BundleError, match="fitted for classifier sha256 abababababab"):
        load_bundle(bundle_copy)
    assert main(["info", str(bundle_copy)]) == 2
    assert "refit them on this model with `edge calibrate`" in capsys.readouterr().err
    # calibrating refits them for this classifier
    out = tmp_path / "refit"
    assert main(["calibrate", "--bundle", str(bundle_copy), "--data", str(crops), "--search", "descending",
                 "--target-accuracy", "0.95", "--out", str(out), "--threads", "1"]) == 0
    t = load_bundle(out).thresholds
    assert t.classifier_sha256 == load_bundle(SYNTHETIC_BUNDLE).classifier.sha256
    assert (t.method, t.confidence) == ("descending", None)


def test_unbound_thresholds_load_with_a_warning_and_inf_class_thresholds_reject(bundle_copy, caplog):
    _edit_thresholds(bundle_copy, lambda t: t.update(classifier_sha256=None, per_class={"basophil": "inf"}))
    with caplog.at_level(logging.WARNING, logger="edge.runtime.bundle"):
        b = load_bundle(bundle_copy)
    assert "do not record the classifier" in caplog.text
    assert b.thresholds.for_class("basophil") == np.inf
    scores = np.full((2, 5), 0.01, dtype=np.float32)
    scores[0, 4] = scores[1, 0] = 0.99  # one confident basophil, one confident neutrophil
    np.testing.assert_array_equal(RejectRule(b).decide(scores).accepted, [False, True])
    _edit_thresholds(bundle_copy, lambda t: t.update(rule="softmax"))
    with pytest.raises(BundleError, match="thresholds.rule 'softmax' does not apply to a ccl head"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("extra, message", [
    (["--method", "softmax"], "a ccl bundle cannot deploy the softmax rule"),
    (["--target-accuracy", "1.0"], "no ccl threshold reaches accepted accuracy 1.0"),
    (["--confidence", "1.5"], "--confidence must be in"),
    (["--eval-split", "validation"], "--eval-split needs --split-file"),
])
def test_bad_requests_are_one_line_errors(crops, tmp_path, capsys, extra, message):
    args = ["calibrate", "--bundle", str(SYNTHETIC_BUNDLE), "--data", str(crops), "--target-accuracy", "0.95",
            "--out", str(tmp_path / "b"), "--threads", "1"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_existing_output_is_refused(crops, tmp_path, capsys):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("precious")
    assert main(["calibrate", "--data", str(crops), "--target-accuracy", "0.95", "--out", str(tmp_path / "b")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "b" / "keep.txt").read_text() == "precious"


def test_an_unreachable_target_still_writes_the_figures(crops, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["calibrate", "--data", str(crops), "--target-accuracy", "1.0", "--out", str(out),
                 "--threads", "1"]) == 2
    assert f"(figures in {tmp_path / 'b-report'})" in capsys.readouterr().err
    report = json.loads((tmp_path / "b-report" / "report.json").read_text())
    assert report["bundle"] is None and report["entries"][0]["fit"]["reached"] is False
    assert "ccl (not reached)" in (tmp_path / "b-report" / "report.md").read_text()
    assert not out.exists()
