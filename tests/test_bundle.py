import json
import tarfile

import pytest

from edge import DEFAULT_BUNDLE
from edge.bundle import BundleError, load_bundle
from edge.engine import CellCounter


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
