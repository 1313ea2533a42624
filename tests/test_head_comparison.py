"""CCL against softmax and ICP on the same network (export.head_comparison)."""
from __future__ import annotations

import numpy as np
import torch

from edge.runtime.preprocess import Normalisation
from edge.synthetic.datasets import write_crop_folders
from export.datasets import stratified_split
from export.head_comparison import compare_heads, fit_softmax_head, markdown_rows
from export.models.classifier import build_classifier
from tests.helpers import SYNTHETIC_BUNDLE


def test_the_softmax_head_separates_separable_features():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    centres = np.array([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    features = torch.tensor(centres[labels] + rng.normal(0, 0.5, (120, 4)) + 100.0, dtype=torch.float32)
    head = fit_softmax_head(features, labels, 3)
    with torch.no_grad():
        predicted = head(features).argmax(1).numpy()
    assert (predicted == labels).mean() > 0.97  # on raw features: the standardisation is folded in


def test_three_rules_on_one_network(tmp_path):
    data = tmp_path / "data"
    write_crop_folders(data, per_class=24, size=48, seed=2)  # enough calibration cells of each class for the ICP
    split = stratified_split(data, tmp_path / "split.json", fractions=(0.5, 0.25, 0.25))
    torch.manual_seed(1)
    model = build_classifier("crossformer_tiny_test", 48, len(split.class_names))
    meta = {"arch": "crossformer_tiny_test", "img_size": 48, "head": "ccl", "class_names": list(split.class_names),
            "normalisation": Normalisation().to_dict()}
    (tmp_path / "run").mkdir()
    torch.save({"model": model.state_dict(), "meta": meta, "epoch": 1}, tmp_path / "run" / "last.pt")
    result = compare_heads(tmp_path / "run", data, tmp_path / "split.json", SYNTHETIC_BUNDLE, target_accuracy=0.9)
    assert set(result["rules"]) == {"ccl", "softmax", "icp"}
    assert result["n_validation"] == len(split.items("validation"))
    for figures in result["rules"].values():
        assert 0 <= figures["accuracy"] <= 1 and 0 <= figures["rejection_rate"] <= 1
        reliability = (1 - figures["rejection_rate"]) * (figures["accepted_accuracy"] or 0)
        assert abs(figures["reliability"] - reliability) < 1e-9
    rows = markdown_rows(result, "tiny")
    assert len(rows) == 3 and rows[0].startswith("| tiny | ccl |")
