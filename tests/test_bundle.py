import json
import tarfile
from dataclasses import replace

import pytest

from edge import DEFAULT_BUNDLE
from edge.runtime.bundle import BundleError, TensorRTVariant, copy_model_files, load_bundle, sha256_file, write_bundle
from edge.runtime.engine import CellCounter
from tests.helpers import add_tensorrt_variant


def _edit_manifest(root, change):
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_default_bundle_verifies_and_describes_itself():
    b = load_bundle(DEFAULT_BUNDLE)
    assert len(b.class_names) >= 2
    assert b.classifier_head == "ccl" and b.ccl_sigma > 0
    assert b.tiling.overlap < b.tiling.tile_size
    assert 0 < b.thresholds.target_accuracy <= 1
    assert b.provenance["code_commit"]


PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


def test_the_default_bundle_is_the_real_data_int8_one():
    b = load_bundle(DEFAULT_BUNDLE)
    assert b.class_names == PBC_CLASSES
    for spec in (b.classifier, b.detector):
        assert spec.precision == "int8" and spec.tensorrt is not None  # INT8 students and their TensorRT twins
    assert b.thresholds.target_accuracy == 0.99 and b.thresholds.classifier_sha256 == b.classifier.sha256
    assert b.quality is not None  # the field quality gate fitted on the detector's real fields
    provenance = json.dumps(b.provenance).lower()
    assert "shared/data/bccd" in provenance and "shared/data/pbc" in provenance
    assert sum(f.stat().st_size for f in DEFAULT_BUNDLE.iterdir()) < 25 * 2 ** 20


def test_tar_bundle_loads(bundle_copy, tmp_path):
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(bundle_copy, arcname="bundle")
    assert load_bundle(archive).class_names == load_bundle(bundle_copy).class_names


def test_changed_byte_in_a_model_is_refused(bundle_copy):
    model = bundle_copy / "classifier.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="classifier.onnx fails its SHA-256 check"):
        load_bundle(bundle_copy)


def test_missing_model_file_is_refused(bundle_copy):
    (bundle_copy / "detector.onnx").unlink()
    with pytest.raises(BundleError, match="detector.onnx .*missing"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format_version=99), "unknown bundle format version 99"),
    (lambda m: m.update(surprise=1), "unknown fields: surprise"),
    (lambda m: m.update(class_names="neutrophil"), "class_names must be a list"),
    (lambda m: m["models"]["detector"].update(file="../detector.onnx"), "points outside the bundle"),
    (lambda m: m["models"]["classifier"].update(input_shape=[-1, 3, "64", 64]), "input_shape"),
    (lambda m: m["thresholds"].update({"global": "high"}), "thresholds.global"),
    (lambda m: m["tiling"].update(overlap=10_000), "tiling.overlap"),
    (lambda m: m["tiling"].update(tile_size=320), "does not match the detector input"),
    (lambda m: m.pop("provenance"), "provenance"),
])
def test_bad_manifest_fields_are_refused_with_a_reason(bundle_copy, change, message):
    _edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_class_count_that_does_not_match_the_model_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["class_names"].append("extra_class"))
    with pytest.raises(BundleError, match="outputs 5 classes but the manifest names 6"):
        CellCounter(load_bundle(bundle_copy))


def test_input_shape_that_does_not_match_the_model_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["models"]["classifier"].update(input_shape=[-1, 3, 96, 96]))
    with pytest.raises(BundleError, match="takes input of shape"):
        CellCounter(load_bundle(bundle_copy))


def test_not_json_and_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


# ---------------------------------------------------------------- the TensorRT variant of an INT8 model

def test_an_int8_model_carries_its_tensorrt_variant_verified_and_written_back(bundle_copy, tmp_path):
    name = add_tensorrt_variant(bundle_copy, "classifier")
    b = load_bundle(bundle_copy)
    assert b.classifier.tensorrt == TensorRTVariant(name, sha256_file(bundle_copy / name))
    assert b.classifier.files == ("classifier.onnx", name) and b.detector.files == ("detector.onnx",)
    assert b.tensorrt_path(b.classifier) == b.root / name and b.tensorrt_path(b.detector) == b.model_path(b.detector)
    assert b.classifier.to_dict()["tensorrt"] == {"file": name, "sha256": b.classifier.tensorrt.sha256}
    assert "tensorrt" not in b.detector.to_dict()  # written only when present

    # a writer copies both files and may leave the variant's hash to write_bundle, as the model's
    out = tmp_path / "copy"
    out.mkdir()
    for spec in (b.detector, b.classifier):
        copy_model_files(b, spec, out)
    classifier = replace(b.classifier, sha256="0" * 64, tensorrt=TensorRTVariant(name, "0" * 64))
    write_bundle(out, class_names=list(b.class_names), classifier_head=b.classifier_head, ccl_sigma=b.ccl_sigma,
                 detector=b.detector, classifier=classifier, thresholds=b.thresholds, tiling=b.tiling,
                 provenance=b.provenance)
    assert load_bundle(out).classifier == b.classifier


def test_a_changed_or_missing_tensorrt_variant_is_refused(bundle_copy):
    name = add_tensorrt_variant(bundle_copy, "detector")
    data = bytearray((bundle_copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle_copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"the detector's TensorRT variant {name} fails its SHA-256 check"):
        load_bundle(bundle_copy)
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=f"the detector's TensorRT variant {name} named in the manifest is missing"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("change, message", [
    (lambda t, m: m.update(precision="fp32"), "models.classifier.tensorrt is only for an int8 model; this classifier "
                                              "is fp32"),
    (lambda t, m: m.update(precision="fp16"), "only for an int8 model"),
    (lambda t, m: t.update(sha256="g" * 64), "models.classifier.tensorrt.sha256 must be a 64-character hex digest"),
    (lambda t, m: t.update(sha256=t["sha256"][:63]), "tensorrt.sha256 must be a 64-character hex digest"),
    (lambda t, m: t.pop("sha256"), "models.classifier.tensorrt lacks sha256"),
    (lambda t, m: t.update(engine="x.plan"), "models.classifier.tensorrt has unknown fields: engine"),
    (lambda t, m: t.update(file="../classifier-tensorrt.onnx"), "tensorrt.file .* points outside the bundle"),
    (lambda t, m: t.update(file=""), "tensorrt.file must be a file name"),
    (lambda t, m: t.update(file="./classifier.onnx"), "must be a file of its own, not the model file"),
    (lambda t, m: m.update(tensorrt="classifier-tensorrt.onnx"), "models.classifier.tensorrt is not an object"),
])
def test_bad_tensorrt_variant_fields_are_refused(bundle_copy, change, message):
    add_tensorrt_variant(bundle_copy, "classifier")
    _edit_manifest(bundle_copy, lambda m: change(m["models"]["classifier"]["tensorrt"], m["models"]["classifier"]))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)
