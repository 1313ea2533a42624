"""`edge export synthetic-bundle`, the default bundle's recipe, end to end at toy size."""
import json

import torch

from edge.runtime.bundle import load_bundle
from export.cli import main

torch.set_num_threads(1)


def test_synthetic_bundle_recipe_writes_a_verified_bundle(tmp_path, capsys):
    out, work = tmp_path / "bundle", tmp_path / "work"
    args = ["synthetic-bundle", "--out", str(out), "--work", str(work), "--n-train", "150",
            "--n-calibration", "100", "--n-validation", "60", "--classifier-epochs", "2",
            "--detector-epochs", "1", "--detector-steps", "2", "--detector-batch", "4",
            "--target-accuracy", "0.5"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    bundle = load_bundle(out)
    assert bundle.thresholds.target_accuracy == 0.5
    assert bundle.thresholds.global_threshold == report["threshold"]["threshold"]
    assert bundle.provenance["recipe"]["n_train"] == 150
    assert not (tmp_path / "bundle.staging").exists()
    assert (work / "report.json").is_file()
