"""INT8 QDQ and FP16 conversion of a trained CCL classifier (the synthetic bundle's), run in ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge.runtime.bundle import load_bundle
from edge.runtime.preprocess import to_model_input
from edge.synthetic.smear import render_cell_crops
from export.onnx_export import check_onnx
from export.quantise import (QUANTISED_OPS, ImageCalibrationReader, convert_fp16, fold_constants, foldable_nodes,
                             head_tail_nodes, input_convs, quantise_int8)
from export.report import scores_of
from tests.helpers import SYNTHETIC_BUNDLE

CCL_TAIL_OPS = {"Sub", "Pow", "ReduceMean", "Mul", "Exp"}


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(SYNTHETIC_BUNDLE)


@pytest.fixture(scope="module")
def crops(bundle):
    labels = np.arange(60) % len(bundle.class_names)
    return render_cell_crops(labels, bundle.classifier.input_hw[0], seed=5), labels


@pytest.fixture(scope="module")
def fp32(bundle):
    return bundle.model_path(bundle.classifier)


@pytest.fixture(scope="module")
def reader(bundle, crops):
    return ImageCalibrationReader(crops[0][:32], "image", bundle.classifier.normalisation, batch=8)


@pytest.fixture(scope="module")
def qdir(tmp_path_factory):
    return tmp_path_factory.mktemp("q")


@pytest.fixture(scope="module")
def int8_minmax(qdir, fp32, reader):
    return quantise_int8(fp32, qdir / "int8.onnx", reader, "minmax", calibration_cache=qdir / "minmax.json")


@pytest.fixture(scope="module")
def int8_twin(qdir, fp32, reader, int8_minmax):
    """The TensorRT twin of int8_minmax, from its calibration cache."""
    return quantise_int8(fp32, qdir / "int8-tensorrt.onnx", reader, "minmax", symmetric=True,
                         calibration_cache=qdir / "minmax.json")


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


@pytest.mark.parametrize("variant", ["int8_minmax", "int8_twin"])
def test_the_int8_stem_stays_fp32(variant, request):
    model = onnx.load(str(request.getfixturevalue(variant)))
    producers = _producers(model)
    stem = [n for n in model.graph.node if n.name in set(input_convs(model))]
    assert stem
    for node in stem:  # the image and the weights reach the stem unquantised
        assert all(i not in producers or producers[i].op_type != "DequantizeLinear" for i in node.input), node.name


def _qdq_zero_points(model):
    """{node name: zero point array} of every QuantizeLinear and DequantizeLinear node."""
    inits = {t.name: t for t in model.graph.initializer}
    return {n.name: numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")}


def test_the_onnxruntime_int8_model_has_uint8_activations_and_int8_weights(int8_minmax):
    model = onnx.load(str(int8_minmax))
    weights = {t.name for t in model.graph.initializer}
    zero_points = _qdq_zero_points(model)
    activations = [n.name for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activations and all(zero_points[name].dtype == np.uint8 for name in activations)  # U8S8
    weight_dq = [n.name for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
                 and zero_points[n.name].dtype != np.int32]  # (int32: the quantised biases)
    assert weight_dq and all(zero_points[name].dtype == np.int8 for name in weight_dq)


def test_the_tensorrt_twin_is_symmetric_int8_on_the_same_nodes(int8_twin, int8_minmax):
    twin, u8 = onnx.load(str(int8_twin)), onnx.load(str(int8_minmax))
    zero_points = _qdq_zero_points(twin)
    assert len(zero_points) > 20
    for name, zp in zero_points.items():  # what TensorRT parses: int8 zero points, all 0, and no int32 biases
        assert zp.dtype == np.int8 and not zp.any(), name

    def quantised(model):  # the matrix products that read a dequantised input
        producers = _producers(model)
        return sorted(n.name for n in model.graph.node if n.op_type in QUANTISED_OPS
                      and any(producers[i].op_type == "DequantizeLinear" for i in n.input if i in producers))
    assert input_convs(u8)  # the CrossFormer stem's convolutions read the image; both keep them FP32
    assert not set(input_convs(u8)) & set(quantised(twin))
    assert quantised(twin) == quantised(u8) and len(quantised(twin)) > 10
    assert set(head_tail_nodes(twin)) == set(head_tail_nodes(u8))  # the CCL tail stays FP32 in both


def test_the_tensorrt_twin_runs_and_agrees_with_the_onnxruntime_model(int8_twin, int8_minmax, fp32, bundle, crops):
    norm = bundle.classifier.normalisation
    twin, u8 = scores_of(int8_twin, crops[0], norm), scores_of(int8_minmax, crops[0], norm)
    assert (twin.argmax(1) == u8.argmax(1)).mean() >= 0.9
    assert (twin.argmax(1) == scores_of(fp32, crops[0], norm).argmax(1)).mean() >= 0.9
    assert np.abs(twin - u8).mean() < 0.05 and ((twin > 0) & (twin <= 1)).all()


def test_the_calibration_cache_gives_the_twin_that_calibrating_again_gives(tmp_path, int8_twin, fp32, reader):
    fresh = quantise_int8(fp32, tmp_path / "fresh.onnx", reader, "minmax", symmetric=True)
    assert onnx.load(str(fresh)).SerializeToString() == onnx.load(str(int8_twin)).SerializeToString()


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


def test_for_tensorrt_expands_gelu_at_opset_18_with_the_same_outputs(tmp_path):
    import onnxruntime as ort
    import torch

    from export.models.classifier import build_classifier
    from export.onnx_export import export_onnx
    from export.quantise import TENSORRT_OPSET, for_tensorrt
    torch.manual_seed(0)
    path = export_onnx(build_classifier("crossformer_tiny_test", 32, 3).eval(), 32, tmp_path / "m.onnx")
    exported = onnx.load(str(path))
    gelus = sum(n.op_type == "Gelu" for n in exported.graph.node)
    assert gelus == 4  # one per block of the tiny model: GELU exported as one node at opset 20
    onnx.save(for_tensorrt(exported), str(tmp_path / "t.onnx"))
    check_onnx(tmp_path / "t.onnx")
    expanded = onnx.load(str(tmp_path / "t.onnx"))
    assert not any(n.op_type == "Gelu" for n in expanded.graph.node)
    assert sum(n.op_type == "Erf" for n in expanded.graph.node) == gelus
    assert next(o.version for o in expanded.opset_import if o.domain in ("", "ai.onnx")) == TENSORRT_OPSET
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
           for p in (path, tmp_path / "t.onnx")]
    np.testing.assert_allclose(run[1], run[0], atol=1e-6)


def test_the_tensorrt_twin_has_no_op_newer_than_opset_18(int8_twin):
    twin = onnx.load(str(int8_twin))
    assert next(o.version for o in twin.opset_import if o.domain in ("", "ai.onnx")) == 18
    assert not any(n.op_type == "Gelu" for n in twin.graph.node)
