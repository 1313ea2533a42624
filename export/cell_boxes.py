"""Where the cell is in each single-cell training image, found as the device would find it.

Training images pass through the one cell view (edge.runtime.cell_view) like every
cell the device classifies, framed by the deployed detector's box: the
detection nearest the image centre, or, where the detector finds none, the
stand-in rule (the view is the whole image). The boxes of a data folder are
found once and kept in a JSON file, keyed by the detector file's hash and the
tiling, so later runs (teacher, student, calibration) reuse them.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge.runtime.atomic import write_atomic
from edge.runtime.bundle import Bundle, load_bundle
from edge.runtime.engine import CellCounter

if TYPE_CHECKING:
    from export.datasets import Split

log = logging.getLogger("export.cell_boxes")


def _key(bundle: Bundle) -> dict:
    """What decides the boxes: the detector and how frames are tiled for it (not the stated pixel size,
    which only says what camera the tiling's scale is for)."""
    tiling = bundle.tiling.to_dict()
    tiling.pop("pixel_size_um", None)
    return {"detector_sha256": bundle.detector.sha256, "tiling": tiling}


def find_cell_boxes(root: Path, paths: Sequence[str], bundle_path: Path,
                    cache: Path | None = None, threads: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(boxes (N, 4) in each image's pixels, found by the detector (N,) bool, the bundle's crop context).

    `cache`: a JSON file of boxes per relative path from an earlier call with the
    same detector; new paths are added to it.
    """
    bundle = load_bundle(bundle_path)
    key = _key(bundle)
    known: dict[str, list] = {}
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            known = saved["boxes"]
        else:
            log.info("cell boxes in %s are for another detector; finding them again", cache)
    missing = [p for p in paths if p not in known]
    if missing:
        log.info("finding the cell in %d images with the detector of %s", len(missing), bundle.root)
        with CellCounter(bundle, threads=threads) as counter:
            for rel in missing:
                image = cv2.imread(str(Path(root) / rel), cv2.IMREAD_COLOR)
                if image is None:
                    raise OSError(f"cannot read image {Path(root) / rel}")
                box, found = counter.locate_cell(image)
                known[rel] = [*(round(float(v), 2) for v in box), bool(found)]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache, json.dumps({"key": key, "boxes": known}))
    rows = [known[p] for p in paths]
    boxes = np.array([r[:4] for r in rows], dtype=np.float32).reshape(-1, 4)
    found = np.array([r[4] for r in rows], dtype=bool)
    return boxes, found, bundle.tiling.crop_context


def split_boxes(root: Path, split: Split, framing: Path, cache: Path) -> tuple[dict[str, np.ndarray], float, dict]:
    """Per split name, the boxes of its images in `split.items` order; the crop context; and per
    class the share of images whose cell the detector found (the rest use the stand-in rule)."""
    from export.datasets import SPLITS
    paths = [p for name in SPLITS for p, _ in split.items(name)]
    boxes, found, context = find_cell_boxes(root, paths, framing, cache)
    by_path = dict(zip(paths, boxes))
    per_class: dict[str, list[int]] = {}
    for p, f in zip(paths, found):
        counts = per_class.setdefault(p.split("/", 1)[0], [0, 0])
        counts[0] += int(f)
        counts[1] += 1
    shares = {name: round(hit / total, 4) for name, (hit, total) in sorted(per_class.items())}
    return ({name: np.array([by_path[p] for p, _ in split.items(name)], np.float32).reshape(-1, 4)
             for name in SPLITS}, context, shares)


def cell_boxes_file(split_file: Path) -> Path:
    """Where the boxes of a split's images are kept: beside its split file."""
    split_file = Path(split_file)
    return split_file.with_name(split_file.stem + "-cell-boxes.json")


def framing_for(root: Path, split: Split, framing: Path | None, split_file: Path
                ) -> tuple[dict[str, np.ndarray | None], float, dict | None]:
    """What a training run frames its cells with: per split the boxes (None each without `framing`:
    the views are whole images), the crop context, and the record for the run's meta (None without)."""
    if framing is None:
        return {name: None for name in ("train", "calibration", "validation")}, 1.0, None
    boxes, context, found = split_boxes(Path(root), split, Path(framing), cell_boxes_file(split_file))
    record = {"bundle": str(Path(framing).resolve()), "crop_context": context, "found_by_detector": found}
    return boxes, context, record
