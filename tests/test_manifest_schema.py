"""The manifest's rules as a published JSON Schema: valid itself, met by every bundle the project ships
and writes, checked by the loader, and no stricter than the loader's own field checks."""
from __future__ import annotations

import copy
import json
import shutil

import jsonschema
import pytest

from edge import DEFAULT_BUNDLE
from edge.runtime import bundle as bundle_module
from edge.runtime.bundle import BundleError, check_against_schema, load_bundle, manifest_schema
from tests.helpers import SYNTHETIC_BUNDLE


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(manifest_schema())


@pytest.mark.parametrize("bundle", [DEFAULT_BUNDLE, SYNTHETIC_BUNDLE], ids=["default", "synthetic"])
def test_shipped_bundles_meet_the_schema(bundle):
    check_against_schema(json.loads((bundle / "manifest.json").read_text()))


def test_the_schema_names_the_sections_and_model_fields_the_loader_knows():
    schema = manifest_schema()
    assert set(schema["properties"]) == {"format", "format_version", "class_names", "classifier_head", "ccl_sigma",
                                         "models", "thresholds", "tiling", "provenance", "quality", "drift",
                                         "class_roles", "ccl_centroids", "stain_normalisation"}
    assert set(schema["properties"]["thresholds"]["properties"]) == bundle_module.THRESHOLD_KEYS
    assert set(schema["properties"]["tiling"]["properties"]) == bundle_module.TILING_KEYS


def test_the_loader_refuses_what_only_the_schema_catches(tmp_path, monkeypatch):
    root = tmp_path / "b"
    shutil.copytree(SYNTHETIC_BUNDLE, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["thresholds"]["classifier_sha256"] = "g" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    # the parser's own check wants 64 characters; the schema wants 64 hex digits
    monkeypatch.setattr(bundle_module, "check_against_schema", lambda m: None)
    with pytest.raises(BundleError, match="fitted for classifier sha256 gggg"):
        load_bundle(root)  # refused later, as thresholds for another classifier
    load_bundle(root, check_thresholds=False)
    monkeypatch.undo()
    with pytest.raises(BundleError, match="thresholds.classifier_sha256 does not match the manifest schema"):
        load_bundle(root, check_thresholds=False)


BREAKS = [
    ("format", lambda m: m.update(format="other")),
    ("class names", lambda m: m.update(class_names=["only one"])),
    ("head", lambda m: m.update(classifier_head="knn")),
    ("unknown field", lambda m: m.update(extra=1)),
    ("shape", lambda m: m["models"]["detector"].update(input_shape=[1, 4, 256, 256])),
    ("sha", lambda m: m["models"]["classifier"].update(sha256="xyz")),
    ("outputs", lambda m: m["models"]["detector"].update(outputs=["boxes", "boxes"])),
    ("layout", lambda m: m["models"]["classifier"].update(layout="NHWC")),
    ("std", lambda m: m["models"]["classifier"]["normalisation"].update(std=[0.2, 0.0, 0.2])),
    ("target", lambda m: m["thresholds"].update(target_accuracy=1.5)),
    ("overlap type", lambda m: m["tiling"].update(overlap=1.5)),
    ("context", lambda m: m["tiling"].update(crop_context=9)),
]


@pytest.mark.parametrize("name,change", BREAKS, ids=[b[0] for b in BREAKS])
def test_what_the_schema_refuses_the_loader_refuses_too(name, change):
    manifest = json.loads((SYNTHETIC_BUNDLE / "manifest.json").read_text())
    broken = copy.deepcopy(manifest)
    change(broken)
    with pytest.raises(BundleError):
        check_against_schema(broken)
    with pytest.raises(BundleError):
        bundle_module._parse_manifest(broken, SYNTHETIC_BUNDLE, "0" * 64, check_thresholds=False)
