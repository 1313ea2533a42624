"""What a session keeps for review: context images of its fields, the queue's schema version and its
migration; and the helpers the other review tests use to make sessions and archives."""
import json
import sqlite3

import cv2
import numpy as np
import pytest

from edge.counting.review_queue import CONTEXT_LONG_SIDE, SCHEMA_VERSION, QueueVersionError, ReviewQueue
from tests.helpers import make_session


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return make_session(tmp_path_factory.mktemp("records"))


def test_every_counted_field_is_kept_as_a_context_image(session):
    db = sqlite3.connect(session / "review" / "queue.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    fields = db.execute("SELECT frame_id, image_file, scale, width, height FROM fields ORDER BY frame_id").fetchall()
    assert [f[0] for f in fields] == [0, 1]
    for _, image_file, scale, width, height in fields:
        image = cv2.imread(str(session / "review" / image_file))
        assert scale == 1.0 and image.shape[:2] == (height, width) == (480, 640)
    frames = {r[0] for r in db.execute("SELECT frame_id FROM rejected_cells")}
    assert frames and frames <= {f[0] for f in fields}
    assert json.loads((session / "session.json").read_text())["class_names"][0] == "neutrophil"


def test_a_large_field_is_downscaled_for_context(tmp_path):
    queue = ReviewQueue(tmp_path / "review")
    queue.add_field(3, np.full((3000, 4096, 3), 128, np.uint8), 1.0)
    row = queue._db.execute("SELECT image_file, scale, width, height FROM fields").fetchone()
    queue.close()
    image = cv2.imread(str(tmp_path / "review" / row[0]))
    assert max(image.shape[:2]) == CONTEXT_LONG_SIDE and row[2:] == (4096, 3000)
    assert row[1] == pytest.approx(CONTEXT_LONG_SIDE / 4096)


def test_an_older_queue_is_migrated_and_a_newer_one_refused(tmp_path):
    root = tmp_path / "review"
    root.mkdir()
    db = sqlite3.connect(root / "queue.sqlite")
    db.execute("CREATE TABLE rejected_cells (cell_id TEXT PRIMARY KEY, session_id TEXT, frame_id INTEGER,"
               " x1 REAL, y1 REAL, x2 REAL, y2 REAL, suggested TEXT, confidence REAL, threshold REAL,"
               " class_scores TEXT, crop_file TEXT, created REAL, label TEXT)")
    db.commit()
    db.close()
    ReviewQueue(root).close()
    db = sqlite3.connect(root / "queue.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT COUNT(*) FROM fields").fetchone()[0] == 0
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(QueueVersionError, match="schema version"):
        ReviewQueue(root)
