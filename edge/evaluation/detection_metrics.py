"""Single-class detection metrics: AP, mAP@[.50:.95], recall, precision, counts.

Boxes are (K, 4) xyxy in continuous pixel coordinates (area = w * h, no "+1"),
the convention of :mod:`edge.evaluation.detection_data`.

Matching, per image and IoU threshold t: predictions are taken in descending
score order (stable, so ties keep their input order); each one takes the
still-unmatched regular (non-difficult) ground-truth box with the highest
IoU >= t and is a true positive. Failing that it is ignored (neither TP nor
FP) when it overlaps a difficult box with IoU >= t - any number of predictions
may fall on one difficult box, as in the VOC evaluation - and otherwise it is
a false positive; so a duplicate on an already matched cell is a false
positive. Difficult boxes never count as misses.

AP is COCO's 101-point interpolated AP: precision is made monotone
(p_interp(r) = max precision at recall >= r), sampled at recall
0, 0.01, ..., 1.00 (0 beyond the highest recall reached) and averaged. Scores
are ranked over all images together.

Undefined values are None (JSON null), never NaN: AP and recall when there is
no regular ground truth, precision when no prediction is counted, count_mape
when no image has ground truth.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from edge.runtime.boxes import box_iou

IOU_THRESHOLDS = np.round(np.arange(0.50, 0.951, 0.05), 2)  # 0.50, 0.55, ..., 0.95
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
TP, FP, IGNORED = 1, 0, -1


class Prediction(NamedTuple):
    """One image's detections: boxes (M, 4) and scores (M,)."""

    boxes: np.ndarray
    scores: np.ndarray


class Truth(NamedTuple):
    """One image's ground truth: boxes (N, 4) and difficult mask (N,)."""

    boxes: np.ndarray
    difficult: np.ndarray


def average_precision(preds: Sequence[Prediction], gts: Sequence[Truth],
                      iou_threshold: float = 0.5) -> float | None:
    """101-point interpolated AP at one IoU threshold; None without regular ground truth."""
    preds, gts = _check_inputs(preds, gts)
    scores, status = _match_all(preds, gts, np.array([iou_threshold]))
    return _interpolated_ap(scores, status[0], _n_regular(gts))


def evaluate_detection(preds: Sequence[Prediction], gts: Sequence[Truth],
                       score_threshold: float = 0.5) -> dict:
    """All `edge eval detect` figures for one class.

    Keys: images, ap50, map50_95 (mean AP over IoU 0.50:0.05:0.95), recall and
    precision (predictions with score >= score_threshold, IoU 0.5), count_mae
    and count_mape (per image: predictions with score >= score_threshold vs
    regular ground-truth boxes; MAPE is a fraction, 0.1 = 10 %, over the images
    that have ground truth only), count_exact_share (the share of images whose
    count is exactly right). Extra keys: count_mape_images (images used by
    MAPE), gt_boxes, pred_boxes (counted at the threshold), score_threshold.
    """
    preds, gts = _check_inputs(preds, gts)
    n_pos = _n_regular(gts)
    scores, status = _match_all(preds, gts, IOU_THRESHOLDS)
    aps = [_interpolated_ap(scores, row, n_pos) for row in status]
    counted = status[0][scores >= score_threshold]
    tp, fp = int(np.sum(counted == TP)), int(np.sum(counted == FP))
    pred_counts = np.array([np.sum(p.scores >= score_threshold) for p in preds], dtype=np.float64)
    gt_counts = np.array([np.sum(~g.difficult) for g in gts], dtype=np.float64)
    errors = np.abs(pred_counts - gt_counts)
    has_gt = gt_counts > 0
    return {
        "images": len(gts),
        "ap50": aps[0],
        "map50_95": None if n_pos == 0 else float(np.mean(aps)),
        "recall": _ratio(tp, n_pos),
        "precision": _ratio(tp, tp + fp),
        "count_mae": float(errors.mean()) if len(gts) else None,
        "count_mape": float(np.mean(errors[has_gt] / gt_counts[has_gt])) if has_gt.any() else None,
        "count_exact_share": float(np.mean(errors == 0)) if len(gts) else None,
        "count_mape_images": int(has_gt.sum()),
        "gt_boxes": n_pos,
        "pred_boxes": int(pred_counts.sum()),
        "score_threshold": float(score_threshold),
    }


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _n_regular(gts: list[Truth]) -> int:
    return int(sum(np.sum(~g.difficult) for g in gts))


def _check_inputs(preds: Sequence, gts: Sequence) -> tuple[list[Prediction], list[Truth]]:
    """Coerce (boxes, scores) / (boxes, difficult) pairs to checked arrays."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction entries for {len(gts)} ground-truth images")
    out_p, out_g = [], []
    for i, ((pb, ps), (gb, gd)) in enumerate(zip(preds, gts)):
        pb = _as_boxes(pb, f"image {i} predicted boxes")
        gb = _as_boxes(gb, f"image {i} ground-truth boxes")
        ps = np.asarray(ps, dtype=np.float64).reshape(-1)
        gd = np.asarray(gd, dtype=bool).reshape(-1)
        if len(ps) != len(pb) or len(gd) != len(gb):
            raise ValueError(f"image {i}: {len(pb)} predicted boxes with {len(ps)} scores, "
                             f"{len(gb)} ground-truth boxes with {len(gd)} difficult flags")
        out_p.append(Prediction(pb, ps))
        out_g.append(Truth(gb, gd))
    return out_p, out_g


def _as_boxes(boxes, what: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what}: expected shape (K, 4), got {arr.shape}")
    return arr


def _match_all(preds: list[Prediction], gts: list[Truth],
               thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All predictions' scores (P,) and their TP/FP/IGNORED status (T, P)."""
    scores = np.concatenate([np.zeros(0)] + [p.scores for p in preds])
    status = [np.zeros((len(thresholds), 0), np.int8)]
    status += [_match_image(p, g, thresholds) for p, g in zip(preds, gts)]
    return scores, np.concatenate(status, axis=1)


def _match_image(pred: Prediction, truth: Truth, thresholds: np.ndarray) -> np.ndarray:
    """Greedy matching of one image at every threshold at once -> status (T, M)."""
    status = np.full((len(thresholds), len(pred.scores)), FP, dtype=np.int8)
    if not len(pred.scores) or not len(truth.boxes):
        return status
    iou = box_iou(pred.boxes, truth.boxes)
    rows = np.arange(len(thresholds))
    taken = np.zeros((len(thresholds), len(truth.boxes)), dtype=bool)
    order = np.argsort(-pred.scores, kind="stable")
    # Predictions that overlap nothing enough are FP at every threshold: skip them.
    for i in order[iou[order].max(axis=1) >= thresholds.min()]:
        over = iou[i][None, :] >= thresholds[:, None]                  # (T, N)
        free = over & ~truth.difficult & ~taken
        best = np.where(free, iou[i], -1.0).argmax(axis=1)              # (T,)
        hit = free[rows, best]
        taken[rows[hit], best[hit]] = True
        status[hit, i] = TP
        status[~hit & (over & truth.difficult).any(axis=1), i] = IGNORED
    return status


def _interpolated_ap(scores: np.ndarray, status: np.ndarray, n_pos: int) -> float | None:
    """COCO 101-point AP from all predictions' scores and status at one threshold."""
    if n_pos == 0:
        return None
    kept = status != IGNORED
    is_tp = status[kept][np.argsort(-scores[kept], kind="stable")] == TP
    if not is_tp.size:
        return 0.0
    tp = np.cumsum(is_tp)
    recall = tp / n_pos
    precision = tp / np.arange(1, len(tp) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0)
    return float(sampled.mean())
