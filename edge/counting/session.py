"""A counting session's folder, durable across crashes and resumable.

The record of truth is session.sqlite (WAL, synchronous=FULL): one transaction
per counted field holds the field and every cell counted in it, so a field is
either wholly counted or not at all. Rejected cells reach the review queue
(review/) before their field commits; `Session.resume` drops queue rows of
fields that never committed, and the loop counts those frames again. cells.csv
and results.json are views of the database, rewritten so that a crash leaves a
consistent snapshot; a resumed session rewrites cells.csv from the database.

The writes run on a background thread, in order (edge.counting.record_writer),
while the next field is counted. `tally` is the live count, updated as each
field is handed over; results.json shows what has been committed, refreshed at
most every SNAPSHOT_EVERY_S seconds while counting and in full at close.

A lock file keeps a second process out of a session that is being counted.
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from edge.runtime.atomic import atomic_file, write_atomic
from edge.runtime.bundle import Bundle
from edge.runtime.decision import Decisions
from edge.counting.differential import differential, leukocyte_differential
from edge.runtime.engine import FieldResult
from edge.runtime.frames import Frame
from edge.runtime.quality import QUALITY_PREFIX, quality_check_name
from edge.counting.record_writer import RecordWriter, WriteFailed
from edge.counting.registration import Shift
from edge.counting.review_queue import RejectedCell, ReviewQueue
from edge.counting.tally import Tally

SNAPSHOT_EVERY_S = 1.0  # results.json while counting: its intervals cost more than a field's other writes

CELL_COLUMNS = ["cell_id", "session_id", "frame_id", "frame_origin", "x1", "y1", "x2", "y2",
                "detection_score", "predicted", "confidence", "threshold", "accepted"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fields (
    frame_id   INTEGER PRIMARY KEY,
    origin     TEXT NOT NULL,
    timestamp  REAL NOT NULL,
    cells      INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    shift_dx   REAL, shift_dy REAL
);
CREATE TABLE IF NOT EXISTS cells (
    cell_id    TEXT PRIMARY KEY,
    frame_id   INTEGER NOT NULL REFERENCES fields(frame_id),
    x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
    detection_score REAL NOT NULL,
    predicted  TEXT NOT NULL,
    confidence REAL NOT NULL,
    threshold  REAL NOT NULL,
    accepted   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (frame_id INTEGER PRIMARY KEY, reason TEXT NOT NULL);
"""


class SessionError(RuntimeError):
    """A session folder that cannot be used."""


class Session:
    def __init__(self, out_dir: Path, bundle: Bundle, source: str, *, resume: bool = False,
                 settings: dict | None = None):
        self.out_dir = Path(out_dir)
        self.bundle = bundle
        if resume and not (self.out_dir / "session.sqlite").exists():
            raise SessionError(f"{self.out_dir} holds no session to resume")
        # session.json is written last when a session is created: without it, nothing was counted
        if not resume and (self.out_dir / "session.json").exists():
            raise SessionError(f"{self.out_dir} already holds a session; choose a new --out folder "
                               "or continue it with --resume")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(self.out_dir)
        try:
            self._open(bundle, source, resume, settings)
        except (OSError, sqlite3.OperationalError) as exc:  # a full disk, a read-only folder
            self._lock.close()
            raise SessionError(f"cannot open the session in {self.out_dir} ({exc})") from exc

    def _open(self, bundle: Bundle, source: str, resume: bool, settings: dict | None) -> None:
        self._db = sqlite3.connect(self.out_dir / "session.sqlite", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._db_lock = threading.RLock()  # the writer thread commits while the loop reads
        self.review = ReviewQueue(self.out_dir / "review")
        self.tally = Tally(bundle.class_names)     # live: every field handed to `record`
        self._committed = Tally(bundle.class_names)  # what session.sqlite holds
        self._last_snapshot = 0.0
        self.sections: dict[str, dict] = {}  # more sections of results.json, e.g. "drift" from the loop
        self.resumed = resume
        self.write_failed = False
        if resume:
            self._reopen(bundle)
        else:
            self._create(bundle, source, settings or {})
        self._cells_file = open(self.out_dir / "cells.csv", "a" if resume else "w", newline="")
        self._cells = csv.writer(self._cells_file)
        if not resume:
            self._cells.writerow(CELL_COLUMNS)
        self._writer = RecordWriter(f"session-writer-{self.session_id}")

    @classmethod
    def resume(cls, out_dir: Path, bundle: Bundle) -> "Session":
        return cls(out_dir, bundle, "", resume=True)

    # ------------------------------------------------------------ opening

    def _create(self, bundle: Bundle, source: str, settings: dict) -> None:
        self.session_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.source = source
        self.started = time.time()
        self.settings = settings
        meta = {"session_id": self.session_id, "source": source, "started": self.started,
                "bundle": str(bundle.root), "bundle_manifest_sha256": bundle.manifest_sha256,
                "class_names": list(bundle.class_names), "class_roles": bundle.class_roles, "settings": settings}
        with self._db:  # a creation stopped before session.json was written left its meta behind
            self._db.execute("DELETE FROM meta")
            self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in meta.items()])
        self._atomic_json("session.json", meta)

    def _reopen(self, bundle: Bundle) -> None:
        meta = {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}
        if meta.get("bundle_manifest_sha256") != bundle.manifest_sha256:
            raise SessionError(
                f"{self.out_dir} was counted with bundle {meta.get('bundle')} (manifest "
                f"{str(meta.get('bundle_manifest_sha256'))[:12]}...); resume it with the same bundle")
        self.session_id, self.source = meta["session_id"], meta["source"]
        self.started, self.settings = meta["started"], meta.get("settings", {})
        self.review.discard_after(self.last_frame_id())
        queued = [json.loads(row["class_scores"]) for row in self.review.cells()]
        for tally in (self.tally, self._committed):
            self._rebuild(tally, queued)
        self._rewrite_cells_csv()

    def _rebuild(self, tally: Tally, queued_scores: list[dict]) -> None:
        """A tally of what the database holds, with the classifier scores of the queued cells."""
        names = {n: i for i, n in enumerate(self.bundle.class_names)}
        for predicted, accepted, n in self._db.execute(
                "SELECT predicted, accepted, COUNT(*) FROM cells GROUP BY predicted, accepted"):
            if accepted:
                tally.accepted[names[predicted]] += n
            else:
                tally.rejected += n
                tally.rejected_by_class[names[predicted]] += n
        if queued_scores:
            tally.add_review_scores(np.array([[s.get(n, 0.0) for n in self.bundle.class_names]
                                              for s in queued_scores]))

    # ------------------------------------------------------------ recording

    @property
    def frames_counted(self) -> int:
        with self._db_lock:
            return self._db.execute("SELECT COUNT(*) FROM fields").fetchone()[0]

    def last_frame_id(self) -> int:
        """The last source frame this session has dealt with (counted or skipped); -1 if none."""
        with self._db_lock:
            row = self._db.execute("SELECT MAX(m) FROM (SELECT MAX(frame_id) AS m FROM fields"
                                   " UNION ALL SELECT MAX(frame_id) FROM skipped)").fetchone()
        return -1 if row[0] is None else int(row[0])

    def record(self, frame: Frame, result: FieldResult, duplicates: np.ndarray | None = None,
               shift: Shift | None = None) -> None:
        """Count one field: the live tally now; its record written in the background (`_commit`).
        `duplicates` marks cells already counted in the previous field (the stage moved less than
        a field); they are not counted again."""
        with self._stop_on_write_failure(frame.frame_id):
            counted = np.ones(len(result), bool) if duplicates is None else ~duplicates
            review = self._review_items(frame, result, counted)
            kept, scores = _select(result.decisions, counted), result.class_scores[counted]
            self.tally.add(kept, scores)
            self._writer.submit(frame.frame_id, lambda: self._commit(frame, result, counted, shift, review,
                                                                     kept, scores))

    def _review_items(self, frame: Frame, result: FieldResult, counted: np.ndarray
                      ) -> list[tuple[RejectedCell, np.ndarray]]:
        """The field's rejected cells and their crops for the expert (copied: small, and the frame
        may be reused once the loop moves on)."""
        d, names = result.decisions, self.bundle.class_names
        return [(RejectedCell(self._cell_id(frame, i), self.session_id, frame.frame_id,
                              tuple(float(v) for v in result.boxes[i]), names[d.predicted[i]],
                              float(d.confidence[i]), float(d.threshold[i]),
                              {n: float(s) for n, s in zip(names, result.class_scores[i])}, frame.timestamp),
                 _review_crop(frame.image, result.boxes[i], self.bundle.tiling.crop_context).copy())
                for i in np.flatnonzero(~d.accepted & counted)]

    def _cell_id(self, frame: Frame, i: int) -> str:
        return f"{self.session_id}-f{frame.frame_id:06d}-c{i:04d}"

    def _commit(self, frame: Frame, result: FieldResult, counted: np.ndarray, shift: Shift | None,
                review: list[tuple[RejectedCell, np.ndarray]], kept: Decisions, scores: np.ndarray) -> None:
        """On the writer thread: the rejected cells into the review queue, then the field and its
        cells in one transaction, then the views."""
        if review:
            self.review.add_field(frame.frame_id, frame.image, frame.timestamp)
            self.review.add([cell for cell, _ in review], [crop for _, crop in review])
        d, names = result.decisions, self.bundle.class_names
        rows = [(self._cell_id(frame, i), frame.frame_id, *(round(float(v), 1) for v in result.boxes[i]),
                 round(float(result.detection_scores[i]), 4), names[d.predicted[i]],
                 round(float(d.confidence[i]), 6), round(float(d.threshold[i]), 6), int(d.accepted[i]))
                for i in np.flatnonzero(counted)]
        with self._db_lock, self._db:
            self._db.execute("INSERT INTO fields VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (frame.frame_id, frame.origin, frame.timestamp, len(rows),
                              int((~counted).sum()), shift.dx if shift else None,
                              shift.dy if shift else None))
            self._db.executemany("INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._append_cells_csv(rows, frame.origin)
        self._committed.add(kept, scores)
        self._snapshot()

    def skip(self, frame_id: int | None, reason: str) -> None:
        with self._stop_on_write_failure(frame_id):
            self._writer.submit(frame_id, lambda: self._commit_skip(frame_id, reason))

    def _commit_skip(self, frame_id: int | None, reason: str) -> None:
        with self._db_lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?)",
                             (-1 if frame_id is None else frame_id, reason))
        self._snapshot()

    def _snapshot(self) -> None:
        """results.json while counting, at most every SNAPSHOT_EVERY_S seconds."""
        if time.monotonic() - self._last_snapshot >= SNAPSHOT_EVERY_S:
            self._write_results(finished=False)
            self._last_snapshot = time.monotonic()

    @property
    def write_seconds(self) -> float:
        """Time the background writer has spent writing this session's record so far."""
        return self._writer.busy_s

    def flush(self) -> None:
        """Wait until every field handed over is committed (raises SessionError if a write failed)."""
        with self._stop_on_write_failure(None):
            self._writer.drain()

    @contextmanager
    def _stop_on_write_failure(self, frame_id: int | None):
        """A full disk or an I/O error: what was committed stays, and the message says how to go on."""
        try:
            yield
        except WriteFailed as failed:
            self._failed(failed.frame_id, failed.cause)
        except (OSError, sqlite3.OperationalError) as exc:  # disk full, I/O error
            self._failed(frame_id, exc)

    def _failed(self, frame_id: int | None, exc: BaseException):
        if not isinstance(exc, (OSError, sqlite3.OperationalError)):
            raise exc
        self.write_failed = True
        raise SessionError(
            f"cannot record frame {frame_id} in {self.out_dir} ({exc}); the {self.frames_counted} fields "
            f"committed so far are kept: free space, then continue with "
            f"`edge run --resume --out {self.out_dir}`") from exc

    def close(self, stop_reason: str = "end of source", loop_stats: dict | None = None) -> dict:
        """Finish the queued writes, write the final results and release the folder. After a failed
        write the last results.json snapshot stays as it is (a resume rewrites it) and the results
        are only read."""
        with ExitStack() as release:  # every one is released, whichever fails
            for item in (self._lock, self._db, self.review):
                release.callback(item.close)
            release.callback(self._close_cells_file)
            self._writer.close()
            try:
                self._writer.check()
            except WriteFailed as failed:
                if not isinstance(failed.cause, (OSError, sqlite3.OperationalError)):
                    raise failed.cause  # a fault of the code, not of the disk: never hidden
                self.write_failed = True
            if self.write_failed:
                return self.results(finished=False, stop_reason=stop_reason, loop_stats=loop_stats)
            return self._write_results(finished=True, stop_reason=stop_reason, loop_stats=loop_stats)

    def _close_cells_file(self) -> None:
        try:
            self._cells_file.flush()
            os.fsync(self._cells_file.fileno())
            self._cells_file.close()
        except OSError:
            if not self.write_failed:  # else rows the full disk refused: a resume rewrites the file
                raise

    # ------------------------------------------------------------ views

    def results(self, finished: bool, stop_reason: str | None = None, loop_stats: dict | None = None) -> dict:
        """results.json: what session.sqlite holds (the fields committed so far)."""
        with self._db_lock:
            return self._results(finished, stop_reason, loop_stats)

    def _results(self, finished: bool, stop_reason: str | None, loop_stats: dict | None) -> dict:
        t = self.bundle.thresholds
        tally = self._committed
        not_counted = [{"frame_id": f, "reason": r}
                       for f, r in self._db.execute("SELECT frame_id, reason FROM skipped ORDER BY frame_id")]
        skipped = [s for s in not_counted if not s["reason"].startswith(QUALITY_PREFIX)]
        refused = [s for s in not_counted if s["reason"].startswith(QUALITY_PREFIX)]
        duplicates = self._db.execute("SELECT COALESCE(SUM(duplicates), 0) FROM fields").fetchone()[0]
        out = {
            "session_id": self.session_id,
            "source": self.source,
            "bundle": {"path": str(self.bundle.root), "manifest_sha256": self.bundle.manifest_sha256},
            "started": self.started,
            "updated": time.time(),
            "finished": finished,
            "frames": {"counted": self.frames_counted, "skipped": len(skipped)},
            "skipped_frames": skipped,
            "fields_rejected_for_quality": _quality_summary(refused),
            "counts": tally.counts(),
            "differential_percent": tally.differential(),
            "differential": differential(tally.counts()),
            "leukocyte_differential": leukocyte_differential(
                self.bundle.class_names, self.bundle.class_roles, tally.accepted, tally.rejected_by_class,
                tally.rejected_scores, bundle_rejection_by_class(self.bundle)),
            "accepted": tally.total_accepted,
            "rejected": tally.rejected,
            "duplicates_not_recounted": int(duplicates),
            "thresholds": {"global": t.global_threshold, "target_accuracy": t.target_accuracy,
                           "per_class": t.per_class},
        }
        out.update(self.sections)
        if stop_reason is not None:
            out["stop_reason"] = stop_reason
        if loop_stats is not None:
            out["loop"] = loop_stats
        return out

    def _write_results(self, finished: bool, **extra) -> dict:
        # Per field the snapshot is replaced atomically but not synced: session.sqlite is
        # the durable record, and a resumed session rewrites this view from it.
        results = self.results(finished, **extra)
        self._atomic_json("results.json", results, durable=finished)
        return results

    def _append_cells_csv(self, rows: list[tuple], origin: str) -> None:
        for cell_id, frame_id, *rest in rows:
            self._cells.writerow([cell_id, self.session_id, frame_id, origin, *rest])
        self._cells_file.flush()  # not synced: a resumed session rewrites cells.csv from the database

    def _rewrite_cells_csv(self) -> None:
        with atomic_file(self.out_dir / "cells.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CELL_COLUMNS)
            for row in self._db.execute(
                    "SELECT c.cell_id, c.frame_id, f.origin, c.x1, c.y1, c.x2, c.y2, c.detection_score,"
                    " c.predicted, c.confidence, c.threshold, c.accepted"
                    " FROM cells c JOIN fields f USING (frame_id) ORDER BY c.frame_id, c.cell_id"):
                writer.writerow([row[0], self.session_id, *row[1:]])

    def _atomic_json(self, name: str, data: dict, durable: bool = True) -> None:
        write_atomic(self.out_dir / name, json.dumps(data, indent=2), durable)


def _lock_folder(folder: Path):
    """Hold an exclusive lock on the session folder for the life of the process."""
    fh = open(folder / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise SessionError(f"{folder} is being counted by another edge process") from None
    return fh


def _quality_summary(refused: list[dict]) -> dict:
    """Fields the quality gate refused: how many, how many broke each check, and each field's reasons."""
    by_check: dict[str, int] = {}
    for s in refused:
        for name in set(quality_check_name(s["reason"])):
            by_check[name] = by_check.get(name, 0) + 1
    return {"count": len(refused), "by_check": dict(sorted(by_check.items())), "fields": refused}


def bundle_rejection_by_class(bundle: Bundle) -> dict[str, float]:
    """The share of each class's calibration cells the bundle's thresholds sent to review."""
    per_class = (bundle.thresholds.calibration.get("calibration") or {}).get("per_class") or {}
    return {bundle.class_names[int(i)]: float(d["rejection_rate"]) for i, d in per_class.items()
            if str(i).isdigit() and int(i) < len(bundle.class_names) and d.get("rejection_rate") is not None}


def _select(d: Decisions, keep: np.ndarray) -> Decisions:
    return Decisions(d.predicted[keep], d.confidence[keep], d.threshold[keep], d.accepted[keep])


def _review_crop(image: np.ndarray, box: np.ndarray, context: float) -> np.ndarray:
    """The cell with some surroundings at the camera's own resolution, for the expert."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) * context / 2
    h, w = image.shape[:2]
    x1, y1 = int(max(0, cx - half)), int(max(0, cy - half))
    x2, y2 = int(min(w, np.ceil(cx + half))), int(min(h, np.ceil(cy + half)))
    return image[y1:y2, x1:x2]
