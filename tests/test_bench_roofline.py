"""Operations per input counted from an ONNX graph, checked against a hand count."""
import numpy as np
import pytest

from edge.bench.roofline import RooflineUnavailable, count_ops, measure_peak, node_ops

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def tiny_model(path):
    """Conv 3->4 (3x3, pad 1) on 8x8, grouped 1x1 Conv 4->4 (2 groups), flatten, Gemm to 10 (B
    transposed), MatMul to 6, with Relu and Add in between that the count leaves out."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.random((4, 3, 3, 3)), "w2": rng.random((4, 2, 1, 1)), "wg": rng.random((10, 256)),
               "wm": rng.random((10, 6)), "bias": rng.random(6)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], group=2),
        helper.make_node("Reshape", ["c2", "flat"], ["f"]),
        helper.make_node("Gemm", ["f", "wg"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "wm"], ["m"]),
        helper.make_node("Add", ["m", "bias"], ["y"]),
    ]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "flat"))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_counts_convolutions_and_matrix_products_per_input(tmp_path):
    path = str(tiny_model(tmp_path / "tiny.onnx"))
    conv = 2 * (4 * 8 * 8) * (3 * 3 * 3)   # 13,824
    grouped = 2 * (4 * 8 * 8) * (2 * 1 * 1)  # 1,024: each output sees the 2 channels of its group
    gemm = 2 * 10 * 256                    # 5,120
    matmul = 2 * 6 * 10                    # 120
    for batch in (1, 3):
        ops = count_ops(path, "x", (batch, 3, 8, 8))
        assert ops["by_op"] == {"Conv": batch * (conv + grouped), "Gemm": batch * gemm, "MatMul": batch * matmul}
        assert ops["ops_per_input"] == conv + grouped + gemm + matmul == 20_088


def test_node_ops_of_transposed_convolution_and_batched_matmul():
    # ConvTranspose: every input element spreads over C_out/groups x k x k outputs
    assert node_ops("ConvTranspose", [[1, 8, 5, 5], [8, 2, 3, 3]], [[1, 2, 11, 11]]) == 2 * 8 * 25 * 2 * 9
    # attention-style product: (2, 4, 16, 8) x (2, 4, 8, 16) -> 2 x 4 x 16 x 16 outputs of 8 products each
    assert node_ops("MatMul", [[2, 4, 16, 8], [2, 4, 8, 16]], [[2, 4, 16, 16]]) == 2 * 2 * 4 * 16 * 16 * 8
    assert node_ops("Relu", [[1, 8]], [[1, 8]]) == 0


def test_peak_of_unknown_precision_is_refused_with_a_reason():
    with pytest.raises(RooflineUnavailable, match="bf16"):
        measure_peak("bf16", 1)
