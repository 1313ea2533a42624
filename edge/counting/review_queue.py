"""The durable queue of rejected cells awaiting an expert: SQLite rows plus lossless PNG crops.

A crop file is written and synced before its row is committed, so a row never
points at a missing image; a crash between the two leaves at worst an orphan
file, never a lost cell record. Each counted field is kept the same way as a
context image (JPEG, long side at most CONTEXT_LONG_SIDE) for the expert.

Schema versions (PRAGMA user_version): 0/1 had no `fields` table; 2 adds it.
Opening an older queue adds the table; a newer one is refused.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.runtime.atomic import write_atomic

SCHEMA = """
CREATE TABLE IF NOT EXISTS rejected_cells (
    cell_id     TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL,
    frame_id    INTEGER NOT NULL,
    x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
    suggested   TEXT NOT NULL,
    confidence  REAL NOT NULL,
    threshold   REAL NOT NULL,
    class_scores TEXT NOT NULL,
    crop_file   TEXT NOT NULL,
    created     REAL NOT NULL,
    label       TEXT
);
CREATE TABLE IF NOT EXISTS fields (
    frame_id    INTEGER PRIMARY KEY,
    image_file  TEXT NOT NULL,
    scale       REAL NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    created     REAL NOT NULL
);
"""
SCHEMA_VERSION = 2
CONTEXT_LONG_SIDE = 1600
CONTEXT_JPEG_QUALITY = 90


class QueueVersionError(RuntimeError):
    """A queue written by a newer version of edge."""


@dataclass(frozen=True)
class RejectedCell:
    cell_id: str
    session_id: str
    frame_id: int
    box: tuple[float, float, float, float]
    suggested: str
    confidence: float
    threshold: float
    class_scores: dict[str, float]
    created: float


class ReviewQueue:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.crops_dir = self.root / "crops"
        self.crops_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.root / "queue.sqlite", check_same_thread=False)  # the session writer
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise QueueVersionError(f"{self.root / 'queue.sqlite'} has schema version {version}; "
                                    f"this edge reads up to {SCHEMA_VERSION}")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def add(self, cells: list[RejectedCell], crops: list[np.ndarray]) -> None:
        """Store the cells of one field in one transaction."""
        rows = []
        for cell, crop in zip(cells, crops, strict=True):
            name = f"{cell.cell_id}.png"
            _write_image_durably(self.crops_dir / name, crop)
            rows.append((cell.cell_id, cell.session_id, cell.frame_id, *cell.box, cell.suggested,
                         cell.confidence, cell.threshold, json.dumps(cell.class_scores),
                         f"crops/{name}", cell.created))
        with self._db:
            self._db.executemany(
                "INSERT INTO rejected_cells (cell_id, session_id, frame_id, x1, y1, x2, y2, suggested,"
                " confidence, threshold, class_scores, crop_file, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def add_field(self, frame_id: int, image: np.ndarray, created: float) -> None:
        """Keep the field as a context image (downscaled when large) before its cells are queued."""
        h, w = image.shape[:2]
        scale = min(1.0, CONTEXT_LONG_SIDE / max(h, w))
        if scale < 1.0:
            image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        fields_dir = self.root / "fields"
        fields_dir.mkdir(exist_ok=True)
        name = f"f{frame_id:06d}.jpg"
        _write_image_durably(fields_dir / name, image, [cv2.IMWRITE_JPEG_QUALITY, CONTEXT_JPEG_QUALITY])
        with self._db:
            self._db.execute("INSERT INTO fields (frame_id, image_file, scale, width, height, created)"
                             " VALUES (?, ?, ?, ?, ?, ?)", (frame_id, f"fields/{name}", scale, w, h, created))

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM rejected_cells").fetchone()[0]

    def discard_after(self, frame_id: int) -> int:
        """Drop what was queued for frames after `frame_id`: fields a crash stopped before
        the session committed them. Resuming counts those frames again."""
        with self._db:
            n = self._db.execute("DELETE FROM rejected_cells WHERE frame_id > ?", (frame_id,)).rowcount
            self._db.execute("DELETE FROM fields WHERE frame_id > ?", (frame_id,))
        return n

    def cells(self) -> list[sqlite3.Row]:
        self._db.row_factory = sqlite3.Row
        try:
            return self._db.execute("SELECT * FROM rejected_cells ORDER BY created, cell_id").fetchall()
        finally:
            self._db.row_factory = None

    def close(self) -> None:
        self._db.close()


def _write_image_durably(path: Path, image: np.ndarray, params: list[int] | None = None) -> None:
    ok, encoded = cv2.imencode(path.suffix, image, params or [])
    if not ok:
        raise OSError(f"cannot encode {path.name}")
    write_atomic(path, encoded.tobytes())
