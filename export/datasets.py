"""Cell-crop data for classifier training: a folder per class, a stored split, datasets and samplers.

A split assigns every image of a class folder to train, calibration or
validation, stratified by class and fixed by a seed. It is written to a JSON
file (paths relative to the data folder) and read back on later runs, so a
resumed or repeated run trains, calibrates and validates on the same images.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from edge.runtime.atomic import write_atomic
from edge.runtime.cell_view import cell_views, stand_in_box
from edge.runtime.frames import IMAGE_SUFFIXES
from edge.runtime.preprocess import Normalisation, to_model_input

SPLITS = ("train", "calibration", "validation")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
SPLIT_FORMAT = 1

Augmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def class_folders(root: str | os.PathLike) -> list[str]:
    """The class names of a folder-per-class data set: its sub-folders, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"{root} has no class folders")
    return names


def list_images(root: str | os.PathLike, class_names: Sequence[str]) -> dict[str, list[str]]:
    """Per class, its image files as sorted POSIX paths relative to `root` (sub-folders included)."""
    root = Path(root)
    found = {}
    for name in class_names:
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder {folder} does not exist")
        found[name] = sorted(p.relative_to(root).as_posix() for p in folder.rglob("*")
                             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                             and not p.name.startswith("."))
        if not found[name]:
            raise ValueError(f"class folder {folder} holds no images")
    return found


@dataclass(frozen=True)
class Split:
    """Relative image paths per split; an image's label is the index of its class folder in `class_names`."""

    class_names: tuple[str, ...]
    seed: int
    fractions: tuple[float, float, float]
    paths: dict[str, tuple[str, ...]]

    def items(self, split: str) -> list[tuple[str, int]]:
        """(relative path, label) for every image of `split`."""
        index = {name: i for i, name in enumerate(self.class_names)}
        return [(p, index[p.split("/", 1)[0]]) for p in self.paths[split]]

    def limited(self, max_per_class: int) -> Split:
        """At most about `max_per_class` images per class in all, shared out by the split fractions.

        Each split keeps the first of its own images, so a limited split is a
        subset of the full one and never mixes images across splits.
        """
        if max_per_class < 1:
            raise ValueError("max_per_class must be at least 1")
        paths = {}
        for split, fraction in zip(SPLITS, self.fractions):
            cap = max(1, round(max_per_class * fraction))
            taken: dict[str, int] = {}
            kept = []
            for p in self.paths[split]:
                name = p.split("/", 1)[0]
                if taken.get(name, 0) < cap:
                    taken[name] = taken.get(name, 0) + 1
                    kept.append(p)
            paths[split] = tuple(kept)
        return Split(self.class_names, self.seed, self.fractions, paths)

    def to_json(self, root: Path) -> dict:
        return {"format": SPLIT_FORMAT, "root": str(root.resolve()), "class_names": list(self.class_names),
                "seed": self.seed, "fractions": dict(zip(SPLITS, self.fractions)),
                "counts": {s: len(self.paths[s]) for s in SPLITS},
                "splits": {s: list(self.paths[s]) for s in SPLITS}}

    @classmethod
    def from_json(cls, d: dict) -> Split:
        if d.get("format") != SPLIT_FORMAT:
            raise ValueError(f"split file format {d.get('format')!r}; this code reads {SPLIT_FORMAT}")
        return cls(tuple(d["class_names"]), int(d["seed"]), tuple(float(d["fractions"][s]) for s in SPLITS),
                   {s: tuple(d["splits"][s]) for s in SPLITS})


def make_split(images: dict[str, list[str]], fractions: Sequence[float], seed: int) -> Split:
    """Shuffle each class with the seed and cut it by `fractions` (calibration and validation rounded)."""
    fractions = _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    paths: dict[str, list[str]] = {s: [] for s in SPLITS}
    for name, files in images.items():
        order = [files[i] for i in rng.permutation(len(files))]
        n_cal = round(len(files) * fractions[1])
        n_val = round(len(files) * fractions[2])
        n_train = len(files) - n_cal - n_val
        paths["train"] += order[:n_train]
        paths["calibration"] += order[n_train:n_train + n_cal]
        paths["validation"] += order[n_train + n_cal:]
    return Split(tuple(images), seed, fractions, {s: tuple(v) for s, v in paths.items()})


def stratified_split(root: str | os.PathLike, split_file: str | os.PathLike,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                     class_names: Sequence[str] | None = None) -> Split:
    """The split of `root` stored in `split_file`, made and written first if the file does not exist.

    An existing file is used only if it was made for the same classes, seed and
    fractions and lists exactly the images `root` holds now; otherwise this
    raises ValueError rather than silently train on a different split.
    `class_names` (label order) defaults to the sorted class folders.
    """
    root, split_file = Path(root), Path(split_file)
    names = list(class_names) if class_names is not None else class_folders(root)
    images = list_images(root, names)
    if not split_file.exists():
        split = make_split(images, fractions, seed)
        _write_json(split_file, split.to_json(root))
        return split
    split = Split.from_json(json.loads(split_file.read_text()))
    _check_reusable(split, split_file, names, images, _check_fractions(fractions), seed)
    return split


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions (train, calibration, validation) must be 3 non-negative numbers "
                         f"summing to 1, got {tuple(fractions)}")
    return tuple(float(f) for f in fractions)


def _check_reusable(split: Split, split_file: Path, names: list[str], images: dict[str, list[str]],
                    fractions: tuple[float, float, float], seed: int) -> None:
    where = f"split file {split_file}"
    hint = "; pass another split file or delete this one to make a new split"
    if list(split.class_names) != names:
        raise ValueError(f"{where} is for classes {list(split.class_names)}, not {names}{hint}")
    if split.seed != seed or not np.allclose(split.fractions, fractions):
        raise ValueError(f"{where} was made with seed {split.seed} and fractions {split.fractions}, "
                         f"not seed {seed} and fractions {fractions}{hint}")
    listed = {p for s in SPLITS for p in split.paths[s]}
    present = {p for files in images.values() for p in files}
    if listed != present:
        missing, new = sorted(listed - present), sorted(present - listed)
        raise ValueError(f"{where} does not match the data folder: {len(missing)} listed images are missing "
                         f"(e.g. {missing[:3]}), {len(new)} images are not listed (e.g. {new[:3]}){hint}")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1))


# ---------------------------------------------------------------- datasets

class CropDataset(Dataset):
    """(normalised float CHW tensor, label) per cell, cut by edge's one cell view.

    Subclasses say how to get image i as uint8 BGR and where its cell is
    (`box`, image pixels; by default the stand-in box, whose view is the
    whole image). The view is `cell_views(image, box, img_size, context)`;
    an augmentation with a `jitter_box(box, rng)` method moves and rescales
    the box first (scale and framing jitter through the same function), then
    works on the view. With `augment`, the random draws come from a stream
    fixed by (seed, stream, epoch, DataLoader worker), taken in the order the
    items are asked for: set `stream` per process of a data-parallel run and
    call `set_epoch` before each epoch's loader is iterated. An image drawn
    twice in an epoch is augmented twice differently.
    """

    def __init__(self, labels: Sequence[int], img_size: int, norm: Normalisation,
                 augment: Augmentation | None = None, seed: int = 0, stream: int = 0,
                 context: float = 1.0) -> None:
        self.labels = np.asarray(labels, np.int64)
        self.img_size = img_size
        self.norm = norm
        self.augment = augment
        self.seed = seed
        self.stream = stream
        self.context = context
        self.epoch = 0
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def image(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def box(self, index: int, image: np.ndarray) -> np.ndarray:
        """The cell's box in `image` (x0, y0, x1, y1)."""
        return stand_in_box(image.shape, self.context)

    def set_epoch(self, epoch: int) -> None:
        """Start the epoch's random stream afresh."""
        self.epoch = epoch
        self._rng_key = None

    def __len__(self) -> int:
        return len(self.labels)

    def view(self, index: int, size: int) -> np.ndarray:
        """Image `index`'s cell view at `size`, augmented when the data set has an augmentation."""
        image = self.image(index)
        box = self.box(index, image)
        rng = self._generator() if self.augment is not None else None
        if rng is not None and hasattr(self.augment, "jitter_box"):
            box = self.augment.jitter_box(box, rng)
        view = cell_views(image, box[None], size, self.context)[0]
        return self.augment(view, rng) if rng is not None else view

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = to_model_input(self.view(index, self.img_size)[None], None, self.norm)[0]
        return torch.from_numpy(x), int(self.labels[index])

    def _generator(self) -> np.random.Generator:
        info = get_worker_info()
        key = (self.epoch, info.id + 1 if info is not None else 0)
        if key != self._rng_key:
            self._rng = np.random.default_rng([self.seed, self.stream, *key])
            self._rng_key = key
        return self._rng


class FolderCrops(CropDataset):
    """Single-cell images of a folder-per-class data set, read with OpenCV (BGR).

    `boxes` (N x 4, each image's own pixels) say where each image's cell is,
    as `export.cell_boxes` finds it with the deployed detector; without them
    every view is the whole image. `context` is the bundle's crop context.
    With `cache_side`, every image is decoded once, here, shrunk (area
    interpolation) so that its longer side is at most `cache_side`, its box
    scaled with it, and kept in memory: a CPU epoch then spends its time on
    the model instead of on JPEG decoding. DataLoader workers forked
    afterwards share the cache. Pick a side at least the largest input size
    the views are cut at (the teacher's, when distilling).
    """

    def __init__(self, root: str | os.PathLike, items: Sequence[tuple[str, int]], img_size: int,
                 norm: Normalisation, augment: Augmentation | None = None, seed: int = 0,
                 stream: int = 0, cache_side: int | None = None, boxes: np.ndarray | None = None,
                 context: float = 1.0) -> None:
        super().__init__([label for _, label in items], img_size, norm, augment, seed, stream, context)
        self.root = Path(root)
        self.paths = [path for path, _ in items]
        if boxes is not None and len(boxes) != len(self.paths):
            raise ValueError(f"{len(boxes)} boxes for {len(self.paths)} images")
        self.boxes = None if boxes is None else np.asarray(boxes, np.float32)
        self.cache = self.cache_scale = None
        if cache_side is not None:
            if cache_side < img_size:
                raise ValueError(f"cache side {cache_side} is below the input size {img_size}")
            originals = (self._read(i) for i in range(len(self.paths)))
            self.cache, self.cache_scale = zip(*(shrink_to_side(im, cache_side, with_scale=True)
                                                 for im in originals))

    def image(self, index: int) -> np.ndarray:
        return self.cache[index] if self.cache is not None else self._read(index)

    def box(self, index: int, image: np.ndarray) -> np.ndarray:
        if self.boxes is None:
            return super().box(index, image)
        return self.boxes[index] * (self.cache_scale[index] if self.cache is not None else 1.0)

    def _read(self, index: int) -> np.ndarray:
        path = self.root / self.paths[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read image {path}")
        return image


def shrink_to_side(image: np.ndarray, side: int, with_scale: bool = False):
    """`image` scaled down (area interpolation, aspect kept) so its longer side is at most `side`;
    with `with_scale`, (image, the factor applied)."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return (image, 1.0) if with_scale else image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return (small, size[0] / w) if with_scale else small


class ArrayCrops(CropDataset):
    """Crops held in memory as one uint8 BGR array (N, H, W, 3); each view is the whole crop."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], img_size: int, norm: Normalisation,
                 augment: Augmentation | None = None, seed: int = 0, stream: int = 0) -> None:
        super().__init__(labels, img_size, norm, augment, seed, stream)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 BGR crops (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(self.labels):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")
        self.images = images

    def image(self, index: int) -> np.ndarray:
        return self.images[index]


# ---------------------------------------------------------------- samplers

class BalancedSampler(Sampler[int]):
    """Class-balanced epochs, sharded over the processes of a data-parallel run.

    Each epoch draws `num_samples` indices (default: the data set's size),
    the same number from every class: per class, its images in a fresh
    shuffled order, repeated as needed, so a small class's images recur
    evenly and a large class's are all seen over a few epochs. The list is
    shuffled with (seed, epoch); process `rank` of `world_size` takes every
    world_size-th entry from `rank`, all processes the same count.
    """

    def __init__(self, labels: Sequence[int], num_samples: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.labels = np.asarray(labels, np.int64)
        if self.labels.size == 0:
            raise ValueError("no labels to sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.classes = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        total = num_samples if num_samples is not None else len(self.labels)
        self.per_rank = math.ceil(total / world_size)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def epoch_indices(self) -> np.ndarray:
        """This epoch's whole balanced list, before sharding."""
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.per_rank * self.world_size
        counts = np.full(len(self.classes), total // len(self.classes))
        counts[rng.permutation(len(self.classes))[:total % len(self.classes)]] += 1
        parts = []
        for members, count in zip(self.classes, counts):
            rounds = math.ceil(count / len(members))
            parts.append(np.concatenate([rng.permutation(members) for _ in range(rounds)])[:count])
        return rng.permutation(np.concatenate(parts))

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank::self.world_size].tolist())


class ShardSampler(Sampler[int]):
    """Every world_size-th index from `rank`, in order, without padding: evaluation shards."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, length, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
