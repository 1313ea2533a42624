"""The engine against honest baselines on the same real fields, every configuration in one run.

    .venv/bin/python -m benchmarks.baselines --threads 1 --repeats 2 --mosaics 1

Fields: the six real BCCD demo fields (640 x 480, edge/demo_fields) and
--mosaics 3840 x 2880 frames tiled from them (edge.bench.mosaic), at the
default bundle's scale. Each field goes through every configuration in turn,
so the ratios are fair on a shared machine. Timed: the counting path from the
decoded frame to the decisions (scale step, tiles, detection, merging, cell
views, classification, decision); not timed: grabbing, the quality gate, the
red-cell ruler and the session's writes, which are the same for all.

    engine              the shipped bundle: ONNX Runtime INT8 detector and classifier, batched,
                        OpenCV preprocessing, ownership stitching (CellCounter.count_field)
    engine-fp32         the same path on FP32 models: the classifier's FP32 export
                        (runs/default-build/teacher-fp32) and the detector dequantised (see below)
    torch-eager         engine-fp32 with the classifier in torch eager FP32, same batches
                        (benchmarks/eager_counter.py)
    naive-f32-batched   a researcher's pipeline: frame rescaled, one tile per detector call with NumPy
                        float32 preprocessing, NMS over the frame, all cells in one torch call
    naive               the same with float64 tile preprocessing and one torch call per cell
                        (benchmarks/naive_pipeline.py)

The classifier's weights are the torch checkpoint the bundle was exported from
(runs/default-build/pbc-teacher/last.pt, EfficientNet-Lite0 CCL). The
detector's torch checkpoint is not on this machine, so every configuration but
`engine` runs the detector in ONNX Runtime FP32, dequantised from the bundle's
INT8 graph (benchmarks/fp32_detector.py): the baselines' detector is never torch
eager, and their gains over it are not measured here. The FP32 rows score cells
with the classifier's own CCL head, where the shipped bundle scores its
embeddings against its adapted centroids (a (cells x 8 x 128) kernel in NumPy):
the same cells, the decisions may differ.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.eager_counter import EagerClassifierCounter
from benchmarks.fp32_detector import OrtDetector, write_fp32
from benchmarks.naive_pipeline import NaivePipeline, load_classifier
from edge import DEFAULT_BUNDLE
from edge.bench.machine import describe_machine
from edge.bench.mosaic import mosaic
from edge.counting.sources import DEMO_FIELDS
from edge.runtime.bundle import Bundle, load_bundle
from edge.runtime.engine import CellCounter

CHECKPOINT = Path("runs/default-build/pbc-teacher/last.pt")
FP32_CLASSIFIER = Path("runs/default-build/teacher-fp32/classifier.onnx")
ARCH = "efficientnet_lite0"


def fp32_bundle(bundle: Bundle, folder: Path, classifier_onnx: Path) -> Bundle:
    """`bundle` with FP32 models: the given classifier export and the dequantised detector. The export
    gives its CCL head's scores, not the embeddings that the bundle's adapted centroids would score."""
    detector = write_fp32(bundle.model_path(bundle.detector), folder / "detector-fp32.onnx")
    return replace(bundle, root=folder, ccl_centroids=None,
                   detector=replace(bundle.detector, file=detector.name, precision="fp32", tensorrt=None),
                   classifier=replace(bundle.classifier, file=str(classifier_onnx.resolve()), outputs=("scores",),
                                      precision="fp32", tensorrt=None))


def configurations(bundle: Bundle, fp32: Bundle, classifier: torch.nn.Module, threads: int) -> dict:
    """name -> (callable counting one field and returning its number of cells, what to close)."""
    engine, engine32 = CellCounter(bundle, threads=threads), CellCounter(fp32, threads=threads)
    eager = EagerClassifierCounter(fp32, classifier, threads=threads)
    detector = OrtDetector(fp32.model_path(fp32.detector), threads)
    batched = NaivePipeline(detector, classifier, fp32, float32=True, batch_cells=True)
    naive = NaivePipeline(detector, classifier, fp32)
    return {"engine": lambda im: len(engine.count_field(im)),
            "engine-fp32": lambda im: len(engine32.count_field(im)),
            "torch-eager": lambda im: len(eager.count_field(im)),
            "naive-f32-batched": lambda im: len(batched.count_field(im)[0]),
            "naive": lambda im: len(naive.count_field(im)[0])}, (engine, engine32, eager)


def time_fields(configs: dict, fields: list[np.ndarray], repeats: int) -> dict:
    """Frames per second and cells per frame of each configuration over `repeats` passes, the
    configurations alternating frame by frame."""
    for run in configs.values():  # warm-up
        run(fields[0])
    seconds = dict.fromkeys(configs, 0.0)
    cells = dict.fromkeys(configs, 0)
    for _ in range(repeats):
        for image in fields:
            for name, run in configs.items():
                start = time.perf_counter()
                cells[name] += run(image)
                seconds[name] += time.perf_counter() - start
    return {name: {"frames_per_s": repeats * len(fields) / seconds[name],
                   "cells_per_frame": cells[name] / (repeats * len(fields))} for name in configs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="threads for torch and ONNX Runtime")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--mosaics", type=int, default=1, help="3840 x 2880 mosaic frames to time")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    demo = [cv2.imread(str(path)) for path in sorted(DEMO_FIELDS.glob("*.jpg"))]
    sets = {"demo fields 640x480": demo,
            "mosaic 3840x2880": [mosaic(demo, 6, 6, start=7 * i) for i in range(args.mosaics)]}
    bundle = load_bundle(DEFAULT_BUNDLE)
    classifier = load_classifier(CHECKPOINT, bundle, ARCH)
    with tempfile.TemporaryDirectory() as tmp:
        configs, counters = configurations(bundle, fp32_bundle(bundle, Path(tmp), FP32_CLASSIFIER), classifier,
                                           args.threads)
        results = {name: time_fields(configs, fields, args.repeats) for name, fields in sets.items()}
        for counter in counters:
            counter.close()
    machine = describe_machine()
    print(f"{machine['cpu']} ({', '.join(machine['simd'])}); {args.threads} thread(s); {args.repeats} repeat(s); "
          f"1-minute load average {machine['load_average_1min']:.1f} at the end")
    head = "".join(f" | {name} frames/s | x engine | cells/frame" for name in sets)
    print(f"| configuration{head} |")
    print("|---" + "|---:" * 3 * len(sets) + "|")
    for config in configs:
        row = ""
        for name in sets:
            r, e = results[name][config], results[name]["engine"]
            row += (f" | {r['frames_per_s']:.2f} | {r['frames_per_s'] / e['frames_per_s']:.2f}"
                    f" | {r['cells_per_frame']:.1f}")
        print(f"| {config}{row} |")


if __name__ == "__main__":
    main()
