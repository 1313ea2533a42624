"""The CCL decision (confidence c = 1 - sum D + max D, then the threshold) as a share of the
classifier's time per cell.

    python benchmarks/ccl_decision.py [--bundle B] [--batch 64] [--repeats 20] [--threads 1]

Both are timed on the same batch of synthetic cell crops through the device's own
code: the classifier through ONNX Runtime (`run_batched`, input already
preprocessed), the decision through `RejectRule.decide` (the bundle's thresholds,
per class where it has them). Medians of `--repeats` runs; target: at most 3 %.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from edge import DEFAULT_BUNDLE
from edge.runtime.bundle import load_bundle
from edge.runtime.engine import CellCounter, run_batched
from edge.runtime.preprocess import to_model_input
from edge.synthetic.smear import render_cell_crops

TARGET_SHARE = 0.03


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    bundle = load_bundle(args.bundle)
    spec = bundle.classifier
    crops = render_cell_crops(np.arange(args.batch) % 5, spec.input_hw[0], seed=0)  # any cells will do
    x = to_model_input(crops, None, spec.normalisation)
    with CellCounter(bundle, threads=args.threads) as counter:
        scores = run_batched(counter.classifier, spec, x, args.batch)[spec.outputs[0]]
        classify = median_seconds(lambda: run_batched(counter.classifier, spec, x, args.batch), args.repeats)
        decide = median_seconds(lambda: counter.rule.decide(scores), max(args.repeats, 200))
    share = decide / classify
    print(f"bundle {bundle.root} ({bundle.classifier_head} head, input {spec.input_hw}), "
          f"batch {args.batch}, {args.threads} thread(s)")
    print(f"classifier  {1e6 * classify / args.batch:10.2f} us per cell")
    print(f"decision    {1e6 * decide / args.batch:10.3f} us per cell")
    print(f"share       {100 * share:10.4f} %  (target <= {100 * TARGET_SHARE:.0f} %)")
    return 0 if share <= TARGET_SHARE else 1


if __name__ == "__main__":
    sys.exit(main())
