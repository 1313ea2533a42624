"""`edge run` end to end on the shipped bundle: records, review queue, errors, and no torch."""
import csv
import json
import sqlite3
import subprocess
import sys

import cv2
import pytest

from edge.cli import main


def _run(tmp_path, *args):
    out = tmp_path / "session"
    code = main(["run", "--out", str(out), *args])
    return code, out


def test_run_writes_a_consistent_session(tmp_path, capsys):
    code, out = _run(tmp_path, "--source", "synthetic:frames=3,seed=4")
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
    from edge.synthetic import render_field
    cv2.imwrite(str(folder / "a.png"), render_field(seed=1).image)
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
    assert _run(tmp_path, "--source", "synthetic:frames=1")[0] == 0
    code, _ = _run(tmp_path, "--source", "synthetic:frames=1")
    assert code == 2 and "already holds a session" in capsys.readouterr().err


def test_import_edge_and_a_whole_run_load_no_torch(tmp_path):
    script = (
        "import sys, edge\n"
        "from edge.cli import main\n"
        f"code = main(['run', '--source', 'synthetic:frames=1', '--out', {str(tmp_path / 's')!r}])\n"
        "assert code == 0, code\n"
        "banned = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'export')]\n"
        "print('BANNED', banned)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "BANNED []" in out.stdout


def test_info_describes_the_default_bundle(capsys):
    assert main(["info"]) == 0
    assert "classes" in capsys.readouterr().out


def test_display_without_a_gui_is_a_one_line_error(tmp_path, capsys):
    import cv2
    if "GTK" in cv2.getBuildInformation() or "Cocoa" in cv2.getBuildInformation():
        pytest.skip("this OpenCV has a GUI")
    code, out = _run(tmp_path, "--source", "synthetic:frames=1", "--display")
    err = capsys.readouterr().err
    assert code == 2 and "--display needs OpenCV with a GUI" in err and len(err.strip().splitlines()) == 1
    assert not (out / "session.json").exists(), "nothing started"
