"""The engine's counting path (edge-bench's stages) against the naive reference pipeline, in one run.

    python -m benchmarks.edge_vs_naive [--frame-size 1280x960] [--frames 6] [--threads 2]

Both use the same weights: the synthetic bundle's training checkpoints
(runs/synthetic-bundle/, made by `edge export synthetic-bundle`), loaded into
torch for the naive pipeline and exported to ONNX into a copy of the default
bundle for the engine. Each field goes through both, alternating, so the ratio
is fair on a shared machine. Timed for both: preprocessing, tiling, detection,
merging (ownership stitching / NMS), crops, classification, decision and tally;
not timed: grabbing and the review queue's disk writes, which the naive
pipeline does not have.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.naive_pipeline import (CLASSIFIER_CHECKPOINT, DETECTOR_CHECKPOINT, NaivePipeline,
                                       load_classifier)
from benchmarks.tiled_vs_naive import bundle_with, load_detector
from edge.bench.pipeline import STAGES, StageClock, StagedCounter
from edge.runtime.bundle import load_bundle, write_bundle
from edge.synthetic.smear import SmearConfig, render_field
from edge.counting.tally import Tally
from export.onnx_export import export_onnx
from tests.helpers import SYNTHETIC_BUNDLE


def engine_bundle(detector: torch.nn.Module, classifier: torch.nn.Module, folder: Path) -> Path:
    """A copy of the synthetic bundle whose models are exports of exactly these weights."""
    bundle_with(detector, folder)
    b = load_bundle(folder)
    export_onnx(classifier, b.classifier.input_hw[0], folder / b.classifier.file, output_name=b.classifier.outputs[0])
    write_bundle(folder, class_names=list(b.class_names), classifier_head=b.classifier_head, ccl_sigma=b.ccl_sigma,
                 detector=b.detector, classifier=b.classifier, thresholds=b.thresholds, tiling=b.tiling,
                 provenance=b.provenance)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", type=Path, default=DETECTOR_CHECKPOINT)
    p.add_argument("--classifier", type=Path, default=CLASSIFIER_CHECKPOINT)
    p.add_argument("--frame-size", default="1280x960")
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.frame_size.split("x"))
    fields = [render_field(SmearConfig(width=width, height=height), seed=500 + i) for i in range(args.frames + 1)]
    detector = load_detector(args.detector)
    classifier = load_classifier(args.classifier, load_bundle(SYNTHETIC_BUNDLE))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(engine_bundle(detector, classifier, Path(tmp)))
        naive = NaivePipeline(detector, classifier, bundle)
        with StagedCounter(bundle, threads=args.threads) as engine:
            engine_ms, naive_ms, stage_ms = [], [], {s: [] for s in STAGES}
            engine_cells = naive_cells = true_cells = 0
            for i, field in enumerate(fields):  # the first field warms both up
                clock, tally = StageClock(), Tally(bundle.class_names)
                start = time.perf_counter()
                result = engine.count(field.image, clock)
                tally.add(result.decisions)
                engine_s = time.perf_counter() - start
                start = time.perf_counter()
                boxes, _, decisions = naive.count_field(field.image)
                Tally(bundle.class_names).add(decisions)
                naive_s = time.perf_counter() - start
                if i == 0:
                    continue
                engine_ms.append(engine_s * 1e3)
                naive_ms.append(naive_s * 1e3)
                for s in STAGES:
                    stage_ms[s].append(clock.ms[s])
                engine_cells += len(result)
                naive_cells += len(boxes)
                true_cells += len(field.boxes)
    e, n = float(np.median(engine_ms)), float(np.median(naive_ms))
    print(f"{args.frames} fields of {width}x{height} after 1 warm-up, {true_cells} true cells; "
          f"threads {args.threads} (ONNX Runtime intra-op, torch)")
    print("engine stages, median ms: " + ", ".join(f"{s} {np.median(v):.1f}" for s, v in stage_ms.items()
                                                   if np.median(v) > 0))
    print(f"engine (edge-bench path: ONNX Runtime FP32, batched, ownership stitching): {e:8.1f} ms/field  "
          f"{engine_cells} cells")
    print(f"naive  (torch eager FP32, one tile and one cell at a time, NMS):          {n:8.1f} ms/field  "
          f"{naive_cells} cells")
    print(f"speed-up {n / e:.1f}x (median per field)")


if __name__ == "__main__":
    main()
