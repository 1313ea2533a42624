"""Training of the centre-heatmap detector (export/models/detector.py).

Pieces, top to bottom:

- sample sources: anything with ``sample(rng) -> (image_bgr, boxes_xyxy)``
  (``SampleSource``). ``SyntheticSource`` renders smear fields with
  ``edge.synthetic.render_field`` and random stain, blur, noise and
  illumination; ``PairSource`` serves in-memory pairs; ``DetectionDatasetSource`` serves a
  VOC or YOLO folder such as BCCD read by ``edge.detection_data`` (boxes of
  the chosen classes);
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
  line per epoch, a checkpoint every epoch and resume from the last one;
- ``evaluate_detector``: recall and precision at an IoU and score threshold.
"""
from __future__ import annotations

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

from edge.boxes import box_iou
from edge.preprocess import Normalisation, to_model_input

Sample = tuple[np.ndarray, np.ndarray]  # (image BGR uint8 (H, W, 3), boxes (N, 4) float32 xyxy)

__all__ = [
    "SampleSource", "SyntheticSource", "PairSource", "DetectionDatasetSource", "cut_tile",
    "gaussian_radius", "encode_targets", "detector_loss", "TileDataset",
    "make_tiles", "collate_tiles", "train_detector", "predict_tiles", "evaluate_detector",
]


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
    base: object = None                # edge.synthetic.SmearConfig; None = its default
    stain_shift_max: float = 0.5
    signed_stain: bool = False
    blur_sigma_max: float = 1.5
    noise_std_max: float = 6.0
    illumination_max: float = 0.3
    px_per_um_jitter: float = 0.1      # relative, on top of the tile cutter's resize

    def sample(self, rng: np.random.Generator) -> Sample:
        from edge.synthetic import SmearConfig, render_field
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
    """Real images: an ``edge.detection_data.DetectionDataset`` (VOC or YOLO folder).

    Keeps the boxes of `classes` (for BCCD: ("WBC",)); images are read on first
    use and cached.
    """

    def __init__(self, dataset, classes: Sequence[str] | None = ("WBC",)):
        from edge.detection_data import select_classes
        self.dataset = select_classes(dataset, classes) if classes else dataset
        self._cache: dict[int, Sample] = {}

    @classmethod
    def from_folder(cls, root: str | os.PathLike, format: str = "voc",
                    classes: Sequence[str] | None = ("WBC",), split: str | None = "train"
                    ) -> "DetectionDatasetSource":
        from edge.detection_data import load_detection_dataset
        return cls(load_detection_dataset(root, format, split), classes)

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
            self._cache[index] = (img, boxes.astype(np.float32))
        return self._cache[index]

    def sample(self, rng: np.random.Generator) -> Sample:
        return self.load(int(rng.integers(len(self.dataset))))


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
    b = boxes - np.array([x0, y0, x0, y0], dtype=np.float32)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    keep = (cx >= 0) & (cx < tile_size) & (cy >= 0) & (cy < tile_size)
    b = np.clip(b[keep], 0, tile_size)
    b = b[(b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)]
    if flips:
        if rng.random() < 0.5:
            tile = tile[:, ::-1]
            b = np.stack([tile_size - b[:, 2], b[:, 1], tile_size - b[:, 0], b[:, 3]], axis=1)
        k = int(rng.integers(4))
        tile = np.rot90(tile, k)
        b = _rot90_boxes(b, tile_size, k)
    return np.ascontiguousarray(tile), b.astype(np.float32).reshape(-1, 4)


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
    (edge.preprocess.to_model_input) and the targets of ``encode_targets`` as
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
    ``ckpt_dir/last.pt`` after every epoch and, when `resume`, training
    continues from it. The data of epoch e depend only on (seed, e), so a
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
    ckpt_path = Path(ckpt_dir) / "last.pt" if ckpt_dir is not None else None
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
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "epoch": epoch + 1,
                        "history": history, "config_name": cfg.name,
                        "config": asdict(cfg), "seed": seed, "tile_size": tile_size}, tmp)
            os.replace(tmp, ckpt_path)
    return history
