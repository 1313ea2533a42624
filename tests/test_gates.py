"""Accuracy gates: `edge export quantise` writes a gated, recalibrated INT8 bundle, or refuses and writes nothing."""
from __future__ import annotations

import json
import shutil

import pytest

from edge.runtime.backends.tensorrt_plan import plan_builds
from edge.runtime.bundle import load_bundle, sha256_file
from edge.synthetic.datasets import write_crop_folders
from export.cli import main
from export.datasets import stratified_split
from export.gates import Gates, GateError, check_gates, gate_failures
from tests.helpers import SYNTHETIC_BUNDLE, write_split_fields

GOOD = {"accuracy": 0.95, "agreement": 0.97, "accepted_accuracy": 0.991}


def test_gate_failures_name_each_gate_and_the_shortfall():
    assert gate_failures(GOOD, Gates()) == []
    failed = gate_failures({"accuracy": 0.871, "agreement": 0.97, "accepted_accuracy": None}, Gates())
    assert failed == ["accuracy 0.8710 < 0.9000 (short by 0.0290)",
                      "accepted accuracy at the threshold undefined (no validation cell accepted) < 0.9800"]
    with pytest.raises(GateError, match=r"^the INT8 student fails 1 accuracy gate: agreement with the teacher "
                                        r"0\.8000 < 0\.9500 \(short by 0\.1500\); no bundle written$"):
        check_gates(GOOD | {"agreement": 0.8}, Gates(min_agreement=0.95), "the INT8 student")
    with pytest.raises(ValueError, match="min_accuracy must be in"):
        Gates(min_accuracy=1.5)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """Synthetic crops of the shipped bundle's classes and a split; the shipped classifier is the student."""
    root = tmp_path_factory.mktemp("gates")
    data = root / "data"
    write_crop_folders(data, per_class=12, size=64, seed=3)
    split_file = root / "split.json"
    stratified_split(data, split_file, fractions=(0.2, 0.4, 0.4), class_names=load_bundle(SYNTHETIC_BUNDLE).class_names)
    return data, split_file


def _args(data, split_file, out, *extra):
    return ["quantise", "--bundle", str(SYNTHETIC_BUNDLE), "--teacher-bundle", str(SYNTHETIC_BUNDLE),
            "--data", str(data), "--split-file", str(split_file), "--out", str(out), "--threads", "1",
            "--calibration-methods", "minmax", "--calibration-images", "16", "--target-accuracy", "0.9",
            "--speed-seconds", "0", *extra]


def test_quantise_writes_an_int8_bundle_with_thresholds_refitted_on_it(crops, tmp_path, capsys):
    data, split_file = crops
    out = tmp_path / "int8"
    fields = write_split_fields(tmp_path / "fields")
    source_root = tmp_path / "source"  # the synthetic bundle with a fitted field quality section
    shutil.copytree(SYNTHETIC_BUNDLE, source_root)
    manifest = json.loads((source_root / "manifest.json").read_text())
    manifest["quality"] = {"min_focus": 0.2, "max_stain_angle": 9.0}
    (source_root / "manifest.json").write_text(json.dumps(manifest))
    args = _args(data, split_file, out, "--min-accuracy", "0.8", "--min-agreement", "0.8",
                 "--min-accepted-accuracy", "0.8", "--detector-data", str(fields), "--detector-classes", "cell",
                 "--max-detector-recall-drop", "0.05")
    args[args.index("--bundle") + 1] = str(source_root)
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    bundle = load_bundle(out)
    assert bundle.classifier.precision == "int8" and bundle.classifier.file == "classifier-int8.onnx"
    assert bundle.thresholds.classifier_sha256 == sha256_file(out / "classifier-int8.onnx")
    assert bundle.thresholds.target_accuracy == 0.9
    source = load_bundle(SYNTHETIC_BUNDLE)
    assert bundle.detector.precision == "int8" and bundle.detector.file == "detector-int8.onnx"
    assert bundle.tiling == source.tiling
    assert bundle.quality == load_bundle(source_root).quality and bundle.quality.min_focus == 0.2  # carried over
    assert bundle.provenance["quantisation"]["kept"] == printed["kept"] == "student INT8 minmax"
    assert bundle.provenance["calibration"]["script"] == "edge calibrate"
    report = json.loads((tmp_path / "int8-report.json").read_text())
    assert set(report["models"]) == {"teacher FP32", "student FP32", "student INT8 minmax"}
    assert report["models"]["student INT8 minmax"]["agreement"] >= 0.8
    assert report["detector"]["int8"]["recall"] >= report["detector"]["fp32"]["recall"] - 0.05
    assert "| student INT8 minmax | 64 |" in (tmp_path / "int8-report.md").read_text()

    # each INT8 model has its TensorRT twin (symmetric int8), sealed by hash, which build-engines builds from
    assert bundle.classifier.tensorrt.file == "classifier-int8-tensorrt.onnx"
    assert bundle.detector.tensorrt.file == "detector-int8-tensorrt.onnx"
    assert [b.onnx for b in plan_builds(bundle)] == [out / "detector-int8-tensorrt.onnx",
                                                    out / "classifier-int8-tensorrt.onnx"]
    assert report["tensorrt"]["method"] == "minmax" and report["tensorrt"]["validation_agreement_with_kept"] >= 0.8
    assert report["detector"]["int8_tensorrt"]["recall"] >= report["detector"]["fp32"]["recall"] - 0.1
    notes = (tmp_path / "int8-report.md").read_text()
    assert "- TensorRT variant: classifier-int8-tensorrt.onnx" in notes and "- detector TensorRT variant" in notes
    assert bundle.provenance["quantisation"]["tensorrt"] == report["tensorrt"]


def test_a_failed_gate_is_one_line_and_writes_nothing(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out" / "int8"
    data = work / "data"  # two classes' labels exchanged: the model is wrong on every cell of them
    write_crop_folders(data, per_class=12, size=64, seed=3)
    (data / "neutrophil").rename(data / "swap")
    (data / "lymphocyte").rename(data / "neutrophil")
    (data / "swap").rename(data / "lymphocyte")
    split_file = work / "split.json"
    stratified_split(data, split_file, fractions=(0.2, 0.4, 0.4), class_names=load_bundle(SYNTHETIC_BUNDLE).class_names)
    assert main(_args(data, split_file, out, "--min-accuracy", "0.9", "--target-accuracy", "0.5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge export: error: the student INT8 minmax classifier fails")
    assert "accuracy 0." in err[0] and "< 0.9000 (short by" in err[0] and err[0].endswith("no bundle written")
    assert not (tmp_path / "out").exists()  # no bundle, no staging folder, no report
