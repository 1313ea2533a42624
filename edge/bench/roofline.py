"""Roofline figures: a model's operations per input, and the machine's measured peak.

Operations are counted from the graph as ONNX Runtime runs it with graph
optimisations off, i.e. the ONNX file's own nodes: a profiled run on one input
reports every node's input and output shapes, weights included, so no ONNX
tooling is needed on the device. A multiply-add is two operations. Counted:
convolutions (Conv, ConvInteger, QLinearConv, ConvTranspose) and matrix products
(MatMul, MatMulInteger, QLinearMatMul, Gemm); element-wise work, pooling and
normalisation are left out, as a roofline against a matrix-product peak does.

The peak is a large matrix product timed on the spot with the benchmark's
thread count: fp32 with NumPy's BLAS (in a child process, since BLAS fixes its
thread count when it loads); int8 (uint8 x int8 MatMulInteger) and fp16 with
ONNX Runtime, on a graph built with the onnx package when it is installed.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

PEAK_SIZE = 2048

# op -> (index of the data input, index of the weight input) for convolutions
_CONVOLUTIONS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
# op -> index of the left operand whose last axis is the reduced one
_MATRIX_PRODUCTS = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0}

_NUMPY_PEAK = """
import sys, time
import numpy as np
n, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
a @ b
times = []
for _ in range(repeats):
    start = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - start)
print(2 * n ** 3 / min(times))
"""


class RooflineUnavailable(RuntimeError):
    """A figure this machine or installation cannot measure; the message says what is missing."""


def node_ops(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> int:
    """Operations (2 per multiply-add) of one node from its input and output shapes; 0 if not counted."""
    if op in _CONVOLUTIONS:
        _, w = _CONVOLUTIONS[op]
        return 2 * _prod(outputs[0]) * _prod(inputs[w][1:])     # weight: (C_out, C_in / groups, k...)
    if op == "ConvTranspose":
        return 2 * _prod(inputs[0]) * _prod(inputs[1][1:])     # weight: (C_in, C_out / groups, k...)
    if op in _MATRIX_PRODUCTS:
        return 2 * _prod(outputs[0]) * inputs[_MATRIX_PRODUCTS[op]][-1]
    if op == "Gemm":
        m = outputs[0][0]
        return 2 * _prod(outputs[0]) * (_prod(inputs[0]) // m)  # A is (M, K) or, transposed, (K, M)
    return 0


def _prod(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


@functools.lru_cache(maxsize=16)
def count_ops(model_path: str, input_name: str, input_shape: tuple[int, ...], dtype: str = "float32"
              ) -> dict:
    """{"ops_per_input", "by_op"} for one run on `input_shape`, divided by its batch."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="edge-bench-ops-") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        session.run(None, {input_name: np.zeros(input_shape, dtype=dtype)})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, int] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or "op_name" not in args or "output_type_shape" not in args:
            continue
        ops = node_ops(args["op_name"], [_shape(t) for t in args.get("input_type_shape", [])],
                       [_shape(t) for t in args["output_type_shape"]])
        if ops:
            by_op[args["op_name"]] = by_op.get(args["op_name"], 0) + ops
    return {"ops_per_input": sum(by_op.values()) // input_shape[0], "by_op": by_op}


def _shape(typed: dict) -> list[int]:
    """ONNX Runtime's profile writes each tensor as {element type: shape}."""
    return list(next(iter(typed.values())))


@functools.lru_cache(maxsize=8)
def measure_peak(precision: str, threads: int | None) -> float:
    """Operations per second of a PEAK_SIZE square matrix product at this precision, best of 5."""
    if precision == "fp32":
        env = dict(os.environ)
        if threads:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(threads)
        done = subprocess.run([sys.executable, "-c", _NUMPY_PEAK, str(PEAK_SIZE), "5"], env=env,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RooflineUnavailable(f"the NumPy matrix-product run failed: {done.stderr.strip()[-200:]}")
        return float(done.stdout.strip())
    if precision in ("int8", "fp16"):
        return _ort_matmul_peak(precision, threads)
    raise RooflineUnavailable(f"no peak measurement for precision {precision!r}")


def _ort_matmul_peak(precision: str, threads: int | None) -> float:
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise RooflineUnavailable(f"measuring the {precision} peak needs the onnx package "
                                  "(pip install onnx)") from None
    n = PEAK_SIZE
    rng = np.random.default_rng(0)
    if precision == "int8":
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        weight = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "b")
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        a = rng.random((n, n)).astype(np.float16)
        weight = numpy_helper.from_array(rng.random((n, n)).astype(np.float16), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        a_type = y_type = TensorProto.FLOAT16
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("a", a_type, [n, n])],
                              [helper.make_tensor_value_info("y", y_type, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise RooflineUnavailable(f"ONNX Runtime has no {precision} matrix product here: {exc}") from None
    session.run(None, {"a": a})
    times = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, {"a": a})
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times)
