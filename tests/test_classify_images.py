"""`edge classify`: single-cell images from other tools, each classified as the device would classify
that cell in a field, one CSV row per image, and nothing dropped without a word."""
from __future__ import annotations

import csv
import json
import logging

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.runtime.bundle import load_bundle
from edge.runtime.engine import CellCounter
from edge.synthetic.datasets import write_crop_folders
from tests.helpers import SYNTHETIC_BUNDLE


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    write_crop_folders(root, per_class=2, size=120, seed=4)
    cv2.imwrite(str(root / "blank.png"), np.full((120, 120, 3), 235, np.uint8))  # no cell in it
    (root / "damaged.png").write_bytes(b"\x89PNG not really")
    return root


def test_every_image_gets_a_row_with_the_devices_decision(images, tmp_path, capsys, caplog):
    out = tmp_path / "cells.csv"
    with caplog.at_level(logging.WARNING):
        assert main(["classify", str(images), "--csv", str(out), "--bundle", str(SYNTHETIC_BUNDLE),
                     "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    with open(out, newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    files = sorted(p for p in images.rglob("*.png"))
    assert sorted(rows) == sorted(map(str, files))
    assert summary["images"] == len(files) and summary["unreadable"] == 1
    assert rows[str(images / "damaged.png")]["status"] == "unreadable"
    blank = rows[str(images / "blank.png")]
    assert blank["status"] == "classified" and blank["framing"] == "whole image (no cell found)"
    assert "blank.png: the detector found no cell" in caplog.text
    assert summary["accepted"] + summary["to_review"] == summary["classified"] == len(files) - 1

    bundle = load_bundle(SYNTHETIC_BUNDLE)
    with CellCounter(bundle, threads=1) as counter:
        for path in files:
            if path.name == "damaged.png":
                continue
            view, found, box = counter.single_cell_view(cv2.imread(str(path)))
            decisions = counter.rule.decide(counter.classify_crops(view[None]))
            row = rows[str(path)]
            assert row["predicted"] == bundle.class_names[int(decisions.predicted[0])]
            assert row["decision"] == ("accepted" if decisions.accepted[0] else "review")
            assert float(row["confidence"]) == pytest.approx(float(decisions.confidence[0]), abs=1e-6)
            assert (row["framing"] == "detector") == found
            np.testing.assert_allclose([float(row[k]) for k in ("x1", "y1", "x2", "y2")], box, atol=0.06)
    assert summary["framed_by_detector"] >= len(files) - 3  # the synthetic detector finds synthetic cells


def test_no_images_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["classify", str(tmp_path / "empty"), "--csv", str(tmp_path / "x.csv")]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["classify", str(tmp_path / "missing.png"), "--csv", str(tmp_path / "x.csv")]) == 2
