"""Exported CrossFormer-CCL runs in onnxruntime and matches torch."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.models.classifier import build_classifier
from export.onnx_export import export_onnx

# One thread: with 2 OpenMP threads on a 2-core machine that is also running
# anything else, every parallel region waits for a time slice (30x slower).
torch.set_num_threads(1)
IMG = 64  # not a multiple of the group size: the exported graph carries the padding masks


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_classifier("crossformer_tiny_test", IMG, num_classes=5, head="ccl")
    path = export_onnx(model, IMG, tmp_path_factory.mktemp("onnx") / "classifier.onnx")
    return model.eval(), path


def test_graph_has_named_io_and_a_dynamic_batch(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["scores"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, IMG, IMG]
    # The position-bias MLPs were evaluated at export: no ReLU left in the graph.
    assert "Relu" not in {n.op_type for n in graph.node}


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_torch(exported, batch):
    model, path = exported
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run(None, {"image": x.numpy()})
    assert got.shape == (batch, 5)
    # D is small at initialisation (about 0.02), so hold it to a relative tolerance too.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("threads", [None, 2])
def test_the_device_runner_lets_idle_workers_sleep(exported, threads):
    """The two models' pools, the record writer and the loop share the cores: spinning workers
    halved the throughput on two cores (docs/performance.md)."""
    from edge.runtime.backends.onnxruntime import OrtRunner
    runner = OrtRunner(exported[1], threads=threads)
    options = runner._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
