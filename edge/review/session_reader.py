"""Everything review needs from a session folder, read and checked once."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from edge.counting.differential import differential_lines
from edge.runtime.bundle import BundleError, load_bundle
from edge.runtime.class_roles import infer_roles
from edge.review import ReviewError
from edge.review.store import has_table, open_store


@dataclass(frozen=True)
class ReviewCell:
    """A cell an expert may be shown: a rejected one, or one of the accepted sample."""
    cell_id: str
    session_id: str
    frame_id: int
    kind: str                                   # "rejected" or "accepted_sample"
    box: tuple[float, float, float, float]      # camera pixels
    suggested: str                              # the machine's class
    confidence: float
    threshold: float
    class_scores: dict[str, float] | None       # D per class; not stored for accepted cells
    created: float
    crop_file: str | None                       # lossless crop, relative to review/; None if not stored


@dataclass(frozen=True)
class Field:
    frame_id: int
    image_file: str                             # relative to review/
    scale: float                                # context image pixels per camera pixel
    width: int
    height: int
    created: float


@dataclass
class SessionRecord:
    root: Path
    session_id: str
    bundle_manifest_sha256: str
    class_names: tuple[str, ...]
    finished: bool
    rejected: list[ReviewCell]
    accepted: list[ReviewCell]
    fields: dict[int, Field]
    class_roles: dict[str, str] = field(default_factory=dict)  # from session.json, else read from the names
    differential: list[str] = field(default_factory=list)  # results.json's differential, as the terminal shows it

    @property
    def review_dir(self) -> Path:
        return self.root / "review"


def read_session(root: Path) -> SessionRecord:
    root = Path(root)
    meta = _read_json(root / "session.json")
    results = _read_json(root / "results.json")
    session_id = meta.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise ReviewError(f"{root / 'session.json'} has no session_id")
    db = open_store(root, write=False)
    try:
        rejected = [ReviewCell(r["cell_id"], r["session_id"], r["frame_id"], "rejected",
                               (r["x1"], r["y1"], r["x2"], r["y2"]), r["suggested"], r["confidence"],
                               r["threshold"], json.loads(r["class_scores"]), r["created"], r["crop_file"])
                    for r in db.execute("SELECT * FROM rejected_cells ORDER BY created, cell_id")]
        fields = {r["frame_id"]: Field(r["frame_id"], r["image_file"], r["scale"], r["width"], r["height"],
                                       r["created"])
                  for r in (db.execute("SELECT * FROM fields") if has_table(db, "fields") else [])}
    finally:
        db.close()
    names = _class_names(root, meta)
    roles = meta.get("class_roles")
    if not (isinstance(roles, dict) and set(roles) == set(names)):
        roles = infer_roles(names)  # a session from before roles were recorded
    return SessionRecord(root, session_id, str(meta.get("bundle_manifest_sha256", "")),
                         names, bool(results.get("finished")), rejected,
                         _accepted_cells(root / "cells.csv", session_id), fields, roles,
                         _differential(results))


def _differential(results: dict) -> list[str]:
    """The session's leukocyte differential as text lines; none from a session that predates it."""
    d = results.get("leukocyte_differential")
    return differential_lines(d) if isinstance(d, dict) else []


def _class_names(root: Path, meta: dict) -> tuple[str, ...]:
    """From session.json; a session written before it recorded them names its bundle instead."""
    names = meta.get("class_names")
    if isinstance(names, list) and names and all(isinstance(n, str) and n for n in names):
        return tuple(names)
    try:
        bundle = load_bundle(meta.get("bundle", ""))
    except BundleError as exc:
        raise ReviewError(f"{root / 'session.json'} names no classes and its bundle cannot be read: {exc}") from None
    if bundle.manifest_sha256 != meta.get("bundle_manifest_sha256"):
        raise ReviewError(f"the bundle at {bundle.root} is not the one session {meta.get('session_id')} used "
                          "(manifest hash differs)")
    return bundle.class_names


def _accepted_cells(path: Path, session_id: str) -> list[ReviewCell]:
    if not path.is_file():
        raise ReviewError(f"{path.parent} is not a session: it has no cells.csv")
    with open(path, newline="") as fh:
        return [ReviewCell(row["cell_id"], session_id, int(row["frame_id"]), "accepted_sample",
                           tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2")), row["predicted"],
                           float(row["confidence"]), float(row["threshold"]), None, 0.0, None)
                for row in csv.DictReader(fh) if row["accepted"] == "1"]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ReviewError(f"{path.parent} is not a session: it has no {path.name}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReviewError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ReviewError(f"{path} does not hold a JSON object")
    return data
