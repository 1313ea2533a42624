"""CrossFormer backbone (Wang et al., ICLR 2022), written from the paper.

Tensors between blocks are channels-last, (B, H, W, C). Four stages; each
stage's blocks alternate short-distance attention (SDA: contiguous G x G
windows) and long-distance attention (LDA: tokens sampled every I positions),
both with a dynamic position bias. Cross-scale embeddings make the tokens: the
stem (kernels 4, 8, 16, 32, stride 4) and the merges between stages (kernels
2, 4, stride 2).

Any input of at least 32 x 32 works. A feature map that is not a multiple of G
(SDA) or I (LDA) is zero-padded at the bottom/right before grouping, padded
tokens are masked out of every attention as keys, and the padded rows and
columns are cropped after the attention, so padding never leaks into real
tokens. A map no larger than G x G is attended as one group by both block
kinds (the paper's last stage at 224 x 224).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

MIN_IMG_SIZE = 32  # the total stride; one token at the last stage
# Added to the attention logits of padded keys. Finite so that a group made of
# padding only (possible when the map is smaller than the interval) gives a
# uniform softmax instead of NaN; small enough in magnitude for FP16.
_MASK_VALUE = -1.0e4


@dataclass(frozen=True)
class CrossFormerConfig:
    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    group_size: int = 7
    intervals: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0


_CONFIGS: dict[str, CrossFormerConfig] = {
    # Published configurations (paper, Table 1); drop-path rates as trained there.
    "crossformer_t": CrossFormerConfig(64, (1, 1, 8, 6), (2, 4, 8, 16), drop_path_rate=0.1),
    "crossformer_s": CrossFormerConfig(96, (2, 2, 6, 2), (3, 6, 12, 24), drop_path_rate=0.2),
    # Distillation student for 64 x 64 cell crops. G = 4 and intervals (4, 2, 1, 1)
    # tile the 16 x 16 and 8 x 8 maps of a 64 x 64 input exactly (no padding),
    # every group holding 16 tokens, as G = 7 does for the published models at 224.
    "crossformer_student": CrossFormerConfig(48, (1, 1, 2, 1), (2, 4, 8, 16),
                                             group_size=4, intervals=(4, 2, 1, 1)),
    # Smallest model with the published grouping; for tests and the default bundle.
    "crossformer_tiny_test": CrossFormerConfig(16, (1, 1, 1, 1), (1, 2, 2, 4)),
}


def list_configs() -> list[str]:
    return sorted(_CONFIGS)


def get_config(name: str) -> CrossFormerConfig:
    try:
        return _CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown CrossFormer config {name!r}; known: {list_configs()}") from None


def build_backbone(name: str, img_size: int) -> CrossFormer:
    """The named CrossFormer for square inputs of `img_size` pixels."""
    return CrossFormer(get_config(name), img_size)


def count_params_and_flops(model: nn.Module, img_size: int) -> tuple[int, int]:
    """(parameters, FLOPs) for one 3 x img_size x img_size image.

    FLOPs are multiply-adds, the convention of the CrossFormer paper (half of
    what torch's flop counter reports); convolutions and matrix products only.
    """
    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, img_size, img_size, device=device))
    model.train(was_training)
    return params, counter.get_total_flops() // 2


@contextmanager
def frozen_position_biases(model: nn.Module, img_size: int) -> Iterator[None]:
    """Inside the `with` block, every position bias of `model` is a constant tensor.

    For export: the traced graph then holds each bias as an initializer instead
    of the DPB MLP, which the ONNX constant folder cannot fold (it skips
    LayerNormalization) and which INT8 quantisation should not touch. The
    biases are those of the current weights, computed by one forward pass on
    an img_size x img_size input.
    """
    dpbs = [m for m in model.modules() if isinstance(m, DynamicPositionBias)]
    if not dpbs:
        yield
        return
    for dpb in dpbs:
        dpb.frozen = {}
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size, device=device))
        yield
    finally:
        for dpb in dpbs:
            dpb.frozen = None


def _split_channels(out_dim: int, branches: int) -> list[int]:
    """Halve the channels per larger kernel; the last two kernels get equal shares."""
    dims = [out_dim // 2 ** (i + 1) for i in range(branches - 1)]
    return dims + [out_dim - sum(dims)]


class CrossScaleEmbedding(nn.Module):
    """Parallel convolutions of growing kernel size and one stride, concatenated.

    Padding (k - stride) / 2 makes every branch produce floor(H / stride) x
    floor(W / stride) outputs centred on the same positions. NCHW in and out.
    """

    def __init__(self, in_dim: int, out_dim: int, kernels: tuple[int, ...], stride: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_dim, dim, kernel_size=k, stride=stride, padding=(k - stride) // 2)
            for k, dim in zip(kernels, _split_channels(out_dim, len(kernels)))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class PatchMerging(nn.Module):
    """Cross-scale merge between stages: LayerNorm, then kernels 2 and 4, stride 2."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.reduce = CrossScaleEmbedding(dim, out_dim, kernels=(2, 4), stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).permute(0, 3, 1, 2)
        return self.reduce(x).permute(0, 2, 3, 1)


class DynamicPositionBias(nn.Module):
    """Per-head attention bias from an MLP on relative (dy, dx) offsets.

    Being a function of the offsets rather than a table, it serves any group
    shape, which the padded and whole-map groups need.
    """

    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2, hidden), nn.LayerNorm(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
            nn.Linear(hidden, num_heads),
        )
        # Set by `frozen_position_biases`: biases computed once per grid and reused.
        self.frozen: dict[tuple[int, int], torch.Tensor] | None = None

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        """Bias (heads, N, N) for a group of grid = (rows, cols) tokens, N = rows * cols."""
        if self.frozen is None:
            return self._bias(grid)
        if grid not in self.frozen:
            self.frozen[grid] = self._bias(grid).detach()
        return self.frozen[grid]

    def _bias(self, grid: tuple[int, int]) -> torch.Tensor:
        rows, cols = grid
        device = self.mlp[0].weight.device
        dy = torch.arange(1 - rows, rows, device=device)
        dx = torch.arange(1 - cols, cols, device=device)
        offsets = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1).reshape(-1, 2)
        table = self.mlp(offsets.to(self.mlp[0].weight.dtype))  # ((2 rows - 1)(2 cols - 1), heads)
        ys, xs = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device),
                                indexing="ij")
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        index = ((ys[:, None] - ys[None, :] + rows - 1) * (2 * cols - 1)
                 + xs[:, None] - xs[None, :] + cols - 1)
        return table[index].permute(2, 0, 1)


class GroupAttention(nn.Module):
    """Multi-head self-attention within each group, plus the dynamic position bias."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.pos_bias = DynamicPositionBias(max(dim // 4, 4), num_heads)

    def forward(self, x: torch.Tensor, grid: tuple[int, int],
                key_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B * groups, N, C); key_mask: (groups, N) additive, or None."""
        bg, n, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(bg, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.pos_bias(grid)
        if key_mask is not None:
            groups = key_mask.shape[0]
            attn = (attn.reshape(-1, groups, h, n, n) + key_mask[None, :, None, None, :]).reshape(bg, h, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bg, n, c)
        return self.proj(x)


def _partition(x: torch.Tensor, step_h: int, step_w: int,
               long_distance: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, Hp, Wp, C) -> (B * groups, N, C) and the group grid.

    The map is viewed as (Hp / step_h) x (Wp / step_w) cells of step_h x step_w
    tokens. SDA: a group is one cell. LDA (step = interval): a group is the
    tokens at the same position in every cell, i.e. sampled every `step`.
    """
    b, hp, wp, c = x.shape
    x = x.reshape(b, hp // step_h, step_h, wp // step_w, step_w, c)
    if long_distance:
        grid = (hp // step_h, wp // step_w)
        x = x.permute(0, 2, 4, 1, 3, 5)
    else:
        grid = (step_h, step_w)
        x = x.permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, grid[0] * grid[1], c), grid


def _unpartition(x: torch.Tensor, batch: int, hp: int, wp: int, step_h: int, step_w: int,
                 long_distance: bool) -> torch.Tensor:
    """Inverse of `_partition`: (B * groups, N, C) -> (B, Hp, Wp, C)."""
    c = x.shape[-1]
    if long_distance:
        x = x.reshape(batch, step_h, step_w, hp // step_h, wp // step_w, c).permute(0, 3, 1, 4, 2, 5)
    else:
        x = x.reshape(batch, hp // step_h, wp // step_w, step_h, step_w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, hp, wp, c)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class CrossFormerBlock(nn.Module):
    """Pre-norm transformer block with SDA or LDA grouping. (B, H, W, C) in and out."""

    def __init__(self, dim: int, num_heads: int, group_size: int, interval: int,
                 long_distance: bool, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.group_size = group_size
        self.interval = interval
        self.long_distance = long_distance
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GroupAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._attend(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        if max(h, w) <= self.group_size:
            step_h, step_w, long_distance = h, w, False
        elif self.long_distance:
            step_h = step_w = self.interval
            long_distance = True
        else:
            step_h = step_w = self.group_size
            long_distance = False
        hp, wp = math.ceil(h / step_h) * step_h, math.ceil(w / step_w) * step_w

        key_mask = None
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
            valid = F.pad(x.new_ones(1, h, w, 1), (0, 0, 0, wp - w, 0, hp - h))
            valid, _ = _partition(valid, step_h, step_w, long_distance)
            key_mask = (1.0 - valid[..., 0]) * _MASK_VALUE

        groups, grid = _partition(x, step_h, step_w, long_distance)
        groups = self.attn(groups, grid, key_mask)
        x = _unpartition(groups, b, hp, wp, step_h, step_w, long_distance)
        return x[:, :h, :w, :]


class Stage(nn.Module):
    """Alternating SDA / LDA blocks, then (except after the last stage) a merge."""

    def __init__(self, dim: int, depth: int, num_heads: int, group_size: int, interval: int,
                 mlp_ratio: float, drop_paths: list[float], out_dim: int | None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(
            CrossFormerBlock(dim, num_heads, group_size, interval, long_distance=i % 2 == 1,
                             mlp_ratio=mlp_ratio, drop_path=drop_paths[i])
            for i in range(depth)
        ))
        self.merge = PatchMerging(dim, out_dim) if out_dim is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(self.blocks(x))


class CrossFormer(nn.Module):
    """Image (B, 3, H, W) -> feature vector f (B, num_features)."""

    def __init__(self, config: CrossFormerConfig, img_size: int) -> None:
        super().__init__()
        if img_size < MIN_IMG_SIZE:
            raise ValueError(f"img_size {img_size} is below the minimum {MIN_IMG_SIZE}")
        self.config = config
        self.img_size = img_size
        dim = config.embed_dim
        n_stages = len(config.depths)
        self.num_features = dim * 2 ** (n_stages - 1)

        self.patch_embed = CrossScaleEmbedding(3, dim, kernels=(4, 8, 16, 32), stride=4)
        self.embed_norm = nn.LayerNorm(dim)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        stages = []
        for i, depth in enumerate(config.depths):
            stage_dim = dim * 2 ** i
            first = sum(config.depths[:i])
            stages.append(Stage(
                stage_dim, depth, config.num_heads[i], config.group_size, config.intervals[i],
                config.mlp_ratio, rates[first:first + depth],
                out_dim=2 * stage_dim if i < n_stages - 1 else None,
            ))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        x = self.stages(x)
        return self.norm(x.mean(dim=(1, 2)))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
