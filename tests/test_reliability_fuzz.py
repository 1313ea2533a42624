"""Reliability: fuzzing what comes from outside. Whatever the input, the bundle loader raises
only BundleError, the review-label importer only ReviewError, and the serial decoder nothing
(a damaged frame is dropped and counted; test_firmware_codec.py fuzzes it in CI).

The `check_*` functions are the fuzz targets: the hypothesis tests here call them a few
hundred times in CI; benchmarks/fuzz/ runs them under atheris, and
benchmarks/reliability_runner.py for minutes (RELIABILITY_FUZZ_EXAMPLES raises the count here).
"""
import io
import json
import os
import shutil
import struct
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import SYNTHETIC_BUNDLE, check_labels, check_manifest

EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---------------------------------------------------------------- targets


# ---------------------------------------------------------------- mutations

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4),
                    max_leaves=10)


def mutate(data, draw):
    """Replace, drop or add one entry somewhere in a JSON document (or replace it whole)."""
    if not isinstance(data, (dict, list)) or not data or draw(st.integers(0, 5)) == 0:
        return draw(JSON)
    keys = list(data) if isinstance(data, dict) else list(range(len(data)))
    key = draw(st.sampled_from(keys))
    copy = dict(data) if isinstance(data, dict) else list(data)
    action = draw(st.sampled_from(["deeper", "replace", "drop", "add"]))
    if action == "deeper":
        copy[key] = mutate(copy[key], draw)
    elif action == "replace":
        copy[key] = draw(JSON)
    elif action == "drop":
        del copy[key]
    elif isinstance(copy, dict):
        copy[draw(st.text(max_size=8))] = draw(JSON)
    else:
        copy.append(draw(JSON))
    return copy


def flip_bytes(raw: bytes, draw) -> bytes:
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data) - 1)):]
    return bytes(data)


# ---------------------------------------------------------------- the bundle manifest

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "bundle"
    shutil.copytree(SYNTHETIC_BUNDLE, root)
    return root


@pytest.fixture(scope="module")
def manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


@FUZZ
@given(st.data())
def test_a_mutated_manifest_loads_or_is_refused_with_a_bundle_error(bundle, manifest, data):
    check_manifest(bundle, json.dumps(mutate(manifest, data.draw)).encode())


@FUZZ
@given(st.data())
def test_manifest_bytes_changed_anywhere_load_or_are_refused_with_a_bundle_error(bundle, manifest, data):
    check_manifest(bundle, flip_bytes(json.dumps(manifest, indent=2).encode(), data.draw))


@FUZZ
@given(JSON)
def test_any_json_as_a_manifest_is_refused_with_a_bundle_error(bundle, value):
    assert check_manifest(bundle, json.dumps(value).encode()) == "refused"


# ---------------------------------------------------------------- the review-label importer

@pytest.fixture(scope="module")
def review(tmp_path_factory):
    """A session, its exported archive and a valid labels file for every cell in it."""
    from tests.helpers import archive_manifest, export, labels_for, make_session
    root = tmp_path_factory.mktemp("fuzz-review")
    session = make_session(root, frames=1)
    archive = export([session], root / "review.zip")
    manifest = archive_manifest(archive)[0]
    labels = labels_for(archive, {c["cell_id"]: manifest["class_names"][i % 2]
                                  for i, c in enumerate(manifest["cells"])})
    returned = io.BytesIO(archive.read_bytes())
    with zipfile.ZipFile(returned, "a") as zf:
        zf.writestr("labels.json", json.dumps(labels))
    return session, labels, returned.getvalue()


@FUZZ
@given(st.data())
def test_a_mutated_labels_file_is_imported_or_refused_with_a_review_error(review, data):
    session, labels, _ = review
    check_labels(session, json.dumps(mutate(labels, data.draw)).encode())


@FUZZ
@given(st.data())
def test_a_damaged_returned_archive_is_imported_or_refused_with_a_review_error(review, data):
    session, _, archive = review
    check_labels(session, flip_bytes(archive, data.draw), "returned.zip")


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_as_labels_are_refused_with_a_review_error(review, raw):
    assert check_labels(review[0], raw) == "refused"


def test_a_returned_archive_with_a_broken_deflate_stream_is_refused(review):
    """Found by the atheris harness (zlib.error escaped): a member whose compressed
    bytes are not a deflate stream."""
    session, _, archive = review
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        info = zf.getinfo("manifest.json")
    assert info.compress_type == zipfile.ZIP_DEFLATED
    data = bytearray(archive)
    name_and_extra = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") + \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_and_extra
    data[start:start + info.compress_size] = b"\xff" * info.compress_size  # reserved block type
    assert check_labels(session, bytes(data), "returned.zip") == "refused"


def test_a_returned_archive_of_an_unknown_zip_version_is_refused(review):
    """Found by the atheris harness (NotImplementedError escaped): a central directory entry that
    asks for a newer zip version than Python reads."""
    session, _, archive = review
    data = bytearray(archive)
    entry = data.index(b"PK\x01\x02")
    data[entry + 6:entry + 8] = (84).to_bytes(2, "little")  # "version needed to extract": 8.4
    assert check_labels(session, bytes(data), "returned.zip") == "refused"


def test_a_returned_archive_that_claims_to_span_disks_is_refused(review):
    """Found by the atheris harness (zipfile.is_zipfile raised BadZipFile): a zip64 end locator
    that names a second disk."""
    session, _, archive = review
    end = archive.rindex(b"PK\x05\x06")
    locator = b"PK\x06\x07" + struct.pack("<LQL", 1, 0, 2)
    assert check_labels(session, archive[:end] + locator + archive[end:], "returned.zip") == "refused"
