"""Time the field quality gate per 1920 x 1080 field (target: under 5 ms).

    python benchmarks/quality_gate.py [--fields 8] [--repeats 20] [--threads 1]

Synthetic fields are rendered first (not timed); then `QualityGate.check` runs
`--repeats` times on each, with the default limits (downscale 4). Prints the
median and the 90th percentile over all calls, and the share over the target.
"""
from __future__ import annotations

import argparse
import sys
import time

import cv2
import numpy as np

from edge.runtime.quality import QualityGate
from edge.synthetic.smear import SmearConfig, render_field

TARGET_MS = 5.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads (the loop's other stages use the rest)")
    p.add_argument("--size", default="1920x1080")
    args = p.parse_args(argv)
    cv2.setNumThreads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    fields = [render_field(SmearConfig(width=width, height=height, blur_sigma=0.8, noise_std=3), seed=s).image
              for s in range(args.fields)]
    gate = QualityGate()
    gate.check(fields[0])  # warm-up
    times = []
    for _ in range(args.repeats):
        for image in fields:
            start = time.perf_counter()
            gate.check(image)
            times.append((time.perf_counter() - start) * 1000)
    t = np.array(times)
    print(f"quality gate, {width} x {height}, {len(t)} calls, {args.threads} OpenCV thread(s): "
          f"median {np.median(t):.2f} ms, p90 {np.percentile(t, 90):.2f} ms, max {t.max():.2f} ms; "
          f"target {TARGET_MS:g} ms: {'met' if np.median(t) < TARGET_MS else 'missed'} "
          f"({100 * (t >= TARGET_MS).mean():.1f} % of calls over it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
