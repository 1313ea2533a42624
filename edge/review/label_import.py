"""`edge review import`: an expert's labels back into the session, checked first, applied once.

Every check runs before anything is written, so a refused file changes nothing.
Applying is one transaction per session: an import row and one audit row per
changed label (before, after, reviewer, times). A label equal to the cell's
current one is no change, so importing the same file again changes nothing.
final_results.json is then rewritten (atomically) from the audit trail.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edge.runtime.atomic import write_atomic
from edge.review import NOT_A_CELL, UNSURE, ReviewError
from edge.review.dataset import write_class_folders
from edge.review.differential import final_differential
from edge.review.labels_file import MAX_LABELS_BYTES, LabelsFile, parse_labels
from edge.review.manifest import iso_time
from edge.review.session_reader import SessionRecord, read_session
from edge.review.store import current_labels, has_table, open_store
from edge.review.untrusted_zip import UntrustedZip

FINAL_RESULTS = "final_results.json"
MAX_REVIEWER_CHARS = 100


@dataclass(frozen=True)
class _Target:
    session: SessionRecord
    kind: str
    machine_class: str


def import_labels(session_dirs: list[Path], labels_path: Path, reviewer: str | None = None,
                  dataset: Path | None = None) -> dict:
    labels = _read_labels(Path(labels_path))
    reviewer = _check_reviewer(reviewer if reviewer is not None else labels.reviewer)
    sessions = [read_session(d) for d in session_dirs]
    targets = _targets(sessions, labels)
    _check_labels(labels, targets, sessions[0].class_names)
    changed = 0
    now = time.time()
    for session in sessions:
        mine = [x for x in labels.labels if targets[x.cell_id].session is session]
        changed += _apply(session, mine, targets, labels, reviewer, now)
    finals = {s.session_id: write_final_results(s) for s in sessions}
    written = _write_dataset(sessions, dataset) if dataset is not None else None
    return {"archive_id": labels.archive_id, "reviewer": reviewer, "labels": len(labels.labels),
            "changed": changed, "unchanged": len(labels.labels) - changed, "dataset_crops": written,
            "final": finals}


def _read_labels(path: Path) -> LabelsFile:
    if not path.is_file():
        raise ReviewError(f"labels file not found: {path}")
    if not _is_zip(path):
        if path.stat().st_size > MAX_LABELS_BYTES:
            raise ReviewError(f"{path} is over the {MAX_LABELS_BYTES}-byte limit for labels")
        return parse_labels(path.read_bytes(), str(path))
    with UntrustedZip(path) as zf:
        return _labels_from_archive(zf)


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # is_zipfile raises on some damaged end records; UntrustedZip says why
        return True


def _labels_from_archive(zf: UntrustedZip) -> LabelsFile:
    """A returned archive: its labels file, its manifest, and every file the manifest lists, unaltered."""
    labels_names = [n for n in zf.members if "/" not in n and n.startswith("labels") and n.endswith(".json")]
    if len(labels_names) != 1 or "manifest.json" not in zf.members:
        raise ReviewError(f"{zf.path} must hold manifest.json and exactly one labels*.json at its top level")
    raw_manifest = zf.read("manifest.json")
    try:
        manifest = json.loads(raw_manifest)
        files = dict(manifest["files"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ReviewError(f"{zf.path}: manifest.json is malformed ({exc})") from None
    labels = parse_labels(zf.read(labels_names[0], MAX_LABELS_BYTES), f"{zf.path}:{labels_names[0]}")
    if hashlib.sha256(raw_manifest).hexdigest() != labels.manifest_sha256:
        raise ReviewError(f"{zf.path}: manifest.json is not the manifest the labels were made for")
    unexpected = set(zf.members) - set(files) - {"manifest.json", "review.html", labels_names[0]}
    if unexpected:
        raise ReviewError(f"{zf.path} holds files the export did not write, e.g. {sorted(unexpected)[0]!r}")
    for name, digest in files.items():
        if name not in zf.members:
            raise ReviewError(f"{zf.path} lacks {name!r}, listed in its manifest")
        if zf.sha256(name) != digest:
            raise ReviewError(f"{zf.path}: {name!r} does not match its SHA-256 in the manifest")
    return labels


def _check_reviewer(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ReviewError("who reviewed these cells? give --reviewer NAME (the labels file names no reviewer)")
    if len(name) > MAX_REVIEWER_CHARS or not name.isprintable():
        raise ReviewError(f"reviewer name must be printable and at most {MAX_REVIEWER_CHARS} characters")
    return name


def _targets(sessions: list[SessionRecord], labels: LabelsFile) -> dict[str, _Target]:
    """The cells the archive holds for these sessions, after checking the archive came from them."""
    ids = [s.session_id for s in sessions]
    if len(set(ids)) != len(ids):
        raise ReviewError("the same session is given twice")
    targets: dict[str, _Target] = {}
    for session in sessions:
        db = open_store(session.root, write=False)
        try:
            export = rows = None
            if has_table(db, "review_exports"):
                export = db.execute("SELECT manifest_sha256 FROM review_exports WHERE archive_id = ?",
                                    (labels.archive_id,)).fetchone()
                rows = db.execute("SELECT cell_id, kind FROM review_export_cells WHERE archive_id = ?",
                                  (labels.archive_id,)).fetchall()
        finally:
            db.close()
        if export is None:
            raise ReviewError(f"archive {labels.archive_id} was not exported from session {session.session_id}")
        if export["manifest_sha256"] != labels.manifest_sha256:
            raise ReviewError(f"the labels name archive {labels.archive_id}, but their manifest SHA-256 is not "
                              f"that archive's (recorded in session {session.session_id}): refused")
        machine = {c.cell_id: c.suggested for c in session.rejected + session.accepted}
        for row in rows:
            if row["cell_id"] not in machine:
                raise ReviewError(f"session {session.session_id} no longer holds cell {row['cell_id']} "
                                  "of the archive; its records were changed after the export")
            targets[row["cell_id"]] = _Target(session, row["kind"], machine[row["cell_id"]])
    return targets


def _check_labels(labels: LabelsFile, targets: dict[str, _Target], class_names: tuple[str, ...]) -> None:
    unknown = [x.cell_id for x in labels.labels if x.cell_id not in targets]
    if unknown:
        raise ReviewError(f"{len(unknown)} label(s) name cells that the archive does not hold for the given "
                          f"session(s), e.g. {unknown[0]!r} (give every session of the archive with --session)")
    allowed = set(class_names) | {NOT_A_CELL, UNSURE}
    bad = next((x for x in labels.labels if x.label not in allowed), None)
    if bad is not None:
        raise ReviewError(f"cell {bad.cell_id} has label {bad.label!r}; known: {', '.join(sorted(allowed))}")


def _apply(session: SessionRecord, mine: list, targets: dict[str, _Target], labels: LabelsFile,
           reviewer: str, now: float) -> int:
    db = open_store(session.root)
    try:
        # Hold the write lock from the read on: an import running at the same time waits, then
        # finds these labels already in place, so the same file is never applied twice.
        db.execute("BEGIN IMMEDIATE")
        current = current_labels(db)
        changes = [x for x in mine if x.cell_id not in current or current[x.cell_id]["after"] != x.label]
        if not changes:
            db.rollback()
            return 0
        import_id = uuid.uuid4().hex
        with db:
            db.execute("INSERT INTO label_imports VALUES (?, ?, ?, ?, ?, ?)",
                       (import_id, labels.archive_id, labels.sha256, reviewer, now, len(changes)))
            db.executemany(
                "INSERT INTO label_audit (cell_id, kind, machine_class, before, after, reviewer, labelled_at,"
                " imported, import_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(x.cell_id, targets[x.cell_id].kind, targets[x.cell_id].machine_class,
                  current[x.cell_id]["after"] if x.cell_id in current else None, x.label, reviewer,
                  x.labelled_at, now, import_id) for x in changes])
            db.executemany("UPDATE rejected_cells SET label = ? WHERE cell_id = ?",
                           [(x.label, x.cell_id) for x in changes if targets[x.cell_id].kind == "rejected"])
        return len(changes)
    finally:
        db.close()


def write_final_results(session: SessionRecord) -> dict:
    """final_results.json from the session's records and its audit trail; the same records give the same file."""
    db = open_store(session.root)
    try:
        labels = {cell: row["after"] for cell, row in current_labels(db).items()}
        imports = [{"import_id": r["import_id"], "archive_id": r["archive_id"], "reviewer": r["reviewer"],
                    "imported": iso_time(r["imported"]), "labels_sha256": r["labels_sha256"],
                    "changed": r["changed"]}
                   for r in db.execute("SELECT * FROM label_imports ORDER BY imported, import_id")]
    finally:
        db.close()
    report = {"session_id": session.session_id, "session_finished": session.finished,
              "machine": {"accepted": len(session.accepted), "rejected": len(session.rejected)},
              **final_differential(session.class_names, {c.cell_id: c.suggested for c in session.accepted},
                                   {c.cell_id: c.suggested for c in session.rejected}, labels, session.class_roles),
              "reviewed_by": sorted({i["reviewer"] for i in imports}),
              "last_import": imports[-1]["imported"] if imports else None,
              "imports": imports}
    write_atomic(session.root / FINAL_RESULTS, json.dumps(report, indent=2))
    return report


def _write_dataset(sessions: list[SessionRecord], out: Path) -> int:
    items = []
    for session in sessions:
        db = open_store(session.root, write=False)
        try:
            labels = current_labels(db)
        finally:
            db.close()
        items += [(c.cell_id, labels[c.cell_id]["after"], session.review_dir / c.crop_file)
                  for c in session.rejected
                  if c.cell_id in labels and labels[c.cell_id]["after"] in session.class_names]
    return write_class_folders(out, items, sessions[0].class_names)
