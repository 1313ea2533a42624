"""The default bundle's detector in FP32, called like a torch module, for the torch baselines.

The detector's torch checkpoint (its training run, runs/det-bccd-student) is
not kept on the development machine; the bundle holds only the INT8 (QDQ)
ONNX graph. `dequantised` turns that graph back into FP32: every weight's
DequantizeLinear becomes a float initializer and every activation's
QuantizeLinear/DequantizeLinear pair is bypassed, so the convolutions run in
FP32 on exactly the weights the engine runs in INT8.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper


def dequantised(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    reads = {}  # a quantised tensor -> the float tensor to read instead
    nodes, floats = [], []
    for node in g.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            floats.append(numpy_helper.from_array(_dequantise(node, inits), node.output[0]))
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            reads[node.output[0]] = reads.get(node.input[0], node.input[0])
        else:
            node.input[:] = [reads.get(name, name) for name in node.input]
            nodes.append(node)
    nodes += [helper.make_node("Identity", [reads[o.name]], [o.name]) for o in g.output if o.name in reads]
    used = {name for node in nodes for name in node.input}
    kept = [i for i in g.initializer if i.name in used and i.name not in {f.name for f in floats}]
    graph = helper.make_graph(nodes, g.name, g.input, g.output, kept + floats)
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _dequantise(node: onnx.NodeProto, inits: dict) -> np.ndarray:
    q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) if len(node.input) > 2
            else np.zeros_like(scale))
    if scale.ndim == 1 and q.ndim > 1:  # per channel, along `axis` (default 1)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def write_fp32(int8_model: Path, out: Path) -> Path:
    onnx.save(dequantised(onnx.load(str(int8_model))), str(out))
    return out


class OrtDetector:
    """An ONNX Runtime detector session called like the torch detector: tensor in, (boxes, scores) out."""

    def __init__(self, path: Path, threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = self.session.run(["boxes", "scores"], {self.input: x.numpy()})
        return torch.from_numpy(boxes), torch.from_numpy(scores)
