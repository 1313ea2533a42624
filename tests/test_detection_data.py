"""Reading VOC and YOLO detection data sets into DetectionSample form."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.evaluation.detection_data import (DatasetError, load_detection_dataset, load_voc, load_yolo,
                                 select_classes)

FIXTURES = Path(__file__).parent / "fixtures"
VOC = FIXTURES / "voc_tiny"
YOLO = FIXTURES / "yolo_tiny"
REPO = Path(__file__).resolve().parents[1]
BCCD = next((p for p in (Path("/work/shared/data/bccd"), REPO.parent / "shared" / "data" / "bccd")
             if (p / "Annotations").is_dir()), None)


@pytest.fixture
def voc_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(VOC, tmp_path / "voc"))


@pytest.fixture
def yolo_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(YOLO, tmp_path / "yolo"))


def test_voc_boxes_are_converted_from_one_based_inclusive():
    ds = load_voc(VOC)
    assert [s.image_path.name for s in ds] == ["img_a.jpg", "img_b.jpg", "img_c.png"]
    assert ds.class_names == ("Platelets", "RBC", "WBC")
    a = ds[0]
    assert a.boxes.dtype == np.float32 and a.boxes.shape == (3, 4)
    # VOC xmin=12 .. xmax=30 (1-based, inclusive) covers 19 pixels: [11, 30).
    np.testing.assert_array_equal(a.boxes[0], [11, 6, 30, 25])
    assert list(a.labels) == ["WBC", "RBC", "WBC"]
    assert list(a.difficult) == [False, False, True]
    assert a.image_size == (48, 64)


def test_voc_size_read_from_image_when_absent():
    assert load_voc(VOC)[1].image_size == (40, 56)  # img_b.xml has no <size>


def test_voc_split_file():
    assert [s.image_path.stem for s in load_voc(VOC, "train")] == ["img_a", "img_b"]
    test = load_detection_dataset(VOC, "voc", split="test")
    assert [s.image_path.name for s in test] == ["img_c.png"]
    assert test.class_names == ("Platelets", "WBC")


def test_voc_unknown_split_lists_the_available_ones():
    with pytest.raises(DatasetError, match="splits available: test, train"):
        load_voc(VOC, "val")


def test_yolo_normalised_boxes_become_pixels():
    ds = load_detection_dataset(YOLO, "yolo")
    assert ds.class_names == ("WBC", "RBC", "Platelets")
    y1, y2, y3 = ds
    assert y1.image_size == (40, 80)
    np.testing.assert_allclose(y1.boxes, [[30, 10, 50, 30], [4, 24, 16, 36]], atol=1e-5)
    assert list(y1.labels) == ["WBC", "RBC"]
    assert list(y2.labels) == ["Platelets"]
    assert y3.boxes.shape == (0, 4) and len(y3.labels) == 0  # no label file: background
    assert not any(s.difficult.any() for s in ds)


def test_yolo_split_subfolders(yolo_copy: Path):
    for kind in ("images", "labels"):
        (yolo_copy / kind / "val").mkdir()
        for f in (yolo_copy / kind).glob("y1.*"):
            f.rename(yolo_copy / kind / "val" / f.name)
    ds = load_yolo(yolo_copy, split="val")
    assert [s.image_path.name for s in ds] == ["y1.png"] and len(ds[0].boxes) == 2


def test_select_classes_keeps_only_the_named_classes():
    ds = select_classes(load_voc(VOC), ["WBC"])
    assert ds.class_names == ("WBC",)
    assert [len(s.boxes) for s in ds] == [2, 0, 1]
    assert all(set(s.labels) <= {"WBC"} for s in ds)
    assert list(ds[0].difficult) == [False, True]
    assert [len(s.boxes) for s in select_classes(load_yolo(YOLO), ["RBC", "Platelets"])] == [1, 1, 0]


def test_select_classes_unknown_name_lists_the_classes():
    with pytest.raises(ValueError, match="wbc.*Platelets, RBC, WBC"):
        select_classes(load_voc(VOC), ["wbc"])


def test_unknown_format():
    with pytest.raises(ValueError, match="voc, yolo"):
        load_detection_dataset(VOC, "coco")


def test_missing_folder_is_named(tmp_path: Path):
    with pytest.raises(DatasetError, match="Annotations"):
        load_voc(tmp_path)
    with pytest.raises(DatasetError, match="images"):
        load_yolo(tmp_path)


def test_malformed_xml_names_the_file(voc_copy: Path):
    (voc_copy / "Annotations" / "img_b.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match=r"img_b\.xml: malformed XML"):
        load_voc(voc_copy)


def test_doctype_and_entities_are_refused(voc_copy: Path):
    bomb = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx"><!ENTITY y "&x;&x;">]>'
            "<annotation><filename>&y;</filename></annotation>")
    (voc_copy / "Annotations" / "img_b.xml").write_text(bomb)
    with pytest.raises(DatasetError, match=r"img_b\.xml: DOCTYPE .* refused"):
        load_voc(voc_copy)


@pytest.mark.parametrize("bndbox, message", [
    ("<xmin>5</xmin><ymin>5</ymin><xmax>x</xmax><ymax>9</ymax>", "numeric <bndbox>"),
    ("<xmin>5</xmin><ymin>5</ymin><xmax>9</xmax>", "numeric <bndbox>"),
    ("<xmin>9</xmin><ymin>5</ymin><xmax>5</xmax><ymax>9</ymax>", "invalid box"),
])
def test_bad_voc_box_names_file_and_object(voc_copy: Path, bndbox: str, message: str):
    xml = f"<annotation><object><name>WBC</name><bndbox>{bndbox}</bndbox></object></annotation>"
    (voc_copy / "Annotations" / "img_b.xml").write_text(xml)
    with pytest.raises(DatasetError, match=rf"img_b\.xml: object 0 .*{message}"):
        load_voc(voc_copy)


def test_voc_missing_image_and_annotation(voc_copy: Path):
    (voc_copy / "JPEGImages" / "img_a.jpg").unlink()
    with pytest.raises(DatasetError, match=r"img_a\.xml: image not found"):
        load_voc(voc_copy)
    (voc_copy / "ImageSets" / "Main" / "test.txt").write_text("img_c\nnope\n")
    with pytest.raises(DatasetError, match=r"nope\.xml not found"):
        load_voc(voc_copy, "test")


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", r"y2\.txt:2: expected 'class cx cy w h'"),
    ("zero 0.5 0.5 0.2 0.2", r"y2\.txt:2: expected 'class cx cy w h'"),
    ("3 0.5 0.5 0.2 0.2", r"y2\.txt:2: class 3 out of range 0\.\.2"),
    ("0 0.5 0.5 -0.2 0.2", r"y2\.txt:2: invalid box"),
])
def test_bad_yolo_line_names_file_and_line(yolo_copy: Path, line: str, message: str):
    (yolo_copy / "labels" / "y2.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(DatasetError, match=message):
        load_yolo(yolo_copy)


def test_yolo_missing_classes_and_unreadable_image(yolo_copy: Path):
    (yolo_copy / "images" / "y3.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"y3\.png: cannot read image"):
        load_yolo(yolo_copy)
    (yolo_copy / "classes.txt").unlink()
    with pytest.raises(DatasetError, match=r"classes\.txt not found"):
        load_yolo(yolo_copy)


@pytest.mark.skipif(BCCD is None, reason="BCCD not found at /work/shared/data/bccd "
                                         "or ../shared/data/bccd (real data, optional)")
def test_bccd_test_split_has_plausible_wbc_counts():
    ds = load_voc(BCCD, "test")
    assert set(ds.class_names) == {"RBC", "WBC", "Platelets"}
    wbc = select_classes(ds, ["WBC"])
    counts = np.array([len(s.boxes) for s in wbc])
    assert len(wbc) == 72
    assert (counts >= 1).mean() >= 0.9  # nearly every field shows one white cell
    assert counts.max() <= 5
    boxes = np.concatenate([s.boxes for s in wbc])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 640).all() and (boxes[:, 3] <= 480).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
