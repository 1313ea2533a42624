"""`edge classify`: single-cell images from other tools (a CellaVision export, another lab's crops),
each classified as the device would classify that cell in a field.

In each image the bundle's detector finds the cell (the detection nearest the centre); the cell is
cut by the one cell view (edge.runtime.cell_view), classified, and decided by the bundle's reject
rule. When the detector finds no cell, the image says so: a warning line names it, its row says
`framing = whole image (no cell found)`, and the stated stand-in framing is used (the view is the
whole image), so no image is dropped without a word.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from edge.evaluation.evaluate import EvalDataError, single_cell_scores
from edge.runtime.atomic import atomic_file
from edge.runtime.bundle import load_bundle
from edge.runtime.engine import CellCounter
from edge.runtime.frames import IMAGE_SUFFIXES

log = logging.getLogger("edge.classify")

DETECTOR, STAND_IN = "detector", "whole image (no cell found)"


def image_paths(inputs: list[Path]) -> list[Path]:
    """The images named, and the images in the folders named (recursively, in sorted order)."""
    paths = []
    for item in inputs:
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif item.is_file():
            paths.append(item)
        else:
            raise EvalDataError(f"{item} is neither an image nor a folder")
    if not paths:
        raise EvalDataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, inputs))}")
    return paths


def classify_images(bundle_path: Path, inputs: list[Path], backend: str = "onnxruntime",
                    threads: int | None = None) -> tuple[list[dict], dict]:
    """(one row per image, a summary). Unreadable images get a row with their reason."""
    bundle = load_bundle(bundle_path)
    paths = image_paths(inputs)
    with CellCounter(bundle, backend=backend, threads=threads) as counter:
        cells = single_cell_scores(counter, paths)
        decisions = counter.rule.decide(cells.scores)
    names = bundle.class_names
    rows = [{"file": str(p), "status": "unreadable", "framing": "", "x1": "", "y1": "", "x2": "", "y2": "",
             "predicted": "", "decision": "", "confidence": "", "threshold": "",
             **{f"score_{n}": "" for n in names}} for p in paths]
    for k, i in enumerate(cells.kept):
        accepted = bool(decisions.accepted[k])
        rows[i].update({
            "status": "classified", "framing": DETECTOR if cells.found[k] else STAND_IN,
            **{c: round(float(v), 1) for c, v in zip(("x1", "y1", "x2", "y2"), cells.boxes[k])},
            "predicted": names[int(decisions.predicted[k])],
            "decision": "accepted" if accepted else "review",
            "confidence": round(float(decisions.confidence[k]), 6),
            "threshold": round(float(decisions.threshold[k]), 6),
            **{f"score_{n}": round(float(v), 6) for n, v in zip(names, cells.scores[k])}})
        if not cells.found[k]:
            log.warning("%s: the detector found no cell; classified the whole image as the cell's view", paths[i])
    summary = {"images": len(paths), "classified": len(cells.kept), "unreadable": len(paths) - len(cells.kept),
               "framed_by_detector": int(cells.found.sum()), "no_cell_found": int((~cells.found).sum()),
               "accepted": int(decisions.accepted.sum()), "to_review": int((~decisions.accepted).sum()),
               "accepted_by_class": {n: int(((decisions.predicted == c) & decisions.accepted).sum())
                                     for c, n in enumerate(names)}}
    return rows, summary


def write_rows(rows: list[dict], out: Path) -> None:
    """The rows as CSV, written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
