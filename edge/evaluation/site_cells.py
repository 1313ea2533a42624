"""The cells experts labelled in a site's review loop, as classifier inputs for `edge calibrate --from-review`.

A rejected cell has its lossless crop in the session's review/crops; a cell of
the accepted sample is cut from its field's context image (review/fields), as
the review archive does. Both are cut again the way the device cuts a cell
(a square of the bundle's crop context around the box, edges replicated),
so the bundle's own classifier sees them as it saw them live. Labels are the
latest expert label of each cell (the audit trail); `not_a_cell` and `unsure`
are left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.runtime.bundle import Bundle
from edge.runtime.cell_view import cell_views
from edge.review import ReviewError
from edge.review.session_reader import ReviewCell, SessionRecord, read_session
from edge.review.store import current_labels, open_store


@dataclass(frozen=True)
class SiteCells:
    crops: np.ndarray              # (N, H, W, 3) uint8 BGR, the classifier's input size
    labels: np.ndarray             # (N,) index into the bundle's class names
    sessions: list[dict]           # per session: id, folder, cells used by kind


def read_site_cells(bundle: Bundle, session_dirs: list[Path]) -> SiteCells:
    """Every expert-labelled cell of these sessions with a class label; ReviewError if there are none."""
    names = {n: i for i, n in enumerate(bundle.class_names)}
    size = bundle.classifier.input_hw[0]
    crops, labels, sessions = [], [], []
    for folder in session_dirs:
        session = read_session(Path(folder))
        if session.class_names != bundle.class_names:
            raise ReviewError(f"session {session.session_id} was counted with classes "
                              f"{', '.join(session.class_names)}, not this bundle's")
        db = open_store(session.root, write=False)
        try:
            latest = {cell: row["after"] for cell, row in current_labels(db).items()}
        finally:
            db.close()
        used = {"rejected": 0, "accepted_sample": 0}
        for cell in session.rejected + session.accepted:
            label = latest.get(cell.cell_id)
            if label not in names:
                continue
            crop = _cell_input(session, cell, size, bundle.tiling.crop_context)
            if crop is None:
                continue
            crops.append(crop)
            labels.append(names[label])
            used[cell.kind] += 1
        sessions.append({"session_id": session.session_id, "folder": str(session.root), "cells": used})
    if not crops:
        raise ReviewError("the given sessions hold no cells that an expert labelled with a class; "
                          "export them for review and import the labels first")
    return SiteCells(np.stack(crops), np.asarray(labels, np.int64), sessions)


def _cell_input(session: SessionRecord, cell: ReviewCell, size: int, context: float) -> np.ndarray | None:
    box = np.asarray(cell.box, np.float64)
    if cell.kind == "rejected":
        image = _read(session.review_dir / cell.crop_file)
        # the review crop starts where the device's square started, clipped to the frame (edge.counting.session)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = max(box[2] - box[0], box[3] - box[1]) * context / 2
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        box = box - [x0, y0, x0, y0]
    else:
        field = session.fields.get(cell.frame_id)
        if field is None:
            return None
        image = _read(session.review_dir / field.image_file)
        box = box * field.scale
    return cell_views(image, box[None].astype(np.float32), size, context)[0]


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ReviewError(f"cannot read {path}; the session's review folder is damaged")
    return image
