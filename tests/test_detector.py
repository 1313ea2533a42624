"""The centre-heatmap detector: shapes, in-graph decoding, targets, ONNX parity, training."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.detector_training import (  # noqa: E402
    PairSource, SyntheticSource, TileDataset, collate_tiles, cut_tile, detector_loss,
    encode_targets, evaluate_detector, train_detector,
)
from export.models.detector import (  # noqa: E402
    DETECTOR_CONFIGS, DecodedDetector, build_detector, decode_heads,
)

torch.set_num_threads(2)
TILE = 128


def _busy_model(seed: int = 0):
    """A tiny model with non-trivial BN statistics and a varied heatmap (no score ties)."""
    torch.manual_seed(seed)
    m = build_detector("detector_tiny_test", max_detections=50)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.1)
    torch.nn.init.normal_(m.heatmap[-1].weight, std=1.0)
    return m.eval()


def test_registry_and_unknown_name():
    assert {"detector_tiny_test", "detector_small"} <= set(DETECTOR_CONFIGS)
    with pytest.raises(KeyError, match="detector_tiny_test"):
        build_detector("nope")
    assert build_detector("detector_small", max_detections=7).config.max_detections == 7


@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_raw_and_decoded(batch):
    m = build_detector("detector_tiny_test", max_detections=40).eval()
    x = torch.randn(batch, 3, TILE, TILE)
    with torch.no_grad():
        heads = m(x)
        boxes, scores = DecodedDetector(m)(x)
    assert heads["heatmap"].shape == (batch, 1, TILE // 4, TILE // 4)
    assert heads["size"].shape == (batch, 2, TILE // 4, TILE // 4)
    assert heads["offset"].shape == (batch, 2, TILE // 4, TILE // 4)
    assert boxes.shape == (batch, 40, 4) and boxes.dtype == torch.float32
    assert scores.shape == (batch, 40) and scores.dtype == torch.float32
    assert torch.all((scores >= 0) & (scores <= 1))
    assert torch.all(scores[:, :-1] >= scores[:, 1:])  # sorted, best first


def test_input_not_multiple_of_32_is_padded_inside():
    m = build_detector("detector_tiny_test").eval()
    with torch.no_grad():
        heads = m(torch.randn(1, 3, 100, 72))
    assert heads["heatmap"].shape == (1, 1, 25, 18)


def test_heatmap_bias_prior():
    m = build_detector("detector_tiny_test")
    assert m.heatmap[-1].bias.item() == pytest.approx(-2.197, abs=1e-3)


def test_decode_hand_built_heatmap():
    h = w = 16
    stride, size_ref = 4, 32.0
    logit = torch.full((1, 1, h, w), -20.0)
    size = torch.zeros(1, 2, h, w)
    off = torch.zeros(1, 2, h, w)
    # Three peaks: (cell x, cell y, prob, offset x, offset y, width, height).
    peaks = [(3, 5, 0.9, 0.25, 0.5, 40.0, 20.0), (10, 2, 0.6, 0.0, 0.75, 32.0, 32.0),
             (12, 12, 0.95, 0.5, 0.5, 16.0, 64.0)]
    for cx, cy, p, ox, oy, bw, bh in peaks:
        logit[0, 0, cy, cx] = math.log(p / (1 - p))
        off[0, :, cy, cx] = torch.tensor([ox, oy])
        size[0, :, cy, cx] = torch.tensor([math.log(bw / size_ref), math.log(bh / size_ref)])
    # A shoulder next to the strongest peak must not count as a peak.
    logit[0, 0, 12, 13] = math.log(0.9 / 0.1)
    boxes, scores = decode_heads({"heatmap": logit, "size": size, "offset": off},
                                 stride, size_ref, k=5)
    assert boxes.shape == (1, 5, 4) and scores.shape == (1, 5)
    expect_order = [2, 0, 1]
    np.testing.assert_allclose(scores[0, :3].numpy(), [peaks[i][2] for i in expect_order],
                               atol=1e-6)
    assert torch.all(scores[0, 3:] < 1e-6)
    for row, i in enumerate(expect_order):
        cx, cy, _, ox, oy, bw, bh = peaks[i]
        px, py = (cx + ox) * stride, (cy + oy) * stride
        np.testing.assert_allclose(boxes[0, row].numpy(),
                                   [px - bw / 2, py - bh / 2, px + bw / 2, py + bh / 2], atol=1e-4)


def test_decode_k_larger_than_cells_is_capped():
    heads = {"heatmap": torch.randn(2, 1, 4, 4), "size": torch.zeros(2, 2, 4, 4),
             "offset": torch.zeros(2, 2, 4, 4)}
    boxes, scores = decode_heads(heads, 4, 32.0, k=100)
    assert boxes.shape == (2, 16, 4) and scores.shape == (2, 16)


def test_target_encoding_peak_at_centre():
    boxes = np.array([[40.0, 20.0, 80.0, 60.0], [100.0, 90.0, 122.0, 126.0]], np.float32)
    t = encode_targets(boxes, (32, 32), stride=4, size_ref=32.0)
    assert t["heatmap"].shape == (1, 32, 32) and t["size"].shape == (2, 32, 32)
    for x1, y1, x2, y2 in boxes:
        qx, qy = (x1 + x2) / 2 / 4, (y1 + y2) / 2 / 4
        ix, iy = int(qx), int(qy)
        assert t["heatmap"][0, iy, ix] == 1.0 and t["mask"][0, iy, ix] == 1.0
        # The splat falls off around the centre and is a local maximum there.
        patch = t["heatmap"][0, iy - 1:iy + 2, ix - 1:ix + 2]
        assert patch.max() == 1.0 and (patch < 1.0).sum() == 8
        np.testing.assert_allclose(t["offset"][:, iy, ix], [qx - ix, qy - iy], atol=1e-6)
        np.testing.assert_allclose(np.exp(t["size"][:, iy, ix]) * 32.0, [x2 - x1, y2 - y1],
                                   rtol=1e-5)
    assert t["mask"].sum() == 2
    # Decoding the targets as if they were predictions recovers the boxes.
    logits = torch.from_numpy(np.log(np.clip(t["heatmap"], 1e-6, 1 - 1e-6)
                                     / np.clip(1 - t["heatmap"], 1e-6, 1))[None])
    dec_boxes, dec_scores = decode_heads(
        {"heatmap": logits, "size": torch.from_numpy(t["size"][None]),
         "offset": torch.from_numpy(t["offset"][None])}, 4, 32.0, k=2)
    got = sorted(dec_boxes[0].numpy().tolist())
    np.testing.assert_allclose(got, sorted(boxes.tolist()), atol=1e-3)


def test_cut_tile_keeps_centres_inside_and_clips():
    img = np.zeros((200, 300, 3), np.uint8)
    boxes = np.array([[0, 0, 40, 40], [100, 100, 150, 160], [250, 150, 300, 200]], np.float32)
    rng = np.random.default_rng(0)
    for _ in range(50):
        tile, b = cut_tile(img, boxes, 128, rng, (0.8, 1.25), flips=True)
        assert tile.shape == (128, 128, 3)
        assert np.all(b >= 0) and np.all(b <= 128)
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])


def test_cut_tile_flips_follow_the_pixels():
    """A bright square moves with its box under every flip and rotation."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[10:20, 30:50] = 255
    boxes = np.array([[30, 10, 50, 20]], np.float32)
    rng = np.random.default_rng(1)
    for _ in range(30):
        tile, b = cut_tile(img, boxes, 64, rng, flips=True)
        ys, xs = np.nonzero(tile[..., 0])
        np.testing.assert_allclose(b[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    dec = DecodedDetector(_busy_model()).eval()
    path = tmp_path / "detector.onnx"
    x = torch.randn(2, 3, TILE, TILE)
    torch.onnx.export(dec, (x,), str(path), dynamo=True, input_names=["image"],
                      output_names=["boxes", "scores"], opset_version=18,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                      verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = {o.name: o.shape for o in sess.get_outputs()}
    assert outs["boxes"][1:] == [50, 4] and outs["scores"][1:] == [50]
    for batch in (1, 3):
        xi = torch.randn(batch, 3, TILE, TILE, generator=torch.Generator().manual_seed(batch))
        ob, osc = sess.run(["boxes", "scores"], {"image": xi.numpy()})
        with torch.no_grad():
            tb, ts = dec(xi)
        assert ob.shape == (batch, 50, 4) and osc.shape == (batch, 50)
        np.testing.assert_allclose(osc, ts.numpy(), atol=1e-4)
        # Rows whose score is tied with a neighbour may swap places; compare the rest.
        s = ts.numpy()
        gap = np.minimum(np.abs(np.diff(s, axis=1, prepend=np.inf)),
                         np.abs(np.diff(s, axis=1, append=-np.inf)))
        distinct = gap > 1e-5
        assert distinct.mean() > 0.8
        np.testing.assert_allclose(ob[distinct], tb.numpy()[distinct], atol=1e-3)


def test_dataset_yields_normalised_tiles_and_targets():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (150, 170, 3), dtype=np.uint8)
    ds = TileDataset(PairSource([(img, np.array([[20, 20, 60, 70]], np.float32))]), 96, 5, seed=3)
    items = list(ds)
    assert len(items) == 5
    x, t = items[0]
    assert x.shape == (3, 96, 96) and x.dtype == torch.float32
    assert set(t) == {"heatmap", "size", "offset", "mask"} and t["heatmap"].shape == (1, 24, 24)
    again = list(ds)
    assert torch.equal(again[0][0], x)  # same (seed, epoch) -> same data
    ds.epoch = 1
    assert not torch.equal(list(ds)[0][0], x)


def _small_synthetic_source():
    synthetic = pytest.importorskip("edge.synthetic.smear")
    cfg = synthetic.SmearConfig(width=256, height=192, nucleated_per_mpx=120.0)
    return SyntheticSource(base=cfg)


def test_short_training_reduces_loss_and_resumes(tmp_path):
    source = _small_synthetic_source()
    x, t = collate_tiles(list(TileDataset(source, TILE, 16, seed=99)))  # held-out batch

    def held_out_loss(m):
        m.train()  # batch statistics, as during training
        with torch.no_grad():
            return detector_loss(m(x), t)[0].item()

    torch.manual_seed(0)
    model = build_detector("detector_tiny_test")
    before = held_out_loss(model)
    hist = train_detector(model, tile_size=TILE, epochs=3, steps_per_epoch=8, batch_size=8,
                          seed=0, lr=5e-3, warmup_steps=5, source=source, ckpt_dir=tmp_path,
                          log=None, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert held_out_loss(model) < 0.9 * before
    assert (tmp_path / "last.pt").exists()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["config_name"] == "detector_tiny_test"
    # Resume: one more epoch continues from the checkpoint instead of starting over.
    model2 = build_detector("detector_tiny_test")
    hist2 = train_detector(model2, tile_size=TILE, epochs=4, steps_per_epoch=8, batch_size=8,
                           seed=0, lr=5e-3, warmup_steps=5, source=source, ckpt_dir=tmp_path,
                           log=None, progress=False)
    assert [h["epoch"] for h in hist2] == [1, 2, 3, 4]
    assert hist2[:3] == hist
    # Evaluation runs end to end (no quality bar for so short a run).
    tiles = [cut_tile(*source.sample(np.random.default_rng(i)), TILE, np.random.default_rng(i))
             for i in range(4)]
    metrics = evaluate_detector(model2, tiles, score_threshold=0.3)
    assert 0.0 <= metrics["recall"] <= 1.0 and 0.0 <= metrics["precision"] <= 1.0


def test_loss_is_zero_mask_safe():
    heads = {"heatmap": torch.full((1, 1, 8, 8), -5.0), "size": torch.zeros(1, 2, 8, 8),
             "offset": torch.zeros(1, 2, 8, 8)}
    targets = encode_targets(np.zeros((0, 4), np.float32), (8, 8), 4, 32.0)
    loss, parts = detector_loss(heads, {k: torch.from_numpy(v)[None] for k, v in targets.items()})
    assert math.isfinite(loss.item()) and parts["size"] == 0.0
