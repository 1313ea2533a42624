"""`edge eval classify|detect` on synthetic data sets written by `edge synth`, with the synthetic bundle."""
import json

import pytest

from edge.cli import main as edge_main
from tests.helpers import SYNTHETIC_BUNDLE


def main(args):
    """`edge` with the synthetic bundle for the commands that take one."""
    if args[0] == "eval":
        args = args[:2] + ["--bundle", str(SYNTHETIC_BUNDLE)] + args[2:]
    return edge_main(args)


CLASSIFY_KEYS = {"n", "accuracy", "rejection_rate", "accepted_accuracy", "reliability", "threshold", "per_class"}
DETECT_KEYS = {"images", "ap50", "map50_95", "recall", "precision", "count_mae", "count_mape"}


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    out = tmp_path_factory.mktemp("crops")
    assert main(["synth", "crops", "--out", str(out), "--per-class", "40", "--size", "96", "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    out = tmp_path_factory.mktemp("fields")
    assert main(["synth", "fields", "--out", str(out), "--count", "6", "--seed", "500"]) == 0
    return out


def test_eval_classify_reports_the_stable_keys(crops, tmp_path, capsys):
    out = tmp_path / "classify.json"
    assert main(["eval", "classify", "--data", str(crops), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert CLASSIFY_KEYS <= set(report)
    assert report["n"] == 200 and set(report["per_class"]) == {p.name for p in crops.iterdir()}
    assert report["accuracy"] > 0.8, "the synthetic bundle's classifier learned the synthetic classes"
    assert report["reliability"] == pytest.approx((1 - report["rejection_rate"]) * report["accepted_accuracy"])


def test_eval_classify_subset_and_unknown_class(crops, tmp_path, capsys):
    subset = tmp_path / "subset"
    (subset / "lymphocyte").mkdir(parents=True)
    for p in list((crops / "lymphocyte").iterdir())[:5]:
        (subset / "lymphocyte" / p.name).write_bytes(p.read_bytes())
    assert main(["eval", "classify", "--data", str(subset)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 5
    (subset / "megakaryocyte").mkdir()
    assert main(["eval", "classify", "--data", str(subset)]) == 2
    err = capsys.readouterr().err
    assert "megakaryocyte" in err and "known: neutrophil" in err


def test_eval_detect_reports_the_stable_keys(fields, tmp_path, capsys):
    out = tmp_path / "detect.json"
    assert main(["eval", "detect", "--data", str(fields), "--format", "voc", "--classes", "cell",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert DETECT_KEYS <= set(report) and report["images"] == 6
    assert report["ap50"] > 0.7 and report["recall"] > 0.7, "the synthetic detector finds synthetic cells"
    assert 0 <= report["map50_95"] <= report["ap50"]


def test_eval_detect_unknown_class_is_an_error(fields, capsys):
    assert main(["eval", "detect", "--data", str(fields), "--format", "voc", "--classes", "WBC"]) == 2
    assert "WBC" in capsys.readouterr().err


def test_synthetic_voc_fields_round_trip_through_the_voc_reader(tmp_path):
    from edge.evaluation.detection_data import load_voc
    from edge.synthetic.smear import SmearConfig, render_field
    from edge.synthetic.datasets import write_voc_fields
    write_voc_fields(tmp_path, 2, 320, 240, seed=9)
    dataset = load_voc(tmp_path)
    for i, sample in enumerate(dataset):
        field = render_field(SmearConfig(width=320, height=240), seed=9 + i)
        assert abs(sample.boxes - field.boxes).max() <= 1.0  # VOC stores whole pixels


def test_eval_classify_on_one_split_of_a_split_file(crops, tmp_path, capsys):
    chosen = sorted(f"{p.parent.name}/{p.name}" for p in crops.glob("*/*.png"))[::7]
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"splits": {"validation": chosen, "train": []}}))
    assert main(["eval", "classify", "--data", str(crops), "--split-file", str(split_file)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(chosen)
    assert main(["eval", "classify", "--data", str(crops), "--split-file", str(split_file),
                 "--split", "calibration"]) == 2
    assert "no split 'calibration'" in capsys.readouterr().err
