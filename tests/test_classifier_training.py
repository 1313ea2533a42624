"""Classifier training: `edge export train-classifier` end to end, resume, checkpoints, schedule, heads."""
from __future__ import annotations

import json
import logging

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge.runtime.preprocess import Normalisation
from edge.synthetic.smear import render_cell_crops
from export.classifier_training import ClassifierTrainConfig, lr_at, train_classifier_arrays
from export.cli import main
from export.models.classifier import build_classifier
from tests.helpers import write_crops

torch.set_num_threads(1)  # see tests/test_ccl_head.py

EPOCH_KEYS = {"epoch", "lr", "loss", "train_accuracy", "cal_accuracy", "val_accuracy", "threshold",
              "threshold_reached", "val_rejection_rate", "val_accepted_accuracy", "val_reliability", "seconds"}


def _read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_trains_checkpoints_logs_exports_and_resumes(tmp_path, caplog):
    data, out = write_crops(tmp_path / "data"), tmp_path / "out"
    args = ["train-classifier", "--data", str(data), "--out", str(out), "--arch", "crossformer_tiny_test",
            "--img-size", "32", "--batch-size", "8", "--workers", "0", "--lr", "1e-3", "--no-progress"]
    assert main(args + ["--epochs", "2"]) == 0

    for name in ("last.pt", "best.pt", "log.jsonl", "split.json", "classifier.onnx"):
        assert (out / name).is_file(), name
    first = _read_log(out / "log.jsonl")
    assert [e["epoch"] for e in first] == [1, 2] and all(set(e) == EPOCH_KEYS for e in first)
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and last["meta"]["class_names"] == ["lymphocyte", "monocyte", "neutrophil"]
    assert best["epoch"] == last["best"]["epoch"]
    assert first[best["epoch"] - 1]["val_accuracy"] == max(e["val_accuracy"] for e in first)

    session = ort.InferenceSession(str(out / "classifier.onnx"), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"image": np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert scores.shape == (2, 3) and ((scores > 0) & (scores <= 1)).all()  # CCL kernel values

    with caplog.at_level(logging.INFO, logger="export.classifier"):
        assert main(args + ["--epochs", "3", "--cache-side", "48"]) == 0  # images held in memory
    assert "resumed from" in caplog.text and "after epoch 2" in caplog.text
    assert sum("epoch " in m and "/3 loss" in m for m in caplog.messages) == 1  # only epoch 3 ran
    resumed = _read_log(out / "log.jsonl")
    assert resumed[:2] == first and resumed[2]["epoch"] == 3
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3

    with pytest.raises(ValueError, match="checkpoint"):  # another head cannot resume this run
        main(args + ["--epochs", "4", "--head", "softmax"])


def test_array_training_with_softmax_head_and_bf16(tmp_path):
    labels = np.arange(24) % 3
    images = render_cell_crops(labels, 32, seed=1)
    model = build_classifier("crossformer_tiny_test", 32, 3, head="softmax")
    config = ClassifierTrainConfig(epochs=1, batch_size=8, lr=1e-3, bf16=True)
    history = train_classifier_arrays(model, images, labels, config, Normalisation(), tmp_path)
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and not (tmp_path / "best.pt").exists()  # no validation, no best
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


def test_bf16_keeps_the_centroids_float32(tmp_path):
    labels = np.arange(16) % 2
    model = build_classifier("crossformer_tiny_test", 32, 2)
    before = model.head.centroids.clone()
    train_classifier_arrays(model, render_cell_crops(labels, 32, seed=2), labels,
                            ClassifierTrainConfig(epochs=1, batch_size=8, bf16=True), Normalisation())
    assert model.head.centroids.dtype == torch.float32 and not torch.equal(model.head.centroids, before)


def test_step_schedule_drops_tenfold_at_30_and_60_percent():
    config = ClassifierTrainConfig(epochs=100, lr=1e-4)
    assert [lr_at(config, e) for e in (0, 29, 30, 59, 60, 99)] == pytest.approx(
        [1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6])
