"""INT8 detector: QDQ with the decoding tail in FP32, calibrated and judged on tiles cut as the device cuts them."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from edge.runtime.bundle import load_bundle
from export.gates import Gates, GateError, check_detector_gate
from export.quantise import head_tail_nodes
from export.quantise_detector import bundle_tiles, detector_figures, quantise_detector
from tests.helpers import SYNTHETIC_BUNDLE, write_split_fields


def test_int8_detector_keeps_the_decoding_in_fp32_and_its_recall(tmp_path):
    bundle = load_bundle(SYNTHETIC_BUNDLE)
    fields = write_split_fields(tmp_path / "fields")
    train, val = (bundle_tiles(bundle, fields, "voc", ("cell",), s) for s in ("train", "val"))
    assert len(train) == len(val) == 2 * 4 and train[0][0].shape == (256, 256, 3)  # 2 fields of 2 x 2 tiles
    path = quantise_detector(bundle, train, tmp_path / "detector-int8.onnx")

    model = onnx.load(str(path))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 10
    producers = {out: n for n in model.graph.node for out in n.output}
    tail = [n for n in model.graph.node if n.name in set(head_tail_nodes(model))]
    assert {"TopK", "MaxPool", "Sigmoid"} <= {n.op_type for n in tail}
    for node in tail:  # the heads' last convolutions read int8-range activations; what follows is FP32
        if node.op_type not in ("Conv", "Shape"):  # (a Shape reads no values)
            assert all(producers[i].op_type != "DequantizeLinear" for i in node.input if i in producers)

    fp32 = detector_figures(bundle.model_path(bundle.detector), val, bundle)
    int8 = detector_figures(path, val, bundle)
    assert fp32["gt_boxes"] == int8["gt_boxes"] > 10
    assert int8["recall"] >= fp32["recall"] - 0.05 and int8["precision"] >= fp32["precision"] - 0.1
    check_detector_gate(fp32["recall"], int8["recall"], Gates(max_detector_recall_drop=0.05))


def test_detector_gate_says_by_how_much():
    with pytest.raises(GateError, match=r"recall 0\.9000 is 0\.0800 below the FP32 detector's 0\.9800 "
                                        r"\(allowed 0\.0200, exceeded by 0\.0600\); no bundle written"):
        check_detector_gate(0.98, 0.90, Gates())
    check_detector_gate(0.98, 0.97, Gates())
    assert np.isclose(Gates().max_detector_recall_drop, 0.02)
