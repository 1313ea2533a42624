"""`edge review import`: labels update the final differential, once; the audit trail only grows; bad or
untrusted input is refused in one line with nothing changed; the folder-per-class data set."""
import json
import shutil
import sqlite3
import stat
import zipfile

import pytest

from edge.cli import main
from edge.review.labels_file import MAX_LABELS_BYTES
from tests.helpers import archive_manifest, export, labels_for, make_session


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    session = make_session(root)
    archive = export([session], root / "review.zip", "--include", "accepted-sample", "--sample-size", "2")
    return session, archive


@pytest.fixture
def case(exported, tmp_path):
    """A private copy of the exported session, the shared archive and its manifest."""
    session = shutil.copytree(exported[0], tmp_path / "session")
    return session, exported[1], archive_manifest(exported[1])[0]


def _import(session, labels, tmp_path, *extra):
    path = labels if not isinstance(labels, dict) else tmp_path / "labels.json"
    if isinstance(labels, dict):
        path.write_text(json.dumps(labels))
    return main(["review", "import", "--session", str(session), "--labels", str(path), *extra])


def _state(session):
    db = sqlite3.connect(session / "review" / "queue.sqlite")
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    state = [tables] + [db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                        for t in ("label_audit", "label_imports", "review_exports") if t in tables]
    state.append(db.execute("SELECT cell_id, label FROM rejected_cells ORDER BY 1").fetchall())
    db.close()
    final = session / "final_results.json"
    return state, final.read_bytes() if final.exists() else None


def _answers(manifest):
    """Rejected cells: alternate classes, the first not a cell and the second unsure; the accepted sample:
    the first relabelled, the second confirmed."""
    names = manifest["class_names"]
    rejected = [c for c in manifest["cells"] if c["kind"] == "rejected"]
    sample = [c for c in manifest["cells"] if c["kind"] == "accepted_sample"]
    answers = {c["cell_id"]: names[i % len(names)] for i, c in enumerate(rejected)}
    answers[rejected[0]["cell_id"]] = "not_a_cell"
    answers[rejected[1]["cell_id"]] = "unsure"
    other = next(n for n in names if n != sample[0]["suggested"])
    answers[sample[0]["cell_id"]] = other
    answers[sample[1]["cell_id"]] = sample[1]["suggested"]
    return answers, rejected, sample, other


def test_labels_update_the_final_differential(case, tmp_path):
    session, archive, manifest = case
    answers, rejected, sample, other = _answers(manifest)
    assert _import(session, labels_for(archive, answers), tmp_path) == 0
    final = json.loads((session / "final_results.json").read_text())
    expected = dict(json.loads((session / "results.json").read_text())["counts"])
    for c in rejected[2:]:
        expected[answers[c["cell_id"]]] += 1
    expected[sample[0]["suggested"]] -= 1
    expected[other] += 1
    total = sum(expected.values())
    assert final["counts"] == expected and final["counted"] == total
    assert final["differential_percent"] == {n: pytest.approx(100 * k / total, abs=1e-4) for n, k in expected.items()}
    for name, (lo, hi) in final["ci95_percent"].items():
        assert lo <= final["differential_percent"][name] <= hi
    assert final["rejected"] == {"total": len(rejected), "labelled": len(rejected) - 2, "not_a_cell": 1,
                                 "unsure": 1, "pending": 0}
    assert not final["complete"]
    qc = final["accepted_sample"]
    assert (qc["checked"], qc["agreed"], qc["relabelled"], qc["agreement"]) == (2, 1, 1, 0.5)
    assert final["imports"][0]["reviewer"] == "Dr Test" and final["imports"][0]["changed"] == len(answers)


def test_import_is_idempotent(case, tmp_path):
    session, archive, manifest = case
    labels = labels_for(archive, _answers(manifest)[0])
    assert _import(session, labels, tmp_path) == 0
    first = _state(session)
    assert _import(session, labels, tmp_path) == 0
    assert _state(session) == first


def test_a_relabel_appends_to_the_audit_trail_which_cannot_be_rewritten(case, tmp_path):
    session, archive, manifest = case
    answers = _answers(manifest)[0]
    assert _import(session, labels_for(archive, answers), tmp_path) == 0
    cell = next(iter(answers))
    assert _import(session, labels_for(archive, {cell: manifest["class_names"][2]}, "Dr Second"),
                   tmp_path) == 0
    db = sqlite3.connect(session / "review" / "queue.sqlite")
    rows = db.execute("SELECT before, after, reviewer FROM label_audit WHERE cell_id = ? ORDER BY seq",
                      (cell,)).fetchall()
    assert rows == [(None, "not_a_cell", "Dr Test"), ("not_a_cell", manifest["class_names"][2], "Dr Second")]
    assert db.execute("SELECT label FROM rejected_cells WHERE cell_id = ?", (cell,)).fetchone()[0] == \
        manifest["class_names"][2]
    for statement in ("UPDATE label_audit SET after = 'x'", "DELETE FROM label_audit",
                      "DELETE FROM label_imports", "UPDATE review_exports SET manifest_sha256 = 'x'"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)
    final = json.loads((session / "final_results.json").read_text())
    assert [i["reviewer"] for i in final["imports"]] == ["Dr Test", "Dr Second"]


def test_the_reviewer_option_names_who_labelled(case, tmp_path):
    session, archive, manifest = case
    cell = manifest["cells"][0]["cell_id"]
    assert _import(session, labels_for(archive, {cell: "unsure"}, reviewer=""), tmp_path,
                   "--reviewer", "Dr Option") == 0
    assert json.loads((session / "final_results.json").read_text())["imports"][0]["reviewer"] == "Dr Option"


def test_labelled_crops_become_a_folder_per_class(case, tmp_path):
    session, archive, manifest = case
    answers, rejected, _, _ = _answers(manifest)
    data = tmp_path / "dataset"
    assert _import(session, labels_for(archive, answers), tmp_path, "--dataset", str(data)) == 0
    written = {p.relative_to(data).as_posix() for p in data.rglob("*.png")}
    assert written == {f"{answers[c['cell_id']]}/{c['cell_id']}.png" for c in rejected[2:]}
    crop = rejected[2]
    assert (data / answers[crop["cell_id"]] / f"{crop['cell_id']}.png").read_bytes() == \
        (session / "review" / crop["crop"]).read_bytes()
    new_class = next(n for n in manifest["class_names"] if n != answers[crop["cell_id"]])
    assert _import(session, labels_for(archive, {crop["cell_id"]: new_class}), tmp_path,
                   "--dataset", str(data)) == 0
    assert [p.parent.name for p in data.rglob(f"{crop['cell_id']}.png")] == [new_class]


def test_the_archive_returned_with_its_labels_inside_is_accepted(case, tmp_path):
    session, archive, manifest = case
    returned = tmp_path / "returned.zip"
    shutil.copy(archive, returned)
    with zipfile.ZipFile(returned, "a") as zf:
        zf.writestr("labels-x.json", json.dumps(labels_for(archive, _answers(manifest)[0])))
    assert _import(session, returned, tmp_path) == 0
    assert json.loads((session / "final_results.json").read_text())["imports"]


def _rewrite(archive, out, change):
    """A copy of the archive with labels inside, passed through change(name, data) -> [(name, data)]."""
    labels = json.dumps(labels_for(archive, {archive_manifest(archive)[0]["cells"][0]["cell_id"]: "unsure"}))
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist() + ["labels.json"]:
            data = labels.encode() if name == "labels.json" else src.read(name)
            for new_name, new_data in change(name, data):
                if isinstance(new_name, zipfile.ZipInfo):
                    dst.writestr(new_name, new_data)
                else:
                    dst.writestr(new_name, new_data, zipfile.ZIP_DEFLATED)
    return out


def _symlink(name, data):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


BAD_ARCHIVES = {
    "traversal": (lambda n, d: [(n, d)] + ([("../../evil.json", b"{}")] if n == "labels.json" else []),
                  "not a plain relative path"),
    "absolute": (lambda n, d: [(n, d)] + ([("/etc/evil", b"x")] if n == "labels.json" else []),
                 "not a plain relative path"),
    "backslash": (lambda n, d: [(n.replace("crops/", "crops\\..\\"), d)], "not a plain relative path"),
    "link": (lambda n, d: [(_symlink(n, d) if n.startswith("crops/") else n, d)], "is a link"),
    "oversized": (lambda n, d: [(n, d + b" " * MAX_LABELS_BYTES if n == "labels.json" else d)],
                  "byte limit"),
    "altered crop": (lambda n, d: [(n, d[:-1] + bytes([d[-1] ^ 1]) if n.startswith("crops/") else d)],
                     "does not match its SHA-256"),
    "extra file": (lambda n, d: [(n, d)] + ([("notes.exe", b"x")] if n == "labels.json" else []),
                   "files the export did not write"),
    "altered manifest": (lambda n, d: [(n, d + b" " if n == "manifest.json" else d)],
                         "not the manifest the labels were made for"),
}


def _labels_case(archive, manifest, kind):
    cells = [c["cell_id"] for c in manifest["cells"]]
    labels = labels_for(archive, {cells[0]: manifest["class_names"][0], cells[1]: "unsure"})
    if kind == "duplicate":
        labels["labels"].append(dict(labels["labels"][0]))
    elif kind == "unknown id":
        labels["labels"][0]["cell_id"] = "20990101T000000-deadbeef-f000000-c0000"
    elif kind == "bad class":
        labels["labels"][0]["label"] = "megakaryocyte"
    elif kind == "hash mismatch":
        labels["manifest_sha256"] = "0" * 64
    elif kind == "unknown archive":
        labels["archive_id"] = "not-an-archive"
    elif kind == "no reviewer":
        labels["reviewer"] = ""
    elif kind == "unknown key":
        labels["labels"][0]["lable"] = "x"
    return labels


BAD_LABELS = {
    "duplicate": "twice",
    "unknown id": "does not hold",
    "bad class": "has label 'megakaryocyte'; known:",
    "hash mismatch": "manifest SHA-256 is not that archive's",
    "unknown archive": "was not exported from session",
    "no reviewer": "give --reviewer",
    "unknown key": "needs cell_id and label",
}


@pytest.mark.parametrize("kind", [*BAD_LABELS, "malformed json", *BAD_ARCHIVES, "other session"])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(case, tmp_path, capsys, kind):
    session, archive, manifest = case
    target = session
    if kind in BAD_LABELS:
        labels, message = _labels_case(archive, manifest, kind), BAD_LABELS[kind]
    elif kind == "malformed json":
        labels, message = tmp_path / "broken.json", "is not valid JSON"
        labels.write_text(json.dumps(labels_for(archive, {}))[:-5])
    elif kind == "other session":
        target = make_session(tmp_path, frames=1, seed=9)
        labels, message = labels_for(archive, {manifest["cells"][0]["cell_id"]: "unsure"}), "was not exported from"
    else:
        change, message = BAD_ARCHIVES[kind]
        labels = _rewrite(archive, tmp_path / "returned.zip", change)
    before = _state(target)
    capsys.readouterr()
    assert _import(target, labels, tmp_path) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _state(target) == before


def test_the_final_leukocyte_differential_names_the_reviewer_and_keeps_smudge_and_unsure_apart(case, tmp_path):
    session, archive, manifest = case
    answers, rejected, _, _ = _answers(manifest)
    pending = rejected[-1]["cell_id"]
    del answers[pending]  # one rejected cell still waits
    assert _import(session, labels_for(archive, answers, reviewer="Dr Final"), tmp_path) == 0
    final = json.loads((session / "final_results.json").read_text())
    d = final["leukocyte_differential"]
    assert final["reviewed_by"] == ["Dr Final"] and final["last_import"] == final["imports"][-1]["imported"]
    assert d["reported_apart"] == {"smudge_or_not_a_cell": 1, "unidentified_unsure": 1}
    assert d["provisional"] and d["in_review"] == 1  # the unlabelled cell keeps it provisional
    assert d["leukocytes_accepted"] == final["counted"]  # the synthetic classes are all leukocytes
    for name, c in d["classes"].items():
        low, high = c["range_percent"]
        assert low <= 100 * final["counts"][name] / final["counted"] <= high
    answers[pending] = manifest["class_names"][0]
    assert _import(session, labels_for(archive, answers, reviewer="Dr Final"), tmp_path) == 0
    done = json.loads((session / "final_results.json").read_text())["leukocyte_differential"]
    assert not done["provisional"] and done["in_review"] == 0
