"""Reliability: security habits, checked on the source and on what a session writes.

- checkpoints are loaded with torch.load(..., weights_only=True), everywhere;
- nothing unpickles: no pickle, marshal or shelve, no np.load(allow_pickle=True), no yaml.load;
- nothing listens on the network (no bind, listen or HTTP server outside tests);
- records are written atomically: write a temporary file, fsync it, rename it over the old one
  (results.json is a per-field view of session.sqlite: replaced whole after each field, synced
  when the session finishes; a resumed session rewrites it from the database).
The review page's escaping is held by tests/test_review_export.py
(test_embedded_data_cannot_close_its_script_element, test_the_page_is_self_contained_...) and
tests/test_review_browser.py (test_class_names_with_markup_are_shown_as_text).
"""
import ast
import json
import os
import shutil
from pathlib import Path

import pytest

from edge.runtime.bundle import BundleError, load_bundle
from edge.counting.runloop import run_session
from tests.helpers import SYNTHETIC_BUNDLE

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge", "export", "calibration", "firmware_bridge", "benchmarks", "scripts")


def source_files():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix == ".py" or (path.parent.name == "scripts" and path.is_file() and not path.suffix
                                        and path.read_bytes().startswith(b"#!") and b"python" in
                                        path.read_bytes().split(b"\n", 1)[0]):
                yield path


def calls(path: Path):
    """(dotted name of the callee, call node) of every call in a file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield _dotted(node.func), node


def _dotted(func) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword_is(node: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
               for k in node.keywords)


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def test_the_scan_sees_the_code():
    files = {p.relative_to(ROOT).as_posix() for p in source_files()}
    assert {"edge/counting/session.py", "export/classifier_bundle.py", "firmware_bridge/link.py"} <= files


def test_every_checkpoint_is_loaded_with_weights_only():
    loads = [(path, node) for path in source_files() for name, node in calls(path) if name == "torch.load"]
    assert loads, "the export stage loads checkpoints"
    unsafe = [where(p, n) for p, n in loads if not _keyword_is(n, "weights_only", True)]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.load", "marshal.loads", "shelve.open",
              "dill.load", "dill.loads", "joblib.load", "cloudpickle.load", "cloudpickle.loads"}


def test_nothing_unpickles():
    found = []
    for path in source_files():
        for name, node in calls(path):
            if name in UNPICKLERS:
                found.append(f"{where(path, node)} {name}")
            elif name in ("np.load", "numpy.load") and _keyword_is(node, "allow_pickle", True):
                found.append(f"{where(path, node)} {name}(allow_pickle=True)")
            elif name == "yaml.load" and not any(k.arg == "Loader" and "Safe" in _dotted(k.value)
                                                 for k in node.keywords):
                found.append(f"{where(path, node)} yaml.load without a safe loader")
    assert not found, found


SERVERS = {"http.server", "socketserver", "xmlrpc.server", "wsgiref.simple_server", "aiohttp.web", "flask"}


def test_nothing_listens_on_the_network():
    found = []
    for path in source_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{where(path, node)} imports {n}" for n in names if n in SERVERS]
            elif isinstance(node, ast.Call) and _dotted(node.func).rsplit(".", 1)[-1] in ("bind", "listen",
                                                                                        "serve_forever"):
                found.append(f"{where(path, node)} {_dotted(node.func)}()")
    assert not found, found


# ---------------------------------------------------------------- atomic writes

# Files of a session that are not replaced whole, and why that is safe.
NOT_REPLACED = {
    ".lock": "empty; only locked",
    "session.sqlite": "SQLite, WAL, synchronous=FULL",
    "review/queue.sqlite": "SQLite, WAL, synchronous=FULL",
    "cells.csv": "appended after each field; rewritten whole from the database on resume",
}
# Pictures for people, not records: a torn one is redrawn when its field is counted again.
PICTURES = ("fields/", "previous_field.")


class WriteSpy:
    """Records fsync and os.replace calls on files under `root`: `replaced` lists (name, synced)."""

    def __init__(self, monkeypatch, root: Path):
        self.root, self.synced, self.replaced = root.resolve(), set(), []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.synced.add(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        def replace(src, dst, **kwargs):
            src, dst = Path(src).resolve(), Path(dst).resolve()
            if dst.is_relative_to(self.root):
                self.replaced.append((dst.relative_to(self.root).as_posix(), str(src) in self.synced))
                self.synced.discard(str(src))
            real_replace(src, dst, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)


def test_a_session_writes_its_records_by_fsync_and_rename(tmp_path, monkeypatch):
    out = tmp_path / "s"
    spy = WriteSpy(monkeypatch, out)
    with open(os.devnull, "w") as sink:
        run_session(SYNTHETIC_BUNDLE, "synthetic:frames=2,seed=2026,vary=1", out, threads=1, live=sink)
    unsynced = [name for name, synced in spy.replaced if not synced and name != "results.json"]
    assert not unsynced, f"renamed into place without an fsync: {unsynced}"
    assert [synced for name, synced in spy.replaced if name == "results.json"][-1], "the final results"
    replaced = {name for name, _ in spy.replaced}
    assert "session.json" in replaced and any(n.startswith("review/crops/") for n in replaced)
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    others = {name for name in written - replaced - set(NOT_REPLACED)
              if not name.startswith(PICTURES) and not name.endswith(("-wal", "-shm"))}
    assert not others, f"files written in place, neither records nor pictures: {sorted(others)}"
    assert not [n for n in written if n.endswith(".tmp")], "no temporary file left behind"


def test_a_bundle_that_fails_while_being_made_leaves_the_old_one_in_place(tmp_path):
    from export.deployed import staged_bundle
    out = tmp_path / "bundle"
    shutil.copytree(SYNTHETIC_BUNDLE, out)
    before = load_bundle(out).manifest_sha256
    with pytest.raises(BundleError, match="not valid JSON"):
        with staged_bundle(out) as staging:
            for name in ("detector.onnx", "classifier.onnx"):
                shutil.copy(out / name, staging / name)
            (staging / "manifest.json").write_text(json.dumps({"format": "edge-cell-bundle"})[:-1])
    assert load_bundle(out).manifest_sha256 == before
