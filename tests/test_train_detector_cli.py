"""`edge export train-detector` and `detector-bundle` on a tiny VOC folder of synthetic fields."""
import json

import cv2
import numpy as np
import pytest
import torch

from edge.runtime.bundle import load_bundle
from edge.cli import main as edge_main
from edge.runtime.quality import QualityLimits
from edge.synthetic.smear import SmearConfig, max_cell_diameter_px
from edge.synthetic.datasets import write_voc_fields
from export.cli import main as export_main
from export.detector_bundle import auto_overlap
from export.detector_training import (DetectionDatasetSource, MixedSource, PairSource, field_tiles)

torch.set_num_threads(1)

TRAIN = ["--arch", "detector_tiny_test", "--tile", "128", "--steps-per-epoch", "2", "--batch-size", "4",
         "--synthetic-fraction", "0.5", "--scale", "0.5", "--classes", "cell", "--no-progress"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """Six 320 x 240 fields, class 'cell', split 4 train / 2 val as BCCD's ImageSets."""
    root = tmp_path_factory.mktemp("voc")
    write_voc_fields(root, 6, 320, 240, seed=500)
    ids = [f"synthetic_{500 + i:06d}" for i in range(6)]
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:4]) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[4:]) + "\n")
    return root


@pytest.fixture(scope="module")
def run(voc, tmp_path_factory):
    """A run of 1 epoch, then resumed to 2; the log lines after each call."""
    out = tmp_path_factory.mktemp("run") / "det"
    args = ["train-detector", "--out", str(out), "--data", str(voc)] + TRAIN
    assert export_main(args + ["--epochs", "1"]) == 0
    first = (out / "log.jsonl").read_text().splitlines()
    assert export_main(args + ["--epochs", "2"]) == 0
    return out, first, (out / "log.jsonl").read_text().splitlines()


def test_train_detector_checkpoints_logs_validation_and_resumes(run):
    out, first, second = run
    assert len(first) == 1 and len(second) == 2
    assert second[0] == first[0]  # epoch 1 was not run again (its timing would differ)
    rec = json.loads(second[1])
    assert rec["epoch"] == 2 and rec["steps"] == 2 and 0.0 <= rec["val_recall"] <= 1.0
    assert rec["val_n_gt"] > 0  # the two val fields, at scale 0.5, in 128 px tiles
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
    info = json.loads((out / "run.json").read_text())
    assert info["recipe"]["scale"] == 0.5 and info["train_images"] == 4 and info["largest_box_px"] > 0
    assert (out / "detector.onnx").stat().st_size > 0


def test_resume_refuses_another_recipe(run, voc):
    out, _, _ = run
    args = ["train-detector", "--out", str(out), "--data", str(voc), "--epochs", "2"] + TRAIN
    with pytest.raises(ValueError, match="scale 0.5 -> 0.6"):
        export_main(args + ["--scale", "0.6"])


def test_detector_bundle_verifies_and_eval_detect_runs(run, voc, tmp_path, capsys):
    out, _, _ = run
    bundle = tmp_path / "bundle"
    capsys.readouterr()
    assert export_main(["detector-bundle", "--run", str(out), "--out", str(bundle), "--scale", "0.4",
                        "--score-threshold", "0.2"]) == 0
    report = json.loads(capsys.readouterr().out)
    b = load_bundle(bundle)
    assert (b.tiling.tile_size, b.tiling.scale, b.tiling.score_threshold) == (128, 0.4, 0.2)
    assert b.tiling.overlap == auto_overlap(json.loads((out / "run.json").read_text())["largest_box_px"], 0.4)
    assert report["tiling"] == b.tiling.to_dict()
    assert b.detector.input_shape == (-1, 3, 128, 128) and b.provenance["epoch"] == 2
    assert b.class_names == load_bundle(b.provenance["classifier_from"]).class_names
    # the field quality gate's camera- and stain-dependent limits, fitted on the run's training fields
    assert b.quality is not None and b.quality.min_focus != QualityLimits().min_focus
    assert "fitted on the" in b.provenance["quality"] and report["quality"] == b.provenance["quality"]
    assert edge_main(["eval", "detect", "--bundle", str(bundle), "--data", str(voc), "--format", "voc",
                      "--classes", "cell", "--split", "val"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["bundle"] == str(b.root) and "recall" in json.dumps(figures)


def test_auto_overlap_is_the_largest_cell_rounded_up_to_8():
    synthetic = max_cell_diameter_px(SmearConfig())  # 88.2 px at 4 px/µm
    assert auto_overlap(None, 0.28) == auto_overlap(289, 0.28) == int(np.ceil(synthetic / 8) * 8)
    assert auto_overlap(339, 0.4) == 136  # 135.6 px


def test_dataset_source_scales_like_the_device(voc):
    full = DetectionDatasetSource.from_folder(voc, "voc", ["cell"], ["train", "val"])
    half = DetectionDatasetSource.from_folder(voc, "voc", ["cell"], "train", scale=0.5)
    assert len(full) == 6 and len(half) == 4
    (_, boxes), (small, half_boxes) = full.load(0), half.load(0)
    assert small.shape == (120, 160, 3)
    np.testing.assert_allclose(half_boxes, boxes * 0.5)
    tiles = field_tiles(half, 128)  # 160 x 120 -> two tiles across (at x 0 and 32), padded below
    assert len(tiles) == 4 * 2 and all(t.shape == (128, 128, 3) for t, _ in tiles)
    centres = (half_boxes[:, 0] + half_boxes[:, 2]) / 2
    assert [len(b) for _, b in tiles[:2]] == [(centres < 128).sum(), (centres >= 32).sum()]


def test_mixed_source_follows_its_weights():
    a = PairSource([(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4)))])
    b = PairSource([(np.ones((8, 8, 3), np.uint8), np.zeros((0, 4)))])
    rng = np.random.default_rng(0)
    draws = [MixedSource([a, b], [0.7, 0.3]).sample(rng)[0][0, 0, 0] for _ in range(2000)]
    assert abs(np.mean(draws) - 0.3) < 0.04
    assert all(MixedSource([a, b], [1.0, 0.0]).sample(rng)[0][0, 0, 0] == 0 for _ in range(50))
    with pytest.raises(ValueError):
        MixedSource([a, b], [1.0])


def test_crop_context_is_fitted_to_the_classifier_images_framing(tmp_path):
    """Single-cell images cut 2.5 cell sizes wide: the fitted context frames device crops the same way."""
    from edge.synthetic.smear import render_field
    from export.detector_bundle import fit_crop_context
    from tests.helpers import SYNTHETIC_BUNDLE
    folder = tmp_path / "cells" / "cell"
    folder.mkdir(parents=True)
    for seed in range(4):
        field = render_field(SmearConfig(), seed=seed)
        h, w = field.image.shape[:2]
        for i, (x0, y0, x1, y1) in enumerate(field.boxes):
            half = 1.25 * max(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if cx - half >= 0 and cy - half >= 0 and cx + half <= w and cy + half <= h:
                crop = field.image[round(cy - half):round(cy + half), round(cx - half):round(cx + half)]
                cv2.imwrite(str(folder / f"{seed}_{i}.png"), crop)
    context, framed = fit_crop_context(SYNTHETIC_BUNDLE, tmp_path / "cells")
    assert framed >= 10 and context == pytest.approx(2.5, rel=0.15)
    with pytest.raises(ValueError, match="no images"):
        fit_crop_context(SYNTHETIC_BUNDLE, tmp_path / "cells" / "cell")
