"""A small anchor-free centre-heatmap detector (CenterNet-style) for nucleated cells.

One architecture, several named configurations (``DETECTOR_CONFIGS``), one
factory (``build_detector``).

Input: ``image`` (B, 3, T, T) float32, RGB, normalised by
``edge.runtime.preprocess.to_model_input``. T must be a multiple of the backbone's
deepest stride (32); other sizes are padded inside the model.

Network: a depthwise-separable CNN backbone with four stages (strides 4, 8, 16,
32), a light FPN that upsamples back to stride 4, and three heads at stride 4:

- ``heatmap`` (B, 1, T/4, T/4): logits of the centre heatmap (sigmoid gives the
  probability that a cell centre falls in that cell); bias initialised to -2.19
  (prior 0.1) as in CenterNet;
- ``size`` (B, 2, T/4, T/4): log(w / size_ref), log(h / size_ref), pixels;
- ``offset`` (B, 2, T/4, T/4): sub-cell offset of the centre in output-cell
  units, target in [0, 1).

A centre at input pixel c (continuous coordinates, pixel i covers [i, i+1))
lives in output cell floor(c / stride) with offset c / stride - floor(c / stride).

``DecodedDetector`` wraps a trained model and decodes in the graph, with static
shapes apart from the batch: sigmoid, 3x3 max-pool peak test, flatten, top-k
with a fixed K, gather of size and offset at the peaks. It returns ``boxes``
(B, K, 4) x1, y1, x2, y2 in input-tile pixels and ``scores`` (B, K) in [0, 1],
sorted by score, highest first. No NMS, nothing data-dependent: the graph runs
in ONNX Runtime and TensorRT alike. Consumers drop rows below their score
threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DetectorConfig", "DETECTOR_CONFIGS", "CenterNetDetector", "DecodedDetector",
    "build_detector", "list_detectors", "decode_heads",
]


@dataclass(frozen=True)
class DetectorConfig:
    name: str
    stem: int                    # channels of the stride-2 stem
    widths: tuple[int, ...]      # channels of the stages at strides 4, 8, 16, 32
    depths: tuple[int, ...]      # blocks per stage (the first block of a stage downsamples)
    fpn_channels: int            # channels of the top-down path
    head_channels: int           # hidden channels of each head
    stride: int = 4              # output stride of the heads (fixed by design)
    size_ref: float = 32.0       # size head predicts log(size / size_ref)
    max_detections: int = 100    # K of the decoded graph
    heatmap_prior: float = 0.1   # bias init of the heatmap: log(p / (1 - p)) = -2.197

    @property
    def max_stride(self) -> int:
        return 2 ** (len(self.widths) + 1)


DETECTOR_CONFIGS: dict[str, DetectorConfig] = {
    # Tests and the skeleton's default bundle: ~48 k parameters, trains on a
    # 2-core CPU in minutes on 256 x 256 tiles.
    "detector_tiny_test": DetectorConfig(
        name="detector_tiny_test", stem=16, widths=(24, 48, 64, 96), depths=(1, 2, 2, 1),
        fpn_channels=48, head_channels=32),
    # Distillation student of detector_small for the default bundle: ~84 k parameters.
    "detector_student": DetectorConfig(
        name="detector_student", stem=16, widths=(32, 64, 96, 128), depths=(1, 2, 2, 1),
        fpn_channels=64, head_channels=32),
    # Real training: ~0.46 M parameters.
    "detector_small": DetectorConfig(
        name="detector_small", stem=32, widths=(48, 96, 192, 320), depths=(2, 3, 4, 2),
        fpn_channels=96, head_channels=64),
}


def list_detectors() -> list[str]:
    return sorted(DETECTOR_CONFIGS)


# ---------------------------------------------------------------- blocks

class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DWSepBlock(nn.Module):
    """Depthwise 3x3 (optionally strided) + pointwise 1x1; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.dw = ConvBNReLU(cin, cin, 3, stride, groups=cin)
        self.pw = ConvBNReLU(cin, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(x))
        return self.act(y + x if self.residual else y)


class Backbone(nn.Module):
    """Stem at stride 2, then one stage per width, each halving the resolution."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.stem = ConvBNReLU(3, cfg.stem, 3, 2)
        stages, cin = [], cfg.stem
        for width, depth in zip(cfg.widths, cfg.depths):
            blocks = [DWSepBlock(cin, width, stride=2)]
            blocks += [DWSepBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats  # strides 4, 8, 16, 32


class TopDown(nn.Module):
    """FPN-lite: 1x1 laterals, nearest x2 upsampling and add, a 3x3 DW-separable
    smoothing block at each level, down to the stride-4 level."""

    def __init__(self, widths: tuple[int, ...], ch: int):
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNReLU(w, ch, 1) for w in widths)
        self.smooth = nn.ModuleList(DWSepBlock(ch, ch) for _ in widths[:-1])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.smooth[i](x + self.lateral[i](feats[i]))
        return x


def _head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(ConvBNReLU(cin, cin, 3, groups=cin), ConvBNReLU(cin, hidden, 1),
                         nn.Conv2d(hidden, cout, 1))


# ---------------------------------------------------------------- model

class CenterNetDetector(nn.Module):
    """forward(x) -> {"heatmap": logits (B,1,h,w), "size": (B,2,h,w), "offset": (B,2,h,w)}."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        if cfg.stride != 4 or len(cfg.widths) != len(cfg.depths):
            raise ValueError(f"bad detector config {cfg}")
        self.config = cfg
        self.backbone = Backbone(cfg)
        self.neck = TopDown(cfg.widths, cfg.fpn_channels)
        self.heatmap = _head(cfg.fpn_channels, cfg.head_channels, 1)
        self.size = _head(cfg.fpn_channels, cfg.head_channels, 2)
        self.offset = _head(cfg.fpn_channels, cfg.head_channels, 2)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        p = self.config.heatmap_prior
        last = self.heatmap[-1]
        nn.init.normal_(last.weight, std=0.01)
        nn.init.constant_(last.bias, math.log(p / (1 - p)))
        for head in (self.size, self.offset):
            nn.init.normal_(head[-1].weight, std=0.01)
        nn.init.constant_(self.offset[-1].bias, 0.5)

    @property
    def stride(self) -> int:
        return self.config.stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        m = self.config.max_stride
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:  # static at export time: sizes are fixed apart from the batch
            x = F.pad(x, (0, pw, 0, ph))
        y = self.neck(self.backbone(x))
        out = {"heatmap": self.heatmap(y), "size": self.size(y), "offset": self.offset(y)}
        if ph or pw:
            oh, ow = -(-h // self.stride), -(-w // self.stride)
            out = {k: v[..., :oh, :ow] for k, v in out.items()}
        return out


def decode_heads(heads: dict[str, torch.Tensor], stride: int, size_ref: float, k: int,
                 heatmap_is_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads -> (boxes (B, K, 4) x1y1x2y2 pixels, scores (B, K)), static shapes.

    K is capped at the number of output cells. Scores of non-peaks are 0, so
    when fewer than K peaks exist the tail rows carry score 0.
    """
    heat = heads["heatmap"]
    if heatmap_is_logits:
        heat = torch.sigmoid(heat)
    b, _, h, w = heat.shape
    peak = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (peak == heat).to(heat.dtype)
    k = min(int(k), h * w)
    scores, idx = torch.topk(heat.reshape(b, h * w), k, dim=1)
    # Integer arithmetic in float (exact below 2**24) keeps int64 maths out of the graph.
    idx_f = idx.to(heat.dtype)
    ys = torch.floor(idx_f / w)
    xs = idx_f - ys * w
    gidx = idx.unsqueeze(1).expand(b, 2, k)
    off = torch.gather(heads["offset"].reshape(b, 2, h * w), 2, gidx)     # (B, 2, K)
    logsz = torch.gather(heads["size"].reshape(b, 2, h * w), 2, gidx)     # (B, 2, K)
    cx = (xs + off[:, 0]) * stride
    cy = (ys + off[:, 1]) * stride
    wh = torch.exp(logsz.clamp(-8.0, 8.0)) * size_ref
    half_w, half_h = 0.5 * wh[:, 0], 0.5 * wh[:, 1]
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2)
    return boxes, scores


class DecodedDetector(nn.Module):
    """Export wrapper: forward(image) -> (boxes (B, K, 4), scores (B, K))."""

    def __init__(self, model: CenterNetDetector, max_detections: int | None = None):
        super().__init__()
        self.model = model
        self.max_detections = int(max_detections or model.config.max_detections)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.model.config
        return decode_heads(self.model(image), cfg.stride, cfg.size_ref, self.max_detections)


def build_detector(name: str, max_detections: int = 100, **overrides) -> CenterNetDetector:
    """Build a named detector configuration; `overrides` replace config fields."""
    if name not in DETECTOR_CONFIGS:
        raise KeyError(f"unknown detector {name!r}; known: {', '.join(list_detectors())}")
    cfg = replace(DETECTOR_CONFIGS[name], max_detections=int(max_detections), **overrides)
    return CenterNetDetector(cfg)
