"""`edge-bench`: latency of the counting path, stage by stage.

Warm-up frames first, then every frame of the source is timed through the
same calls `edge run` makes: detect (tiling, batched detector, stitching) and
classify (crops, batched classifier, decision).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from edge import DEFAULT_BUNDLE
from edge.bundle import load_bundle
from edge.engine import CellCounter
from edge.frames import as_bgr8
from edge.sources import open_source


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-bench", description="Latency profiling of the counting path.")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--source", default="synthetic:frames=20,seed=100")
    p.add_argument("--warmup", type=int, default=2, help="frames run before timing starts")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = p.parse_args(argv)
    try:
        report = benchmark(args.bundle, args.source, args.warmup, args.backend, args.threads)
    except (ValueError, OSError) as exc:
        print(f"edge-bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def benchmark(bundle_path: Path, source_spec: str, warmup: int, backend: str, threads: int | None) -> dict:
    bundle = load_bundle(bundle_path)
    frames = [as_bgr8(f.image) for f in open_source(source_spec)]
    if len(frames) <= warmup:
        raise ValueError(f"the source gave {len(frames)} frames; need more than --warmup {warmup}")
    stages: dict[str, list[float]] = {"detect": [], "classify": [], "decide": [], "field": []}
    cells = 0
    with CellCounter(bundle, backend=backend, threads=threads) as counter:
        for i, image in enumerate(frames):
            t0 = time.perf_counter()
            boxes, _ = counter.detect(image)
            t1 = time.perf_counter()
            scores = counter.classify(image, boxes) if len(boxes) else np.zeros((0, len(bundle.class_names)))
            t2 = time.perf_counter()
            counter.rule.decide(scores)
            t3 = time.perf_counter()
            if i < warmup:
                continue
            cells += len(boxes)
            for name, dt in (("detect", t1 - t0), ("classify", t2 - t1), ("decide", t3 - t2), ("field", t3 - t0)):
                stages[name].append(dt * 1000)
    field_ms = np.asarray(stages["field"])
    total_s = field_ms.sum() / 1000
    return {
        "fields_per_s": len(field_ms) / total_s,
        "cells_per_s": cells / total_s,
        "latency_ms": _percentiles(field_ms),
        "stages": {name: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
                          "share": float(np.sum(v) / field_ms.sum())}
                   for name, v in stages.items() if name != "field"},
        "frames": len(field_ms),
        "cells": cells,
        "backend": backend,
        "precision": bundle.detector.precision,
        "tile": bundle.tiling.tile_size,
        "frame_size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "threads": threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
    }


def _percentiles(ms: np.ndarray) -> dict:
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


def format_table(r: dict) -> str:
    lines = [f"{r['frames']} fields of {r['frame_size']}, {r['cells']} cells, {r['backend']} {r['precision']}",
             f"{'stage':<10} {'p50 ms':>8} {'p99 ms':>8} {'share':>6}"]
    for name, s in r["stages"].items():
        lines.append(f"{name:<10} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['share']:6.1%}")
    lat = r["latency_ms"]
    lines.append(f"{'field':<10} {lat['p50']:8.2f} {lat['p99']:8.2f}   max {lat['max']:.2f}")
    lines.append(f"throughput {r['fields_per_s']:.1f} fields/s, {r['cells_per_s']:.0f} cells/s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
