"""Detection data sets (Pascal VOC and YOLO) read into one common form.

Box convention: every box is float32 ``(x0, y0, x1, y1)`` in continuous pixel
coordinates, where the image spans ``[0, width] x [0, height]`` and pixel
``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``; width is ``x1 - x0`` (no "+1").

* VOC stores 1-based, inclusive pixel indices (a box over the whole image is
  ``xmin=1, xmax=W``). It becomes ``(xmin - 1, ymin - 1, xmax, ymax)``, the
  same conversion as detectron2's VOC loader, so a one-pixel box is 1 wide.
* YOLO stores ``class cx cy w h`` normalised by the image size; it becomes
  ``((cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H)``.

Boxes are not clipped to the image. Every problem with the input raises
:class:`DatasetError` with a message that names the file at fault.

XML safety: annotations are parsed with the standard library (defusedxml is
not a dependency). ElementTree never fetches external entities or DTDs; on top
of that any document with a DOCTYPE is refused outright, which rules out
entity declarations (and so "billion laughs" expansion) whatever the encoding.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from edge.runtime.frames import IMAGE_SUFFIXES

FORMATS = ("voc", "yolo")


class DatasetError(ValueError):
    """A detection data set is missing, incomplete or malformed."""


@dataclass(frozen=True, eq=False)
class DetectionSample:
    """One image and its ground-truth boxes.

    boxes: (N, 4) float32 xyxy pixels (see module docstring); labels: (N,)
    str class names; difficult: (N,) bool; image_size: (height, width).
    """

    image_path: Path
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    image_size: tuple[int, int]


@dataclass(frozen=True, eq=False)
class DetectionDataset:
    """The samples of a data set (a sequence) and its class names."""

    root: Path
    class_names: tuple[str, ...]
    samples: tuple[DetectionSample, ...]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[DetectionSample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> DetectionSample:
        return self.samples[index]


def load_detection_dataset(root: str | Path, format: str,
                           split: str | None = None) -> DetectionDataset:
    """Load a "voc" or "yolo" data set; see :func:`load_voc`, :func:`load_yolo`."""
    if format == "voc":
        return load_voc(root, split)
    if format == "yolo":
        return load_yolo(root, split)
    raise ValueError(f"unknown data set format {format!r}; expected one of {', '.join(FORMATS)}")


def select_classes(dataset: DetectionDataset, class_names: Sequence[str]) -> DetectionDataset:
    """Keep only the boxes whose class is one of `class_names`.

    Raises DatasetError, listing the data set's classes, for an unknown name.
    """
    names = list(class_names)
    if not names:
        raise DatasetError("no class names given; the data set's classes are: "
                         + ", ".join(dataset.class_names))
    unknown = [n for n in names if n not in dataset.class_names]
    if unknown:
        raise DatasetError(f"unknown class name(s) {', '.join(unknown)}; the data set's classes "
                         f"are: {', '.join(dataset.class_names)}")
    samples = []
    for s in dataset.samples:
        keep = np.isin(s.labels, names)
        samples.append(replace(s, boxes=s.boxes[keep], labels=s.labels[keep],
                               difficult=s.difficult[keep]))
    return replace(dataset, class_names=tuple(names), samples=tuple(samples))


# --- Pascal VOC -------------------------------------------------------------

def load_voc(root: str | Path, split: str | None = None) -> DetectionDataset:
    """Read a VOC folder: Annotations/*.xml, JPEGImages/, ImageSets/Main/{split}.txt.

    Without `split` every annotation file is read, in name order. The class
    names are the sorted names found in the loaded annotations.
    """
    root = Path(root)
    annotations = _require_dir(root / "Annotations", "VOC")
    images = _require_dir(root / "JPEGImages", "VOC")
    ids = _voc_split_ids(root, split) if split else sorted(p.stem for p in annotations.glob("*.xml"))
    if not ids:
        raise DatasetError(f"VOC data set {root}: no annotations found in {annotations}")
    samples = tuple(_read_voc_sample(annotations / f"{i}.xml", images) for i in ids)
    names = sorted({str(n) for s in samples for n in s.labels})
    return DetectionDataset(root, tuple(names), samples)


def _voc_split_ids(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.txt"))
        raise DatasetError(f"VOC split file {path} not found; splits available: "
                           f"{', '.join(known) or 'none'}")
    # Main split files hold one id a line; class files add a flag column.
    return [line.split()[0] for line in _read_text(path).splitlines() if line.strip()]


def _read_voc_sample(xml_path: Path, images: Path) -> DetectionSample:
    if not xml_path.is_file():
        raise DatasetError(f"annotation file {xml_path} not found")
    root = _parse_xml(xml_path)
    if root.tag != "annotation":
        raise DatasetError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
    image_path = _voc_image_path(xml_path, root.findtext("filename"), images)
    size = _voc_size(root) or _image_size(image_path)
    objects = root.findall("object")
    boxes = np.array([_voc_box(xml_path, k, o) for k, o in enumerate(objects)],
                     dtype=np.float32).reshape(-1, 4)
    labels = np.array([_voc_name(xml_path, k, o) for k, o in enumerate(objects)], dtype=str)
    difficult = np.array([_voc_difficult(xml_path, k, o) for k, o in enumerate(objects)], dtype=bool)
    return DetectionSample(image_path, boxes, labels, difficult, size)


class _NoDoctypeTreeBuilder(ET.TreeBuilder):
    """TreeBuilder that refuses any DOCTYPE, hence any entity declaration."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise DatasetError(f"DOCTYPE <!DOCTYPE {name}> refused (DTDs and entities are not allowed)")


def _parse_xml(path: Path) -> ET.Element:
    parser = ET.XMLParser(target=_NoDoctypeTreeBuilder())
    try:
        parser.feed(path.read_bytes())
        return parser.close()
    except ET.ParseError as e:
        raise DatasetError(f"{path}: malformed XML: {e}") from None
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None


def _voc_image_path(xml_path: Path, filename: str | None, images: Path) -> Path:
    names = ([filename.strip()] if filename and filename.strip() else [])
    names += [xml_path.stem + suffix for suffix in IMAGE_SUFFIXES]
    for name in names:
        if (images / name).is_file():
            return images / name
    raise DatasetError(f"{xml_path}: image not found in {images} (tried {', '.join(names)})")


def _voc_size(root: ET.Element) -> tuple[int, int] | None:
    """(height, width) from <size>, or None when absent or zero."""
    try:
        height = int(root.findtext("size/height", ""))
        width = int(root.findtext("size/width", ""))
    except ValueError:
        return None
    return (height, width) if height > 0 and width > 0 else None


def _voc_name(xml_path: Path, k: int, obj: ET.Element) -> str:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise DatasetError(f"{xml_path}: object {k} has no <name>")
    return name


def _voc_difficult(xml_path: Path, k: int, obj: ET.Element) -> bool:
    text = (obj.findtext("difficult") or "0").strip()
    if text not in ("0", "1"):
        raise DatasetError(f"{xml_path}: object {k} has <difficult>{text}</difficult>, expected 0 or 1")
    return text == "1"


def _voc_box(xml_path: Path, k: int, obj: ET.Element) -> tuple[float, float, float, float]:
    """1-based inclusive VOC corners -> continuous xyxy (see module docstring)."""
    try:
        xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{tag}", ""))
                                  for tag in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
        raise DatasetError(f"{xml_path}: object {k} needs numeric <bndbox> "
                           "xmin, ymin, xmax, ymax") from None
    if not (np.isfinite([xmin, ymin, xmax, ymax]).all() and xmax >= xmin and ymax >= ymin):
        raise DatasetError(f"{xml_path}: object {k} has an invalid box "
                           f"({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})")
    return xmin - 1.0, ymin - 1.0, xmax, ymax


# --- YOLO -------------------------------------------------------------------

def load_yolo(root: str | Path, split: str | None = None) -> DetectionDataset:
    """Read a YOLO folder: images/, labels/*.txt (class cx cy w h), classes.txt.

    With `split`, images/{split}/ and labels/{split}/ are read instead. An image
    without a label file has no boxes (the YOLO convention for backgrounds).
    Each image is opened once to learn its size.
    """
    root = Path(root)
    sub = Path(split) if split else Path()
    images = _require_dir(root / "images" / sub, "YOLO")
    labels = _require_dir(root / "labels" / sub, "YOLO")
    class_names = _read_yolo_classes(root / "classes.txt")
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"YOLO data set {root}: no images in {images}")
    samples = tuple(_read_yolo_sample(p, labels / f"{p.stem}.txt", class_names) for p in paths)
    return DetectionDataset(root, class_names, samples)


def _read_yolo_classes(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise DatasetError(f"YOLO class list {path} not found")
    names = tuple(line.strip() for line in _read_text(path).splitlines() if line.strip())
    if not names:
        raise DatasetError(f"{path}: no class names")
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: duplicate class names")
    return names


def _read_yolo_sample(image_path: Path, label_path: Path,
                      class_names: tuple[str, ...]) -> DetectionSample:
    height, width = _image_size(image_path)
    rows = (_read_yolo_labels(label_path, len(class_names)) if label_path.is_file()
            else np.zeros((0, 5)))
    cx, cy, w, h = (rows[:, 1:] * np.array([width, height, width, height])).T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    labels = np.array(class_names, dtype=str)[rows[:, 0].astype(np.int64)]
    return DetectionSample(image_path, boxes, labels, np.zeros(len(rows), bool), (height, width))


def _read_yolo_labels(path: Path, n_classes: int) -> np.ndarray:
    """Rows (class, cx, cy, w, h) as float64, (K, 5); errors name file and line."""
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 5:
                raise ValueError
            cls, cx, cy, w, h = int(fields[0]), *map(float, fields[1:])
        except ValueError:
            raise DatasetError(f"{path}:{n}: expected 'class cx cy w h', got {line.strip()!r}") from None
        if not 0 <= cls < n_classes:
            raise DatasetError(f"{path}:{n}: class {cls} out of range 0..{n_classes - 1} (classes.txt)")
        if not (np.isfinite([cx, cy, w, h]).all() and w >= 0 and h >= 0):
            raise DatasetError(f"{path}:{n}: invalid box {line.strip()!r}")
        rows.append((cls, cx, cy, w, h))
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


# --- shared helpers ---------------------------------------------------------

def _require_dir(path: Path, kind: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{kind} data set: folder {path} not found")
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(f"{path}: cannot read image")
    return int(image.shape[0]), int(image.shape[1])
