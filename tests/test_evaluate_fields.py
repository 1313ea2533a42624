"""`edge eval fields`: labelled cells in whole fields through the whole device path."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge.runtime.bundle import load_bundle
from edge.cli import main
from edge.runtime.engine import CellCounter
from edge.evaluation.evaluate import EvalDataError
from edge.evaluation.evaluate_fields import evaluate_field_cells, read_field_labels
from edge.synthetic.smear import SmearConfig, render_field
from tests.helpers import SYNTHETIC_BUNDLE


@pytest.fixture(scope="module")
def labelled_fields(tmp_path_factory):
    """Synthetic fields and a CSV naming each one's first cell, BCCD-style."""
    root = tmp_path_factory.mktemp("fields")
    (root / "JPEGImages").mkdir()
    rows = ["file,class,split,xmin,ymin,xmax,ymax"]
    for seed in range(6):
        field = render_field(SmearConfig(width=320, height=240, nucleated_per_mpx=40.0), seed=seed)
        if not len(field.boxes):
            continue
        name = f"field_{seed}.png"
        cv2.imwrite(str(root / "JPEGImages" / name), field.image)
        x0, y0, x1, y1 = field.boxes[0]
        rows.append(f"{name},{field.class_names[field.labels[0]]},{'test' if seed % 2 else 'train'},"
                    f"{x0:.1f},{y0:.1f},{x1:.1f},{y1:.1f}")
    rows.append("nowhere.png,lymphocyte,train,0,0,1,1")  # a label whose box no detection overlaps
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    cv2.imwrite(str(root / "JPEGImages" / "nowhere.png"), np.full((240, 320, 3), 235, np.uint8))
    return root


def test_figures_follow_the_device_decisions(labelled_fields):
    report = evaluate_field_cells(SYNTHETIC_BUNDLE, labelled_fields, labelled_fields / "labels.csv")
    bundle = load_bundle(SYNTHETIC_BUNDLE)
    cells = read_field_labels(labelled_fields / "labels.csv", bundle.class_names)
    assert report["labelled_cells"] == len(cells)
    assert report["missed_by_detector"].get("lymphocyte", 0) >= 1  # the blank field's label
    assert report["found"] + sum(report["missed_by_detector"].values()) == len(cells)
    # recompute what the device decided for the found cells
    wrong = caught = 0
    with CellCounter(bundle, threads=1) as counter:
        for name, label, box in cells:
            result = counter.count_field(cv2.imread(str(labelled_fields / "JPEGImages" / name)))
            if not len(result):
                continue
            x = (np.minimum(box[2:], result.boxes[:, 2:]) - np.maximum(box[:2], result.boxes[:, :2])).clip(0)
            inter = x[:, 0] * x[:, 1]
            union = (box[2:] - box[:2]).prod() + (result.boxes[:, 2:] - result.boxes[:, :2]).prod(1) - inter
            iou = inter / union
            if iou.max() < 0.3:
                continue
            k = int(iou.argmax())
            if result.decisions.predicted[k] != label:
                wrong += 1
                caught += not result.decisions.accepted[k]
    assert report["errors"] == wrong
    assert report["errors_caught"] == (caught / wrong if wrong else None)


def test_split_and_unknown_classes(labelled_fields, tmp_path):
    report = evaluate_field_cells(SYNTHETIC_BUNDLE, labelled_fields, labelled_fields / "labels.csv", split="test")
    assert report["split"] == "test" and report["labelled_cells"] == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class,xmin,ymin,xmax,ymax\nf.png,dragon,0,0,1,1\n")
    with pytest.raises(EvalDataError, match="dragon"):
        evaluate_field_cells(SYNTHETIC_BUNDLE, labelled_fields, bad)


def test_cli_writes_the_figures(labelled_fields, tmp_path, capsys):
    out = tmp_path / "fields.json"
    assert main(["eval", "fields", "--bundle", str(SYNTHETIC_BUNDLE), "--data", str(labelled_fields),
                 "--labels", str(labelled_fields / "labels.csv"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["labelled_cells"] == 7
