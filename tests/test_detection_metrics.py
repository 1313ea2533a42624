"""Detection metrics: IoU, 101-point AP, matching rules, count errors."""
from __future__ import annotations

import numpy as np
import pytest

from edge.evaluation.detection_metrics import (Prediction, Truth, average_precision, box_iou,
                                    evaluate_detection)

DESIGN_KEYS = {"images", "ap50", "map50_95", "recall", "precision", "count_mae", "count_mape",
               "count_exact_share"}


def box(x: float, y: float, size: float = 10.0) -> list[float]:
    return [x, y, x + size, y + size]


def pred(boxes: list, scores: list) -> Prediction:
    return Prediction(np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores, dtype=float))


def truth(boxes: list, difficult: list | None = None) -> Truth:
    b = np.array(boxes, dtype=float).reshape(-1, 4)
    return Truth(b, np.zeros(len(b), bool) if difficult is None else np.array(difficult, bool))


def test_box_iou_values_and_shape():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 5, 5]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2]], float)
    expected = [[1 / 7, 1.0], [0.0, 0.25], [0.0, 0.0]]
    np.testing.assert_allclose(box_iou(a, b), expected)
    assert box_iou(a, np.zeros((0, 4))).shape == (3, 0)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 2)


def test_perfect_predictions():
    gts = [truth([box(0, 0), box(20, 20)]), truth([box(5, 5)])]
    preds = [pred([box(0, 0), box(20, 20)], [0.9, 0.8]), pred([box(5, 5)], [0.7])]
    r = evaluate_detection(preds, gts)
    assert DESIGN_KEYS <= r.keys()
    assert r["images"] == 2
    assert r["ap50"] == r["map50_95"] == r["recall"] == r["precision"] == 1.0
    assert r["count_mae"] == r["count_mape"] == 0.0
    assert average_precision(preds, gts) == 1.0


def test_false_positive_ranked_above_true_positives():
    # FP, TP, TP over 2 GT: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; the
    # monotone envelope is 2/3 everywhere, so all 101 points are 2/3.
    gts = [truth([box(0, 0), box(20, 20)])]
    preds = [pred([box(50, 50), box(0, 0), box(20, 20)], [0.9, 0.8, 0.7])]
    assert average_precision(preds, gts) == pytest.approx(2 / 3)


def test_false_positive_between_true_positives():
    # TP, FP, TP over 2 GT: envelope 1 for recall <= 0.5 (51 points: 0..0.50)
    # and 2/3 for recall in (0.5, 1] (50 points).
    gts = [truth([box(0, 0), box(20, 20)])]
    preds = [pred([box(0, 0), box(50, 50), box(20, 20)], [0.9, 0.8, 0.7])]
    assert average_precision(preds, gts) == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)


def test_recall_not_reached_counts_zero():
    # FP, TP over 3 GT: recall tops at 1/3 with envelope 1/2 -> points 0..0.33
    # (34 of them) score 1/2, the rest 0.
    gts = [truth([box(0, 0), box(20, 20), box(40, 40)])]
    preds = [pred([box(80, 80), box(0, 0)], [0.9, 0.8])]
    assert average_precision(preds, gts) == pytest.approx(34 * 0.5 / 101)


def test_scores_ranked_across_images():
    # Image 1 holds the top-scoring FP; image 2 the TPs: FP, TP, TP overall.
    gts = [truth([]), truth([box(0, 0), box(20, 20)])]
    preds = [pred([box(0, 0)], [0.95]), pred([box(0, 0), box(20, 20)], [0.9, 0.1])]
    assert average_precision(preds, gts) == pytest.approx(2 / 3)


def test_duplicates_are_false_positives():
    # The second box on cell A is a duplicate: TP, FP, TP as above.
    gts = [truth([box(0, 0), box(20, 20)])]
    preds = [pred([box(0, 0), box(0.5, 0), box(20, 20)], [0.9, 0.8, 0.7])]
    r = evaluate_detection(preds, gts, score_threshold=0.5)
    assert r["ap50"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == 1.0


def test_higher_score_matches_first():
    # Both predictions overlap the one cell; the higher score takes it even
    # with the lower IoU, and the other becomes a FP.
    gts = [truth([[0, 0, 10, 10]])]
    preds = [pred([[0, 0, 10, 6], [0, 0, 10, 5.5]], [0.6, 0.9])]  # IoU 0.6 and 0.55
    assert average_precision(preds, gts, iou_threshold=0.5) == 1.0
    # At 0.58 only the lower-scored box matches: FP then TP.
    assert average_precision(preds, gts, iou_threshold=0.58) == pytest.approx(0.5)


def test_difficult_boxes_are_ignored():
    gts = [truth([box(0, 0), box(40, 40)], difficult=[False, True])]
    # Two hits on the difficult cell (ignored, even the second) and one on the regular.
    preds = [pred([box(40, 40), box(41, 40), box(0, 0)], [0.95, 0.9, 0.8])]
    r = evaluate_detection(preds, gts)
    assert r["ap50"] == r["precision"] == r["recall"] == 1.0
    assert r["gt_boxes"] == 1
    assert r["count_mae"] == 2.0  # 3 counted predictions vs 1 regular cell


def test_unmatched_difficult_box_is_not_a_miss():
    gts = [truth([box(0, 0), box(40, 40)], difficult=[False, True])]
    r = evaluate_detection([pred([box(0, 0)], [0.9])], gts)
    assert r["ap50"] == r["recall"] == 1.0


def test_regular_box_preferred_over_difficult():
    # The prediction overlaps the difficult box more, but matches the regular one.
    gts = [truth([[0, 0, 10, 10], [0, 0, 10, 7]], difficult=[False, True])]
    r = evaluate_detection([pred([[0, 0, 10, 7.5]], [0.9])], gts)
    assert r["recall"] == r["precision"] == 1.0


def test_empty_predictions():
    gts = [truth([box(0, 0)]), truth([])]
    r = evaluate_detection([pred([], []), pred([], [])], gts)
    assert r["ap50"] == r["map50_95"] == r["recall"] == 0.0
    assert r["precision"] is None  # nothing predicted
    assert r["count_mae"] == 0.5
    assert r["count_mape"] == 1.0 and r["count_mape_images"] == 1
    assert r["count_exact_share"] == 0.5  # the empty image is counted exactly


def test_no_ground_truth_anywhere():
    r = evaluate_detection([pred([box(0, 0)], [0.9])], [truth([])])
    assert r["ap50"] is None and r["map50_95"] is None and r["recall"] is None
    assert r["precision"] == 0.0
    assert r["count_mape"] is None and r["count_mape_images"] == 0
    assert r["count_mae"] == 1.0


def test_no_images():
    r = evaluate_detection([], [])
    assert r["images"] == 0 and r["count_mae"] is None and r["ap50"] is None
    assert r["count_exact_share"] is None


def test_shifted_boxes_lower_map50_95():
    # A 1 px shift of a 10 px box: IoU 90/110 = 0.818, a hit for thresholds
    # 0.50..0.80 (7 of 10) and a miss for 0.85..0.95.
    gts = [truth([box(0, 0), box(30, 30)])]
    preds = [pred([box(1, 0), box(31, 30)], [0.9, 0.8])]
    r = evaluate_detection(preds, gts)
    assert r["ap50"] == 1.0
    assert r["map50_95"] == pytest.approx(0.7)
    assert r["map50_95"] < r["ap50"]


def test_count_metrics_by_hand():
    # Regular GT per image: 2, 0, 4 (plus one difficult box, not counted).
    # Predictions with score >= 0.5 per image: 3, 1, 2.
    gts = [truth([box(0, 0), box(20, 20)]),
           truth([box(0, 0)], difficult=[True]),
           truth([box(0, 0), box(20, 20), box(40, 40), box(60, 60)])]
    preds = [pred([box(0, 0), box(20, 20), box(90, 90), box(70, 70)], [0.9, 0.8, 0.5, 0.49]),
             pred([box(70, 70)], [0.6]),
             pred([box(0, 0), box(20, 20), box(40, 40)], [0.9, 0.7, 0.2])]
    r = evaluate_detection(preds, gts, score_threshold=0.5)
    assert r["count_mae"] == pytest.approx((1 + 1 + 2) / 3)
    assert r["count_mape"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert r["count_mape_images"] == 2
    assert r["count_exact_share"] == 0.0
    assert r["pred_boxes"] == 6 and r["gt_boxes"] == 6
    assert r["recall"] == pytest.approx(4 / 6)
    assert r["precision"] == pytest.approx(4 / 6)


def test_plain_tuples_and_empty_lists_accepted():
    r = evaluate_detection([([[0, 0, 10, 10]], [0.9]), ([], [])],
                           [([[0, 0, 10, 10]], [False]), ([], [])])
    assert r["ap50"] == 1.0 and r["images"] == 2


@pytest.mark.parametrize("preds, gts, message", [
    ([pred([], [])], [], "1 prediction entries for 0"),
    ([(np.zeros((2, 5)), np.zeros(2))], [truth([])], "expected shape"),
    ([(np.zeros((2, 4)), np.zeros(3))], [truth([])], "2 predicted boxes with 3 scores"),
])
def test_bad_inputs(preds, gts, message):
    with pytest.raises(ValueError, match=message):
        evaluate_detection(preds, gts)
