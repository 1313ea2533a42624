"""Distilling a CCL teacher into a small CrossFormer-CCL student.

Each training example is one augmented cell view, shown to the teacher at its
input size and, cut again by the same cell view, to the student at its own.
The teacher's targets come one of two ways:

- online: the teacher runs on every batch's views. Its forward pass is about
  half of a CPU step (Lite0 at 128 px against a 64 px student).
- cached (`teacher_views` = K): before the first epoch, K augmented views of
  every training image are made (seeded) and the teacher's D computed on each,
  kept in OUT/teacher_views.npz for a resumed run. Every epoch the student
  draws one of an image's K views, turned by one of the eight flips and
  quarter turns (a cell on a slide has no up or left; the teacher's D is the
  same for them), so teacher and student still see the same augmented view
  and an epoch costs only the student's step.

- Stage I: gradient on the student's backbone and W. The loss is CCL's binary
  cross-entropy over the kernel outputs D, against a target that mixes the
  hard label and the teacher's D vector: (1 - a) one_hot(y) + a D_teacher.
  BCE is linear in its target, so this is exactly (1 - a) times the hard-label
  CCL loss plus a times the BCE to the teacher's soft targets. The teacher's
  D_c are independent kernel values in (0, 1], not a distribution, so each
  class is its own soft Bernoulli target; where the teacher is unsure (two
  classes near 1, or none) the student learns that too, which is what the
  reject threshold reads.
- Stage II, same batch: the student's own centroids move to its own class
  means with the hard labels (export.classifier_training.update_centroids).
  The student's centroid space is its own; only D is shared with the teacher.

The loop, checkpoints (last.pt / best.pt, resumable), log.jsonl and the
per-epoch evaluation are export.classifier_training's; each epoch also logs
the student's agreement with the teacher on the validation split.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm import tqdm

from edge.runtime.atomic import atomic_file
from edge.runtime.bundle import sha256_file
from edge.runtime.cell_view import cell_views, stand_in_box
from edge.runtime.preprocess import Normalisation, to_model_input
from export.augment import Augment
from export.classifier_training import (BEST, LAST, ClassifierTrainConfig, _log_line, _resume, _save,
                                        evaluate, load_weights, lr_at, predict, start_epoch,
                                        update_centroids)
from export.cell_boxes import framing_for
from export.datasets import BalancedSampler, FolderCrops, ShardSampler, Split
from export.models.classifier import CellClassifier, build_classifier
from export.models.heads import _D_MAX, _D_MIN

log = logging.getLogger("export.distil")

STUDENT_ARCH = "crossformer_student"
STUDENT_IMG_SIZE = 64


@dataclass(frozen=True)
class DistilConfig(ClassifierTrainConfig):
    soft_weight: float = 0.5  # a: the teacher's share of the target; 1 - a is the hard label's
    teacher_views: int = 0  # K > 0: K cached augmented views per image with the teacher's D; 0: online
    # lr rises linearly from 0 over these first epochs, step by step: a transformer from random
    # weights diverged at the full rate from the first step (the 20-epoch run's collapse at epoch 7)
    warmup_epochs: float = 1.0
    # the gradient's global norm is cut to this before each step: without it the 20-epoch and 50-epoch
    # runs at lr 3e-4 to 5e-4 collapsed once (train accuracy 0.54 -> 0.35 in one epoch)
    max_grad_norm: float | None = 1.0


def warmup_factor(config: DistilConfig, epoch: int, step: int, steps: int) -> float:
    """The share of the epoch's learning rate at `step` of `steps` in 0-based `epoch`."""
    if config.warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + (step + 1) / steps) / config.warmup_epochs)

TEACHER_VIEWS = "teacher_views.npz"


def distillation_loss(d_student: torch.Tensor, d_teacher: torch.Tensor, labels: torch.Tensor,
                      soft_weight: float) -> torch.Tensor:
    """CCL's BCE of the student's D against (1 - a) one_hot(labels) + a D_teacher; mean over the batch."""
    hard = nn.functional.one_hot(labels, d_student.shape[1]).to(d_student.dtype)
    target = (1.0 - soft_weight) * hard + soft_weight * d_teacher.to(d_student.dtype)
    log_d = torch.log(d_student.clamp_min(_D_MIN))  # the clamps of export.models.heads.ccl_loss
    log_not_d = torch.log1p(-d_student.clamp_max(_D_MAX))
    return -(target * log_d + (1.0 - target) * log_not_d).sum(dim=1).mean()


class TwoSizeCrops(FolderCrops):
    """(student input, teacher input, label): one augmented cell view, as the teacher sees it and,
    cut again by the same cell view at the student's size, as the student does."""

    def __init__(self, *args, teacher_size: int, cache_side: int | None = None, **kwargs) -> None:
        if cache_side is not None and cache_side < teacher_size:
            raise ValueError(f"cache side {cache_side} is below the teacher's input size {teacher_size}")
        super().__init__(*args, cache_side=cache_side, **kwargs)
        self.teacher_size = teacher_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        teacher_view = self.view(index, self.teacher_size)
        whole = stand_in_box(teacher_view.shape, 1.0)
        student_view = cell_views(teacher_view, whole[None], self.img_size, 1.0)[0]
        x = [to_model_input(v[None], None, self.norm)[0] for v in (student_view, teacher_view)]
        return torch.from_numpy(x[0]), torch.from_numpy(x[1]), int(self.labels[index])


class CachedTeacherViews(Dataset):
    """(student input, the teacher's D, label) from K cached augmented views per image.

    `views` (K, N, S, S, 3) are the student's uint8 BGR views, `targets`
    (K, N, C) the teacher's D on the same views at its own size. Item i is
    one of its K views drawn at random, under one of the eight flips and
    quarter turns; the draws are fixed by (seed, epoch, worker) like the
    augmentation of export.datasets.CropDataset.
    """

    def __init__(self, views: np.ndarray, targets: np.ndarray, labels: np.ndarray, norm: Normalisation,
                 seed: int = 0) -> None:
        if views.shape[:2] != targets.shape[:2] or views.shape[1] != len(labels):
            raise ValueError(f"views {views.shape[:2]}, targets {targets.shape[:2]} and {len(labels)} labels disagree")
        self.views, self.targets, self.labels = views, targets, np.asarray(labels, np.int64)
        self.norm, self.seed = norm, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._rng_key = epoch, None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rng = self._generator()
        k, turn = int(rng.integers(len(self.views))), int(rng.integers(8))
        view = np.rot90(self.views[k, index], turn % 4)
        if turn >= 4:
            view = view[:, ::-1]
        x = to_model_input(np.ascontiguousarray(view)[None], None, self.norm)[0]
        return torch.from_numpy(x), torch.from_numpy(self.targets[k, index]), int(self.labels[index])

    def _generator(self) -> np.random.Generator:
        info = get_worker_info()
        key = (self.epoch, info.id + 1 if info is not None else 0)
        if key != self._rng_key:
            self._rng, self._rng_key = np.random.default_rng([self.seed, 1, *key]), key
        return self._rng


def make_teacher_views(teacher: CellClassifier, images: FolderCrops, count: int, teacher_size: int,
                       out_dir: Path, key: dict, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """`count` augmented views of every image of `images` at its input size (K, N, S, S, 3) and the
    teacher's D on each (K, N, C): view k is `images`' augmentation at epoch k, cut at the teacher's
    size and cut again at the student's. Read from OUT/teacher_views.npz when that file was made for
    the same `key`, else made and saved there."""
    path = out_dir / TEACHER_VIEWS
    key_json = json.dumps(key, sort_keys=True)
    if path.is_file():
        with np.load(path) as saved:
            if str(saved["key"]) == key_json:
                log.info("teacher views from %s", path)
                return saved["views"], saved["targets"]
        log.info("teacher views in %s are for another teacher, split or count; making them again", path)
    started = time.perf_counter()
    n, size = len(images), images.img_size
    views = np.zeros((count, n, size, size, 3), np.uint8)
    targets = np.zeros((count, n, teacher.num_classes), np.float32)
    teacher.eval()
    for k in range(count):
        images.set_epoch(k)
        for first in range(0, n, batch_size):
            batch = [images.view(i, teacher_size) for i in range(first, min(first + batch_size, n))]
            whole = stand_in_box(batch[0].shape, 1.0)[None]
            views[k, first:first + len(batch)] = [cell_views(v, whole, size, 1.0)[0] for v in batch]
            with torch.no_grad():
                d = teacher(torch.from_numpy(to_model_input(np.stack(batch), None, images.norm)))
            targets[k, first:first + len(batch)] = d.numpy()
        log.info("teacher views: set %d of %d, %.0f s", k + 1, count, time.perf_counter() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fh:
        np.savez(fh, views=views, targets=targets, key=np.array(key_json))
    return views, targets


def load_run_classifier(run: Path, checkpoint: str = BEST) -> tuple[CellClassifier, dict]:
    """The classifier of a training (or distillation) run at `checkpoint`, eval mode, and its meta."""
    path = Path(run) / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}")
    meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
    model = build_classifier(meta["arch"], meta["img_size"], len(meta["class_names"]), meta["head"])
    load_weights(model, path)
    return model.eval(), meta


def _agreement(model: CellClassifier, loader: DataLoader, teacher_pred: np.ndarray, device: torch.device) -> float:
    scores, _ = predict(model, loader, device)
    return float((scores.argmax(1) == teacher_pred).mean())


def distil_classifier(teacher: CellClassifier, student: CellClassifier, train: DataLoader,
                      config: DistilConfig, *, calibration: DataLoader, validation: DataLoader,
                      teacher_validation: DataLoader, out_dir: str | os.PathLike, meta: dict,
                      resume: bool = True, device: torch.device | None = None,
                      progress: bool = True) -> list[dict]:
    """Train `student` from `teacher` for `config.epochs` epochs in all; one log dict per epoch.

    `train` yields (student input, teacher input, label), or, with cached
    views, (student input, the teacher's D, label). `validation` and
    `teacher_validation` hold the same images in the same order at the two sizes.
    """
    if teacher.head_kind != "ccl" or student.head_kind != "ccl":
        raise ValueError("distillation needs a CCL teacher and a CCL student (the D vectors are the soft targets)")
    if teacher.num_classes != student.num_classes:
        raise ValueError(f"teacher has {teacher.num_classes} classes, student {student.num_classes}")
    device = device or torch.device("cpu")
    out_dir = Path(out_dir)
    teacher.to(device).eval().requires_grad_(False)
    student.to(device)
    optimiser = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history, best = _resume(student, optimiser, out_dir if resume else None, meta, device)
    teacher_val_pred = predict(teacher, teacher_validation, device)[0].argmax(1)
    for epoch in range(len(history), config.epochs):
        started = time.perf_counter()
        start_epoch(optimiser, train, config, epoch)
        student.train()
        loss_sum, correct, n = 0.0, 0, 0
        epoch_lr = lr_at(config, epoch)
        batches = tqdm(train, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress)
        for step, (x, teacher_input, y) in enumerate(batches):
            for group in optimiser.param_groups:
                group["lr"] = epoch_lr * warmup_factor(config, epoch, step, len(train))
            x, y = x.to(device), y.to(device)
            if teacher_input.ndim == 2:  # cached: the teacher's D itself
                d_teacher = teacher_input.to(device)
            else:
                with torch.no_grad():
                    d_teacher = teacher(teacher_input.to(device))
            d = student.head(student.features(x))
            loss = distillation_loss(d, d_teacher, y, config.soft_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
            optimiser.step()
            with torch.no_grad():  # Stage II on the updated network
                update_centroids(student.head, student.features(x), y, config)
            loss_sum += loss.item() * len(y)
            correct += int((d.argmax(1) == y).sum())
            n += len(y)
        entry = {"epoch": epoch + 1, "lr": lr_at(config, epoch), "loss": loss_sum / n, "train_accuracy": correct / n}
        entry |= evaluate(student, calibration, validation, device, config)
        entry["val_agreement"] = _agreement(student, validation, teacher_val_pred, device)
        entry["seconds"] = time.perf_counter() - started
        history.append(entry)
        improved = best is None or entry["val_accuracy"] > best["val_accuracy"]
        if improved:
            best = {"epoch": entry["epoch"], "val_accuracy": entry["val_accuracy"]}
        log.info(_log_line(entry, config.epochs, config.target_accuracy) + f", agreement {entry['val_agreement']:.4f}")
        _save(student, optimiser, history, best, meta, config, out_dir, improved)
    return history


def distil_on_folder(teacher_run: str | os.PathLike, data: str | os.PathLike, split_file: str | os.PathLike,
                     out_dir: str | os.PathLike, config: DistilConfig, *, arch: str = STUDENT_ARCH,
                     img_size: int = STUDENT_IMG_SIZE, teacher_checkpoint: str = BEST, workers: int = 2,
                     max_per_class: int | None = None, resume: bool = True, progress: bool = True,
                     cache_side: int | None = None, framing: Path | None = None) -> tuple[CellClassifier, list[dict]]:
    """Distil the teacher of run `teacher_run` into a new `arch` student on the teacher's own split.

    The split file must be the one the teacher was trained with, so that the
    student's calibration and validation cells were never trained on by either.
    `cache_side`: keep the images decoded in memory at that size (FolderCrops).
    `framing`: the bundle whose detector frames each image's cell (export.cell_boxes).
    """
    teacher_run, out_dir = Path(teacher_run), Path(out_dir)
    teacher, teacher_meta = load_run_classifier(teacher_run, teacher_checkpoint)
    split = Split.from_json(json.loads(Path(split_file).read_text()))
    if list(split.class_names) != list(teacher_meta["class_names"]):
        raise ValueError(f"split file {split_file} is for classes {list(split.class_names)}, "
                         f"the teacher for {teacher_meta['class_names']}")
    if max_per_class is not None:
        split = split.limited(max_per_class)
    norm = Normalisation.from_dict(teacher_meta["normalisation"])
    torch.manual_seed(config.seed)
    student = build_classifier(arch, img_size, len(split.class_names), "ccl")
    meta = {"arch": arch, "img_size": img_size, "head": "ccl", "class_names": list(split.class_names),
            "normalisation": norm.to_dict(),
            "teacher": {"run": str(teacher_run), "checkpoint": teacher_checkpoint, "arch": teacher_meta["arch"],
                        "img_size": teacher_meta["img_size"],
                        "targets": f"{config.teacher_views} cached views" if config.teacher_views else "online"}}
    t_size = teacher_meta["img_size"]
    boxes, context, framed_by = framing_for(Path(data), split, framing, Path(split_file))
    if framed_by is not None:
        meta["framing"] = framed_by
    framed = {"context": context}
    train_items = split.items("train")
    sampler = BalancedSampler([label for _, label in train_items], seed=config.seed)

    def plain(name: str, size: int) -> DataLoader:
        items = split.items(name)
        return DataLoader(FolderCrops(data, items, size, norm, cache_side=cache_side, boxes=boxes[name],
                                      **framed), config.batch_size,
                          sampler=ShardSampler(len(items)), num_workers=workers)

    if config.teacher_views:
        augmented = FolderCrops(data, train_items, img_size, norm, Augment(), seed=config.seed,
                                cache_side=cache_side, boxes=boxes["train"], **framed)
        key = {"teacher": meta["teacher"] | {"sha256": sha256_file(teacher_run / teacher_checkpoint)},
               "images": train_items, "framing": meta.get("framing"), "cache_side": cache_side,
               "views": config.teacher_views, "seed": config.seed, "sizes": [t_size, img_size]}
        views, targets = make_teacher_views(teacher, augmented, config.teacher_views, t_size, out_dir, key)
        train_set = CachedTeacherViews(views, targets, augmented.labels, norm, seed=config.seed)
    else:
        train_set = TwoSizeCrops(data, train_items, img_size, norm, Augment(), seed=config.seed,
                                 teacher_size=t_size, cache_side=cache_side, boxes=boxes["train"], **framed)
    history = distil_classifier(
        teacher, student, DataLoader(train_set, config.batch_size, sampler=sampler, num_workers=workers),
        config, calibration=plain("calibration", img_size), validation=plain("validation", img_size),
        teacher_validation=plain("validation", t_size), out_dir=out_dir, meta=meta, resume=resume,
        progress=progress)
    return student, history


def best_checkpoint(run: Path) -> Path:
    """best.pt when the run has one, else last.pt."""
    return run / BEST if (run / BEST).exists() else run / LAST
