"""Training of the centre-heatmap detector (export/models/detector.py).

Pieces, top to bottom:

- sample sources: anything with ``sample(rng) -> (image_bgr, boxes_xyxy)``
  (``SampleSource``). ``SyntheticSource`` renders smear fields with
  ``edge.synthetic.smear.render_field`` and random stain, blur, noise and
  illumination; ``PairSource`` serves in-memory pairs; ``DetectionDatasetSource`` serves a
  VOC or YOLO folder such as BCCD read by ``edge.evaluation.detection_data`` (boxes of
  the chosen classes, images resized by a scale as the device resizes its
  frames); ``MixedSource`` draws from several sources by weight;
  ``AugmentedSource`` adds colour, stain, blur and JPEG jitter (``PHOTOMETRIC``);
- ``cut_tile``: a random tile of one sample with scale augmentation, random
  flips and rot90. Ground-truth boxes are clipped to the tile; a box whose
  centre lies outside the tile is not a target;
- ``encode_targets``: Gaussian heatmap splats (CenterNet radius), log-size and
  sub-cell offset targets at the centre cells, and a mask;
- ``detector_loss``: penalty-reduced focal loss on the heatmap plus L1 on size
  and offset;
- ``TileDataset``: a torch IterableDataset of (image, targets) built from a
  source, seeded per epoch and worker, so a resumed run sees the same data;
- ``train_detector``: AdamW with warm-up and cosine decay, a tqdm bar, one log
  line per epoch, a checkpoint and log.jsonl every epoch and resume from the
  last one;
- ``evaluate_detector``: recall and precision at an IoU and score threshold;
  ``field_tiles`` cuts a data set into the device's tiles for it;
- ``DetectorRecipe`` and ``train_detector_run``: a whole run in one folder
  (``edge export train-detector``): real fields mixed with synthetic ones,
  per-epoch validation, ONNX export at the end.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from edge.runtime.atomic import atomic_file, write_atomic
from edge.runtime.boxes import box_iou
from edge.runtime.preprocess import Normalisation, to_model_input
from export.augment import Augment

Sample = tuple[np.ndarray, np.ndarray]  # (image BGR uint8 (H, W, 3), boxes (N, 4) float32 xyxy)

__all__ = [
    "SampleSource", "SyntheticSource", "PairSource", "DetectionDatasetSource", "MixedSource",
    "AugmentedSource", "PHOTOMETRIC", "cut_tile", "boxes_in_tile", "gaussian_radius",
    "encode_targets", "detector_loss", "TileDataset", "make_tiles", "field_tiles",
    "collate_tiles", "train_detector", "predict_tiles", "evaluate_detector", "DetectorRecipe",
    "recipe_sources", "recipe_validation", "train_detector_run",
    "RUN_FILE", "LOG_FILE", "ONNX_FILE", "CHECKPOINT",
]

RUN_FILE, LOG_FILE, ONNX_FILE, CHECKPOINT = "run.json", "log.jsonl", "detector.onnx", "last.pt"


# ---------------------------------------------------------------- sample sources

class SampleSource(Protocol):
    """Where training images come from: one call, one (image_bgr, boxes_xyxy) pair."""

    def sample(self, rng: np.random.Generator) -> Sample: ...


@dataclass
class SyntheticSource:
    """Synthetic smear fields with random stain, blur, noise and illumination.

    Each knob is drawn uniformly from [0, its maximum]; stain_shift is drawn
    from [-max, max] when `signed_stain` is true.
    """
    base: object = None                # edge.synthetic.smear.SmearConfig; None = its default
    stain_shift_max: float = 0.5
    signed_stain: bool = False
    blur_sigma_max: float = 1.5
    noise_std_max: float = 6.0
    illumination_max: float = 0.3
    px_per_um_jitter: float = 0.1      # relative, on top of the tile cutter's resize

    def sample(self, rng: np.random.Generator) -> Sample:
        from edge.synthetic.smear import SmearConfig, render_field
        base = self.base if self.base is not None else SmearConfig()
        lo = -self.stain_shift_max if self.signed_stain else 0.0
        cfg = replace(
            base,
            stain_shift=float(rng.uniform(lo, self.stain_shift_max)),
            blur_sigma=float(rng.uniform(0.0, self.blur_sigma_max)),
            noise_std=float(rng.uniform(0.0, self.noise_std_max)),
            illumination=float(rng.uniform(0.0, self.illumination_max)),
            px_per_um=float(base.px_per_um * (1.0 + rng.uniform(-1, 1) * self.px_per_um_jitter)),
        )
        field = render_field(cfg, seed=int(rng.integers(0, 2**31 - 1)))
        return field.image, np.asarray(field.boxes, dtype=np.float32).reshape(-1, 4)


@dataclass
class PairSource:
    """In-memory (image_bgr, boxes) pairs, drawn uniformly at random."""
    pairs: Sequence[Sample]

    def sample(self, rng: np.random.Generator) -> Sample:
        img, boxes = self.pairs[int(rng.integers(len(self.pairs)))]
        return img, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


class DetectionDatasetSource:
    """Real images: an ``edge.evaluation.detection_data.DetectionDataset`` (VOC or YOLO folder).

    Keeps the boxes of `classes` (for BCCD: ("WBC",)). Each image is resized
    by `scale` exactly as the device resizes a frame (``tiling.scale``), so
    the detector learns cells at the pixel size it will see; images are read
    on first use and cached at that scale.
    """

    def __init__(self, dataset, classes: Sequence[str] | None = ("WBC",), scale: float = 1.0):
        from edge.evaluation.detection_data import select_classes
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.dataset = select_classes(dataset, classes) if classes else dataset
        self.scale = float(scale)
        self._cache: dict[int, Sample] = {}

    @classmethod
    def from_folder(cls, root: str | os.PathLike, format: str = "voc",
                    classes: Sequence[str] | None = ("WBC",),
                    split: str | Sequence[str] | None = "train", scale: float = 1.0
                    ) -> "DetectionDatasetSource":
        """Load one split, several (their images together), or with None every image."""
        from edge.evaluation.detection_data import DetectionDataset, load_detection_dataset
        if split is None or isinstance(split, str):
            return cls(load_detection_dataset(root, format, split), classes, scale)
        parts = [load_detection_dataset(root, format, s) for s in split]
        names = tuple(sorted({n for p in parts for n in p.class_names}))
        return cls(DetectionDataset(parts[0].root, names, tuple(x for p in parts for x in p)),
                   classes, scale)

    def largest_box_side(self) -> float:
        """The longest box side in the data set, in its own (unscaled) pixels; 0 without boxes."""
        sides = [np.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1]).max()
                 for s in self.dataset if len(s.boxes)]
        return float(max(sides, default=0.0))

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> Sample:
        if index not in self._cache:
            s = self.dataset[index]
            img = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(f"cannot read image {s.image_path}")
            h, w = img.shape[:2]
            boxes = np.clip(np.asarray(s.boxes, np.float32).reshape(-1, 4), 0, [w, h, w, h])
            if self.scale != 1.0:  # as edge.runtime.engine resizes a frame
                img = cv2.resize(img, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
                boxes = boxes * np.float32(self.scale)
            self._cache[index] = (img, boxes.astype(np.float32))
        return self._cache[index]

    def sample(self, rng: np.random.Generator) -> Sample:
        return self.load(int(rng.integers(len(self.dataset))))


@dataclass
class MixedSource:
    """Each sample from one of `sources`, chosen with probability proportional to its weight."""
    sources: Sequence[SampleSource]
    weights: Sequence[float]

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.weights) or not self.sources:
            raise ValueError("give one weight per source, and at least one source")
        if min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {self.weights}")

    def sample(self, rng: np.random.Generator) -> Sample:
        p = np.asarray(self.weights, dtype=np.float64)
        return self.sources[int(rng.choice(len(p), p=p / p.sum()))].sample(rng)


# The training augmentation of export.augment without its geometric steps, which
# would move cells away from their boxes: colour, stain, hue, gamma, blur and JPEG.
# Geometry (scale jitter, flips, right-angle turns) is cut_tile's.
PHOTOMETRIC = Augment(p_turn=0.0, p_rotate=0.0, p_crop=0.0, p_erase=0.0)


@dataclass
class AugmentedSource:
    """The samples of `source` through a photometric `augment(image, rng)`; boxes unchanged."""
    source: SampleSource
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] = PHOTOMETRIC

    def sample(self, rng: np.random.Generator) -> Sample:
        image, boxes = self.source.sample(rng)
        return self.augment(image, rng), boxes


# ---------------------------------------------------------------- tiles and augmentation

def _rot90_boxes(boxes: np.ndarray, size: int, k: int) -> np.ndarray:
    """Boxes of a square image of side `size` after np.rot90(image, k) (counter-clockwise)."""
    for _ in range(k % 4):
        x1, y1, x2, y2 = boxes.T
        boxes = np.stack([y1, size - x2, y2, size - x1], axis=1)
    return boxes


def cut_tile(image: np.ndarray, boxes: np.ndarray, tile_size: int, rng: np.random.Generator,
             scale_range: tuple[float, float] = (1.0, 1.0), flips: bool = False) -> Sample:
    """A random square tile of `image` and its target boxes.

    The image is first resized by a factor drawn log-uniformly from
    `scale_range`; an image smaller than the tile is padded with its median
    colour. Boxes are kept when their centre lies inside the tile and are
    clipped to it. With `flips`, a random horizontal flip and rot90 follow.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    lo, hi = scale_range
    s = float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)
    if abs(s - 1.0) > 1e-6:
        h, w = image.shape[:2]
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
        boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
    h, w = image.shape[:2]
    if h < tile_size or w < tile_size:
        fill = np.median(image.reshape(-1, 3), axis=0).tolist()
        image = cv2.copyMakeBorder(image, 0, max(0, tile_size - h), 0, max(0, tile_size - w),
                                   cv2.BORDER_CONSTANT, value=fill)
        h, w = image.shape[:2]
    x0 = int(rng.integers(0, w - tile_size + 1))
    y0 = int(rng.integers(0, h - tile_size + 1))
    tile = image[y0:y0 + tile_size, x0:x0 + tile_size]
    b = boxes_in_tile(boxes, x0, y0, tile_size)
    if flips:
        if rng.random() < 0.5:
            tile = tile[:, ::-1]
            b = np.stack([tile_size - b[:, 2], b[:, 1], tile_size - b[:, 0], b[:, 3]], axis=1)
        k = int(rng.integers(4))
        tile = np.rot90(tile, k)
        b = _rot90_boxes(b, tile_size, k)
    return np.ascontiguousarray(tile), b.astype(np.float32).reshape(-1, 4)


def boxes_in_tile(boxes: np.ndarray, x0: int, y0: int, tile_size: int) -> np.ndarray:
    """The boxes whose centre lies in the tile at (x0, y0), in tile pixels, clipped to it."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) - np.array([x0, y0, x0, y0], np.float32)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    keep = (cx >= 0) & (cx < tile_size) & (cy >= 0) & (cy < tile_size)
    b = np.clip(b[keep], 0, tile_size)
    return b[(b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)]


# ---------------------------------------------------------------- targets and losses

def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: the largest corner shift keeping IoU >= min_overlap (output cells)."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 - math.sqrt(b1 ** 2 - 4 * a1 * c1)) / (2 * a1)
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 - math.sqrt(b2 ** 2 - 4 * a2 * c2)) / (2 * a2)
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / (2 * a3)
    return min(r1, r2, r3)


def _splat(heat: np.ndarray, cx: int, cy: int, radius: int) -> None:
    d = 2 * radius + 1
    sigma = d / 6.0
    r = np.arange(-radius, radius + 1, dtype=np.float32)
    g = np.exp(-(r[None, :] ** 2 + r[:, None] ** 2) / (2 * sigma * sigma))
    h, w = heat.shape
    l, ri = min(cx, radius), min(w - cx, radius + 1)
    t, bo = min(cy, radius), min(h - cy, radius + 1)
    region = heat[cy - t:cy + bo, cx - l:cx + ri]
    np.maximum(region, g[radius - t:radius + bo, radius - l:radius + ri], out=region)


def encode_targets(boxes: np.ndarray, out_size: tuple[int, int], stride: int, size_ref: float,
                   min_overlap: float = 0.7) -> dict[str, np.ndarray]:
    """Boxes (N, 4) xyxy in input pixels -> dense targets at the output resolution.

    heatmap (1, h, w): Gaussian splats, exactly 1 at each centre cell;
    size (2, h, w): log(w / size_ref), log(h / size_ref) at centre cells;
    offset (2, h, w): centre / stride - cell, in [0, 1), at centre cells;
    mask (1, h, w): 1 at centre cells.
    """
    oh, ow = out_size
    heat = np.zeros((oh, ow), np.float32)
    size = np.zeros((2, oh, ow), np.float32)
    off = np.zeros((2, oh, ow), np.float32)
    mask = np.zeros((oh, ow), np.float32)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    # Largest first, so a small cell sharing a centre cell with a big one keeps its targets.
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    for x1, y1, x2, y2 in boxes[order]:
        bw, bh = max(float(x2 - x1), 1.0), max(float(y2 - y1), 1.0)
        qx, qy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        ix, iy = min(max(int(math.floor(qx)), 0), ow - 1), min(max(int(math.floor(qy)), 0), oh - 1)
        radius = max(0, int(gaussian_radius(bh / stride, bw / stride, min_overlap)))
        _splat(heat, ix, iy, radius)
        size[:, iy, ix] = (math.log(bw / size_ref), math.log(bh / size_ref))
        off[:, iy, ix] = (qx - ix, qy - iy)
        mask[iy, ix] = 1.0
    return {"heatmap": heat[None], "size": size, "offset": off, "mask": mask[None]}


def focal_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, normalised by the number of centres."""
    logp, log1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = logp.exp()
    pos = mask
    neg = (1 - mask) * (1 - target).pow(beta)
    loss = -(pos * (1 - p).pow(alpha) * logp + neg * p.pow(alpha) * log1mp).sum()
    return loss / mask.sum().clamp(min=1.0)


def detector_loss(heads: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                  size_weight: float = 1.0, offset_weight: float = 1.0
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal loss on the heatmap + weighted L1 on log-size and offset at centre cells."""
    mask = targets["mask"]
    n = mask.sum().clamp(min=1.0)
    hm = focal_loss(heads["heatmap"], targets["heatmap"], mask)
    size = ((heads["size"] - targets["size"]).abs() * mask).sum() / n
    off = ((heads["offset"] - targets["offset"]).abs() * mask).sum() / n
    total = hm + size_weight * size + offset_weight * off
    return total, {"loss": float(total.detach()), "heatmap": float(hm.detach()),
                   "size": float(size.detach()), "offset": float(off.detach())}


# ---------------------------------------------------------------- dataset

class TileDataset(IterableDataset):
    """`length` random (image, targets) tiles from a sample source.

    Yields image (3, T, T) float32 normalised as on the device
    (edge.runtime.preprocess.to_model_input) and the targets of ``encode_targets`` as
    tensors. The stream is a function of (seed, epoch, worker): set `epoch`
    before each pass for fresh, reproducible data.
    """

    def __init__(self, source: SampleSource, tile_size: int, length: int, seed: int = 0,
                 stride: int = 4, size_ref: float = 32.0, tiles_per_sample: int = 4,
                 scale_range: tuple[float, float] = (0.8, 1.25), flips: bool = True,
                 norm: Normalisation = Normalisation()):
        super().__init__()
        self.source, self.tile_size, self.length, self.seed = source, tile_size, length, seed
        self.stride, self.size_ref = stride, size_ref
        self.tiles_per_sample, self.scale_range, self.flips, self.norm = (
            tiles_per_sample, scale_range, flips, norm)
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def tiles(self, rng: np.random.Generator, n: int) -> Iterator[Sample]:
        done = 0
        while done < n:
            image, boxes = self.source.sample(rng)
            for _ in range(min(self.tiles_per_sample, n - done)):
                yield cut_tile(image, boxes, self.tile_size, rng, self.scale_range, self.flips)
                done += 1

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        n = self.length // nw + (1 if wid < self.length % nw else 0)
        rng = np.random.default_rng([self.seed, self.epoch, wid])
        out = -(-self.tile_size // self.stride)
        for tile, boxes in self.tiles(rng, n):
            x = to_model_input(tile[None], None, self.norm)[0]
            t = encode_targets(boxes, (out, out), self.stride, self.size_ref)
            yield torch.from_numpy(x), {k: torch.from_numpy(v) for k, v in t.items()}


def make_tiles(source: SampleSource, n: int, tile_size: int, seed: int,
               tiles_per_sample: int = 4) -> list[Sample]:
    """A fixed list of (tile_bgr, boxes) for validation: no resize, no flips."""
    ds = TileDataset(source, tile_size, n, seed, tiles_per_sample=tiles_per_sample,
                     scale_range=(1.0, 1.0), flips=False)
    return list(ds.tiles(np.random.default_rng([seed, 7919]), n))


def field_tiles(source: DetectionDatasetSource, tile_size: int) -> list[Sample]:
    """Every image of `source` (at its scale) cut into the device's tiles without overlap.

    Tiles are edge.runtime.tiling's (a frame smaller than a tile is padded with its
    median colour); each tile keeps the boxes whose centre it holds, clipped.
    A fixed validation set that looks like what the deployed detector sees.
    """
    from edge.runtime.tiling import cut_tiles, make_grid
    out = []
    for i in range(len(source)):
        image, boxes = source.load(i)
        grid = make_grid(image.shape[1], image.shape[0], tile_size, 0)
        out += [(tile, boxes_in_tile(boxes, int(x0), int(y0), tile_size))
                for tile, (x0, y0) in zip(cut_tiles(image, grid), grid.origins)]
    return out


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def predict_tiles(model: torch.nn.Module, tiles: Sequence[np.ndarray], batch_size: int = 16,
                  max_detections: int = 100, norm: Normalisation = Normalisation()
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Decoded (boxes (N, K, 4), scores (N, K)) for BGR uint8 tiles, in eval mode."""
    from export.models.detector import DecodedDetector
    dec = DecodedDetector(model, max_detections)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    boxes, scores = [], []
    for i in range(0, len(tiles), batch_size):
        x = torch.from_numpy(to_model_input(np.stack(tiles[i:i + batch_size]), None, norm))
        b, s = dec(x.to(device))
        boxes.append(b.cpu().numpy())
        scores.append(s.cpu().numpy())
    model.train(was_training)
    return np.concatenate(boxes), np.concatenate(scores)


def evaluate_detector(model: torch.nn.Module, samples: Sequence[Sample],
                      score_threshold: float = 0.3, iou_threshold: float = 0.5,
                      batch_size: int = 16) -> dict[str, float]:
    """Recall, precision and F1 over (tile, boxes) samples; greedy matching by score."""
    boxes, scores = predict_tiles(model, [s[0] for s in samples], batch_size)
    tp = n_pred = n_gt = 0
    count_err = []
    for (_, gt), pb, ps in zip(samples, boxes, scores):
        pb = pb[ps >= score_threshold]
        n_pred += len(pb)
        n_gt += len(gt)
        count_err.append(abs(len(pb) - len(gt)))
        if len(pb) == 0 or len(gt) == 0:
            continue
        iou = box_iou(pb, gt)
        used = np.zeros(len(gt), bool)
        for i in range(len(pb)):  # predictions are sorted by score
            j = int(np.argmax(np.where(used, -1.0, iou[i])))
            if not used[j] and iou[i, j] >= iou_threshold:
                used[j] = True
                tp += 1
    recall = tp / max(n_gt, 1)
    precision = tp / max(n_pred, 1)
    f1 = 2 * recall * precision / max(recall + precision, 1e-9)
    return {"recall": recall, "precision": precision, "f1": f1, "tp": tp,
            "n_pred": n_pred, "n_gt": n_gt, "count_mae": float(np.mean(count_err))}


# ---------------------------------------------------------------- training

def collate_tiles(batch):
    """Stack (image, targets) items into (images (B, 3, T, T), targets of (B, ...) tensors)."""
    xs, ts = zip(*batch)
    return torch.stack(xs), {k: torch.stack([t[k] for t in ts]) for k in ts[0]}


def train_detector(model: torch.nn.Module, tile_size: int = 256, epochs: int = 10,
                   steps_per_epoch: int = 100, batch_size: int = 16, seed: int = 0,
                   lr: float = 3e-3, weight_decay: float = 1e-4, warmup_steps: int = 50,
                   source: SampleSource | None = None, ckpt_dir: str | os.PathLike | None = None,
                   resume: bool = True, num_workers: int = 0, device: str | torch.device = "cpu",
                   val_samples: Sequence[Sample] | None = None,
                   scale_range: tuple[float, float] = (0.8, 1.25),
                   size_weight: float = 1.0, offset_weight: float = 1.0,
                   log: Callable[[str], None] | None = print, progress: bool = True
                   ) -> list[dict]:
    """Train `model` on random tiles; returns the per-epoch history.

    `source` defaults to ``SyntheticSource()``. With `ckpt_dir`, the state
    (model, optimiser, schedule, epoch, history) is written to
    ``ckpt_dir/last.pt`` and the history to ``ckpt_dir/log.jsonl`` (one JSON
    object per epoch) after every epoch and, when `resume`, training
    continues from the checkpoint. The data of epoch e depend only on (seed, e), so a
    resumed run sees what an uninterrupted run would have.
    """
    from tqdm import tqdm

    cfg = model.config
    source = source if source is not None else SyntheticSource()
    device = torch.device(device)
    model.to(device)
    total_steps = epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    start_epoch, history = 0, []
    ckpt_path = Path(ckpt_dir) / CHECKPOINT if ckpt_dir is not None else None
    if ckpt_path is not None and resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        if state.get("config_name") != cfg.name:
            raise ValueError(f"checkpoint {ckpt_path} is for {state.get('config_name')!r}, "
                             f"not {cfg.name!r}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        if log:
            log(f"resumed from {ckpt_path} at epoch {start_epoch}")

    ds = TileDataset(source, tile_size, steps_per_epoch * batch_size, seed, stride=cfg.stride,
                     size_ref=cfg.size_ref, scale_range=scale_range)
    for epoch in range(start_epoch, epochs):
        ds.epoch = epoch
        loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                            collate_fn=collate_tiles, persistent_workers=False)
        model.train()
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                   disable=None if progress else True, leave=False)
        n = 0
        for x, targets in bar:
            x = x.to(device, non_blocking=True)
            targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
            loss, parts = detector_loss(model(x), targets, size_weight, offset_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
        bar.close()
        rec = {k: v / max(n, 1) for k, v in sums.items()}
        rec.update(epoch=epoch + 1, steps=n, lr=float(opt.param_groups[0]["lr"]),
                   seconds=time.perf_counter() - t0)
        if val_samples:
            rec.update({f"val_{k}": float(v) for k, v in
                        evaluate_detector(model, val_samples).items()})
        history.append(rec)
        if log:
            line = (f"epoch {epoch + 1}/{epochs} loss {rec.get('loss', float('nan')):.4f} "
                    f"(heatmap {rec.get('heatmap', 0):.4f} size {rec.get('size', 0):.4f} "
                    f"offset {rec.get('offset', 0):.4f}) lr {rec['lr']:.2e} "
                    f"{rec['seconds']:.1f} s")
            if val_samples:
                line += (f" | val recall {rec['val_recall']:.3f} "
                         f"precision {rec['val_precision']:.3f}")
            log(line)
        if ckpt_path is not None:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(ckpt_path) as fh:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "epoch": epoch + 1,
                            "history": history, "config_name": cfg.name,
                            "config": asdict(cfg), "seed": seed, "tile_size": tile_size}, fh)
            _write_log(history, ckpt_path.parent / LOG_FILE)
    return history


def _write_log(history: list[dict], path: Path) -> None:
    """The whole history, one JSON object a line, replaced atomically."""
    write_atomic(path, "".join(json.dumps(rec) + "\n" for rec in history))



# ---------------------------------------------------------------- a training run

@dataclass(frozen=True)
class DetectorRecipe:
    """What a `train_detector_run` learns from and how (saved as RUN/run.json).

    Synthetic fields are rendered at the generator's 4 px/µm; `scale` resizes
    the real images as the device's ``tiling.scale`` will resize its frames.
    The scale that brings the real cells to 4 px/µm lets one detector learn
    both at one pixel size: for BCCD 0.28 (its red cells' median box is
    110 px, 7.5 µm at 4 px/µm is 30 px; white cells: median 205 px, 52-56 px
    for a 13-14 µm neutrophil). `synthetic_fraction` of the samples are
    synthetic; without `data`, all of them.
    """
    data: str | None = None
    format: str = "voc"
    classes: tuple[str, ...] = ("WBC",)
    splits: tuple[str, ...] = ("train",)
    val_split: str | None = "val"
    synthetic_fraction: float = 0.3
    scale: float = 0.28
    arch: str = "detector_small"
    tile_size: int = 256
    epochs: int = 30
    steps_per_epoch: int = 100
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if min(self.epochs, self.steps_per_epoch, self.batch_size, self.tile_size) < 1:
            raise ValueError("epochs, steps_per_epoch, batch_size and tile_size must be positive")


def recipe_sources(recipe: DetectorRecipe) -> tuple[SampleSource, DetectionDatasetSource | None]:
    """The augmented training source and, with `recipe.data`, its real part."""
    synthetic = SyntheticSource()
    if recipe.data is None:
        return AugmentedSource(synthetic), None
    real = DetectionDatasetSource.from_folder(recipe.data, recipe.format, recipe.classes,
                                              recipe.splits, recipe.scale)
    f = recipe.synthetic_fraction
    return AugmentedSource(MixedSource([real, synthetic], [1.0 - f, f])), real


def recipe_validation(recipe: DetectorRecipe, synthetic_tiles: int = 64) -> list[Sample]:
    """The validation split's fields in device tiles; without data, fixed synthetic tiles."""
    if recipe.data is None:
        return make_tiles(SyntheticSource(), synthetic_tiles, recipe.tile_size, seed=recipe.seed + 1)
    if recipe.val_split is None:
        return []
    source = DetectionDatasetSource.from_folder(recipe.data, recipe.format, recipe.classes,
                                                recipe.val_split, recipe.scale)
    return field_tiles(source, recipe.tile_size)


def _check_same_recipe(path: Path, recipe: DetectorRecipe) -> None:
    """Refuse to resume under another recipe; only the number of epochs may change."""
    if not path.is_file():
        return
    saved = json.loads(path.read_text())["recipe"]
    now = json.loads(json.dumps(asdict(recipe)))
    changed = [k for k in now if k != "epochs" and saved.get(k) != now[k]]
    if changed:
        diffs = ", ".join(f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"{path.parent} was trained with another recipe ({diffs}); resume with "
                         "the same settings, or start over with --no-resume or a new --out")


def train_detector_run(out: str | os.PathLike, recipe: DetectorRecipe, *, resume: bool = True,
                       progress: bool = True, workers: int = 0,
                       log: Callable[[str], None] | None = print) -> dict:
    """Train per `recipe` in folder `out`, export ``out/detector.onnx``; return a summary.

    `out` holds run.json (the recipe, the largest real box, the code commit),
    last.pt (resumable), log.jsonl (one line per epoch, with the validation
    recall and precision) and, at the end, the decoded detector as ONNX.
    """
    from export.deployed import git_commit
    from export.models.detector import DecodedDetector, build_detector
    from export.onnx_export import export_onnx

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if resume and (out / CHECKPOINT).exists():
        _check_same_recipe(out / RUN_FILE, recipe)
    source, real = recipe_sources(recipe)
    val = recipe_validation(recipe)
    if real is not None and recipe.val_split in recipe.splits and log:
        log(f"warning: validation split {recipe.val_split!r} is also trained on; "
            "its figures are optimistic")
    (out / RUN_FILE).write_text(json.dumps({
        "recipe": asdict(recipe), "train_images": len(real) if real is not None else 0,
        "largest_box_px": real.largest_box_side() if real is not None else None,
        "val_tiles": len(val), "code_commit": git_commit()}, indent=2) + "\n")
    torch.manual_seed(recipe.seed)
    model = build_detector(recipe.arch)
    history = train_detector(model, tile_size=recipe.tile_size, epochs=recipe.epochs,
                             steps_per_epoch=recipe.steps_per_epoch, batch_size=recipe.batch_size,
                             seed=recipe.seed, lr=recipe.lr, source=source, ckpt_dir=out,
                             resume=resume, num_workers=workers, val_samples=val or None,
                             log=log, progress=progress)
    onnx_path = export_onnx(DecodedDetector(model), recipe.tile_size, out / ONNX_FILE,
                            output_names=("boxes", "scores"))
    return {"run": str(out), "onnx": str(onnx_path), "checkpoint": str(out / CHECKPOINT),
            "log": str(out / LOG_FILE), "epochs": len(history), "last": history[-1]}
