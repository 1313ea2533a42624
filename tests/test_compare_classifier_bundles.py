"""scripts/compare-classifier-bundles: the CrossFormer-CCL student ships only within 1 point and 2 points."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compare-classifier-bundles"
CLASSES = ("lymphocyte", "neutrophil")


def _write(work: Path, name: str, accuracy: float, rejection: float, int8: float, fp32: float) -> None:
    per_class = {c: {"n": 10, "accuracy": accuracy, "rejection_rate": rejection, "accepted_accuracy": 0.99}
                 for c in CLASSES}
    pbc = {"accuracy": accuracy, "rejection_rate": rejection, "accepted_accuracy": 0.99,
           "reliability": (1 - rejection) * 0.99, "per_class": per_class}
    bccd = {"accuracy": 0.5, "rejection_rate": 0.5, "accepted_accuracy": 0.9, "errors_caught": 0.8}
    heads = {"rules": {r: {"accuracy": accuracy, "rejection_rate": rejection, "accepted_accuracy": 0.99,
                           "reliability": 0.9} for r in ("ccl", "softmax", "icp")}}
    quant = {"kept": "student INT8 minmax", "models": {"student INT8 minmax": {"cells_per_s": int8},
                                                         "student FP32": {"cells_per_s": fp32}}}
    for suffix, content in (("eval-pbc-validation", pbc), ("eval-bccd-subtypes", bccd), ("heads", heads),
                            ("quantise-report", quant)):
        (work / f"{name}-{suffix}.json").write_text(json.dumps(content))


@pytest.mark.parametrize("student_accuracy, student_rejection, ships", [
    (0.965, 0.11, "student"),   # 0.5 point and 1 point behind: close enough
    (0.955, 0.11, "teacher"),   # 1.5 points of accuracy behind
    (0.968, 0.135, "teacher"),  # 2.5 points more rejection
])
def test_the_rule_that_picks_the_shipped_bundle(tmp_path, student_accuracy, student_rejection, ships):
    _write(tmp_path, "teacher", 0.97, 0.10, 100.0, 150.0)
    _write(tmp_path, "student", student_accuracy, student_rejection, 900.0, 450.0)
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ships
    summary = json.loads((tmp_path / "classifier-comparison.json").read_text())
    assert summary["ships"] == ships and summary["summary"]["student"]["int8_over_fp32"] == 2.0
    table = (tmp_path / "classifier-comparison.md").read_text()
    assert "| CrossFormer-CCL student |" in table and "Ships:" in table
