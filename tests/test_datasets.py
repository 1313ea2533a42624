"""Folder-per-class data: stratified split (seeded, stored, reused, refused), datasets, samplers."""
from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from edge.runtime.cell_view import cell_views, stand_in_box
from edge.runtime.preprocess import Normalisation, to_model_input
from export.datasets import (SPLITS, ArrayCrops, BalancedSampler, FolderCrops, ShardSampler, class_folders,
                             stratified_split)

COUNTS = {"blast": 40, "eosinophil": 20, "lymphocyte": 13}


def _write_images(root, counts=COUNTS, size=12):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"{i:03d}.png"), rng.integers(0, 256, (size, size + 2, 3), np.uint8))
    return root


@pytest.fixture
def data(tmp_path):
    return _write_images(tmp_path / "data")


def test_split_is_stratified_disjoint_and_complete(data, tmp_path):
    split = stratified_split(data, tmp_path / "split.json", seed=1)
    assert split.class_names == tuple(sorted(COUNTS)) == tuple(class_folders(data))
    everything = [p for s in SPLITS for p in split.paths[s]]
    assert len(everything) == len(set(everything)) == sum(COUNTS.values())
    for label, name in enumerate(split.class_names):
        per_split = {s: sum(lab == label for _, lab in split.items(s)) for s in SPLITS}
        n = COUNTS[name]
        assert per_split["calibration"] == round(0.15 * n) == per_split["validation"]
        assert per_split["train"] == n - 2 * round(0.15 * n)
        assert all(p.startswith(name + "/") for p, lab in split.items("train") if lab == label)


def test_split_is_fixed_by_the_seed(data, tmp_path):
    a = stratified_split(data, tmp_path / "a.json", seed=3)
    b = stratified_split(data, tmp_path / "b.json", seed=3)
    c = stratified_split(data, tmp_path / "c.json", seed=4)
    assert a.paths == b.paths
    assert a.paths["train"] != c.paths["train"]


def test_split_file_is_written_and_reused(data, tmp_path):
    path = tmp_path / "split.json"
    first = stratified_split(data, path, seed=0)
    stored = json.loads(path.read_text())
    assert stored["class_names"] == list(first.class_names) and stored["seed"] == 0
    assert stored["fractions"] == {"train": 0.7, "calibration": 0.15, "validation": 0.15}
    assert stored["splits"]["train"] == list(first.paths["train"])
    # Move one image from train to validation by hand: a reuse must read the file, not redo the split.
    moved = stored["splits"]["train"].pop()
    stored["splits"]["validation"].append(moved)
    path.write_text(json.dumps(stored))
    again = stratified_split(data, path, seed=0)
    assert moved in again.paths["validation"] and moved not in again.paths["train"]


def test_split_file_for_other_data_or_settings_is_refused(data, tmp_path):
    path = tmp_path / "split.json"
    stratified_split(data, path, seed=0)
    with pytest.raises(ValueError, match="classes"):
        stratified_split(data, path, seed=0, class_names=["blast", "eosinophil"])
    with pytest.raises(ValueError, match="seed"):
        stratified_split(data, path, seed=1)
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(data, path, fractions=(0.8, 0.1, 0.1), seed=0)
    cv2.imwrite(str(data / "blast" / "new.png"), np.zeros((12, 12, 3), np.uint8))
    with pytest.raises(ValueError, match="1 images are not listed"):
        stratified_split(data, path, seed=0)
    other = _write_images(tmp_path / "other", {"blast": 5, "eosinophil": 5, "monocyte": 5})
    with pytest.raises(ValueError, match="classes"):
        stratified_split(other, path, seed=0)


def test_given_class_names_set_the_labels(data, tmp_path):
    split = stratified_split(data, tmp_path / "split.json", class_names=["lymphocyte", "blast"])
    labels = {p.split("/")[0]: lab for s in SPLITS for p, lab in split.items(s)}
    assert labels == {"lymphocyte": 0, "blast": 1}
    with pytest.raises(FileNotFoundError):
        stratified_split(data, tmp_path / "x.json", class_names=["blast", "platelet"])
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(data, tmp_path / "y.json", fractions=(0.7, 0.2, 0.2))


def test_limited_split_is_a_per_class_subset(data, tmp_path):
    split = stratified_split(data, tmp_path / "split.json")
    small = split.limited(10)
    for s, cap in zip(SPLITS, (7, 2, 2)):
        counts = Counter(lab for _, lab in small.items(s))
        assert set(counts.values()) == {cap}
        assert set(small.paths[s]) <= set(split.paths[s])


def test_folder_dataset_gives_the_one_cell_view(data, tmp_path):
    split = stratified_split(data, tmp_path / "split.json")
    norm = Normalisation()
    items = split.items("validation")
    image = cv2.imread(str(data / items[0][0]))
    whole = stand_in_box(image.shape, 1.0)
    assert x_equals(FolderCrops(data, items, 16, norm), image, whole, 1.0, norm, items[0][1])
    box = np.array([3.0, 4.0, 13.0, 12.0], np.float32)
    boxes = np.tile(box, (len(items), 1))
    assert x_equals(FolderCrops(data, items, 16, norm, boxes=boxes, context=1.5), image, box, 1.5, norm,
                    items[0][1])


def test_cached_images_keep_their_boxes(data, tmp_path):
    split = stratified_split(data, tmp_path / "split.json")
    items = split.items("validation")
    image = cv2.imread(str(data / items[0][0]))
    h, w = image.shape[:2]
    boxes = np.tile(np.array([0, 0, w, h], np.float32), (len(items), 1))
    cached = FolderCrops(data, items, 4, Normalisation(), cache_side=max(h, w) // 2, boxes=boxes)
    small = cached.image(0)
    scale = small.shape[1] / w
    np.testing.assert_allclose(cached.box(0, small), boxes[0] * scale, rtol=1e-6)


def x_equals(dataset: FolderCrops, image: np.ndarray, box: np.ndarray, context: float, norm: Normalisation,
             label: int) -> bool:
    x, y = dataset[0]
    expected = to_model_input(cell_views(image, box[None], 16, context), None, norm)[0]
    return x.dtype == torch.float32 and y == label and np.array_equal(x.numpy(), expected)


def test_cached_folder_dataset_holds_each_image_decoded_once_and_shrunk(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(3)
    cv2.imwrite(str(root / "a" / "big.png"), rng.integers(0, 256, (60, 90, 3), np.uint8))
    cv2.imwrite(str(root / "a" / "small.png"), rng.integers(0, 256, (20, 10, 3), np.uint8))
    items = [("a/big.png", 0), ("a/small.png", 0)]
    norm = Normalisation()
    dataset = FolderCrops(root, items, 16, norm, cache_side=30)
    (root / "a" / "big.png").unlink()  # served from memory from now on
    big, small = dataset.image(0), dataset.image(1)
    assert big.shape == (20, 30, 3)  # longer side 30, aspect kept
    assert small.shape == (20, 10, 3)  # never enlarged
    x, _ = dataset[0]
    view = cell_views(big, stand_in_box(big.shape, 1.0)[None], 16, 1.0)
    np.testing.assert_array_equal(x.numpy(), to_model_input(view, None, norm)[0])
    with pytest.raises(ValueError, match="below the input size"):
        FolderCrops(root, items[1:], 16, norm, cache_side=8)


def test_augmented_dataset_is_seeded_per_epoch():
    images = np.random.default_rng(0).integers(0, 256, (4, 20, 20, 3), np.uint8)

    def jitter(image, rng):
        return np.clip(image.astype(int) + rng.integers(-20, 21), 0, 255).astype(np.uint8)

    def epoch(dataset, e):
        dataset.set_epoch(e)
        return torch.stack([dataset[i][0] for i in range(4)])

    a = ArrayCrops(images, [0, 1, 0, 1], 20, Normalisation(), jitter, seed=5)
    b = ArrayCrops(images, [0, 1, 0, 1], 20, Normalisation(), jitter, seed=5)
    assert torch.equal(epoch(a, 0), epoch(b, 0))
    assert not torch.equal(epoch(a, 1), epoch(b, 0))
    assert torch.equal(epoch(a, 1), epoch(b, 1))
    with pytest.raises(ValueError, match="labels"):
        ArrayCrops(images, [0, 1], 20, Normalisation())


def test_balanced_sampler_draws_classes_equally():
    labels = np.array([0] * 90 + [1] * 10 + [2] * 30)
    sampler = BalancedSampler(labels, seed=0)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == len(labels)
    counts = Counter(labels[drawn])
    assert max(counts.values()) - min(counts.values()) <= 1
    # The small class recurs evenly: each of its 10 images 4 or 5 times in an epoch of ~43 draws.
    assert set(Counter(i for i in drawn if labels[i] == 1).values()) <= {4, 5}
    sampler.set_epoch(1)
    assert list(sampler) != drawn
    sampler.set_epoch(0)
    assert list(sampler) == drawn


def test_balanced_sampler_shards_one_list_over_ranks():
    labels = np.array([0] * 25 + [1] * 6)
    shards = [BalancedSampler(labels, seed=2, rank=r, world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    full = shards[0].epoch_indices()
    assert len(shards[0]) == len(shards[1]) == 16 and len(full) == 32
    assert list(shards[0]) == full[0::2].tolist() and list(shards[1]) == full[1::2].tolist()
    with pytest.raises(ValueError, match="rank"):
        BalancedSampler(labels, rank=2, world_size=2)


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))
