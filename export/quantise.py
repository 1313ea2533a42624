"""Quantising an exported classifier with ONNX Runtime's tools: static INT8 in QDQ form, and FP16.

INT8: weights int8 per output channel, activations uint8 (U8S8, what ONNX
Runtime's x86 kernels run fast; see shared/DESIGN.md), scales from a
calibration reader that feeds real cells through the bundle's own
preprocessing. Only the matrix products and convolutions are quantised: they
are nearly all of the time, and every further Q/DQ pair on an add, a layer
norm or a softmax costs accuracy for no speed on a CPU. The CCL tail (the
distance to the centroids and its exponent, everything after the head's
matrix product) stays FP32: D = exp(-d / (2 sigma^2)) with sigma = 0.1 turns a
small error in the distance into a large one in D, and so in the confidence
the thresholds read. The head's own matrix product (W^T f, the point whose
distance is measured) stays FP32 with it; it is a fraction of a percent of
the work. So does the stem, the convolution(s) reading the image: see
`quantise_int8`.

FP16: every weight and activation in half precision except the same tail and
the model's inputs and outputs (keep_io_types), so a bundle's feed and
outputs stay float32.

TensorRT twin (`symmetric=True`): TensorRT parses only symmetric int8 Q/DQ
(int8 zero points, all 0) and no int32 bias DequantizeLinear, so the file a
Jetson builds its INT8 engine from is written separately: int8 activations
and weights, both symmetric, biases left float, the same nodes quantised and
the same calibration ranges (ONNX Runtime's calibration cache, where its
quantize_static has one, saves calibrating twice). It runs in ONNX Runtime too,
slowly on x86 (s8s8), which is how its agreement with the U8S8 model is checked.
"""
from __future__ import annotations

import contextlib
import math
import inspect
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from edge.runtime.preprocess import Normalisation, to_model_input
from export.onnx_export import check_onnx

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
QUANTISED_OPS = ("Conv", "MatMul", "Gemm")
_MATRIX_OPS = {"MatMul", "Gemm", "Conv"}
# Folding limit in elements: the CCL head's reshaped W (N x C*M, e.g. 512 x 1024) is
# above onnxscript's default of 262,144 and would otherwise stay a runtime Reshape.
_FOLD_LIMIT = 1 << 28
# quantize_static's calibration_cache_path (recent ONNX Runtime): reuse one calibration for both INT8 variants
_HAS_CALIBRATION_CACHE = "calibration_cache_path" in inspect.signature(quantize_static).parameters


class ImageCalibrationReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over uint8 BGR images (cells or tiles), preprocessed as the device does.

    Batches all have the same size (a remainder beyond the last full batch is
    left out): ONNX Runtime's histogram calibrators stack the batches' outputs.
    """

    def __init__(self, images_bgr: np.ndarray, input_name: str, norm: Normalisation, batch: int = 32) -> None:
        if len(images_bgr) == 0:
            raise ValueError("no calibration images")
        self.batch = min(batch, len(images_bgr))
        self.x = to_model_input(images_bgr[:len(images_bgr) // self.batch * self.batch], None, norm)
        self.input_name = input_name
        self._batches: Iterator[np.ndarray] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        self._batches = (self.x[i:i + self.batch] for i in range(0, len(self.x), self.batch))

    def __len__(self) -> int:
        return len(self.x) // self.batch


def foldable_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes whose inputs are all constants: what constant folding should have removed."""
    constant = {t.name for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            constant.update(node.output)
        elif all(not name or name in constant for name in node.input):
            found.append(node)
            constant.update(node.output)
    return found


def fold_constants(src: Path, dst: Path) -> Path:
    """`src` with every constant subgraph folded into initializers, checked, written to `dst`."""
    import onnxscript.optimizer
    model = onnxscript.optimizer.optimize(onnx.load(str(src)), input_size_limit=_FOLD_LIMIT,
                                          output_size_limit=_FOLD_LIMIT)
    left = foldable_nodes(model)
    if left:
        raise ValueError(f"{src}: constant folding left {len(left)} nodes, e.g. {left[0].op_type} {left[0].name}")
    onnx.save(model, str(dst))
    check_onnx(dst)
    return dst


def head_tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the head's last matrix product and every node after it on the way to the outputs.

    For CCL: the embedding W^T f, the distance to the centroids and its exponent.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    tail, todo = [], [o.name for o in model.graph.output]
    seen: set[str] = set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        tail.append(node.name)
        if node.op_type not in _MATRIX_OPS:
            todo.extend(node.input)
    return tail


def input_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the convolutions that read a graph input (the image) directly: the stem."""
    inputs = {i.name for i in model.graph.input}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input and n.input[0] in inputs]


def quantise_int8(src: Path, dst: Path, reader: CalibrationDataReader, method: str = "minmax",
                  percentile: float = 99.999, symmetric: bool = False,
                  calibration_cache: Path | None = None) -> Path:
    """Static INT8 QDQ of the FP32 model `src` (folded, checked), calibrated on `reader`; returns `dst`.

    `symmetric=False`: uint8 activations, for ONNX Runtime on x86 (U8S8).
    `symmetric=True`: the TensorRT twin, int8 activations with zero points 0
    and float biases, at opset 18 with GELU expanded (for_tensorrt). `calibration_cache`: a JSON file of the calibration's
    tensor ranges; the first call with it writes it, a later one with the same
    `src`, `method` and `reader` reads it instead of calibrating again (an ONNX
    Runtime without the cache calibrates each time, with the same result).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}")
    dst = Path(dst)
    options: dict = {"CalibPercentile": percentile}
    if symmetric:
        options |= {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    cache = {"calibration_cache_path": str(calibration_cache)} if calibration_cache and _HAS_CALIBRATION_CACHE else {}
    with tempfile.TemporaryDirectory() as tmp:
        folded = fold_constants(Path(src), Path(tmp) / "folded.onnx")
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(folded), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        # The stem stays FP32: the image fills the whole 8-bit range, and on x86 without VNNI the
        # 8-bit pair sums saturate at 16 bits (vpmaddubsw) with a BN-folded stem's large weights; on
        # EfficientNet-Lite0 that alone cost 7 points of argmax agreement (U8S8). The twin keeps it
        # FP32 too, so that the two files quantise the same nodes and ONNX Runtime can check the twin.
        keep_fp32 = head_tail_nodes(model) + input_convs(model)
        reader.rewind()
        with contextlib.redirect_stdout(sys.stderr):  # the histogram calibrators print their progress
            quantize_static(
                str(prepared), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTISED_OPS), nodes_to_exclude=keep_fp32,
                calibrate_method=CALIBRATION_METHODS[method], extra_options=options, **cache)
    if symmetric:
        onnx.save(for_tensorrt(onnx.load(str(dst))), str(dst))
    check_onnx(dst)
    return dst


TENSORRT_OPSET = 18  # what TensorRT's ONNX parsers have read the longest


def for_tensorrt(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` at opset TENSORRT_OPSET, in place: each Gelu (opset 20) expanded to its definition.

    0.5 x (1 + erf(x / sqrt 2)) in five nodes, as torch wrote it before opset
    20; TensorRT fuses the pattern back into one GELU layer.
    """
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Gelu" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        if any(a.name == "approximate" and a.s not in (b"", b"none") for a in node.attribute):
            raise ValueError(f"Gelu {node.name} uses the tanh approximation, which has no expansion here")
        (x,), (y,) = node.input, node.output
        name = node.name or y
        consts = {"sqrt2": math.sqrt(2.0), "one": 1.0, "half": 0.5}
        for key, value in consts.items():
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, np.float32), f"{name}/{key}"))
        steps = [("Div", [x, f"{name}/sqrt2"]), ("Erf", None), ("Add", [None, f"{name}/one"]),
                 ("Mul", [x, None]), ("Mul", [None, f"{name}/half"])]
        previous = None
        for i, (op, inputs) in enumerate(steps):
            inputs = [previous] if inputs is None else [previous if v is None else v for v in inputs]
            output = y if i == len(steps) - 1 else f"{name}/gelu_{i}"
            nodes.append(onnx.helper.make_node(op, inputs, [output], name=f"{name}/gelu_{op.lower()}_{i}"))
            previous = output
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = min(opset.version, TENSORRT_OPSET)
    return model


def convert_fp16(src: Path, dst: Path) -> Path:
    """FP16 weights and activations, FP32 inputs, outputs and head tail; returns `dst`."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    with tempfile.TemporaryDirectory() as tmp:
        folded = onnx.load(str(fold_constants(Path(src), Path(tmp) / "folded.onnx")))
    half = convert_float_to_float16(folded, keep_io_types=True, node_block_list=head_tail_nodes(folded))
    del half.graph.value_info[:]  # some of the converter's type annotations are stale; inference redoes them
    model = ir.from_proto(half)
    model.graph.sort()  # the converter appends the input casts at the end of the node list
    half = ir.to_proto(model)
    _drop_round_trip_casts(half)
    onnx.save(half, str(dst))
    check_onnx(dst)
    return Path(dst)


def _drop_round_trip_casts(model: onnx.ModelProto) -> None:
    """Replace FP32 -> FP16 -> FP32 cast pairs with an Identity, in place.

    The converter casts every output of a kept-FP32 node to FP16 and back
    before the next kept-FP32 node, which would round the whole CCL tail to
    FP16 precision after all.
    """
    types = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    types |= {t.name: t.data_type for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def cast_to(node: onnx.NodeProto, dtype: int) -> bool:
        return node.op_type == "Cast" and onnx.helper.get_attribute_value(node.attribute[0]) == dtype

    dropped = set()
    for first in model.graph.node:
        if not (cast_to(first, onnx.TensorProto.FLOAT16) and types.get(first.input[0]) == onnx.TensorProto.FLOAT):
            continue
        users = consumers.get(first.output[0], [])
        if users and all(cast_to(u, onnx.TensorProto.FLOAT) for u in users):
            for second in users:
                second.CopyFrom(onnx.helper.make_node("Identity", [first.input[0]], list(second.output),
                                                      name=second.name))
            dropped.add(first.name)
    kept = [n for n in model.graph.node if n.name not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept)
