"""INT8 QDQ and FP16 conversion of a trained CCL classifier (the shipped bundle's), run in ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from edge import DEFAULT_BUNDLE
from edge.bundle import load_bundle
from edge.preprocess import to_model_input
from edge.synthetic import render_cell_crops
from export.onnx_export import check_onnx
from export.quantise import (ImageCalibrationReader, convert_fp16, fold_constants, foldable_nodes,
                             head_tail_nodes, quantise_int8)
from export.report import scores_of

CCL_TAIL_OPS = {"Sub", "Pow", "ReduceMean", "Mul", "Exp"}


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE)


@pytest.fixture(scope="module")
def crops(bundle):
    labels = np.arange(60) % len(bundle.class_names)
    return render_cell_crops(labels, bundle.classifier.input_hw[0], seed=5), labels


@pytest.fixture(scope="module")
def fp32(bundle):
    return bundle.model_path(bundle.classifier)


@pytest.fixture(scope="module")
def int8_minmax(tmp_path_factory, bundle, fp32, crops):
    reader = ImageCalibrationReader(crops[0][:32], "image", bundle.classifier.normalisation, batch=8)
    return quantise_int8(fp32, tmp_path_factory.mktemp("q") / "int8.onnx", reader, "minmax")


def _producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def test_export_is_checked_dynamic_and_folding_leaves_no_constant_subgraph(tmp_path, fp32, bundle, crops):
    folded = fold_constants(fp32, tmp_path / "folded.onnx")
    model = check_onnx(folded)  # onnx.checker (full) and strict shape inference
    assert foldable_nodes(model) == []
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch axis
    norm = bundle.classifier.normalisation
    for n in (1, 7):  # any batch size runs and gives what the unfolded model gives
        np.testing.assert_allclose(scores_of(folded, crops[0][:n], norm), scores_of(fp32, crops[0][:n], norm),
                                   atol=1e-5)


def test_int8_is_qdq_with_the_ccl_tail_in_fp32(int8_minmax, fp32):
    model = onnx.load(str(int8_minmax))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    weights = {t.name: t for t in model.graph.initializer}
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2 for t in weights.values())
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in weights and len(weights[n.input[1]].dims) == 1]
    assert per_channel  # per-channel weight scales

    tail = set(head_tail_nodes(model))
    producers = _producers(model)
    tail_nodes = [n for n in model.graph.node if n.name in tail]
    assert CCL_TAIL_OPS <= {n.op_type for n in tail_nodes}
    assert any(n.op_type == "MatMul" for n in tail_nodes)  # the head's W^T f
    for node in tail_nodes:  # nothing in the tail reads a dequantised tensor: it all runs on FP32 values
        assert all(producers[i].op_type != "DequantizeLinear" for i in node.input if i in producers), node.name
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_int8_agrees_with_fp32_on_most_cells(int8_minmax, fp32, bundle, crops):
    norm = bundle.classifier.normalisation
    images, labels = crops
    full, quant = scores_of(fp32, images, norm), scores_of(int8_minmax, images, norm)
    assert (full.argmax(1) == quant.argmax(1)).mean() >= 0.9
    assert np.abs(full - quant).mean() < 0.05
    assert ((quant > 0) & (quant <= 1)).all()  # still CCL kernel values


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_every_calibration_method_takes_many_batches(tmp_path, method, fp32, bundle, crops):
    norm = bundle.classifier.normalisation
    images = crops[0]
    # 16 batches: ONNX Runtime's MinMax chunking option (CalibMaxIntermediateOutputs=8)
    # discarded whole chunks and failed on a multiple of 8; it is not used.
    reader = ImageCalibrationReader(images[:33], "image", norm, batch=2)  # 16 full batches; 1 cell left out
    assert len(reader) == 16
    path = quantise_int8(fp32, tmp_path / "q.onnx", reader, method)
    agree = (scores_of(fp32, images, norm).argmax(1) == scores_of(path, images, norm).argmax(1)).mean()
    assert agree >= 0.85


def test_fp16_keeps_float32_io_and_the_tail(tmp_path, fp32, bundle, crops):
    path = convert_fp16(fp32, tmp_path / "fp16.onnx")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types.values() and types["head.centroids"] == onnx.TensorProto.FLOAT
    tail = [n for n in model.graph.node if n.name in set(head_tail_nodes(model))]
    assert CCL_TAIL_OPS <= {n.op_type for n in tail}
    casts = [onnx.helper.get_attribute_value(n.attribute[0]) for n in tail if n.op_type == "Cast"]
    assert onnx.TensorProto.FLOAT16 not in casts  # no rounding to FP16 between the tail's FP32 nodes
    norm = bundle.classifier.normalisation
    full, half = scores_of(fp32, crops[0], norm), scores_of(path, crops[0], norm)
    assert (full.argmax(1) == half.argmax(1)).mean() >= 0.98 and np.abs(full - half).max() < 0.02


def test_calibration_reader_feeds_device_preprocessing(bundle, crops):
    norm = bundle.classifier.normalisation
    reader = ImageCalibrationReader(crops[0][:10], "x", norm, batch=4)
    first = [reader.get_next() for _ in range(3)]
    assert first[2] is None and [b["x"].shape[0] for b in first[:2]] == [4, 4]
    np.testing.assert_array_equal(first[0]["x"], to_model_input(crops[0][:4], None, norm))
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["x"], first[0]["x"])
    with pytest.raises(ValueError, match="no calibration images"):
        ImageCalibrationReader(crops[0][:0], "x", norm)
    with pytest.raises(ValueError, match="unknown calibration method"):
        quantise_int8(bundle.model_path(bundle.classifier), "/nonexistent/q.onnx", reader, "kl")
