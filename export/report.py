"""Comparing deployed classifiers on one split: accuracy, agreement, reject figures and speed, as JSON and markdown.

Every model is an ONNX file run through ONNX Runtime on the same cells,
preprocessed as the device does. Its reject threshold is fitted on its own
outputs over the calibration split and judged on the validation split, so the
figures are those each model would ship with.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx

from calibration.metrics import reject_metrics, threshold_to_json
from calibration.thresholds import fit_threshold
from edge.runtime.backends import open_runner
from edge.runtime.decision import confidence_of
from edge.runtime.preprocess import Normalisation, to_model_input
from export.cell_boxes import find_cell_boxes
from export.classifier_bundle import read_split_images
from export.datasets import Split

SPEED_BATCH = 64
SPEED_SECONDS = 2.0


def onnx_input_size(path: Path) -> int:
    """The square input side of an image model (its input's last dimension)."""
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value)


def cells_per_second(path: Path, images: np.ndarray, norm: Normalisation, threads: int | None = None,
                     batch: int = SPEED_BATCH, seconds: float = SPEED_SECONDS) -> float:
    """Cells per second through ONNX Runtime, model time only: `batch` cells over the fastest of the timed batches.

    The fastest rather than the mean, because the development CPU is shared:
    the fastest batch is the one least disturbed by other processes. One
    warm-up batch first; at least three timed.
    """
    x = to_model_input(np.resize(images, (batch,) + images.shape[1:]), None, norm)
    with open_runner("onnxruntime", path, threads=threads) as runner:
        feed = {runner.inputs[0].name: x}
        runner.infer(feed)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < 3 or time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            runner.infer(feed)
            times.append(time.perf_counter() - t0)
    return batch / min(times)


class SplitCells:
    """The calibration and validation cells of a split, framed by bundle `framing`'s detector
    (edge.runtime.cell_view), found once and cut once per input size."""

    def __init__(self, data: Path, split: Split, framing: Path) -> None:
        self.data, self.split, self.framing = Path(data), split, Path(framing)
        self._boxes: dict[str, np.ndarray] = {}
        self._cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._boxes:
            self._boxes[name] = find_cell_boxes(self.data, [p for p, _ in self.split.items(name)], self.framing)[0]
        if (name, size) not in self._cache:
            self._cache[name, size] = read_split_images(self.data, self.split, name, size, self.framing,
                                                        self._boxes[name])
        return self._cache[name, size]


def scores_of(path: Path, images: np.ndarray, norm: Normalisation, threads: int | None = None) -> np.ndarray:
    """The model's outputs for uint8 BGR cells, in batches, through ONNX Runtime."""
    with open_runner("onnxruntime", path, threads=threads) as runner:
        name = runner.inputs[0].name
        x = to_model_input(images, None, norm)
        return np.concatenate([runner.infer({name: x[i:i + 256]})[runner.outputs[0].name]
                               for i in range(0, len(x), 256)])


def measure_classifier(path: Path, cells: SplitCells, norm: Normalisation, head: str, target_accuracy: float,
                       method: str = "descending", reference: np.ndarray | None = None,
                       threads: int | None = None, speed_seconds: float = SPEED_SECONDS) -> tuple[dict, np.ndarray]:
    """(figures, validation predictions) of one ONNX classifier.

    Figures: validation accuracy, agreement with `reference` predictions,
    threshold fitted on the calibration split for `target_accuracy`, validation
    rejection rate, accepted accuracy and R, and cells per second (timed for
    about `speed_seconds`).
    """
    size = onnx_input_size(path)
    out = {}
    for name in ("calibration", "validation"):
        images, labels = cells.get(name, size)
        scores = scores_of(path, images, norm, threads)
        out[name] = (confidence_of(scores, head), scores.argmax(1), labels)
    fit = fit_threshold(*out["calibration"], target_accuracy, method=method)
    val = reject_metrics(*out["validation"], fit.threshold)
    predicted = out["validation"][1]
    figures = {"file": str(path), "input_size": size, "size_mb": round(path.stat().st_size / 1e6, 2),
               "accuracy": val.accuracy,
               "agreement": None if reference is None else float((predicted == reference).mean()),
               "threshold": threshold_to_json(fit.threshold), "threshold_reached": fit.reached,
               "calibration_accuracy": fit.calibration.accuracy,
               "calibration_accepted_accuracy": fit.calibration.accepted_accuracy,
               "rejection_rate": val.rejection_rate, "accepted_accuracy": val.accepted_accuracy,
               "reliability": val.reliability}
    figures["cells_per_s"] = cells_per_second(path, cells.get("validation", size)[0], norm, threads,
                                              seconds=speed_seconds)
    return figures, predicted


def compare_classifiers(models: dict[str, Path], cells: SplitCells, norm: Normalisation, *, head: str = "ccl",
                        target_accuracy: float = 0.99, method: str = "descending", reference: str | None = None,
                        threads: int | None = None, speed_seconds: float = SPEED_SECONDS) -> dict:
    """Measure every model; agreement is with the validation predictions of model `reference` (default the first)."""
    reference = reference or next(iter(models))
    order = [reference] + [k for k in models if k != reference]
    figures, ref_pred = {}, None
    for name in order:
        figures[name], predicted = measure_classifier(models[name], cells, norm, head, target_accuracy, method,
                                                      ref_pred, threads, speed_seconds)
        if name == reference:
            ref_pred = predicted
            figures[name]["agreement"] = 1.0
    return {"reference": reference, "target_accuracy": target_accuracy, "method": method, "threads": threads,
            "n_calibration": len(cells.split.paths["calibration"]),
            "n_validation": len(cells.split.paths["validation"]),
            "models": {name: figures[name] for name in models}}


def write_report(report: dict, stem: Path, title: str) -> tuple[Path, Path]:
    """`stem`.json (the report) and `stem`.md (a table of its models and its notes)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report, title))
    return json_path, md_path


def markdown(report: dict, title: str) -> str:
    target = report["target_accuracy"]
    lines = [f"# {title}", "",
             f"Validation split ({report['n_validation']} cells); thresholds fitted on the calibration split "
             f"({report['n_calibration']} cells) for {target:.0%} accepted accuracy ({report['method']}); "
             f"agreement with `{report['reference']}`; speed through ONNX Runtime with "
             f"{report['threads'] or 'default'} threads, batches of {SPEED_BATCH}, model time only "
             "(the fastest timed batch).", "",
             "| model | input | MB | accuracy | agreement | rejected Rr | accepted Ra | R | threshold | cells/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, f in report["models"].items():
        lines.append(
            f"| {name} | {f['input_size']} | {f['size_mb']} | {_pct(f['accuracy'])} | {_pct(f['agreement'])} | "
            f"{_pct(f['rejection_rate'])} | {_pct(f['accepted_accuracy'])} | {_pct(f['reliability'])} | "
            f"{_threshold(f['threshold'])} | "
            f"{f['cells_per_s']:.0f} |")
    if report.get("notes"):
        lines.append("")
    lines += [f"- {key}: {value}" for key, value in report.get("notes", {}).items()]
    return "\n".join(lines) + "\n"


def _threshold(v: float | str) -> str:
    return v if isinstance(v, str) else f"{v:.4f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"
