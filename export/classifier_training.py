"""Training a cell classifier: CCL's two stages per batch, or plain cross-entropy for softmax.

Images arrive as uint8 BGR crops (N, S, S, 3) and go through edge's shared
preprocessing, so the model learns exactly the view the device gives it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge.preprocess import Normalisation, to_model_input
from export.models.classifier import CellClassifier
from export.models.heads import DEFAULT_BETA, DEFAULT_GAMMA, DEFAULT_PUSH_BOUND, ccl_loss

log = logging.getLogger("export.classifier")


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


def simple_augment(batch_bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips, right-angle rotations and brightness/contrast jitter: a cell has no up."""
    out = np.empty_like(batch_bgr)
    for i, im in enumerate(batch_bgr):
        im = np.rot90(im, rng.integers(4))
        if rng.random() < 0.5:
            im = im[:, ::-1]
        gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
        out[i] = np.clip(im.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    return out


def train_classifier(model: CellClassifier, images: np.ndarray, labels: np.ndarray,
                     config: ClassifierTrainConfig, norm: Normalisation,
                     checkpoint_dir: Path | None = None) -> list[dict]:
    """Train in place; one log dict per epoch. Resumes from checkpoint_dir/last.pt if present."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    milestones = [max(1, math.floor(f * config.epochs)) for f in config.lr_drops]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones, gamma=0.1)
    start, history = _resume(model, optimiser, schedule, checkpoint_dir)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    size = model.backbone.img_size
    for epoch in range(start, config.epochs):
        model.train()
        order = rng.permutation(len(images))
        total_loss, correct = 0.0, 0
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}",
                   leave=False, disable=None)
        for start_i in bar:
            idx = order[start_i:start_i + config.batch_size]
            x = torch.from_numpy(to_model_input(simple_augment(images[idx], rng), (size, size), norm))
            y = labels_t[idx]
            loss, out = _step(model, optimiser, x, y, config)
            total_loss += loss * len(idx)
            correct += int((out.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{loss:.3f}")
        schedule.step()
        entry = {"epoch": epoch + 1, "loss": total_loss / len(images), "train_accuracy": correct / len(images),
                 "lr": optimiser.param_groups[0]["lr"]}
        history.append(entry)
        log.info("epoch %d loss %.4f train accuracy %.4f", entry["epoch"], entry["loss"], entry["train_accuracy"])
        if checkpoint_dir is not None:
            _save(model, optimiser, schedule, history, checkpoint_dir)
    return history


def _step(model: CellClassifier, optimiser: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          config: ClassifierTrainConfig) -> tuple[float, torch.Tensor]:
    """Stage I (gradient on backbone and W); for CCL then Stage II (centroids, no gradient)."""
    out = model.head(model.features(x))
    loss = ccl_loss(out, y) if model.head_kind == "ccl" else nn.functional.cross_entropy(out, y)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    if model.head_kind == "ccl":
        with torch.no_grad():
            model.head.update_centroids(model.features(x), y, config.gamma, config.beta, config.push_bound)
    return loss.item(), out.detach()


@torch.no_grad()
def predict_scores(model: CellClassifier, images: np.ndarray, norm: Normalisation,
                   batch_size: int = 128) -> np.ndarray:
    """Exported-graph outputs (D or probabilities) for uint8 BGR crops."""
    model.eval()
    size = model.backbone.img_size
    parts = [model(torch.from_numpy(to_model_input(images[i:i + batch_size], (size, size), norm))).numpy()
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts)


def _save(model, optimiser, schedule, history, checkpoint_dir: Path) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optimiser": optimiser.state_dict(),
             "schedule": schedule.state_dict(), "history": history}
    tmp = checkpoint_dir / "last.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(checkpoint_dir / "last.pt")


def _resume(model, optimiser, schedule, checkpoint_dir: Path | None) -> tuple[int, list[dict]]:
    path = checkpoint_dir / "last.pt" if checkpoint_dir is not None else None
    if path is None or not path.exists():
        return 0, []
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    log.info("resumed from %s after epoch %d", path, len(state["history"]))
    return len(state["history"]), list(state["history"])
