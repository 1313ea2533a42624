"""atheris (libFuzzer) harnesses for what reaches the device from outside.

    python benchmarks/fuzz/harness.py manifest|labels|serial [libFuzzer options]
    python benchmarks/fuzz/harness.py serial -max_total_time=60 -print_final_stats=1

The targets are the `check_*` functions of tests/test_reliability_fuzz.py: the bundle loader
on any manifest.json (only BundleError may come out), the review-label importer on any labels
file or returned archive (only ReviewError), the serial decoder on any byte stream (nothing).
Any other exception is a finding: libFuzzer stops, prints the traceback and writes the input
as crash-<hash> in the working folder. The valid manifest, a valid labels file, a returned
archive and a few encoded frames seed the corpus.

atheris ships manylinux wheels (`pip install atheris`; here 3.0.0 installed without a
compiler). Where it cannot be installed, benchmarks/reliability_runner.py runs the same
targets under hypothesis for as long instead.
"""
from __future__ import annotations

import atexit
import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# The code under test, instrumented for libFuzzer's coverage feedback.
with atheris.instrument_imports():
    for module in ("edge.runtime.bundle", "edge.review.label_import", "edge.review.labels_file",
                   "edge.review.untrusted_zip", "firmware_bridge.framing", "firmware_bridge.messages"):
        importlib.import_module(module)

from edge import DEFAULT_BUNDLE  # noqa: E402
from firmware_bridge.framing import encode_frame  # noqa: E402
from firmware_bridge.messages import FieldReady, Ping, ShowTally, to_frame  # noqa: E402
from tests.helpers import check_labels, check_manifest, check_serial  # noqa: E402


def manifest_target(work: Path):
    bundle = work / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    seeds = [(bundle / "manifest.json").read_bytes()]
    return (lambda data: check_manifest(bundle, data)), seeds


def labels_target(work: Path):
    import io
    import zipfile

    from tests.helpers import archive_manifest, export, labels_for, make_session
    session = make_session(work, frames=1)
    archive = export([session], work / "review.zip")
    manifest = archive_manifest(archive)[0]
    labels = json.dumps(labels_for(archive, {c["cell_id"]: manifest["class_names"][0]
                                             for c in manifest["cells"]})).encode()
    returned = io.BytesIO(archive.read_bytes())
    with zipfile.ZipFile(returned, "a") as zf:
        zf.writestr("labels.json", labels)

    def target(data: bytes) -> None:
        # the first byte chooses: a labels file, or a returned archive
        if data[:1] == b"Z":
            check_labels(session, data[1:], "returned.zip")
        else:
            check_labels(session, data[1:])

    return target, [b"L" + labels, b"Z" + returned.getvalue()]


def serial_target(work: Path):
    seeds = [b"".join(encode_frame(to_frame(m, i)) for i, m in enumerate(
        [Ping(7), FieldReady(3, 700_000, -350_000, 1295), ShowTally((1, 2, 3), 4, 500)]))]
    return check_serial, seeds


TARGETS = {"manifest": manifest_target, "labels": labels_target, "serial": serial_target}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(TARGETS)} [libFuzzer options]")
    work = Path(tempfile.mkdtemp(prefix="edge-fuzz-"))
    atexit.register(shutil.rmtree, work, True)
    target, seeds = TARGETS[sys.argv[1]](work)
    corpus = work / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
