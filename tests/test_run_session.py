"""`edge run` end to end on the shipped bundle: records, review queue, errors, and no torch."""
import csv
import json
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter

import cv2
import pytest

from edge.cli import main
from edge.counting.sources import DEMO_FIELDS


def _run(tmp_path, *args):
    out = tmp_path / "session"
    code = main(["run", "--out", str(out), *args])
    return code, out


def test_run_writes_a_consistent_session(tmp_path, capsys):
    code, out = _run(tmp_path, "--source", str(DEMO_FIELDS), "--max-frames", "3")
    assert code == 0
    printed = capsys.readouterr().out
    assert "frame     2" in printed and "3 fields counted" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] and results["frames"] == {"counted": 3, "skipped": 0}
    with open(out / "cells.csv") as fh:
        cells = list(csv.DictReader(fh))
    accepted = [c for c in cells if c["accepted"] == "1"]
    rejected = [c for c in cells if c["accepted"] == "0"]
    assert results["accepted"] == len(accepted) and results["rejected"] == len(rejected)
    for name, n in results["counts"].items():
        assert n == sum(c["predicted"] == name for c in accepted)
    assert len({c["cell_id"] for c in cells}) == len(cells)
    db = sqlite3.connect(out / "review" / "queue.sqlite")
    rows = db.execute("SELECT cell_id, crop_file, confidence, threshold FROM rejected_cells").fetchall()
    assert sorted(r[0] for r in rows) == sorted(c["cell_id"] for c in rejected)
    for cell_id, crop_file, confidence, threshold in rows:
        assert confidence < threshold
        crop = cv2.imread(str(out / "review" / crop_file))
        assert crop is not None and min(crop.shape[:2]) > 8


def test_a_corrupt_frame_is_skipped_and_counted(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(DEMO_FIELDS / "bccd_00007.jpg", folder / "a.jpg")
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    code, out = _run(tmp_path, "--source", str(folder))
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["frames"] == {"counted": 1, "skipped": 1}
    assert "b.png" in results["skipped_frames"][0]["reason"]


@pytest.mark.parametrize("args, message", [
    (["--bundle", "/no/bundle"], "bundle not found"),
    (["--source", "/no/such/folder"], "unknown source"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
    code, _ = _run(tmp_path, *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_folder_holding_a_session_is_refused(tmp_path, capsys):
    field = str(DEMO_FIELDS / "bccd_00007.jpg")
    assert _run(tmp_path, "--source", field)[0] == 0
    code, _ = _run(tmp_path, "--source", field)
    assert code == 2 and "already holds a session" in capsys.readouterr().err


def test_import_edge_and_a_whole_run_load_no_torch(tmp_path):
    script = (
        "import sys, edge\n"
        "from edge.cli import main\n"
        f"code = main(['run', '--source', {str(DEMO_FIELDS / 'bccd_00007.jpg')!r}, '--out', {str(tmp_path / 's')!r}])\n"
        "assert code == 0, code\n"
        "banned = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'export')]\n"
        "print('BANNED', banned)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "BANNED []" in out.stdout


def test_info_describes_the_default_bundle(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "classes" in out
    assert "roles       leukocyte: basophil, eosinophil, ig, lymphocyte, monocyte, neutrophil; nrbc: erythroblast; " \
           "platelet: platelet\n" in out


def test_display_without_a_gui_is_a_one_line_error(tmp_path, capsys):
    import cv2
    if "GTK" in cv2.getBuildInformation() or "Cocoa" in cv2.getBuildInformation():
        pytest.skip("this OpenCV has a GUI")
    code, out = _run(tmp_path, "--source", "synthetic:frames=1", "--display")
    err = capsys.readouterr().err
    assert code == 2 and "--display needs OpenCV with a GUI" in err and len(err.strip().splitlines()) == 1
    assert not (out / "session.json").exists(), "nothing started"


# BCCD's WBC annotations of the demo's real fields (edge/demo_fields/README.md)
DEMO_FIELD_WBC = {"bccd_00007.jpg": 1, "bccd_00011.jpg": 1, "bccd_00015.jpg": 1, "bccd_00031.jpg": 2,
                  "bccd_00033.jpg": 1, "bccd_00041.jpg": 1}


def test_the_default_bundle_finds_the_annotated_white_cells_of_the_demo_fields(tmp_path):
    code, out = _run(tmp_path, "--max-frames", "6", "--threads", "1", "--no-save-fields")
    assert code == 0
    with open(out / "cells.csv") as fh:
        cells = list(csv.DictReader(fh))
    assert Counter(c["frame_origin"] for c in cells) == DEMO_FIELD_WBC
    results = json.loads((out / "results.json").read_text())
    assert results["frames"]["counted"] == 6 and not results["fields_rejected_for_quality"]["count"]
    db = sqlite3.connect(out / "review" / "queue.sqlite")
    queued = {r[0] for r in db.execute("SELECT cell_id FROM rejected_cells")}
    assert queued == {c["cell_id"] for c in cells if c["accepted"] == "0"}  # every unsure cell goes to review


def test_the_default_bundles_quality_gate_refuses_fields_of_another_stain(tmp_path):
    code, out = _run(tmp_path, "--source", "synthetic:frames=2,seed=4", "--threads", "1", "--no-save-fields")
    results = json.loads((out / "results.json").read_text())
    assert code == 1 and results["frames"]["counted"] == 0  # nothing counted: exit status 1
    assert results["fields_rejected_for_quality"]["by_check"] == {"stain": 2}
