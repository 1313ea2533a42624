"""Distilling a CrossFormer-CCL teacher into a small CrossFormer-CCL student.

Each batch, the same augmented cell is shown to the teacher at its input size
and to the student at its own, both through edge's shared preprocessing. With
fixed teacher targets, the teacher sees each training image once instead,
un-augmented, before the first epoch (kept in OUT/teacher_targets.npz for a
resumed run), and the student's augmented views of an image all learn that
one D vector: the teacher's forward pass is most of a CPU epoch's cost
(a CrossFormer-T at 96 px against a 64 px student), so epochs run several
times faster, at the price of targets that do not follow the augmentation.

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
from torch.utils.data import DataLoader
from tqdm import tqdm

from edge.bundle import sha256_file
from edge.cell_view import cell_views, stand_in_box
from edge.preprocess import Normalisation, to_model_input
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
    fixed_teacher_targets: bool = False  # the teacher's D of each un-augmented image, computed once

TEACHER_TARGETS = "teacher_targets.npz"


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


class IndexedCrops(FolderCrops):
    """(student input, image index, label): for teacher targets looked up per image."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        x, label = super().__getitem__(index)
        return x, index, label


def fixed_teacher_targets(teacher: CellClassifier, images: DataLoader, out_dir: Path, key: dict,
                          device: torch.device) -> torch.Tensor:
    """The teacher's D (N, C) for `images` (in order, un-augmented), from OUT/teacher_targets.npz
    when that file was made for the same `key` (teacher checkpoint and images), else computed and saved."""
    path = out_dir / TEACHER_TARGETS
    key_json = json.dumps(key, sort_keys=True)
    if path.is_file():
        with np.load(path) as saved:
            if str(saved["key"]) == key_json:
                log.info("teacher targets from %s", path)
                return torch.from_numpy(saved["targets"])
        log.info("teacher targets in %s are for another teacher or split; computing them again", path)
    started = time.perf_counter()
    targets = predict(teacher, images, device)[0].astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, targets=targets, key=np.array(key_json))
    os.replace(tmp, path)
    log.info("teacher targets for %d images in %.0f s", len(targets), time.perf_counter() - started)
    return torch.from_numpy(targets)


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
                      progress: bool = True, teacher_targets: torch.Tensor | None = None) -> list[dict]:
    """Train `student` from `teacher` for `config.epochs` epochs in all; one log dict per epoch.

    `train` yields (student input, teacher input, label), or with
    `teacher_targets` (the teacher's D per training image) (student input,
    image index, label). `validation` and `teacher_validation` hold the same
    images in the same order at the two sizes.
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
        for x, teacher_view, y in tqdm(train, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                                       disable=not progress):
            x, y = x.to(device), y.to(device)
            if teacher_targets is not None:
                d_teacher = teacher_targets[teacher_view].to(device)
            else:
                with torch.no_grad():
                    d_teacher = teacher(teacher_view.to(device))
            d = student.head(student.features(x))
            loss = distillation_loss(d, d_teacher, y, config.soft_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
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
                        "targets": "fixed" if config.fixed_teacher_targets else "online"}}
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

    targets = None
    if config.fixed_teacher_targets:
        train_set = IndexedCrops(data, train_items, img_size, norm, Augment(), seed=config.seed,
                                 cache_side=cache_side, boxes=boxes["train"], **framed)
        key = {"teacher": meta["teacher"] | {"sha256": sha256_file(teacher_run / teacher_checkpoint)},
               "images": train_items, "cache_side": cache_side}
        targets = fixed_teacher_targets(teacher, plain("train", t_size), out_dir, key, torch.device("cpu"))
    else:
        train_set = TwoSizeCrops(data, train_items, img_size, norm, Augment(), seed=config.seed,
                                 teacher_size=t_size, cache_side=cache_side, boxes=boxes["train"], **framed)
    history = distil_classifier(
        teacher, student, DataLoader(train_set, config.batch_size, sampler=sampler, num_workers=workers),
        config, calibration=plain("calibration", img_size), validation=plain("validation", img_size),
        teacher_validation=plain("validation", t_size), out_dir=out_dir, meta=meta, resume=resume,
        progress=progress, teacher_targets=targets)
    return student, history


def best_checkpoint(run: Path) -> Path:
    """best.pt when the run has one, else last.pt."""
    return run / BEST if (run / BEST).exists() else run / LAST
