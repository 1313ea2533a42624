"""A bundle from a training run is measured by `edge eval classify` exactly as export measured it."""
import json

import pytest
import torch

from edge.runtime.bundle import load_bundle
from edge.cli import main as edge_main
from export.cli import main as export_main
from tests.helpers import write_crops

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    data, out = write_crops(root / "data", per_class=20), root / "out"
    assert export_main(["train-classifier", "--data", str(data), "--out", str(out), "--arch", "crossformer_tiny_test",
                        "--img-size", "32", "--batch-size", "8", "--workers", "0", "--lr", "1e-3",
                        "--epochs", "3", "--no-progress"]) == 0
    return data, out


def test_classifier_bundle_verifies_and_eval_reproduces_its_validation_figures(run, tmp_path, capsys):
    data, out = run
    bundle = tmp_path / "bundle"
    assert export_main(["classifier-bundle", "--run", str(out), "--data", str(data), "--out", str(bundle),
                        "--target-accuracy", "0.6"]) == 0
    report = json.loads(capsys.readouterr().out)
    b = load_bundle(bundle)
    assert b.class_names == ("lymphocyte", "monocyte", "neutrophil") and b.classifier.input_hw == (32, 32)
    assert b.thresholds.global_threshold == pytest.approx(report["threshold"]["threshold"])
    assert b.provenance["classifier_run"] == str(out)

    assert edge_main(["eval", "classify", "--bundle", str(bundle), "--data", str(data),
                      "--split-file", str(out / "split.json"), "--split", "validation"]) == 0
    measured = json.loads(capsys.readouterr().out)
    expected = report["validation"]
    for key in ("n", "accuracy", "rejection_rate", "accepted_accuracy", "reliability"):
        assert measured[key] == pytest.approx(expected[key]), key


def test_model_info_reports_the_published_size(capsys):
    assert export_main(["model-info", "--arch", "crossformer_t", "--img-size", "224"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert 26 < info["params_m"] < 29 and 2.7 < info["gflops"] < 3.1
