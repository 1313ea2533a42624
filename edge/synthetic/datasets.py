"""Synthetic data sets on disk, in the layouts `edge eval` reads."""
from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

from edge.synthetic.smear import DEFAULT_CLASSES, SmearConfig, render_cell_crops, render_field


def write_crop_folders(out: Path, per_class: int, size: int, seed: int) -> int:
    """One folder per class of `per_class` PNG crops; returns the number written."""
    labels = np.repeat(np.arange(len(DEFAULT_CLASSES)), per_class)
    crops = render_cell_crops(labels, size, seed=seed)
    for i, (crop, label) in enumerate(zip(crops, labels)):
        folder = Path(out) / DEFAULT_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"synthetic_{seed}_{i:05d}.png"), crop)
    return len(labels)


def write_voc_fields(out: Path, count: int, width: int, height: int, seed: int) -> int:
    """`count` fields as a Pascal VOC folder whose only class, 'cell', is every nucleated cell."""
    out = Path(out)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    config = SmearConfig(width=width, height=height)
    cells = 0
    for i in range(count):
        field = render_field(config, seed=seed + i)
        name = f"synthetic_{seed + i:06d}"
        cv2.imwrite(str(out / "JPEGImages" / f"{name}.png"), field.image)
        (out / "Annotations" / f"{name}.xml").write_text(_voc_xml(f"{name}.png", width, height, field.boxes))
        cells += len(field.boxes)
    return cells


def _voc_xml(filename: str, width: int, height: int, boxes: np.ndarray) -> str:
    objects = "".join(
        "<object><name>cell</name><difficult>0</difficult><bndbox>"
        f"<xmin>{x1 + 1:.0f}</xmin><ymin>{y1 + 1:.0f}</ymin><xmax>{x2:.0f}</xmax><ymax>{y2:.0f}</ymax>"
        "</bndbox></object>" for x1, y1, x2, y2 in boxes)
    return (f"<annotation><filename>{escape(filename)}</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>\n")
