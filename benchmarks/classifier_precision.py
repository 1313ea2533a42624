"""INT8 student vs FP32 student vs FP32 teacher: cells per second and accuracy on the PBC validation split.

    .venv/bin/python benchmarks/classifier_precision.py --teacher-bundle runs/pbc-t96-ccl-bundle \\
        --student-bundle runs/distil-pbc-s64-bundle --int8-bundle runs/distil-pbc-s64-int8 \\
        --data ../shared/data/pbc --split-file runs/pbc_split.json --threads 1 --json out.json

Accuracy, agreement with the teacher and the reject figures come from
export.report (each model's threshold fitted on its own calibration outputs).
Speed is model time through ONNX Runtime on real validation cells in batches,
the models timed in turn, batch by batch, for `--rounds` rounds, so that all
of them meet the same load on a shared CPU; each model's figure is its
fastest batch. Targets (issue 6): INT8 >= 2x the FP32 student and >= 10x the
FP32 teacher, accuracy within 1 point of the teacher.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edge.runtime.backends import open_runner
from edge.runtime.bundle import load_bundle
from edge.runtime.preprocess import to_model_input
from export.datasets import Split
from export.report import SplitCells, compare_classifiers


def interleaved_speed(models: dict[str, tuple[Path, np.ndarray]], threads: int | None, batch: int,
                      rounds: int) -> dict[str, float]:
    """Cells per second of each model (its fastest batch), timing the models in turn for `rounds` rounds."""
    runners = {name: open_runner("onnxruntime", path, threads=threads) for name, (path, _) in models.items()}
    feeds = {name: {runners[name].inputs[0].name: x[:batch]} for name, (_, x) in models.items()}
    best = {name: float("inf") for name in models}
    try:
        for name in models:
            runners[name].infer(feeds[name])  # warm-up
        for _ in range(rounds):
            for name in models:
                started = time.perf_counter()
                runners[name].infer(feeds[name])
                best[name] = min(best[name], time.perf_counter() - started)
    finally:
        for runner in runners.values():
            runner.close()
    return {name: batch / seconds for name, seconds in best.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher-bundle", type=Path, required=True)
    p.add_argument("--student-bundle", type=Path, required=True, help="the FP32 student")
    p.add_argument("--int8-bundle", type=Path, required=True, help="the INT8 student (edge export quantise)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split-file", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--target-accuracy", type=float, default=0.99)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    bundles = {"teacher FP32": load_bundle(args.teacher_bundle), "student FP32": load_bundle(args.student_bundle),
               "student INT8": load_bundle(args.int8_bundle)}
    split = Split.from_json(json.loads(args.split_file.read_text()))
    cells = SplitCells(args.data, split, args.int8_bundle)
    paths = {name: b.model_path(b.classifier) for name, b in bundles.items()}
    norm = bundles["student FP32"].classifier.normalisation
    report = compare_classifiers(paths, cells, norm, target_accuracy=args.target_accuracy,
                                 reference="teacher FP32", threads=args.threads, speed_seconds=0)
    feeds = {name: (paths[name], to_model_input(cells.get("validation", b.classifier.input_hw[0])[0][:args.batch],
                                                None, b.classifier.normalisation))
             for name, b in bundles.items()}
    speed = interleaved_speed(feeds, args.threads, args.batch, args.rounds)
    for name, figures in report["models"].items():
        figures["cells_per_s"] = speed[name]
    m = report["models"]
    report["ratios"] = {"int8_vs_fp32_student": speed["student INT8"] / speed["student FP32"],
                        "int8_vs_fp32_teacher": speed["student INT8"] / speed["teacher FP32"],
                        "accuracy_int8_minus_teacher": m["student INT8"]["accuracy"] - m["teacher FP32"]["accuracy"]}
    report["speed"] = {"batch": args.batch, "rounds": args.rounds, "threads": args.threads,
                       "statistic": "fastest batch of each model, models timed in turn"}
    print(f"{'model':14s} {'cells/s':>9s} {'accuracy':>9s} {'agreement':>9s} {'Rr':>7s} {'Ra':>7s}")
    for name, f in m.items():
        ra = "-" if f["accepted_accuracy"] is None else f"{f['accepted_accuracy']:.4f}"
        print(f"{name:14s} {f['cells_per_s']:9.0f} {f['accuracy']:9.4f} {f['agreement']:9.4f} "
              f"{f['rejection_rate']:7.4f} {ra:>7s}")
    r = report["ratios"]
    print(f"INT8 / FP32 student {r['int8_vs_fp32_student']:.2f}x (target >= 2); INT8 / FP32 teacher "
          f"{r['int8_vs_fp32_teacher']:.2f}x (target >= 10); accuracy INT8 - teacher "
          f"{100 * r['accuracy_int8_minus_teacher']:+.2f} points (target >= -1)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
