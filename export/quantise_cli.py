"""`edge export quantise`: a bundle with its classifier quantised, gated and recalibrated."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from export.cli_options import names
from export.gates import Gates


def add_quantise_commands(sub) -> None:
    q = sub.add_parser("quantise", help="quantise a bundle's classifier (INT8 QDQ or FP16), check the accuracy "
                                        "gates, refit the thresholds on it and write a new bundle")
    q.add_argument("--bundle", type=Path, required=True, help="the FP32 bundle (e.g. a distilled student's)")
    q.add_argument("--teacher-bundle", type=Path, required=True, help="the teacher's bundle, for agreement")
    q.add_argument("--data", type=Path, required=True, help="the folder per class")
    q.add_argument("--split-file", type=Path, required=True, help="the calibration and validation splits")
    q.add_argument("--out", type=Path, required=True, help="the bundle to write (must not exist)")
    q.add_argument("--precision", choices=("int8", "fp16"), default="int8")
    q.add_argument("--calibration-methods", type=names, default=("minmax", "entropy", "percentile"),
                   help="INT8 range calibrations to compare; the best on the calibration split is kept")
    q.add_argument("--calibration-images", type=int, default=512,
                   help="calibration-split cells the INT8 ranges are measured on")
    q.add_argument("--target-accuracy", type=float, default=0.99, help="accepted accuracy of the reject threshold")
    q.add_argument("--threshold-method", choices=("descending", "clopper-pearson"), default="descending")
    for name, default in Gates().to_dict().items():
        q.add_argument("--" + name.replace("_", "-"), type=float, default=default,
                       help=f"accuracy gate (default {default})")
    q.add_argument("--detector-data", type=Path, help="a VOC or YOLO folder with train and val splits: quantise "
                   "the detector to INT8 too (calibrated on train tiles, gated on val tiles); default: keep it")
    q.add_argument("--detector-format", choices=("voc", "yolo"), default="voc")
    q.add_argument("--detector-classes", type=names, default=("WBC",), help="the data set's cell classes")
    q.add_argument("--threads", type=int, help="ONNX Runtime threads")
    q.add_argument("--speed-seconds", type=float, default=2.0,
                   help="time each model's speed for about this long (at least 3 batches)")
    q.add_argument("--report", type=Path, help="report path without suffix (default OUT-report)")
    q.add_argument("--max-images-per-class", type=int, help="use at most about this many per class (quick runs)")
    q.set_defaults(handler=_quantise)


def _quantise(args) -> int:
    from edge.evaluation.calibrate import CalibrationError
    from export.gates import GateError
    from export.quantise_bundle import QuantiseError, quantise_bundle
    gates = Gates(**{name: getattr(args, name) for name in Gates().to_dict()})
    try:
        report = quantise_bundle(
            args.bundle, args.data, args.split_file, args.out, teacher_bundle=args.teacher_bundle,
            precision=args.precision, methods=args.calibration_methods, calibration_size=args.calibration_images,
            target_accuracy=args.target_accuracy, threshold_method=args.threshold_method, gates=gates,
            threads=args.threads, max_per_class=args.max_images_per_class, report=args.report,
            speed_seconds=args.speed_seconds, detector_data=args.detector_data,
            detector_format=args.detector_format, detector_classes=args.detector_classes)
    except (GateError, QuantiseError, CalibrationError) as exc:
        print(f"edge export: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("bundle", "report", "markdown", "kept")}
                     | {"figures": report["models"][report["kept"]]}, indent=2))
    return 0
