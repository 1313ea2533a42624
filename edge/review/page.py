"""The self-contained review page: page.html with the archive's cell list embedded."""
from __future__ import annotations

import json
from importlib import resources

PLACEHOLDER = "/*REVIEW_DATA*/"
LABELS_FORMAT = "edge-review-labels"
LABELS_VERSION = 1


def render_page(manifest: dict, manifest_sha256: str) -> str:
    """The page for one archive; every string reaches the page as JSON data and is shown via textContent."""
    data = {
        "archive_id": manifest["archive_id"],
        "manifest_sha256": manifest_sha256,
        "labels_format": LABELS_FORMAT,
        "labels_version": LABELS_VERSION,
        "class_names": manifest["class_names"],
        "choices": manifest["label_choices"],
        "sessions": [{"session_id": s["session_id"], "differential": s.get("differential", [])}
                     for s in manifest.get("sessions", [])],
        "cells": [{k: c[k] for k in ("cell_id", "frame_id", "kind", "suggested", "confidence",
                                     "threshold", "top3", "crop", "context")}
                  for c in manifest["cells"]],
    }
    template = resources.files("edge.review").joinpath("page.html").read_text(encoding="utf-8")
    return template.replace(PLACEHOLDER, script_safe_json(data))


def script_safe_json(data) -> str:
    """JSON that cannot end its <script> element or open a comment there, whatever the strings hold."""
    text = json.dumps(data, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
