"""Distilling the centre-heatmap detector into a smaller one.

The student sees the teacher's training data (the teacher run's recipe: real
fields at its scale mixed with synthetic ones, export.detector_training's
sources and tiles) and learns, per tile, from both:

- the boxes: export.detector_training.detector_loss (focal loss on the
  heatmap, L1 on size and offset at the centre cells);
- the teacher's heads: binary cross-entropy of the student's heatmap against
  the teacher's heatmap probabilities everywhere (the teacher's soft
  "how much of a centre is this" includes the cells the boxes miss), and L1
  of size and offset towards the teacher's, weighted by the teacher's
  heatmap, i.e. where the teacher sees a centre.

The run folder has the layout of a train-detector run (run.json, last.pt
with the same keys, log.jsonl), so `edge export detector-bundle --run`
exports and bundles the student like any trained detector.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from edge.runtime.atomic import atomic_file
from export.deployed import git_commit
from export.detector_bundle import load_run_detector
from export.detector_training import (CHECKPOINT, LOG_FILE, RUN_FILE, DetectorRecipe, TileDataset,
                                      _write_log, collate_tiles, detector_loss, evaluate_detector,
                                      recipe_sources, recipe_validation)
from export.models.detector import build_detector


@dataclass(frozen=True)
class DetectorDistilConfig:
    arch: str = "detector_tiny_test"
    epochs: int = 20
    steps_per_epoch: int = 100
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    soft_weight: float = 1.0  # weight of the teacher terms beside detector_loss on the boxes
    seed: int = 0


def teacher_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """BCE to the teacher's heatmap, normalised like the focal loss; size and offset L1 where the teacher sees centres."""
    heat = torch.sigmoid(teacher["heatmap"])
    weight = heat.detach()
    centres = weight.sum().clamp_min(1.0)
    bce = F.binary_cross_entropy_with_logits(student["heatmap"], heat, reduction="sum") / centres
    regress = sum(((student[k] - teacher[k]).abs() * weight).sum() for k in ("size", "offset")) / centres
    return bce + regress


def _lr_factor(step: int, total: int, warmup: int = 50) -> float:
    """export.detector_training's schedule: linear warm-up, then cosine to 2 %."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def distil_detector_run(teacher_run: str | os.PathLike, out: str | os.PathLike, config: DetectorDistilConfig, *,
                        resume: bool = True, workers: int = 0, progress: bool = True,
                        log: Callable[[str], None] | None = print) -> dict:
    """Distil the detector of train-detector run `teacher_run` into a `config.arch` student in run folder `out`."""
    from tqdm import tqdm

    teacher_run, out = Path(teacher_run), Path(out)
    teacher, teacher_state = load_run_detector(teacher_run)
    teacher.requires_grad_(False)
    info = json.loads((teacher_run / RUN_FILE).read_text())
    recipe = DetectorRecipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["recipe"].items()})
    tile = int(teacher_state["tile_size"])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    student = build_detector(config.arch, max_detections=teacher.config.max_detections)
    if (student.config.stride, student.config.size_ref) != (teacher.config.stride, teacher.config.size_ref):
        raise ValueError(f"{config.arch} and the teacher {teacher.config.name} encode sizes differently")
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * config.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, total))
    history: list[dict] = []
    path = out / CHECKPOINT
    if resume and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state.get("distillation") or {}
        if saved != asdict(config) | {"epochs": saved.get("epochs")}:  # only the number of epochs may change
            raise ValueError(f"{out} was distilled with {saved}, not {asdict(config)}; "
                             "resume with the same settings or use a new --out")
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
        if log:
            log(f"resumed from {path} at epoch {len(history)}")
    (out / RUN_FILE).write_text(json.dumps(info | {
        "distilled_from": str(teacher_run), "teacher_epoch": int(teacher_state["epoch"]),
        "distillation": asdict(config), "code_commit": git_commit()}, indent=2) + "\n")

    source, _ = recipe_sources(recipe)
    val = recipe_validation(recipe)
    data = TileDataset(source, tile, config.steps_per_epoch * config.batch_size, config.seed,
                       stride=student.config.stride, size_ref=student.config.size_ref)
    for epoch in range(len(history), config.epochs):
        data.epoch = epoch
        student.train()
        started, sums, n = time.perf_counter(), {"loss": 0.0, "boxes": 0.0, "teacher": 0.0}, 0
        loader = DataLoader(data, batch_size=config.batch_size, num_workers=workers, collate_fn=collate_tiles)
        for x, targets in tqdm(loader, total=config.steps_per_epoch, leave=False, disable=not progress):
            heads = student(x)
            with torch.no_grad():
                teacher_heads = teacher(x)
            boxes, _ = detector_loss(heads, targets)
            soft = teacher_loss(heads, teacher_heads)
            loss = boxes + config.soft_weight * soft
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 10.0)
            opt.step()
            sched.step()
            for key, value in (("loss", loss), ("boxes", boxes), ("teacher", soft)):
                sums[key] += float(value.detach())
            n += 1
        record = {k: v / max(n, 1) for k, v in sums.items()} | {
            "epoch": epoch + 1, "steps": n, "lr": float(opt.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - started}
        if val:
            record |= {f"val_{k}": float(v) for k, v in evaluate_detector(student, val).items()}
        history.append(record)
        if log:
            log(f"epoch {epoch + 1}/{config.epochs} loss {record['loss']:.4f} (boxes {record['boxes']:.4f} "
                f"teacher {record['teacher']:.4f})" + (f" | val recall {record['val_recall']:.3f} precision "
                                                       f"{record['val_precision']:.3f}" if val else ""))
        with atomic_file(path) as fh:
            torch.save({"model": student.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "epoch": epoch + 1, "history": history, "config_name": student.config.name,
                        "config": asdict(student.config), "seed": config.seed, "tile_size": tile,
                        "distillation": asdict(config)}, fh)
        _write_log(history, out / LOG_FILE)
    return {"run": str(out), "checkpoint": str(path), "epochs": len(history), "last": history[-1] if history else None,
            "teacher_validation": evaluate_detector(teacher, val) if val else None}
