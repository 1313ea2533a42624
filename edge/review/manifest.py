"""The archive manifest: one entry per cell (JSON and CSV) and the SHA-256 of every file."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone

from edge.review import NOT_A_CELL, UNSURE

FORMAT = "edge-review-archive"
VERSION = 1
CSV_COLUMNS = ["cell_id", "session_id", "frame_id", "kind", "x1", "y1", "x2", "y2", "time",
               "bundle_manifest_sha256", "suggested", "confidence", "threshold",
               "top1_class", "top1_D", "top2_class", "top2_D", "top3_class", "top3_D",
               "crop", "crop_sha256", "crop_source", "context_image", "context_sha256"]


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def label_choices(class_names: tuple[str, ...]) -> list[dict]:
    """What an expert may answer: a class (keys 1-9), not a cell (0) or unsure (U)."""
    choices = [{"value": n, "title": n, "key": str(i + 1) if i < 9 else ""} for i, n in enumerate(class_names)]
    return choices + [{"value": NOT_A_CELL, "title": "not a cell", "key": "0"},
                      {"value": UNSURE, "title": "unsure", "key": "u"}]


def top3(class_scores: dict[str, float] | None) -> list[dict]:
    if not class_scores:
        return []
    ranked = sorted(class_scores.items(), key=lambda kv: -kv[1])[:3]
    return [{"class": name, "D": round(float(d), 6)} for name, d in ranked]


def csv_text(cells: list[dict], files: dict[str, str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in cells:
        ranked = c["top3"] + [{"class": "", "D": ""}] * (3 - len(c["top3"]))
        ctx = c["context"]
        writer.writerow([c["cell_id"], c["session_id"], c["frame_id"], c["kind"], *c["box"], c["time"],
                         c["bundle_manifest_sha256"], c["suggested"], c["confidence"], c["threshold"],
                         *[v for t in ranked for v in (t["class"], t["D"])],
                         c["crop"], files[c["crop"]], c["crop_source"],
                         ctx["image"] if ctx else "", files[ctx["image"]] if ctx else ""])
    return out.getvalue()
