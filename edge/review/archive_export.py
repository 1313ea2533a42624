"""`edge review export`: the rejected cells of one or more sessions as one offline archive (zip).

Inside: crops/ (lossless crops), fields/ (context images), manifest.json and
manifest.csv, review.html, label-studio.json with label-studio-config.xml, and
coco.json. manifest.json lists the SHA-256 of every other file except
review.html, which embeds the manifest's own SHA-256. The export is recorded in
each session's queue database, so an import can check that labels answer an
archive made from that session.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
import zipfile
from pathlib import Path

import cv2
import numpy as np

from edge.runtime.atomic import atomic_file
from edge.review import ReviewError, manifest
from edge.review.coco import coco_json
from edge.review.label_studio import label_studio_config, label_studio_tasks
from edge.review.page import render_page
from edge.review.session_reader import Field, ReviewCell, SessionRecord, read_session
from edge.review.store import open_store

ACCEPTED_SAMPLE = "accepted-sample"
SAMPLE_CROP_CONTEXT = 1.5      # crop side / longer box side for accepted cells, cut from the context image
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def export_archive(session_dirs: list[Path], out: Path, include: tuple[str, ...] = (),
                   sample_size: int = 20, seed: int = 0) -> dict:
    out = Path(out)
    if out.suffix != ".zip":
        raise ReviewError(f"--out must name a .zip file, not {out.name}")
    if out.exists():
        raise ReviewError(f"{out} exists; choose a new --out")
    sessions = [read_session(d) for d in session_dirs]
    _check_sessions_agree(sessions)
    picked = [(s, _pick_cells(s, ACCEPTED_SAMPLE in include, sample_size, seed)) for s in sessions]
    if not any(cells for _, cells in picked):
        raise ReviewError("nothing to review: the sessions have no rejected cells"
                          + ("" if ACCEPTED_SAMPLE in include else " (add --include accepted-sample for a check of accepted ones)"))
    archive_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as fh, zipfile.ZipFile(fh, "w") as zf:
        body, manifest_sha = _write_members(zf, archive_id, sessions, picked, out.stem)
    try:
        for session, cells in picked:
            _record_export(session, archive_id, manifest_sha, out, cells)
    except Exception:
        out.unlink(missing_ok=True)
        raise
    kinds = [c["kind"] for c in body["cells"]]
    return {"archive": str(out), "archive_id": archive_id, "manifest_sha256": manifest_sha,
            "cells": len(kinds), "rejected": kinds.count("rejected"),
            "accepted_sample": kinds.count("accepted_sample"), "sessions": [s.session_id for s in sessions]}


def _check_sessions_agree(sessions: list[SessionRecord]) -> None:
    ids = [s.session_id for s in sessions]
    if len(set(ids)) != len(ids):
        raise ReviewError("the same session is given twice")
    for s in sessions[1:]:
        if s.class_names != sessions[0].class_names:
            raise ReviewError(f"sessions {sessions[0].session_id} and {s.session_id} use different class lists")


def _pick_cells(session: SessionRecord, with_sample: bool, sample_size: int, seed: int) -> list[ReviewCell]:
    cells = list(session.rejected)
    if with_sample:
        candidates = [c for c in session.accepted if c.frame_id in session.fields]
        rng = np.random.default_rng(seed)
        take = rng.choice(len(candidates), size=min(sample_size, len(candidates)), replace=False)
        cells += [candidates[i] for i in sorted(take)]
    for c in cells:
        if not SAFE_ID.match(c.cell_id):
            raise ReviewError(f"session {session.session_id} holds a cell id unfit for a file name: {c.cell_id!r}")
        if c.suggested not in session.class_names:
            raise ReviewError(f"cell {c.cell_id} has class {c.suggested!r}, which session {session.session_id} "
                              "does not list")
    return cells


def _write_members(zf: zipfile.ZipFile, archive_id: str, sessions: list[SessionRecord],
                   picked: list[tuple[SessionRecord, list[ReviewCell]]], folder: str) -> tuple[dict, str]:
    files: dict[str, str] = {}

    def put(name: str, data: bytes, compress: bool) -> None:
        zf.writestr(name, data, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
        files[name] = hashlib.sha256(data).hexdigest()

    entries = []
    for session, cells in picked:
        field_images: dict[int, np.ndarray] = {}
        for cell in cells:
            field = session.fields.get(cell.frame_id)
            context = None
            if field is not None:
                context_name = f"fields/{session.session_id}-f{field.frame_id:06d}.jpg"
                if context_name not in files:
                    put(context_name, _read(session.review_dir / field.image_file), False)
                context = {"image": context_name, "width": round(field.width * field.scale),
                           "height": round(field.height * field.scale),
                           "box": [round(v * field.scale, 2) for v in cell.box]}
            crop_name = f"crops/{cell.cell_id}.png"
            if cell.crop_file is not None:
                put(crop_name, _read(session.review_dir / cell.crop_file), False)
                source = "camera_lossless"
            else:
                if cell.frame_id not in field_images:
                    field_images[cell.frame_id] = _decode(session.review_dir / field.image_file)
                put(crop_name, _crop_from_context(field_images[cell.frame_id], field, cell.box), False)
                source = "context_image"
            created = cell.created or (field.created if field else 0.0)
            entries.append({
                "cell_id": cell.cell_id, "session_id": session.session_id, "frame_id": cell.frame_id,
                "kind": cell.kind, "box": [round(v, 2) for v in cell.box], "time": manifest.iso_time(created),
                "bundle_manifest_sha256": session.bundle_manifest_sha256, "suggested": cell.suggested,
                "confidence": round(cell.confidence, 6), "threshold": round(cell.threshold, 6),
                "top3": manifest.top3(cell.class_scores), "crop": crop_name, "crop_source": source,
                "context": context})
    names = sessions[0].class_names
    body = {"format": manifest.FORMAT, "version": manifest.VERSION, "archive_id": archive_id,
            "created": manifest.iso_time(time.time()),
            "sessions": [{"session_id": s.session_id, "bundle_manifest_sha256": s.bundle_manifest_sha256,
                          "finished": s.finished, "differential": s.differential} for s in sessions],
            "class_names": list(names), "label_choices": manifest.label_choices(names), "cells": entries}
    put("manifest.csv", manifest.csv_text(entries, files).encode(), True)
    put("label-studio.json", _json_bytes(label_studio_tasks(body, folder)), True)
    put("label-studio-config.xml", label_studio_config(body["label_choices"]).encode(), True)
    put("coco.json", _json_bytes(coco_json(body)), True)
    body["files"] = dict(sorted(files.items()))
    raw = _json_bytes(body)
    manifest_sha = hashlib.sha256(raw).hexdigest()
    zf.writestr("manifest.json", raw, zipfile.ZIP_DEFLATED)
    zf.writestr("review.html", render_page(body, manifest_sha).encode(), zipfile.ZIP_DEFLATED)
    return body, manifest_sha


def _record_export(session: SessionRecord, archive_id: str, manifest_sha: str, out: Path,
                   cells: list[ReviewCell]) -> None:
    db = open_store(session.root)
    try:
        with db:
            db.execute("INSERT INTO review_exports VALUES (?, ?, ?, ?)",
                       (archive_id, manifest_sha, time.time(), str(out.resolve())))
            db.executemany("INSERT INTO review_export_cells VALUES (?, ?, ?)",
                           [(archive_id, c.cell_id, c.kind) for c in cells])
    finally:
        db.close()


def _crop_from_context(image: np.ndarray, field: Field, box: tuple[float, ...]) -> bytes:
    x1, y1, x2, y2 = (v * field.scale for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1) * SAMPLE_CROP_CONTEXT / 2
    h, w = image.shape[:2]
    crop = image[int(max(0, cy - half)):int(min(h, np.ceil(cy + half))),
                 int(max(0, cx - half)):int(min(w, np.ceil(cx + half)))]
    ok, encoded = cv2.imencode(".png", crop)
    if not ok:
        raise ReviewError(f"cannot cut a crop from {field.image_file}")
    return encoded.tobytes()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ReviewError(f"the session's file {path} cannot be read ({exc.strerror})") from None


def _decode(path: Path) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(_read(path), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ReviewError(f"the session's context image {path} cannot be decoded")
    return image


def _json_bytes(data) -> bytes:
    return (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode()
