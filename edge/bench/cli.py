"""`edge-bench`: where the time of the counting path goes, on this machine.

    edge-bench [--bundle B] [--source S] [--mosaic AxD] [--frames N] [--frame-size WxH] [--backend NAME]
               [--precision fp32|fp16|int8] [--batch K] [--tile T] [--threads K] [--json OUT]
    edge-bench compare A.json B.json

Warm-up fields first, then every timed field goes through the stages of
`edge run` (bench_pipeline.STAGES) with the same functions and results, the
field quality gate included. The default source is the real demo fields, at
the default bundle's scale. When no timed field was counted (all refused by
the quality gate) the report says so and edge-bench exits with status 1. Any of
--bundle, --frame-size, --backend, --precision, --batch, --tile and --threads
may be a comma list: the grid of all combinations is measured in one call.
With --json OUT the report goes to OUT, a CSV row per run to OUT.csv, and PNG
charts next to it: the latency CDF of every stage (OUT-cdf*.png) and, when
batch or tile vary, throughput against them (OUT-throughput-*.png).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

import cv2

from edge import DEFAULT_BUNDLE
from edge.bench.plot import cdf_chart, throughput_chart
from edge.bench.report import compare_reports, fields_line, format_report, nothing_counted, runs_of, sweep_table, \
    write_csv
from edge.bench.run import BenchConfig, run_bench
from edge.bench.supply import DEMO_FIELDS_SPEC
from edge.counting.session import SessionError


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive whole number")
    return value


def _frame_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep:
        raise ValueError(f"frame size {text!r} is not WIDTHxHEIGHT")
    return _positive_int(w), _positive_int(h)


# options that take a comma list, in the order the grid nests them, with their parsers
SWEEPABLE = {"bundle": Path, "backend": str, "precision": str, "threads": _positive_int,
             "frame_size": _frame_size, "tile": _positive_int, "batch": _positive_int}
PRECISIONS = ("fp32", "fp16", "int8")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["compare"]:
            return _compare(argv[1:])
        return _bench(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, SessionError, FloatingPointError) as exc:
        print(f"edge-bench: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-bench", description="Latency profiling of the counting path "
                                "(`edge-bench compare A.json B.json` compares two reports).")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder or .tar (comma list: sweep)")
    p.add_argument("--source", default=DEMO_FIELDS_SPEC,
                   help=f"frame source, as for `edge run`, or {DEMO_FIELDS_SPEC} (default): the six real BCCD "
                   "fields of edge/demo_fields, 640x480; synthetic fields are drawn at the bundle's pixel size")
    p.add_argument("--mosaic", type=_frame_size, default=None, metavar="AxD",
                   help="each frame tiles A x D fields of the source (flipped and turned so neighbours "
                   "differ): 6x6 demo fields make one 3840x2880 frame")
    p.add_argument("--frames", type=int, default=20, help="timed fields (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="fields run before timing starts (default 2)")
    p.add_argument("--frame-size", default=None, help="WxH: synthetic fields are rendered at this size, "
                   "frames of other sources are resized to it as they are grabbed")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--precision", default=None, help="fp32, fp16 or int8: must be the bundle's own")
    p.add_argument("--batch", default=None, help="detector tiles per call (default: the engine's)")
    p.add_argument("--tile", default=None, help="tile side in pixels of the bundle-scaled frame; a fixed-size "
                   "detector gets each tile resized to its input (default: the bundle's)")
    p.add_argument("--threads", default=None, help="inference threads (default: all cores)")
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                   help="the frames' micrometres per pixel (default: the bundle's)")
    p.add_argument("--review-dir", type=Path, default=None,
                   help="folder on the disk the review queue will use (default: the temp folder)")
    p.add_argument("--json", type=Path, default=None, help="write the report here, with a CSV and PNG charts")
    return p


def grid(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Every combination of the comma-list options, and the names of those with several values."""
    values = {}
    for name, parse in SWEEPABLE.items():
        text = getattr(args, name)
        values[name] = [None] if text is None else [parse(v.strip()) for v in str(text).split(",") if v.strip()]
        if not values[name]:
            raise ValueError(f"--{name.replace('_', '-')} is empty")
    bad = [p for p in values["precision"] if p is not None and p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precision {bad[0]!r}; use one of {', '.join(PRECISIONS)}")
    points = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    return points, [n for n, v in values.items() if len(v) > 1]


def _bench(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    points, varying = grid(args)
    base = BenchConfig(bundle=Path(args.bundle), source=args.source, frames=args.frames, warmup=args.warmup,
                       review_dir=args.review_dir, pixel_size_um=args.pixel_size, mosaic=args.mosaic)
    runs = []
    for i, point in enumerate(points):
        if len(points) > 1:
            print(f"[{i + 1}/{len(points)}] " + ", ".join(f"{k} {point[k]}" for k in varying), flush=True)
        runs.append(run_bench(replace(base, **point)))
    if len(runs) == 1:
        print(format_report(runs[0]))
    else:
        print(sweep_table(runs, varying))
    if args.json:
        write_outputs(runs, varying, args.json)
    empty = [r for r in runs if nothing_counted(r)]
    for r in empty:
        point = ", ".join(f"{k} {r[k]}" for k in varying)
        print(f"edge-bench: no field was counted{' at ' + point if point else ''}, so this times no "
              f"counting: {fields_line(r).split(': ', 1)[1]}", file=sys.stderr)
    return 1 if empty else 0


def write_outputs(runs: list[dict], varying: list[str], path: Path) -> list[Path]:
    """The report as JSON, a CSV row per run, and the PNG charts; returns the paths written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = runs[0] if len(runs) == 1 else {"sweep": varying, "runs": runs}
    path.write_text(json.dumps(report, indent=2) + "\n")
    written = [path, path.with_suffix(".csv")]
    write_csv(runs, written[1])
    charts = {}
    for i, r in enumerate(runs):
        label = ", ".join(f"{k} {r[k]}" for k in varying)
        name = "-cdf.png" if len(runs) == 1 else f"-cdf-{i + 1}.png"
        charts[name] = cdf_chart(r["samples_ms"], f"latency per stage, {r['frames']} fields of "
                                 f"{r['frame_size']}" + (f" ({label})" if label else ""))
    for key in ("batch", "tile"):
        if key in varying:
            charts[f"-throughput-{key}.png"] = throughput_chart(runs, key, varying)
    for suffix, image in charts.items():
        target = path.with_name(path.stem + suffix)
        if not cv2.imwrite(str(target), image):
            raise OSError(f"cannot write {target}")
        written.append(target)
    return written


def _compare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="edge-bench compare", description="Stage-by-stage ratio of two reports.")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args(argv)
    reports = [_read_report(path) for path in (args.a, args.b)]
    print(compare_reports(*reports, names=("A", "B")))
    return 0


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(report, dict) or not all(isinstance(r, dict) and {"stages", "latency_ms"} <= set(r)
                                               for r in runs_of(report)):
        raise ValueError(f"{path} is not an edge-bench report (no stages and latency_ms)")
    return report


if __name__ == "__main__":
    sys.exit(main())
