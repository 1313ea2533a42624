"""The labels file the review page saves, parsed strictly: a malformed file is refused whole."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass

from edge.review import ReviewError
from edge.review.page import LABELS_FORMAT, LABELS_VERSION

MAX_LABELS_BYTES = 32 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOP_KEYS = {"format", "version", "archive_id", "manifest_sha256", "reviewer", "saved", "labels"}
_LABEL_KEYS = {"cell_id", "label", "labelled_at"}


@dataclass(frozen=True)
class Label:
    cell_id: str
    label: str
    labelled_at: str | None


@dataclass(frozen=True)
class LabelsFile:
    archive_id: str
    manifest_sha256: str
    reviewer: str
    labels: tuple[Label, ...]
    sha256: str


def parse_labels(raw: bytes, source: str) -> LabelsFile:
    if len(raw) > MAX_LABELS_BYTES:
        raise ReviewError(f"{source} is {len(raw)} bytes, over the {MAX_LABELS_BYTES}-byte limit for labels")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReviewError(f"{source} is not valid JSON ({exc})") from None

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ReviewError(f"{source} is not a labels file from the review page: {what}")

    need(isinstance(data, dict), "it is not a JSON object")
    need(not set(data) - _TOP_KEYS, f"unknown keys {sorted(set(data) - _TOP_KEYS)}")
    need(data.get("format") == LABELS_FORMAT, f"format is not {LABELS_FORMAT!r}")
    need(data.get("version") == LABELS_VERSION, f"version {data.get('version')!r} is not {LABELS_VERSION}")
    need(isinstance(data.get("archive_id"), str) and data["archive_id"], "archive_id is missing")
    need(isinstance(data.get("manifest_sha256"), str) and bool(_SHA256.match(data["manifest_sha256"])),
         "manifest_sha256 is not a SHA-256")
    need(isinstance(data.get("reviewer", ""), str), "reviewer is not a string")
    need(isinstance(data.get("labels"), list), "labels is not a list")
    labels = []
    for i, item in enumerate(data["labels"]):
        need(isinstance(item, dict) and {"cell_id", "label"} <= set(item) <= _LABEL_KEYS,
             f"labels[{i}] needs cell_id and label (and optionally labelled_at) only")
        need(isinstance(item["cell_id"], str) and isinstance(item["label"], str)
             and isinstance(item.get("labelled_at", ""), str), f"labels[{i}] holds a non-string")
        labels.append(Label(item["cell_id"], item["label"], item.get("labelled_at")))
    duplicates = sorted(cell for cell, n in Counter(x.cell_id for x in labels).items() if n > 1)
    if duplicates:
        raise ReviewError(f"{source} labels {len(duplicates)} cell(s) twice, e.g. {duplicates[0]}")
    return LabelsFile(data["archive_id"], data["manifest_sha256"], data.get("reviewer", "").strip(),
                      tuple(labels), hashlib.sha256(raw).hexdigest())
