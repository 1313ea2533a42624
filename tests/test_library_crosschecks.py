"""Dev cross-checks of hand-written numerics against the well-kept libraries that compute the same thing
(pycocotools for AP, scipy for the exact binomial interval). The runtime keeps its own versions: the
device installs neither library (docs/architecture.md says why)."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from calibration.binomial import clopper_pearson_interval
from edge.evaluation.detection_metrics import Prediction, Truth, evaluate_detection

coco = pytest.importorskip("pycocotools.cocoeval", reason="pycocotools (dev extra) is not installed")
stats = pytest.importorskip("scipy.stats", reason="scipy (dev extra) is not installed")


def random_detections(seed: int, images: int = 12) -> tuple[list[Prediction], list[Truth]]:
    """Ground-truth cells and detections that find most of them, roughly, plus some false ones."""
    rng = np.random.default_rng(seed)
    preds, truths = [], []
    for _ in range(images):
        n = int(rng.integers(0, 9))
        xy = rng.uniform(0, 400, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(20, 60, (n, 2))], axis=1)
        found = gt[rng.random(n) < 0.8]
        found = found + rng.normal(0, 5, found.shape)
        false_xy = rng.uniform(0, 400, (int(rng.integers(0, 4)), 2))
        false = np.concatenate([false_xy, false_xy + 30], axis=1)
        boxes = np.concatenate([found, false]).astype(np.float64)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        preds.append(Prediction(boxes, rng.random(len(boxes))))
        truths.append(Truth(gt, np.zeros(n, bool)))
    return preds, truths


def coco_figures(preds: list[Prediction], truths: list[Truth]) -> tuple[float, float]:
    """(AP50, mAP@[.50:.95]) from pycocotools for the same detections, one class, all areas."""
    from pycocotools.coco import COCO

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    images = [{"id": i + 1, "width": 500, "height": 500} for i in range(len(truths))]
    annotations = [{"id": len(images) * 100 + k, "image_id": i + 1, "category_id": 1, "bbox": xywh(b),
                    "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0}
                   for i, t in enumerate(truths) for k, b in enumerate(t.boxes)]
    for k, a in enumerate(annotations):
        a["id"] = k + 1
    results = [{"image_id": i + 1, "category_id": 1, "bbox": xywh(b), "score": float(s)}
               for i, p in enumerate(preds) for b, s in zip(p.boxes, p.scores)]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}
        truth.createIndex()
        evaluation = coco.COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[1]), float(evaluation.stats[0])


@pytest.mark.parametrize("seed", range(5))
def test_ap_matches_pycocotools(seed):
    preds, truths = random_detections(seed)
    ours = evaluate_detection(preds, truths)
    ap50, map50_95 = coco_figures(preds, truths)
    assert ours["ap50"] == pytest.approx(ap50, abs=1e-6)
    assert ours["map50_95"] == pytest.approx(map50_95, abs=1e-6)


def test_clopper_pearson_matches_scipy():
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 50, 200, 1000, 5000):
        k = np.unique(np.concatenate([[0, n], rng.integers(0, n + 1, 10)]))
        for level in (0.9, 0.95, 0.99):
            low, high = clopper_pearson_interval(k, n, level)
            for ki, lo, hi in zip(k, low, high):
                ci = stats.binomtest(int(ki), n).proportion_ci(confidence_level=level, method="exact")
                assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9), (ki, n)
