"""Detector distillation: a tiny student learns from a teacher run's heads and boxes, checkpoints, resumes, bundles."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from export.detector_bundle import load_run_detector
from export.detector_training import DetectorRecipe
from export.distill_detector import DetectorDistilConfig, distil_detector_run, teacher_loss
from export.models.detector import build_detector

torch.set_num_threads(1)


def test_teacher_loss_is_least_for_the_teachers_own_heads():
    torch.manual_seed(0)
    teacher = build_detector("detector_tiny_test").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        heads = teacher(x)
    other = {k: v + torch.randn_like(v) for k, v in heads.items()}
    assert teacher_loss(heads, heads) < teacher_loss(other, heads)
    student = build_detector("detector_tiny_test")
    loss = teacher_loss(student(x), heads)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.fixture
def teacher_run(tmp_path):
    """A train-detector run folder (synthetic fields only) holding a tiny teacher checkpoint."""
    run = tmp_path / "teacher"
    run.mkdir()
    recipe = DetectorRecipe(arch="detector_tiny_test", tile_size=64, epochs=1, steps_per_epoch=1, batch_size=2)
    (run / "run.json").write_text(json.dumps({"recipe": asdict(recipe), "largest_box_px": None,
                                              "code_commit": "test"}))
    torch.manual_seed(3)
    model = build_detector("detector_tiny_test")
    torch.save({"model": model.state_dict(), "config_name": model.config.name, "config": asdict(model.config),
                "epoch": 1, "tile_size": 64}, run / "last.pt")
    return run


def test_distil_detector_checkpoints_resumes_and_loads_as_a_detector_run(teacher_run, tmp_path):
    out, lines = tmp_path / "student", []
    config = DetectorDistilConfig(epochs=2, steps_per_epoch=2, batch_size=2)
    summary = distil_detector_run(teacher_run, out, config, progress=False, log=lines.append)
    assert summary["epochs"] == 2 and summary["teacher_validation"]["n_gt"] > 0
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["teacher"] > 0 and h["boxes"] > 0 and "val_recall" in h for h in history)
    run = json.loads((out / "run.json").read_text())
    assert run["distilled_from"] == str(teacher_run) and run["recipe"]["tile_size"] == 64

    student, state = load_run_detector(out)  # what `edge export detector-bundle --run` reads
    assert state["epoch"] == 2 and student.config.name == "detector_tiny_test"

    lines.clear()
    distil_detector_run(teacher_run, out, DetectorDistilConfig(**(asdict(config) | {"epochs": 3})),
                        progress=False, log=lines.append)
    assert lines[0].startswith("resumed from") and sum(line.startswith("epoch ") for line in lines) == 1
    with pytest.raises(ValueError, match="was distilled with"):
        distil_detector_run(teacher_run, out, DetectorDistilConfig(**(asdict(config) | {"lr": 1e-2})),
                            progress=False, log=None)
