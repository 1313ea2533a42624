"""`edge review export`: the archive's files and hashes, the manifest, the Label Studio and COCO files,
the self-contained page, and the refusals."""
import csv
import hashlib
import io
import json
import re
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile

import pytest

from edge.cli import main
from edge.review.page import script_safe_json
from tests.helpers import export, make_session

SAMPLE = 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    session = make_session(root)
    archive = export([session], root / "review.zip", "--include", "accepted-sample", "--sample-size", str(SAMPLE))
    with zipfile.ZipFile(archive) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    return session, archive, files, json.loads(files["manifest.json"])


def _queue(session):
    db = sqlite3.connect(session / "review" / "queue.sqlite")
    db.row_factory = sqlite3.Row
    return db


def test_every_rejected_cell_and_a_sample_of_accepted_ones_with_hashes(exported):
    session, _, files, manifest = exported
    rejected = {r["cell_id"]: r for r in _queue(session).execute("SELECT * FROM rejected_cells")}
    cells = {c["cell_id"]: c for c in manifest["cells"]}
    assert {i for i, c in cells.items() if c["kind"] == "rejected"} == set(rejected)
    assert sum(c["kind"] == "accepted_sample" for c in cells.values()) == SAMPLE
    assert set(manifest["files"]) | {"manifest.json", "review.html"} == set(files)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == digest
    for cell_id, row in rejected.items():
        assert files[cells[cell_id]["crop"]] == (session / "review" / row["crop_file"]).read_bytes()


def test_manifest_fields(exported):
    session, _, files, manifest = exported
    meta = json.loads((session / "session.json").read_text())
    assert manifest["format"] == "edge-review-archive" and manifest["class_names"] == meta["class_names"]
    assert [c["value"] for c in manifest["label_choices"]] == meta["class_names"] + ["not_a_cell", "unsure"]
    with open(session / "cells.csv", newline="") as fh:
        by_id = {r["cell_id"]: r for r in csv.DictReader(fh)}
    for c in manifest["cells"]:
        row = by_id[c["cell_id"]]
        assert c["session_id"] == meta["session_id"] and c["frame_id"] == int(row["frame_id"])
        assert c["bundle_manifest_sha256"] == meta["bundle_manifest_sha256"]
        assert c["box"] == pytest.approx([float(row[k]) for k in ("x1", "y1", "x2", "y2")], abs=0.06)
        assert c["suggested"] == row["predicted"] and c["time"].startswith("20")
        ctx = c["context"]
        assert ctx["image"] in files and ctx["box"] == pytest.approx(c["box"], abs=0.01)
        assert 0 <= ctx["box"][0] < ctx["box"][2] <= ctx["width"] and 0 <= ctx["box"][1] < ctx["box"][3] <= ctx["height"]
        if c["kind"] == "rejected":
            assert c["confidence"] < c["threshold"] and c["crop_source"] == "camera_lossless"
            assert len(c["top3"]) == 3 and c["top3"][0]["class"] == c["suggested"]
            assert c["top3"][0]["D"] >= c["top3"][1]["D"] >= c["top3"][2]["D"]
        else:
            assert c["confidence"] >= c["threshold"] and c["crop_source"] == "context_image"
    rows = list(csv.DictReader(io.StringIO(files["manifest.csv"].decode())))
    assert [r["cell_id"] for r in rows] == [c["cell_id"] for c in manifest["cells"]]
    assert all(r["crop_sha256"] == manifest["files"][r["crop"]] for r in rows)


def test_label_studio_tasks_and_config(exported):
    _, archive, files, manifest = exported
    tasks = json.loads(files["label-studio.json"])
    config = ET.fromstring(files["label-studio-config.xml"])
    choices = config.find("Choices")
    assert choices.get("toName") == config.find("Image").get("name")
    assert [c.get("value") for c in choices] == [c["value"] for c in manifest["label_choices"]]
    prefix = f"/data/local-files/?d={archive.stem}/"
    assert len(tasks) == len(manifest["cells"])
    for task, cell in zip(tasks, manifest["cells"]):
        assert task["data"]["image"].startswith(prefix) and task["data"]["image"][len(prefix):] in files
        assert task["data"]["cell_id"] == cell["cell_id"]
        (result,) = task["predictions"][0]["result"]
        assert result["from_name"] == choices.get("name") and result["type"] == "choices"
        assert result["value"]["choices"] == [cell["suggested"]]


def test_coco_json(exported):
    _, _, files, manifest = exported
    coco = json.loads(files["coco.json"])
    assert [c["name"] for c in coco["categories"]] == manifest["class_names"]
    images = {i["id"]: i for i in coco["images"]}
    assert len(coco["annotations"]) == len(manifest["cells"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_id = {c["cell_id"]: c for c in manifest["cells"]}
    for a in coco["annotations"]:
        image = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert image["file_name"] in files and 0 <= x and x + w <= image["width"] and y + h <= image["height"]
        assert names[a["category_id"]] == by_id[a["cell_id"]]["suggested"] and a["area"] == pytest.approx(w * h)


def test_the_page_is_self_contained_and_embeds_the_manifest_hash(exported):
    _, _, files, manifest = exported
    html = files["review.html"].decode()
    assert "innerHTML" not in html and "outerHTML" not in html and "document.write" not in html
    assert not re.search(r"https?://", html) and "fetch(" not in html and "XMLHttpRequest" not in html
    assert "connect-src 'none'" in html
    data = json.loads(re.search(r'<script type="application/json" id="review-data">(.*?)</script>', html, re.S)[1])
    assert data["manifest_sha256"] == hashlib.sha256(files["manifest.json"]).hexdigest()
    assert [c["cell_id"] for c in data["cells"]] == [c["cell_id"] for c in manifest["cells"]]
    shown = data["sessions"][0]["differential"]  # the count before review, as the device showed it
    assert shown == manifest["sessions"][0]["differential"] and "PROVISIONAL leukocyte differential" in shown[0]


def test_embedded_data_cannot_close_its_script_element():
    text = script_safe_json({"name": "</script><!--<script>&"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"name": "</script><!--<script>&"}


def test_the_export_is_recorded_in_the_session(exported):
    session, _, files, manifest = exported
    db = _queue(session)
    (row,) = db.execute("SELECT * FROM review_exports").fetchall()
    assert row["archive_id"] == manifest["archive_id"]
    assert row["manifest_sha256"] == hashlib.sha256(files["manifest.json"]).hexdigest()
    assert db.execute("SELECT COUNT(*) FROM review_export_cells").fetchone()[0] == len(manifest["cells"])


def test_several_sessions_in_one_archive(exported, tmp_path):
    first = exported[0]
    second = make_session(tmp_path, frames=1, seed=8)
    archive = export([first, second], tmp_path / "both.zip")
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    ids = {json.loads((s / "session.json").read_text())["session_id"] for s in (first, second)}
    assert {s["session_id"] for s in manifest["sessions"]} == {c["session_id"] for c in manifest["cells"]} == ids


@pytest.mark.parametrize("case, message", [
    ("exists", "exists; choose a new --out"),
    ("not-zip", "must name a .zip"),
    ("no-session", "is not a session"),
    ("same-twice", "the same session is given twice"),
    ("nothing", "nothing to review"),
])
def test_refusals_are_one_line_errors(exported, tmp_path, capsys, case, message):
    session = exported[0]
    out = tmp_path / "out.zip"
    sessions = [session]
    if case == "exists":
        out.write_bytes(b"")
    elif case == "not-zip":
        out = tmp_path / "out.tar"
    elif case == "no-session":
        sessions = [tmp_path]
        (tmp_path / "review").mkdir()
    elif case == "same-twice":
        sessions = [session, session]
    elif case == "nothing":
        sessions = [make_session(tmp_path, frames=1, threshold=0.0)]
    args = ["review", "export", "--out", str(out)] + [a for s in sessions for a in ("--session", str(s))]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert case == "exists" or not out.exists()


def test_review_loads_no_torch():
    script = ("import sys, edge.review.archive_export, edge.review.label_import\n"
              "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'export')])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
