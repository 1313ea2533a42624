"""Fields per second of `edge run`, pipelined against the same stages one after another.

    python benchmarks/realtime_loop.py [--mosaic 6x6] [--fields 12] [--threads 2]        # real fields
    python benchmarks/realtime_loop.py --synthetic 1920x1080 [--bundle B] [--fields 24]

By default the frames are mosaics of the real demo fields (edge.bench.mosaic: 6x6 gives 3840 x 2880,
a large camera at BCCD's magnification) counted with the default bundle; `--synthetic WxH` renders
smears instead (about 50 nucleated cells per field) for the synthetic bundle. Frames are made
beforehand and served from memory like a camera that always has the next frame ready, so the figure
is the engine's, not the generator's. Both modes count the same fields into their own session
folders (review queue, SQLite, annotated fields all on) in one process, alternating, and must find
the same cells.
"""
from __future__ import annotations

import sys
import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2

from edge import DEFAULT_BUNDLE
from edge.bench.mosaic import mosaic
from edge.runtime.frames import Frame
from edge.counting.runloop import run_session
from edge.counting.sources import DEMO_FIELDS, FrameSource
from edge.synthetic.smear import SmearConfig, render_field

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the tests package
from tests.helpers import SYNTHETIC_BUNDLE  # noqa: E402


class MemorySource(FrameSource):
    live = False

    def __init__(self, images: list, fields: int):
        super().__init__()
        self.images, self.fields, self.next = images, fields, 0
        self.description = f"{fields} pre-rendered fields"

    def _read(self, timeout: float | None) -> Frame | None:
        if self.next >= self.fields:
            return None
        i = self.next
        self.next += 1
        return Frame(i, self.images[i % len(self.images)], time.time(), f"memory {i}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=None,
                   help="default: the default bundle for mosaics, the synthetic bundle for --synthetic")
    p.add_argument("--mosaic", default="6x6", help="AxD demo fields across and down per frame")
    p.add_argument("--synthetic", default=None, metavar="WxH", help="render smears of this size instead")
    p.add_argument("--fields", type=int, default=12)
    p.add_argument("--distinct", type=int, default=4, help="distinct frames made (then repeated)")
    p.add_argument("--cells-per-field", type=float, default=50.0, help="synthetic smears only")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if args.synthetic:
        width, height = (int(v) for v in args.synthetic.split("x"))
        config = replace(SmearConfig(width=width, height=height),
                         nucleated_per_mpx=args.cells_per_field / (width * height / 1e6))
        images = [render_field(config, seed=100 + i).image for i in range(args.distinct)]
        args.bundle = args.bundle or SYNTHETIC_BUNDLE
    else:
        across, down = (int(v) for v in args.mosaic.lower().split("x"))
        demo = [cv2.imread(str(p)) for p in sorted(DEMO_FIELDS.glob("*.jpg"))]
        images = [mosaic(demo, across, down, start=i) for i in range(args.distinct)]
        args.bundle = args.bundle or DEFAULT_BUNDLE
    height, width = images[0].shape[:2]
    rates = {"pipelined": [], "sequential": []}
    p99 = {"pipelined": [], "sequential": []}
    cells = {}
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as sink:
        for r in range(args.repeats):
            for mode in ("pipelined", "sequential"):
                res = run_session(args.bundle, MemorySource(images, args.fields), Path(tmp) / f"{mode}{r}",
                                  threads=args.threads, live=sink, sequential=mode == "sequential")
                rates[mode].append(res["loop"]["fields_per_s"])
                p99[mode].append(res["loop"]["latency_ms"]["p99"])
                cells[mode] = (res["accepted"], res["rejected"])
    assert cells["pipelined"] == cells["sequential"], "both modes must count the same cells"
    found = sum(cells["pipelined"])
    print(f"{args.fields} fields of {width}x{height}, {found / args.fields:.1f} cells per field found, "
          f"threads {args.threads or 'all'}, best of {args.repeats}")
    for mode in ("pipelined", "sequential"):
        print(f"{mode:<10} {max(rates[mode]):6.2f} fields/s   latency p99 {min(p99[mode]):7.0f} ms")
    print(f"pipelined / sequential: {max(rates['pipelined']) / max(rates['sequential']):.2f}x")


if __name__ == "__main__":
    main()
