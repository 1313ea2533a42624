"""A bundle whose classifier is quantised (INT8 QDQ or FP16), gated, with thresholds refitted on it.

From an FP32 bundle (e.g. a distilled student's) and its data split:

1. quantise the classifier: INT8 with each asked-for calibration method
   (MinMax, Entropy, Percentile), or FP16;
2. measure the teacher, the FP32 student and every candidate on the same
   cells through ONNX Runtime (export.report); for INT8 keep the method with
   the best calibration-split accuracy (the validation split stays unseen
   until the gates);
3. gate the kept model's validation figures (export.gates): on a failure,
   raise GateError and write nothing;
4. for INT8, write the TensorRT twin of the kept model (and of an INT8
   detector): symmetric int8, same method and calibration ranges, what
   `edge build-engines` builds from; the report gives its argmax agreement
   with the kept model on the validation cells (not gated);
5. write the bundle (same manifest contract; the classifier's precision says
   int8 or fp16, an INT8 model names its TensorRT variant) and refit its
   reject threshold on the kept model's own
   calibration outputs with `edge calibrate` (edge.evaluation.calibrate.calibrate_bundle),
   which binds the threshold to the model's SHA-256 and seals the bundle; the
   comparison goes beside it as a JSON and markdown report.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.runtime.bundle import (Bundle, TensorRTVariant, Thresholds, copy_model_files, load_bundle, sha256_file,
                         write_bundle)
from edge.evaluation.calibrate import calibrate_bundle
from export.datasets import Split
from export.deployed import git_commit
from export.gates import Gates, check_detector_gate, check_gates
from export.quantise import CALIBRATION_METHODS, ImageCalibrationReader, convert_fp16, quantise_int8
from export.quantise_detector import bundle_tiles, detector_figures, quantise_detector
from export.report import SPEED_SECONDS, SplitCells, compare_classifiers, scores_of, write_report

PRECISIONS = ("int8", "fp16")
TEACHER, STUDENT = "teacher FP32", "student FP32"
INT8_CANDIDATE = "student INT8 {}"
CLASSIFIER_TENSORRT_FILE, DETECTOR_INT8_FILE = "classifier-int8-tensorrt.onnx", "detector-int8.onnx"
DETECTOR_TENSORRT_FILE = "detector-int8-tensorrt.onnx"


class QuantiseError(ValueError):
    """Inputs that `quantise_bundle` cannot work with; the message says which and why."""


def calibration_subset(images: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """At most `size` of the images, drawn with a fixed seed across all classes."""
    order = np.random.default_rng(seed).permutation(len(images))
    return images[np.sort(order[:size])]


def quantise_bundle(bundle: Path, data: Path, split_file: Path, out: Path, *, teacher_bundle: Path,
                    precision: str = "int8", methods: tuple[str, ...] = tuple(CALIBRATION_METHODS),
                    calibration_size: int = 512, target_accuracy: float = 0.99,
                    threshold_method: str = "descending", gates: Gates = Gates(), threads: int | None = None,
                    max_per_class: int | None = None, report: Path | None = None,
                    speed_seconds: float = SPEED_SECONDS, detector_data: Path | None = None,
                    detector_format: str = "voc", detector_classes: tuple[str, ...] = ("WBC",)) -> dict:
    """Write bundle `out` with `bundle`'s classifier quantised to `precision`; return the report.

    With `detector_data` (a VOC or YOLO folder with train and val splits) the
    detector is quantised to INT8 too: calibrated on the train split's tiles,
    gated on its recall on the val split's tiles against the FP32 detector's.
    Raises GateError (nothing written) when a kept model fails a gate.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QuantiseError(f"{out} already exists; choose a new --out")
    if precision not in PRECISIONS:
        raise QuantiseError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    unknown = [m for m in methods if m not in CALIBRATION_METHODS]
    if precision == "int8" and (unknown or not methods):
        raise QuantiseError(f"calibration methods must be among {', '.join(CALIBRATION_METHODS)}, got {methods}")
    source, teacher = load_bundle(bundle), load_bundle(teacher_bundle)
    split = Split.from_json(json.loads(Path(split_file).read_text()))
    for name, b in (("bundle", source), ("teacher bundle", teacher)):
        if tuple(split.class_names) != b.class_names:
            raise QuantiseError(f"the {name}'s classes {list(b.class_names)} are not the split's "
                             f"{list(split.class_names)} (in that order: they are the labels)")
    if max_per_class is not None:
        split = split.limited(max_per_class)
    cells = SplitCells(data, split, source.root)
    norm = source.classifier.normalisation
    fp32 = source.model_path(source.classifier)

    with tempfile.TemporaryDirectory() as tmp:
        candidates = _candidates(fp32, Path(tmp), precision, methods, cells, source, calibration_size)
        comparison = compare_classifiers(
            {TEACHER: teacher.model_path(teacher.classifier), STUDENT: fp32} | candidates, cells, norm,
            head=source.classifier_head, target_accuracy=target_accuracy, method=threshold_method,
            reference=TEACHER, threads=threads, speed_seconds=speed_seconds)
        figures = comparison["models"]
        kept = max(candidates, key=lambda k: figures[k]["calibration_accuracy"])
        comparison["kept"] = kept
        comparison["gates"] = gates.to_dict()
        check_gates(figures[kept], gates, f"the {kept} classifier")
        twin = None
        if precision == "int8":
            method = next(m for m in methods if INT8_CANDIDATE.format(m) == kept)
            twin, comparison["tensorrt"] = _tensorrt_twin(fp32, candidates[kept], Path(tmp), method, cells, source,
                                                          calibration_size, threads)
        detector = None
        if detector_data is not None:
            detector, comparison["detector"] = _int8_detector(source, Path(tmp), detector_data, detector_format,
                                                              detector_classes, gates, threads)
        comparison["notes"] = {"source bundle": str(bundle), "teacher bundle": str(teacher_bundle),
                               "kept": f"{kept} (best calibration-split accuracy among the candidates)",
                               "gates": ", ".join(f"{k} {v}" for k, v in gates.to_dict().items())}
        comparison["notes"] |= _twin_notes(comparison)
        for name in candidates:  # the candidates' files are temporary; the kept one goes into the bundle
            figures[name]["file"] = _classifier_file(precision) if name == kept else None
        calibrated = _seal(out, Path(tmp), data, source, candidates[kept], twin, detector, precision, split,
                           comparison, calibration_size, target_accuracy, threshold_method, threads)
        comparison["calibration"] = next(e for e in calibrated["entries"] if e.get("deployed"))
    json_path, md_path = write_report(comparison, report or out.with_name(out.name + "-report"),
                                      f"Quantised classifier: {precision}")
    return comparison | {"bundle": str(out), "report": str(json_path), "markdown": str(md_path)}


def _classifier_file(precision: str) -> str:
    return f"classifier-{precision}.onnx"


def _calibration_reader(cells: SplitCells, source: Bundle, calibration_size: int) -> ImageCalibrationReader:
    images, _ = cells.get("calibration", source.classifier.input_hw[0])
    return ImageCalibrationReader(calibration_subset(images, calibration_size),
                                  source.classifier.input_name, source.classifier.normalisation)


def _calibration_cache(tmp: Path, method: str) -> Path:
    return tmp / f"int8-{method}.calibration.json"


def _candidates(fp32: Path, tmp: Path, precision: str, methods: tuple[str, ...], cells: SplitCells,
                source: Bundle, calibration_size: int) -> dict[str, Path]:
    if precision == "fp16":
        return {"student FP16": convert_fp16(fp32, tmp / "fp16.onnx")}
    reader = _calibration_reader(cells, source, calibration_size)
    return {INT8_CANDIDATE.format(m): quantise_int8(fp32, tmp / f"int8-{m}.onnx", reader, m,
                                                    calibration_cache=_calibration_cache(tmp, m))
            for m in methods}


def _tensorrt_twin(fp32: Path, kept: Path, tmp: Path, method: str, cells: SplitCells, source: Bundle,
                   calibration_size: int, threads: int | None) -> tuple[Path, dict]:
    """The kept INT8 classifier's TensorRT twin (same method, same ranges), and how far it agrees with it."""
    reader = _calibration_reader(cells, source, calibration_size)  # read only where ONNX Runtime has no cache
    twin = quantise_int8(fp32, tmp / f"int8-{method}-tensorrt.onnx", reader, method, symmetric=True,
                         calibration_cache=_calibration_cache(tmp, method))
    images, labels = cells.get("validation", source.classifier.input_hw[0])
    norm = source.classifier.normalisation
    kept_pred = scores_of(kept, images, norm, threads).argmax(1)
    twin_pred = scores_of(twin, images, norm, threads).argmax(1)
    return twin, {"file": CLASSIFIER_TENSORRT_FILE, "method": method,
                  "quantisation": "int8 activations and weights, symmetric (zero points 0), float biases",
                  "validation_agreement_with_kept": float((twin_pred == kept_pred).mean()),
                  "validation_accuracy": float((twin_pred == labels).mean()), "n_validation": len(labels)}


def _twin_notes(comparison: dict) -> dict[str, str]:
    notes = {}
    if "tensorrt" in comparison:
        t = comparison["tensorrt"]
        notes["TensorRT variant"] = (
            f"{t['file']}, symmetric int8 with the kept model's {t['method']} ranges, what `edge build-engines` "
            f"builds from (not gated): its argmax agrees with the kept model's on "
            f"{100 * t['validation_agreement_with_kept']:.2f} % of the validation cells, accuracy "
            f"{100 * t['validation_accuracy']:.2f} %")
    if "detector" in comparison:
        d = comparison["detector"]
        notes["detector TensorRT variant"] = (
            f"{DETECTOR_TENSORRT_FILE} (not gated): recall {d['int8_tensorrt']['recall']:.4f}, precision "
            f"{d['int8_tensorrt']['precision']:.4f} on the val split's tiles (the INT8 detector: "
            f"{d['int8']['recall']:.4f}, {d['int8']['precision']:.4f})")
    return notes


def _int8_detector(source: Bundle, tmp: Path, data: Path, format: str, classes: tuple[str, ...], gates: Gates,
                   threads: int | None) -> tuple[tuple[Path, Path], dict]:
    """The INT8 detector, gated, and its TensorRT twin; their figures beside the FP32 detector's on the val
    split's tiles."""
    train = bundle_tiles(source, data, format, classes, "train")
    cache = tmp / "detector-int8.calibration.json"
    path = quantise_detector(source, train, tmp / DETECTOR_INT8_FILE, calibration_cache=cache)
    tiles = bundle_tiles(source, data, format, classes, "val")
    figures = {"fp32": detector_figures(source.model_path(source.detector), tiles, source, threads),
               "int8": detector_figures(path, tiles, source, threads), "data": str(data), "tiles": len(tiles),
               "calibrated_on": "train split tiles", "judged_on": "val split tiles"}
    check_detector_gate(figures["fp32"]["recall"], figures["int8"]["recall"], gates)
    twin = quantise_detector(source, train, tmp / DETECTOR_TENSORRT_FILE, symmetric=True, calibration_cache=cache)
    figures["int8_tensorrt"] = detector_figures(twin, tiles, source, threads)
    return (path, twin), figures


def _seal(out: Path, tmp: Path, data: Path, source: Bundle, model: Path, twin: Path | None,
          detector: tuple[Path, Path] | None, precision: str, split: Split, comparison: dict, calibration_size: int,
          target_accuracy: float, threshold_method: str, threads: int | None) -> dict:
    """Write the quantised bundle with provisional thresholds, then refit them on it with `edge calibrate`'s
    `calibrate_bundle`, which seals bundle `out`; returns its report."""
    provisional = tmp / "provisional"
    provisional.mkdir()
    file = _classifier_file(precision)
    shutil.copy(model, provisional / file)
    variant = None  # the sha256 is filled in by write_bundle
    if twin is not None:
        shutil.copy(twin, provisional / CLASSIFIER_TENSORRT_FILE)
        variant = TensorRTVariant(CLASSIFIER_TENSORRT_FILE, "0" * 64)
    detector_spec = source.detector
    if detector is None:
        copy_model_files(source, source.detector, provisional)
    else:
        detector_spec = replace(source.detector, file=DETECTOR_INT8_FILE, precision="int8",
                                tensorrt=TensorRTVariant(DETECTOR_TENSORRT_FILE, "0" * 64))
        for path, name in zip(detector, (DETECTOR_INT8_FILE, DETECTOR_TENSORRT_FILE)):
            shutil.copy(path, provisional / name)
    figures = comparison["models"][comparison["kept"]]
    write_bundle(
        provisional, class_names=list(source.class_names), classifier_head=source.classifier_head,
        ccl_sigma=source.ccl_sigma, detector=detector_spec,
        classifier=replace(source.classifier, file=file, precision=precision, tensorrt=variant),
        thresholds=Thresholds(float(figures["threshold"]), target_accuracy, threshold_method,
                              classifier_sha256=sha256_file(provisional / file)),
        tiling=source.tiling, quality=source.quality,
        class_roles=source.class_roles if source.class_roles_stated else None,
        provenance={"quantised_from": str(source.root), "source_provenance": source.provenance,
                    "quantisation": {"precision": precision, "kept": comparison["kept"],
                                     "calibration_images": calibration_size,
                                     "figures": comparison["models"], "gates": comparison["gates"],
                                     "tensorrt": comparison.get("tensorrt"),
                                     "detector": comparison.get("detector", "FP32, as in the source bundle")},
                    "code_commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
                    "script": "edge export quantise"})
    return calibrate_bundle(provisional, data, out, target_accuracy=target_accuracy, search=threshold_method,
                            only=set(split.paths["calibration"]), evaluate_only=set(split.paths["validation"]),
                            threads=threads)
