"""CCL against softmax and ICP on the same network: one table of accuracy, Rr, Ra and R.

For a trained CCL classifier (a teacher or a distilled student), the three
reject rules are judged on the same features, so the table compares the
heads and not two differently trained networks:
- ccl: the network's own CCL head, confidence 1 - sum D + max D (the paper);
- softmax: a linear softmax head fitted by cross-entropy on the same frozen
  features of the training split, max-probability threshold (the thesis baseline);
- icp: the inductive conformal predictor on that softmax head's probabilities.
Each rule's threshold is fitted on the calibration split for the target
accepted accuracy (the paper's descending search) and judged on the validation
split. Every split's cells are cut by the one cell view, framed as in training.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from calibration.rules import fit_rule
from edge.runtime.preprocess import Normalisation
from export.cell_boxes import cell_boxes_file, split_boxes
from export.datasets import SPLITS, FolderCrops, Split
from export.distill_classifier import load_run_classifier
from export.models.classifier import CellClassifier

SOFTMAX_STEPS = 300


@torch.no_grad()
def split_features(model: CellClassifier, data: Path, split: Split, framing: Path, split_file: Path,
                   cache_side: int | None = None) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """Per split, (features (N, F), labels) of the un-augmented cell views."""
    boxes, context, _ = split_boxes(Path(data), split, Path(framing), cell_boxes_file(split_file))
    norm = Normalisation()
    out = {}
    for name in SPLITS:
        items = split.items(name)
        dataset = FolderCrops(data, items, model.backbone.img_size, norm, cache_side=cache_side,
                              boxes=boxes[name], context=context)
        feats = [model.features(x) for x, _ in DataLoader(dataset, batch_size=64)]
        out[name] = torch.cat(feats), np.array([label for _, label in items])
    return out


def fit_softmax_head(features: torch.Tensor, labels: np.ndarray, num_classes: int, seed: int = 0) -> nn.Linear:
    """A linear softmax head on frozen features: full-batch AdamW on the cross-entropy, classes weighted
    equally (as the class-balanced training batches are)."""
    torch.manual_seed(seed)
    head = nn.Linear(features.shape[1], num_classes)
    y = torch.from_numpy(labels)
    weight = torch.tensor(len(labels) / (num_classes * np.bincount(labels, minlength=num_classes).clip(1)),
                          dtype=torch.float32)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    for _ in range(SOFTMAX_STEPS):
        loss = nn.functional.cross_entropy(head(x), y, weight=weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # fold the standardisation into the layer, so it applies to raw features
    with torch.no_grad():
        head.bias -= head.weight @ (mean / std)
        head.weight /= std
    return head


def compare_heads(run: Path, data: Path, split_file: Path, framing: Path, checkpoint: str = "last.pt",
                  target_accuracy: float = 0.99, cache_side: int | None = None) -> dict:
    """The three rules' figures on the validation split for the network of training run `run`."""
    model, meta = load_run_classifier(run, checkpoint)
    split = Split.from_json(json.loads(Path(split_file).read_text()))
    feats = split_features(model, data, split, framing, split_file, cache_side)
    num_classes = len(meta["class_names"])
    head = fit_softmax_head(*feats["train"], num_classes)
    with torch.no_grad():
        ccl = {name: model.head.scores(f).numpy() for name, (f, _) in feats.items()}
        soft = {name: head(f).softmax(1).numpy() for name, (f, _) in feats.items()}
    labels = {name: lab for name, (_, lab) in feats.items()}
    rules = {"ccl": ("ccl", ccl), "softmax": ("softmax", soft), "icp": ("softmax", soft)}
    table = {}
    for rule, (head_kind, scores) in rules.items():
        fit = fit_rule(scores["calibration"], labels["calibration"], head_kind, rule, target_accuracy,
                       search="descending", num_classes=num_classes)
        report = fit.report(scores["validation"], labels["validation"], num_classes).to_dict()
        table[rule] = {key: report[key] for key in ("accuracy", "rejection_rate", "accepted_accuracy", "reliability")}
        table[rule]["reached"] = fit.reached
    return {"run": str(run), "checkpoint": checkpoint, "arch": meta["arch"], "img_size": meta["img_size"],
            "target_accuracy": target_accuracy, "n_validation": int(len(labels["validation"])),
            "softmax_head": f"linear, fitted on the frozen features of the {len(labels['train'])} training "
                            f"cells ({SOFTMAX_STEPS} AdamW steps, classes weighted equally)",
            "rules": table}


def markdown_rows(result: dict, name: str) -> list[str]:
    """Table rows: | network | rule | accuracy | Rr | Ra | R |."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f} %"
    return [f"| {name} | {rule} | {pct(r['accuracy'])} | {pct(r['rejection_rate'])} | "
            f"{pct(r['accepted_accuracy'])} | {pct(r['reliability'])} |" for rule, r in result["rules"].items()]
