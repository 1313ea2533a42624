"""`edge` command line: run, eval, info, synth, export, bench."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edge import DEFAULT_BUNDLE

log = logging.getLogger("edge")


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"edge: error: {exc}", file=sys.stderr)
        return 2
    except _user_errors() as exc:
        print(f"edge: error: {exc}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that describe a user's mistake or a bad input, not a bug: one line, no traceback."""
    from edge.bundle import BundleError
    from edge.detection_data import DatasetError
    from edge.evaluate import EvalDataError
    from edge.session import SessionError
    from edge.sources import SourceError
    return (BundleError, DatasetError, EvalDataError, SessionError, SourceError, OSError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge", description="Cell counting at the microscope.")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    run = sub.add_parser("run", help="count cells live from a source")
    _bundle_arg(run)
    run.add_argument("--source", default="demo",
                     help="demo (default), synthetic[:frames=N,seed=S], an image folder, a video file or a camera index")
    run.add_argument("--out", type=Path, default=None,
                     help="session folder for results (default: edge-out/<session id>)")
    run.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    _runtime_args(run)
    run.set_defaults(handler=_cmd_run)

    info = sub.add_parser("info", help="verify a bundle and describe it")
    info.add_argument("bundle", nargs="?", type=Path, default=DEFAULT_BUNDLE)
    info.set_defaults(handler=_cmd_info)

    ev = sub.add_parser("eval", help="measure accuracy on a labelled data set")
    ev_sub = ev.add_subparsers(title="what", metavar="WHAT")
    cls = ev_sub.add_parser("classify", help="single-cell images, one folder per class")
    _bundle_arg(cls)
    cls.add_argument("--data", type=Path, required=True)
    cls.add_argument("--split-file", type=Path, default=None,
                     help="a split file from `edge export train-classifier`: evaluate one of its splits")
    cls.add_argument("--split", default="validation", help="which split of --split-file (default validation)")
    cls.add_argument("--json", type=Path, default=None, help="write the figures here too")
    _runtime_args(cls)
    cls.set_defaults(handler=_cmd_eval_classify)
    det = ev_sub.add_parser("detect", help="fields with boxes, VOC or YOLO layout")
    _bundle_arg(det)
    det.add_argument("--data", type=Path, required=True)
    det.add_argument("--format", choices=("voc", "yolo"), required=True)
    det.add_argument("--classes", required=True,
                     help="comma-separated data-set classes that count as the engine's cells, e.g. WBC")
    det.add_argument("--split", default=None, help="VOC image set name (e.g. test)")
    det.add_argument("--json", type=Path, default=None, help="write the figures here too")
    _runtime_args(det)
    det.set_defaults(handler=_cmd_eval_detect)

    synth = sub.add_parser("synth", help="write synthetic smear data sets")
    synth_sub = synth.add_subparsers(title="what", metavar="WHAT")
    crops = synth_sub.add_parser("crops", help="single-cell crops, one folder per class")
    crops.add_argument("--out", type=Path, required=True)
    crops.add_argument("--per-class", type=int, default=50)
    crops.add_argument("--size", type=int, default=96)
    crops.add_argument("--seed", type=int, default=0)
    crops.set_defaults(handler=_cmd_synth_crops)
    fields = synth_sub.add_parser("fields", help="whole fields with boxes, VOC layout")
    fields.add_argument("--out", type=Path, required=True)
    fields.add_argument("--count", type=int, default=20)
    fields.add_argument("--width", type=int, default=640)
    fields.add_argument("--height", type=int, default=480)
    fields.add_argument("--seed", type=int, default=0)
    fields.set_defaults(handler=_cmd_synth_fields)

    export = sub.add_parser("export", help="make models and bundles (needs the export extra)",
                            add_help=False)
    export.add_argument("rest", nargs=argparse.REMAINDER)
    export.set_defaults(handler=_cmd_export)

    bench = sub.add_parser("bench", help="latency profiling (same as edge-bench)", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(handler=lambda a: __import__("edge.bench", fromlist=["main"]).main(a.rest))
    return p


def _bundle_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE,
                   help="model bundle folder or .tar (default: the shipped bundle)")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("-v", "--verbose", action="store_true")


def _cmd_run(args) -> int:
    from edge.runloop import run_session
    results = run_session(args.bundle, args.source, args.out, backend=args.backend,
                          threads=args.threads, max_frames=args.max_frames)
    return 0 if results["frames"]["counted"] else 1


def _cmd_info(args) -> int:
    from edge.bundle import load_bundle
    b = load_bundle(args.bundle)
    t = b.thresholds
    print(f"bundle      {b.root}")
    print(f"verified    manifest sha256 {b.manifest_sha256[:16]}..., {2} model files")
    print(f"classes     {', '.join(b.class_names)}")
    print(f"head        {b.classifier_head}" + (f" (sigma {b.ccl_sigma})" if b.ccl_sigma else ""))
    for role, spec in (("detector", b.detector), ("classifier", b.classifier)):
        print(f"{role:<11} {spec.file} input {spec.input_name} {list(spec.input_shape)} {spec.precision}")
    print(f"threshold   {t.global_threshold:.4f} for accepted accuracy {t.target_accuracy:.3f} ({t.method})")
    print(f"tiling      tile {b.tiling.tile_size}, overlap {b.tiling.overlap}, scale {b.tiling.scale}")
    print(f"provenance  {json.dumps(b.provenance)}")
    return 0


def _cmd_eval_classify(args) -> int:
    from edge.evaluate import evaluate_classifier, read_split_file
    only = read_split_file(args.split_file, args.split) if args.split_file else None
    report = evaluate_classifier(args.bundle, args.data, backend=args.backend, threads=args.threads, only=only)
    _emit(report, args.json)
    return 0


def _cmd_eval_detect(args) -> int:
    from edge.evaluate import evaluate_detector
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    report = evaluate_detector(args.bundle, args.data, args.format, classes, split=args.split,
                               backend=args.backend, threads=args.threads)
    _emit(report, args.json)
    return 0


def _cmd_synth_crops(args) -> int:
    from edge.synthetic_datasets import write_crop_folders
    n = write_crop_folders(args.out, args.per_class, args.size, args.seed)
    print(f"wrote {n} crops under {args.out}")
    return 0


def _cmd_synth_fields(args) -> int:
    from edge.synthetic_datasets import write_voc_fields
    n = write_voc_fields(args.out, args.count, args.width, args.height, args.seed)
    print(f"wrote {args.count} fields with {n} cells under {args.out} (VOC layout, class 'cell')")
    return 0


def _cmd_export(args) -> int:
    try:
        from export.cli import main as export_main
    except ImportError as exc:
        raise UserError(f"'edge export' needs the export extra (pip install -e '.[export]'): {exc}") from None
    return export_main(args.rest)


def _emit(report: dict, path: Path | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
