"""CrossFormer backbone: registry, shapes at awkward sizes, padding masks, size of T."""
from __future__ import annotations

import pytest
import torch

from export.models.crossformer import (
    CrossFormerBlock,
    _partition,
    _unpartition,
    build_backbone,
    count_params_and_flops,
    frozen_position_biases,
    list_configs,
)

# One thread: with 2 OpenMP threads on a 2-core machine that is also running
# anything else, every parallel region waits for a time slice (30x slower).
torch.set_num_threads(1)


def test_registry_lists_the_configs_and_rejects_unknown_names():
    assert {"crossformer_t", "crossformer_s", "crossformer_student",
            "crossformer_tiny_test"} <= set(list_configs())
    with pytest.raises(ValueError, match="unknown CrossFormer config"):
        build_backbone("crossformer_xxl", 224)


def test_too_small_input_is_rejected():
    with pytest.raises(ValueError, match="minimum"):
        build_backbone("crossformer_tiny_test", 16)


@pytest.mark.parametrize("name, features", [("crossformer_tiny_test", 128), ("crossformer_student", 384)])
@pytest.mark.parametrize("size", [32, 50, 64, 100])
def test_feature_shape_for_any_input_size(name, features, size):
    torch.manual_seed(0)
    model = build_backbone(name, size).eval()
    assert model.num_features == features
    with torch.no_grad():
        f = model(torch.randn(2, 3, size, size))
    assert f.shape == (2, features)
    assert torch.isfinite(f).all()


@pytest.fixture(scope="module")
def crossformer_t():
    return build_backbone("crossformer_t", 224)


def test_cross_scale_channel_splits_follow_the_paper(crossformer_t):
    model = crossformer_t
    assert [c.out_channels for c in model.patch_embed.convs] == [32, 16, 8, 8]
    assert [c.kernel_size[0] for c in model.patch_embed.convs] == [4, 8, 16, 32]
    merge = model.stages[0].merge.reduce
    assert [(c.kernel_size[0], c.out_channels) for c in merge.convs] == [(2, 64), (4, 64)]


def test_crossformer_t_size_matches_the_paper(crossformer_t):
    params, flops = count_params_and_flops(crossformer_t, 224)
    # Paper: 27.8 M with the 1000-class ImageNet head (0.51 M), 2.9 G multiply-adds.
    assert abs(params - 27.3e6) / 27.3e6 < 0.10
    assert abs(flops - 2.9e9) / 2.9e9 < 0.10


@pytest.mark.parametrize("long_distance", [False, True])
def test_partition_round_trip(long_distance):
    x = torch.randn(2, 12, 8, 3)
    groups, grid = _partition(x, 4, 4, long_distance)
    if long_distance:  # 4 x 4 groups of every 4th token: 3 x 2 tokens each
        assert grid == (3, 2) and groups.shape == (2 * 16, 6, 3)
        assert torch.equal(groups[1], x[0, 0::4, 1::4].reshape(6, 3))
    else:  # 3 x 2 windows of 4 x 4 tokens
        assert grid == (4, 4) and groups.shape == (2 * 6, 16, 3)
        assert torch.equal(groups[1], x[0, 0:4, 4:8].reshape(16, 3))
    assert torch.equal(_unpartition(groups, 2, 12, 8, 4, 4, long_distance), x)


def _block(long_distance: bool) -> CrossFormerBlock:
    torch.manual_seed(0)
    return CrossFormerBlock(8, 2, group_size=7, interval=4, long_distance=long_distance,
                            mlp_ratio=2.0, drop_path=0.0).eval()


def test_padded_short_distance_groups_equal_attention_over_the_real_tokens():
    # 10 x 10 with G = 7 pads to 14 x 14; each window's real tokens must be
    # attended exactly as if the window's crop were the whole map.
    block = _block(long_distance=False)
    x = torch.randn(1, 10, 10, 8)
    with torch.no_grad():
        y = block(x)
        for rows in (slice(0, 7), slice(7, 10)):
            for cols in (slice(0, 7), slice(7, 10)):
                torch.testing.assert_close(y[:, rows, cols], block(x[:, rows, cols]),
                                           rtol=1e-5, atol=1e-5)


def test_padded_long_distance_groups_equal_attention_over_the_real_tokens():
    # 10 x 10 with I = 4 pads to 12 x 12; the group of offset (r, s) holds
    # x[r::4, s::4], of 3 or 2 real tokens per axis.
    block = _block(long_distance=True)
    x = torch.randn(1, 10, 10, 8)
    with torch.no_grad():
        y = block(x)
        for r in range(4):
            for s in range(4):
                torch.testing.assert_close(y[:, r::4, s::4], block(x[:, r::4, s::4]),
                                           rtol=1e-5, atol=1e-5)


def test_frozen_position_biases_change_nothing_and_are_released():
    torch.manual_seed(0)
    model = build_backbone("crossformer_tiny_test", 50).eval()
    x = torch.randn(2, 3, 50, 50)
    with torch.no_grad():
        expected = model(x)
        with frozen_position_biases(model, 50):
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert all(getattr(m, "frozen", None) is None for m in model.modules())


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_backbone("crossformer_tiny_test", 64).train()
    model(torch.randn(2, 3, 64, 64)).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
