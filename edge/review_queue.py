"""The durable queue of rejected cells awaiting an expert: SQLite rows plus lossless PNG crops.

A crop file is written and synced before its row is committed, so a row never
points at a missing image; a crash between the two leaves at worst an orphan
file, never a lost cell record.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

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
"""


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
        self._db = sqlite3.connect(self.root / "queue.sqlite")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def add(self, cells: list[RejectedCell], crops: list[np.ndarray]) -> None:
        """Store the cells of one field in one transaction."""
        rows = []
        for cell, crop in zip(cells, crops, strict=True):
            name = f"{cell.cell_id}.png"
            _write_png_durably(self.crops_dir / name, crop)
            rows.append((cell.cell_id, cell.session_id, cell.frame_id, *cell.box, cell.suggested,
                         cell.confidence, cell.threshold, json.dumps(cell.class_scores),
                         f"crops/{name}", cell.created))
        with self._db:
            self._db.executemany(
                "INSERT INTO rejected_cells (cell_id, session_id, frame_id, x1, y1, x2, y2, suggested,"
                " confidence, threshold, class_scores, crop_file, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM rejected_cells").fetchone()[0]

    def cells(self) -> list[sqlite3.Row]:
        self._db.row_factory = sqlite3.Row
        try:
            return self._db.execute("SELECT * FROM rejected_cells ORDER BY created, cell_id").fetchall()
        finally:
            self._db.row_factory = None

    def close(self) -> None:
        self._db.close()


def _write_png_durably(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"cannot encode crop {path.name} as PNG")
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(encoded.tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
