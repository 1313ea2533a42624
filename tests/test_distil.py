"""Distillation of a CCL teacher into a CCL student: the loss, the two-size views, a tiny run, resume."""
from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from edge.runtime.cell_view import cell_views
from edge.runtime.preprocess import Normalisation, to_model_input
from edge.synthetic.datasets import write_crop_folders
from export.augment import Augment
from export.datasets import FolderCrops, Split, stratified_split
from export.distill_classifier import (CachedTeacherViews, DistilConfig, TwoSizeCrops, distil_classifier,
                                       distil_on_folder, distillation_loss, load_run_classifier,
                                       warmup_factor)
from export.models.classifier import build_classifier
from export.models.heads import ccl_loss

torch.set_num_threads(1)


def test_loss_mixes_the_hard_label_and_the_teachers_kernel_values():
    torch.manual_seed(0)
    d_student = torch.rand(6, 4).clamp(0.05, 0.95).requires_grad_()
    d_teacher, labels = torch.rand(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    hard = ccl_loss(d_student, labels)
    assert torch.allclose(distillation_loss(d_student, d_teacher, labels, 0.0), hard)
    soft = -(d_teacher * d_student.log() + (1 - d_teacher) * (1 - d_student).log()).sum(1).mean()
    assert torch.allclose(distillation_loss(d_student, d_teacher, labels, 1.0), soft)
    mixed = distillation_loss(d_student, d_teacher, labels, 0.3)
    assert torch.allclose(mixed, 0.7 * hard + 0.3 * soft)
    mixed.backward()
    assert torch.isfinite(d_student.grad).all() and d_student.grad.abs().sum() > 0
    # the student that copies the teacher minimises the soft part
    assert distillation_loss(d_teacher, d_teacher, labels, 1.0) < distillation_loss(d_student, d_teacher, labels, 1.0)


def test_warmup_raises_the_rate_linearly_step_by_step_then_holds():
    config = DistilConfig(warmup_epochs=2.0)
    factors = [warmup_factor(config, epoch, step, 4) for epoch in range(3) for step in range(4)]
    np.testing.assert_allclose(factors, [1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1, 1, 1, 1, 1])
    assert warmup_factor(DistilConfig(warmup_epochs=0), 0, 0, 4) == 1.0


def test_two_size_views_are_one_cell_view_cut_again(tmp_path):
    write_crop_folders(tmp_path, per_class=1, size=80, seed=1)
    items = [("neutrophil/synthetic_1_00000.png", 0)]
    norm = Normalisation()
    box = np.array([[20.0, 22.0, 52.0, 50.0]], np.float32)
    x_student, x_teacher, label = TwoSizeCrops(tmp_path, items, 32, norm, teacher_size=48, boxes=box,
                                               context=1.5)[0]
    image = cv2.imread(str(tmp_path / items[0][0]))
    teacher_view = cell_views(image, box, 48, 1.5)
    student_view = cell_views(teacher_view[0], np.array([[0, 0, 48, 48]], np.float32), 32, 1.0)
    assert label == 0
    np.testing.assert_array_equal(x_teacher.numpy(), to_model_input(teacher_view, None, norm)[0])
    np.testing.assert_array_equal(x_student.numpy(), to_model_input(student_view, None, norm)[0])


def test_two_size_cache_must_hold_the_teacher_size(tmp_path):
    write_crop_folders(tmp_path, per_class=1, size=80, seed=1)
    items = [("neutrophil/synthetic_1_00000.png", 0)]
    with pytest.raises(ValueError, match="teacher's input size"):
        TwoSizeCrops(tmp_path, items, 32, Normalisation(), teacher_size=48, cache_side=40)
    views = TwoSizeCrops(tmp_path, items, 32, Normalisation(), teacher_size=48, cache_side=48)[0]
    assert views[0].shape == (3, 32, 32) and views[1].shape == (3, 48, 48)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """Synthetic crops, a split, and a teacher run folder holding a (random) tiny CCL teacher checkpoint."""
    root = tmp_path_factory.mktemp("distil")
    data = root / "data"
    write_crop_folders(data, per_class=8, size=48, seed=2)
    split = stratified_split(data, root / "split.json", fractions=(0.5, 0.25, 0.25))
    torch.manual_seed(1)
    teacher = build_classifier("crossformer_tiny_test", 48, len(split.class_names))
    meta = {"arch": "crossformer_tiny_test", "img_size": 48, "head": "ccl", "class_names": list(split.class_names),
            "normalisation": Normalisation().to_dict()}
    (root / "teacher").mkdir()
    torch.save({"model": teacher.state_dict(), "meta": meta, "epoch": 1}, root / "teacher" / "best.pt")
    return root, data


def test_tiny_distillation_learns_checkpoints_and_resumes(teacher_run, caplog):
    root, data = teacher_run
    out = root / "student"
    config = DistilConfig(epochs=3, batch_size=8, lr=3e-3, lr_drops=(0.9, 0.95), soft_weight=0.5)
    kwargs = dict(arch="crossformer_tiny_test", img_size=32, workers=0, progress=False)
    _, history = distil_on_folder(root / "teacher", data, root / "split.json", out, config, **kwargs)
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert all(0.0 <= e["val_agreement"] <= 1.0 and "val_accuracy" in e for e in history)
    for name in ("last.pt", "best.pt", "log.jsonl"):
        assert (out / name).is_file()
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in logged] == [1, 2, 3]
    student, meta = load_run_classifier(out, "last.pt")
    assert meta["teacher"]["arch"] == "crossformer_tiny_test" and meta["img_size"] == 32
    assert student.backbone.img_size == 32 and student.head_kind == "ccl"

    with caplog.at_level(logging.INFO, logger="export.classifier"):
        _, resumed = distil_on_folder(root / "teacher", data, root / "split.json", out,
                                      DistilConfig(**{**config.__dict__, "epochs": 4}), **kwargs,
                                      cache_side=48)  # images in memory: same run, same results format
    assert "after epoch 3" in caplog.text
    assert resumed[:3] == history and resumed[3]["epoch"] == 4
    with pytest.raises(ValueError, match="checkpoint"):  # another student config cannot resume this run
        distil_on_folder(root / "teacher", data, root / "split.json", out, config,
                         **(kwargs | {"img_size": 48}))


def test_the_distillation_loss_falls_over_a_tiny_run(teacher_run, tmp_path):
    root, data = teacher_run
    split = Split.from_json(json.loads((root / "split.json").read_text()))
    teacher, meta = load_run_classifier(root / "teacher")
    norm = Normalisation()
    train = DataLoader(TwoSizeCrops(data, split.items("train"), 32, norm, teacher_size=48), batch_size=4,
                       shuffle=False)
    evaluation = {name: DataLoader(FolderCrops(data, split.items(split_name), size, norm), batch_size=8)
                  for name, split_name, size in (("calibration", "calibration", 32), ("validation", "validation", 32),
                                                 ("teacher_validation", "validation", 48))}
    torch.manual_seed(0)
    student = build_classifier("crossformer_tiny_test", 32, len(split.class_names))
    config = DistilConfig(epochs=5, lr=3e-3, lr_drops=(0.9, 0.95), soft_weight=0.5, warmup_epochs=0)
    history = distil_classifier(teacher, student, train, config, out_dir=tmp_path, meta=meta | {"img_size": 32},
                                progress=False, **evaluation)
    losses = [e["loss"] for e in history]
    assert losses[-1] < 0.8 * losses[0], losses


def test_the_gradient_norm_is_cut_before_each_step(teacher_run, tmp_path):
    root, data = teacher_run
    split = Split.from_json(json.loads((root / "split.json").read_text()))
    teacher, meta = load_run_classifier(root / "teacher")
    norm = Normalisation()
    train = DataLoader(TwoSizeCrops(data, split.items("train"), 32, norm, teacher_size=48), batch_size=4)
    evaluation = {name: DataLoader(FolderCrops(data, split.items(split_name), size, norm), batch_size=8)
                  for name, split_name, size in (("calibration", "calibration", 32), ("validation", "validation", 32),
                                                 ("teacher_validation", "validation", 48))}
    moved = {}
    for cut in (None, 1e-12):
        torch.manual_seed(0)
        student = build_classifier("crossformer_tiny_test", 32, len(split.class_names))
        before = torch.cat([p.detach().flatten().clone() for p in student.backbone.parameters()])
        config = DistilConfig(epochs=1, lr=3e-3, warmup_epochs=0, max_grad_norm=cut)
        distil_classifier(teacher, student, train, config, out_dir=tmp_path / str(cut), meta=meta | {"img_size": 32},
                          progress=False, **evaluation)
        after = torch.cat([p.detach().flatten() for p in student.backbone.parameters()])
        moved[cut] = float((after - before).abs().max())
    assert moved[1e-12] < 0.05 * moved[None]  # a gradient cut to nothing moves the weights (almost) nowhere


def test_refuses_a_split_of_other_classes_and_a_softmax_teacher(teacher_run, tmp_path):
    root, data = teacher_run
    other = json.loads((root / "split.json").read_text())
    other["class_names"] = other["class_names"][::-1]
    (tmp_path / "split.json").write_text(json.dumps(other))
    config = DistilConfig(epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="is for classes"):
        distil_on_folder(root / "teacher", data, tmp_path / "split.json", tmp_path / "s", config, workers=0)
    state = torch.load(root / "teacher" / "best.pt", weights_only=True)
    softmax = build_classifier("crossformer_tiny_test", 48, len(state["meta"]["class_names"]), "softmax")
    (tmp_path / "t").mkdir()
    torch.save({"model": softmax.state_dict(), "meta": state["meta"] | {"head": "softmax"}}, tmp_path / "t" / "best.pt")
    with pytest.raises(ValueError, match="needs a CCL teacher"):
        distil_on_folder(tmp_path / "t", data, root / "split.json", tmp_path / "s", config, workers=0,
                         arch="crossformer_tiny_test", img_size=32)


def test_cached_teacher_views_hold_the_teachers_d_on_each_view_and_are_reused(teacher_run, caplog):
    root, data = teacher_run
    out = root / "student-cached"
    config = DistilConfig(epochs=1, batch_size=8, lr=3e-3, soft_weight=0.5, teacher_views=2)
    kwargs = dict(arch="crossformer_tiny_test", img_size=32, workers=0, progress=False)
    with caplog.at_level(logging.INFO, logger="export.distil"):
        _, history = distil_on_folder(root / "teacher", data, root / "split.json", out, config, **kwargs)
    assert "teacher views: set 2 of 2" in caplog.text and len(history) == 1
    split = Split.from_json(json.loads((root / "split.json").read_text()))
    teacher, _ = load_run_classifier(root / "teacher")
    augmented = FolderCrops(data, split.items("train"), 32, Normalisation(), Augment(), seed=config.seed)
    with np.load(out / "teacher_views.npz") as saved:
        views, targets = saved["views"], saved["targets"]
    assert views.shape[:3] == (2, len(augmented), 32) and targets.shape == (2, len(augmented), teacher.num_classes)
    for k in range(2):  # view k is the augmentation of epoch k, the teacher's D computed on it
        augmented.set_epoch(k)
        teacher_views = np.stack([augmented.view(i, 48) for i in range(len(augmented))])
        whole = np.array([[0, 0, 48, 48]], np.float32)
        np.testing.assert_array_equal(views[k], [cell_views(v, whole, 32, 1.0)[0] for v in teacher_views])
        with torch.no_grad():
            d = teacher(torch.from_numpy(to_model_input(teacher_views, None, Normalisation()))).numpy()
        np.testing.assert_allclose(targets[k], d, rtol=1e-4, atol=1e-6)
    assert not np.array_equal(views[0], views[1])
    assert load_run_classifier(out, "last.pt")[1]["teacher"]["targets"] == "2 cached views"

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="export.distil"):
        distil_on_folder(root / "teacher", data, root / "split.json", out,
                         DistilConfig(**{**config.__dict__, "epochs": 2}), **kwargs)
    assert "teacher views from" in caplog.text  # the resumed run reads them back
    with pytest.raises(ValueError, match="checkpoint"):  # online targets cannot resume a cached-view run
        distil_on_folder(root / "teacher", data, root / "split.json", out,
                         DistilConfig(**{**config.__dict__, "epochs": 3, "teacher_views": 0}), **kwargs)


def test_a_cached_view_is_one_of_the_k_views_turned_or_flipped_with_its_own_target():
    rng = np.random.default_rng(0)
    views = rng.integers(0, 256, (3, 4, 8, 8, 3), dtype=np.uint8)
    targets = rng.random((3, 4, 5), dtype=np.float32)
    data = CachedTeacherViews(views, targets, np.array([0, 1, 2, 3]), Normalisation((0, 0, 0), (1, 1, 1)), seed=1)
    seen = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        x, d, label = data[2]
        image = np.clip(np.rint(x.numpy().transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)[..., ::-1]
        matches = [(k, turn) for k in range(3) for turn in range(8)
                   if np.array_equal(image, _turned(views[k, 2], turn))]
        assert matches and label == 2
        k = matches[0][0]
        np.testing.assert_array_equal(d.numpy(), targets[k, 2])
        seen |= {m[1] for m in matches}
    assert len(seen) > 1
    data.set_epoch(3)
    first = data[1][0]
    data.set_epoch(3)
    np.testing.assert_array_equal(data[1][0], first)  # fixed by (seed, epoch)
    with pytest.raises(ValueError, match="disagree"):
        CachedTeacherViews(views, targets[:, :3], np.arange(4), Normalisation())


def _turned(view: np.ndarray, turn: int) -> np.ndarray:
    turned = np.rot90(view, turn % 4)
    return turned[:, ::-1] if turn >= 4 else turned