"""`edge` command line: run, classify, eval, info, synth, export, bench, build-engines, review, calibrate."""
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # argparse's REMAINDER refuses a leading --option: edge-bench parses its own
        from edge.bench.cli import main as bench_main
        return bench_main(argv[1:])
    if argv[:1] == ["export"]:  # the same for `edge export --help`
        try:
            return _cmd_export(argparse.Namespace(rest=argv[1:]))
        except UserError as exc:
            print(f"edge: error: {exc}", file=sys.stderr)
            return 2
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
    from edge.runtime.bundle import BundleError
    from edge.counting.display import DisplayError
    from edge.evaluation.calibrate import CalibrationError
    from edge.evaluation.detection_data import DatasetError
    from edge.evaluation.evaluate import EvalDataError
    from edge.evaluation.site_fit import SiteFitError
    from edge.review import ReviewError
    from edge.counting.session import SessionError
    from edge.counting.sources import SourceError
    return (BundleError, CalibrationError, DatasetError, DisplayError, EvalDataError, ReviewError, SessionError,
            SiteFitError, SourceError, OSError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge", description="Cell counting at the microscope.")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    run = sub.add_parser("run", help="count cells live from a source")
    _bundle_arg(run)
    run.add_argument("--source", default="demo",
                     help="demo (default), synthetic[:frames=N,seed=S], an image folder, a video file or a camera index")
    run.add_argument("--out", type=Path, default=None,
                     help="session folder for results (default: edge-out/<session id>)")
    run.add_argument("--max-frames", type=int, default=None, help="stop after this many fields")
    run.add_argument("--target", type=int, default=None,
                     help="stop when this many nucleated cells were found (e.g. 100, 200, 500)")
    run.add_argument("--resume", action="store_true",
                     help="continue the session in --out after a crash or a stop")
    run.add_argument("--no-save-fields", dest="save_fields", action="store_false",
                     help="do not write annotated fields under the session folder")
    run.add_argument("--field-trigger", choices=("auto", "every", "still"), default="auto",
                     help="when a frame is a new field: every frame, or once the image is still after the "
                          "stage moved (auto: still for cameras, videos and synthetic-stage)")
    run.add_argument("--still-seconds", type=float, default=0.3,
                     help="how long the image must rest before a field is taken (--field-trigger still)")
    run.add_argument("--serial", default=None, metavar="PORT|sim",
                     help="take fields when the microscope's firmware says FIELD_READY on this serial port "
                          "(or on a simulated microscope: sim)")
    run.add_argument("--sim-fields", type=int, default=12, help="fields the simulated stage visits (--serial sim)")
    run.add_argument("--sim-noise", type=float, default=0.0,
                     help="share of bytes corrupted on the simulated serial line (--serial sim)")
    run.add_argument("--display", action="store_true",
                     help="show the newest field and the tally in a window (needs OpenCV with a GUI)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--sequential", dest="sequential", action="store_const", const=True, default=None,
                      help="run the stages one after another")
    mode.add_argument("--pipelined", dest="sequential", action="store_const", const=False,
                      help="run the stages in threads, overlapping fields (default: for a live source, or "
                           "with more than 2 cores; on 2 cores the threads measured no gain)")
    run.add_argument("--quality", action="append", default=[], metavar="KEY=VALUE",
                     help="a field quality gate setting over the bundle's, e.g. min_focus=0.3 or "
                          "max_stain_angle=8 (repeatable; see docs/user-guide.md, The field quality gate)")
    run.add_argument("--no-quality-gate", dest="quality_gate", action="store_false",
                     help="count every field, however poor its focus, light or stain")
    run.add_argument("--drift-history", type=Path, default=None,
                     help="the drift history across sessions (default: drift-history.jsonl beside the session)")
    _pixel_size_arg(run)
    _runtime_args(run)
    run.set_defaults(handler=_cmd_run)

    clf = sub.add_parser("classify", help="single-cell images from other tools, each classified as the device "
                                          "would classify that cell in a field; one CSV row per image")
    clf.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER",
                     help="images, or folders searched for images")
    clf.add_argument("--csv", type=Path, required=True, help="write one row per image here")
    _bundle_arg(clf)
    _runtime_args(clf)
    clf.set_defaults(handler=_cmd_classify)

    site = sub.add_parser("site", help="fit a bundle to a lab's microscope and stain")
    site_sub = site.add_subparsers(title="what", metavar="WHAT")
    fit = site_sub.add_parser("fit", help="from the lab's own good fields, without labels: field quality limits "
                                          "(stain, focus), pixel size, drift bands; writes a new verified bundle")
    _site_args(fit, "the lab's fields: a folder, a camera, any edge run source", fields=30)
    _pixel_size_arg(fit)
    _runtime_args(fit)
    fit.set_defaults(handler=_cmd_site_fit)
    ruler = site_sub.add_parser("ruler", help="read the red-cell ruler on fields at the bundle's own pixel size, "
                                              "so devices can estimate their camera's pixel size from the fields")
    _site_args(ruler, "fields at the bundle's pixel size (its own lab's)", fields=1000)
    ruler.set_defaults(handler=_cmd_site_ruler)
    stain = site_sub.add_parser("stain", help="normalise the classifier's views toward the stain of its own "
                                              "training images (or --off); writes a new verified bundle")
    _bundle_arg(stain)
    what = stain.add_mutually_exclusive_group(required=True)
    what.add_argument("--reference", type=Path, help="the classifier's training images (a folder, searched deeply)")
    what.add_argument("--off", action="store_true", help="write the bundle without stain normalisation")
    stain.add_argument("--out", type=Path, required=True, help="the new bundle's folder (must not exist or be empty)")
    stain.add_argument("--samples", type=int, default=300, help="reference images sampled (default 300)")
    stain.set_defaults(handler=_cmd_site_stain)

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
    _pixel_size_arg(det)
    _runtime_args(det)
    det.set_defaults(handler=_cmd_eval_detect)

    fld = ev_sub.add_parser("fields", help="labelled cells in whole fields (a CSV of file, class, box), "
                                           "through detect, cell view, classify and decide")
    _bundle_arg(fld)
    fld.add_argument("--data", type=Path, required=True, help="the fields' folder (or its JPEGImages/)")
    fld.add_argument("--labels", type=Path, required=True,
                     help="CSV with columns file,class,xmin,ymin,xmax,ymax (and split), e.g. bccd/wbc_subtypes.csv")
    fld.add_argument("--split", default=None, help="only the rows of this split")
    fld.add_argument("--json", type=Path, default=None, help="write the figures here too")
    _pixel_size_arg(fld)
    _runtime_args(fld)
    fld.set_defaults(handler=_cmd_eval_fields)

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

    cal = sub.add_parser("calibrate", help="refit a bundle's reject thresholds on its own classifier")
    _bundle_arg(cal)
    cal.add_argument("--data", type=Path, default=None, help="labelled single-cell images, one folder per class")
    cal.add_argument("--from-review", type=Path, nargs="+", default=[], metavar="SESSION",
                     help="site recalibration: also fit on the cells experts labelled in these sessions' review")
    cal.add_argument("--adapt-centroids", action="store_true",
                     help="with --from-review: move the CCL centroids toward part of the labelled cells and fit "
                          "the thresholds on the rest (the bundle must state ccl_centroids)")
    cal.add_argument("--shrinkage", type=float, default=10.0,
                     help="--adapt-centroids: the old centroid weighs as much as this many cells (default 10)")
    cal.add_argument("--adapt-share", type=float, default=0.5,
                     help="--adapt-centroids: share of each class's labelled cells that moves the centroids "
                          "(default 0.5; the rest fit the thresholds)")
    cal.add_argument("--seed", type=int, default=0, help="--adapt-centroids: the random split of the cells")
    cal.add_argument("--split-file", type=Path, default=None, help="fit on one split of this split file")
    cal.add_argument("--split", default="calibration", help="the split to fit on (default calibration)")
    cal.add_argument("--eval-split", default=None, help="also judge every rule on this held-out split")
    cal.add_argument("--target-accuracy", type=float, required=True, help="accepted accuracy to reach, e.g. 0.99")
    cal.add_argument("--confidence", type=float, default=0.95,
                     help="probability that the target holds on new cells (clopper-pearson; default 0.95)")
    cal.add_argument("--search", choices=("clopper-pearson", "descending"), default="clopper-pearson",
                     help="clopper-pearson (guaranteed, default) or descending (the CCL paper's)")
    cal.add_argument("--method", choices=("ccl", "softmax", "icp"), default=None,
                     help="the rule to deploy (default: the head's own: ccl or softmax)")
    cal.add_argument("--per-class", action="store_true", help="a threshold per predicted class")
    cal.add_argument("--min-per-class", type=int, default=30,
                     help="fewer calibration cells than this: the class uses the global threshold")
    cal.add_argument("--compare", type=Path, action="append", default=[],
                     help="another bundle whose own rules join the report (repeatable)")
    cal.add_argument("--out", type=Path, required=True, help="the new bundle")
    cal.add_argument("--report", type=Path, default=None, help="report folder (default: OUT-report)")
    _runtime_args(cal)
    cal.set_defaults(handler=_cmd_calibrate)

    bench = sub.add_parser("bench", help="latency profiling (same as edge-bench)", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(handler=lambda a: __import__("edge.bench.cli", fromlist=["main"]).main(a.rest))

    review = sub.add_parser("review", help="expert review of rejected cells: export an archive, import labels")
    review_sub = review.add_subparsers(title="what", metavar="WHAT")
    rexp = review_sub.add_parser("export", help="rejected cells, a review page and the manifest as one .zip")
    rexp.add_argument("--session", type=Path, action="append", required=True,
                      help="session folder from `edge run` (repeat for several)")
    rexp.add_argument("--out", type=Path, required=True, help="the archive to write (.zip)")
    rexp.add_argument("--include", action="append", choices=("accepted-sample",), default=[],
                      help="accepted-sample: add a random sample of accepted cells as a quality check")
    rexp.add_argument("--sample-size", type=int, default=20, help="accepted cells per session (default 20)")
    rexp.add_argument("--seed", type=int, default=0, help="seed of the accepted sample")
    rexp.set_defaults(handler=_cmd_review_export)
    rimp = review_sub.add_parser("import", help="an expert's labels back into the session and the final count")
    rimp.add_argument("--session", type=Path, action="append", required=True,
                      help="session folder the archive was made from (repeat for several)")
    rimp.add_argument("--labels", type=Path, required=True,
                      help="labels .json saved by the review page, or the archive returned with it inside")
    rimp.add_argument("--reviewer", default=None, help="who labelled (default: the name in the labels file)")
    rimp.add_argument("--dataset", type=Path, default=None,
                      help="also write the labelled crops here, one folder per class")
    rimp.set_defaults(handler=_cmd_review_import)

    engines = sub.add_parser("build-engines", help="build TensorRT engines for a bundle on this GPU (Jetson)")
    _bundle_arg(engines)
    engines.add_argument("--precision", choices=("fp16", "int8"), default=None,
                         help="default: int8 for the bundle's QDQ models, fp16 for the others")
    engines.add_argument("--max-batch", type=int, default=None,
                         help="largest batch an engine takes (default: a frame's tiles; the classifier batch)")
    engines.add_argument("--frame-size", default="640x480",
                         help="camera frame WIDTHxHEIGHT; its tile count is the detector's batch")
    engines.add_argument("--cache", type=Path, default=None,
                         help="engine cache folder (default $EDGE_TRT_CACHE or ~/.cache/edge-cellcount/tensorrt)")
    engines.add_argument("--force", action="store_true", help="rebuild engines that are still fresh")
    engines.add_argument("--dry-run", action="store_true", help="print the build plan and stop; needs no GPU")
    engines.add_argument("-v", "--verbose", action="store_true")
    engines.set_defaults(handler=_cmd_build_engines)

    fwsim = sub.add_parser("firmware-sim", help="simulate the microscope's firmware on a pseudo-terminal")
    fwsim.add_argument("--fields", type=int, default=12, help="fields on the slide (default 12)")
    fwsim.add_argument("--settle-ms", type=float, default=50.0, help="stage settle time per field (default 50)")
    fwsim.add_argument("--noise", type=float, default=0.0,
                       help="probability that a byte is corrupted or dropped, each direction (default 0)")
    fwsim.add_argument("--seed", type=int, default=0, help="seed of the line noise")
    fwsim.add_argument("--baud", type=int, default=None,
                       help="pace bytes as a UART at this rate would (default: as fast as the pty)")
    fwsim.add_argument("--link", default=None,
                       help="also make this symlink to the pty, stable across unplug and replug")
    fwsim.add_argument("-v", "--verbose", action="store_true")
    fwsim.set_defaults(handler=_cmd_firmware_sim)
    return p


def _bundle_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE,
                   help="model bundle folder or .tar (default: the shipped bundle)")


def _site_args(p: argparse.ArgumentParser, source_help: str, fields: int) -> None:
    """The bundle, the fields to read and the new bundle of an `edge site` command."""
    _bundle_arg(p)
    p.add_argument("--source", required=True, help=source_help)
    p.add_argument("--out", type=Path, required=True, help="the new bundle's folder (must not exist or be empty)")
    p.add_argument("--fields", type=int, default=fields, help=f"read at most this many fields (default {fields})")
    p.add_argument("--json", type=Path, default=None, help="write the report here too")


def _pixel_size_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                   help="the camera's micrometres per pixel: frames are resampled so the detector sees cells at "
                        "the bundle's scale (default: estimated from the red cells in the fields when the bundle "
                        "states its red-cell ruler, else the bundle's own pixel size)")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("-v", "--verbose", action="store_true")


def _cmd_run(args) -> int:
    from edge.counting.runloop import run_session
    if args.resume and args.out is None:
        raise UserError("--resume needs the session folder: --out DIR")
    results = run_session(None if args.resume and args.bundle == DEFAULT_BUNDLE else args.bundle,
                          None if args.resume and args.source == "demo" else args.source, args.out,
                          backend=args.backend, threads=args.threads, max_frames=args.max_frames,
                          target=args.target, resume=args.resume, save_fields=args.save_fields,
                          sequential=args.sequential, display=args.display, serial=args.serial,
                          sim_fields=args.sim_fields, sim_noise=args.sim_noise,
                          field_trigger=args.field_trigger, still_seconds=args.still_seconds,
                          quality=_quality_overrides(args), drift_history=args.drift_history,
                          pixel_size_um=args.pixel_size)
    return 0 if results["frames"]["counted"] else 1


def _quality_overrides(args) -> dict:
    from edge.runtime.quality import parse_override
    try:
        overrides = dict(parse_override(text) for text in args.quality)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not args.quality_gate:
        overrides["enabled"] = False
    return overrides


def _cmd_info(args) -> int:
    from edge.runtime.bundle import load_bundle
    b = load_bundle(args.bundle)
    t = b.thresholds
    print(f"bundle      {b.root}")
    print(f"verified    manifest sha256 {b.manifest_sha256[:16]}..., "
          f"{len(b.detector.files) + len(b.classifier.files)} model files")
    print(f"classes     {', '.join(b.class_names)}")
    roles: dict[str, list[str]] = {}
    for name, role in b.class_roles.items():
        roles.setdefault(role, []).append(name)
    print("roles       " + "; ".join(f"{role}: {', '.join(names)}" for role, names in roles.items()) +
          ("" if b.class_roles_stated else " (read from the class names: the manifest does not state them)"))
    print(f"head        {b.classifier_head}" + (f" (sigma {b.ccl_sigma})" if b.ccl_sigma else ""))
    for role, spec in (("detector", b.detector), ("classifier", b.classifier)):
        print(f"{role:<11} {spec.file} input {spec.input_name} {list(spec.input_shape)} {spec.precision}"
              + (f" (TensorRT variant {spec.tensorrt.file})" if spec.tensorrt else ""))
    print(f"threshold   {t.global_threshold:.4f} for accepted accuracy {t.target_accuracy:.3f} ({t.method})")
    print(f"tiling      tile {b.tiling.tile_size}, overlap {b.tiling.overlap}, scale {b.tiling.scale}")
    if b.tiling.pixel_size_um is not None:
        print(f"pixel size  {b.tiling.pixel_size_um} um per camera pixel; the detector sees "
              f"{b.tiling.detector_pixel_size():.3g} um per pixel (--pixel-size adapts to another camera)")
        if b.ccl_centroids is not None:
            print(f"centroids   {b.ccl_centroids.file}: the device computes the CCL kernel from the classifier's "
                  f"embeddings (edge calibrate --from-review S --adapt-centroids moves them)")
        if b.tiling.red_cell_chord_um is not None:
            print(f"ruler       red cells: modal chord {b.tiling.red_cell_chord_um:.2f} um; without --pixel-size "
                  f"the pixel size is estimated from the fields")
    else:
        print("pixel size  not stated: frames must come from a camera like the bundle's own")
    print(f"provenance  {json.dumps(b.provenance)}")
    return 0


def _cmd_eval_classify(args) -> int:
    from edge.evaluation.evaluate import evaluate_classifier, read_split_file
    only = read_split_file(args.split_file, args.split) if args.split_file else None
    report = evaluate_classifier(args.bundle, args.data, backend=args.backend, threads=args.threads, only=only)
    _emit(report, args.json)
    return 0


def _cmd_site_fit(args) -> int:
    from edge.evaluation.site_fit import fit_site
    report = fit_site(args.bundle, args.source, args.out, fields=args.fields, pixel_size_um=args.pixel_size,
                      threads=args.threads)
    _emit(report, args.json)
    return 0


def _cmd_site_ruler(args) -> int:
    from edge.evaluation.site_fit import state_ruler
    _emit(state_ruler(args.bundle, args.source, args.out, fields=args.fields), args.json)
    return 0


def _cmd_site_stain(args) -> int:
    from edge.evaluation.stain_reference import state_stain_reference
    _emit(state_stain_reference(args.bundle, None if args.off else args.reference, args.out, args.samples), None)
    return 0


def _cmd_classify(args) -> int:
    from edge.evaluation.classify_images import classify_images, write_rows
    rows, summary = classify_images(args.bundle, args.images, backend=args.backend, threads=args.threads)
    write_rows(rows, args.csv)
    _emit(summary | {"csv": str(args.csv)}, None)
    return 0


def _cmd_eval_fields(args) -> int:
    from edge.evaluation.evaluate_fields import evaluate_field_cells
    report = evaluate_field_cells(args.bundle, args.data, args.labels, split=args.split,
                                  backend=args.backend, threads=args.threads, pixel_size_um=args.pixel_size)
    _emit(report, args.json)
    return 0


def _cmd_eval_detect(args) -> int:
    from edge.evaluation.evaluate import evaluate_detector
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    report = evaluate_detector(args.bundle, args.data, args.format, classes, split=args.split,
                               backend=args.backend, threads=args.threads, pixel_size_um=args.pixel_size)
    _emit(report, args.json)
    return 0


def _cmd_calibrate(args) -> int:
    from edge.evaluation.calibrate import calibrate_bundle, markdown_table
    from edge.evaluation.evaluate import read_split_file
    if args.eval_split and not args.split_file:
        raise UserError("--eval-split needs --split-file")
    if args.data is None and not args.from_review:
        raise UserError("give the labelled cells to fit on: --data DIR, --from-review SESSION ..., or both")
    if args.split_file and args.data is None:
        raise UserError("--split-file needs --data")
    only = read_split_file(args.split_file, args.split) if args.split_file else None
    held_out = read_split_file(args.split_file, args.eval_split) if args.eval_split else None
    report_dir = args.report or args.out.with_name(args.out.name + "-report")
    note = {"split_file": str(args.split_file), "fit_split": args.split,
            "evaluation_split": args.eval_split} if args.split_file else {}
    report = calibrate_bundle(args.bundle, args.data, args.out, target_accuracy=args.target_accuracy,
                              confidence=args.confidence, per_class=args.per_class, method=args.method,
                              only=only, backend=args.backend, threads=args.threads, search=args.search,
                              min_per_class=args.min_per_class, evaluate_only=held_out,
                              compare=tuple(args.compare), report_dir=report_dir, source_note=note,
                              review_sessions=tuple(args.from_review), adapt_centroids=args.adapt_centroids,
                              shrinkage=args.shrinkage, adapt_share=args.adapt_share, seed=args.seed)
    print(markdown_table(report), end="")
    print(f"bundle {args.out}; report {report_dir}")
    return 0


def _cmd_synth_crops(args) -> int:
    from edge.synthetic.datasets import write_crop_folders
    n = write_crop_folders(args.out, args.per_class, args.size, args.seed)
    print(f"wrote {n} crops under {args.out}")
    return 0


def _cmd_synth_fields(args) -> int:
    from edge.synthetic.datasets import write_voc_fields
    n = write_voc_fields(args.out, args.count, args.width, args.height, args.seed)
    print(f"wrote {args.count} fields with {n} cells under {args.out} (VOC layout, class 'cell')")
    return 0


def _cmd_export(args) -> int:
    try:
        from export.cli import main as export_main
    except ImportError as exc:
        raise UserError(f"'edge export' needs the export extra (pip install -e '.[export]'): {exc}") from None
    return export_main(args.rest)


def _cmd_build_engines(args) -> int:
    from edge.runtime.backends import BackendError
    from edge.runtime.backends.tensorrt_plan import BuildPlanError, plan_builds
    from edge.runtime.bundle import load_bundle
    width, _, height = args.frame_size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise UserError(f"--frame-size must be WIDTHxHEIGHT, e.g. 1920x1080, got {args.frame_size!r}")
    bundle = load_bundle(args.bundle)
    try:
        builds = plan_builds(bundle, args.precision, args.max_batch, (int(width), int(height)))
        if args.dry_run:
            print("\n".join(b.summary() for b in builds))
            return 0
        from edge.runtime.backends.tensorrt_build import build_engines
        from edge.runtime.backends.tensorrt_cache import EngineCache, default_cache_dir
        outcomes = build_engines(builds, EngineCache(args.cache or default_cache_dir()), force=args.force)
    except (BackendError, BuildPlanError) as exc:
        raise UserError(str(exc)) from None
    for o in outcomes:
        took = "" if o.action == "cached" else f" in {o.seconds:.1f} s"
        p = o.build.profile
        print(f"{o.build.role:<10} {o.build.precision} batch {p.min}/{p.opt}/{p.max}  {o.action}{took}  {o.engine}")
    return 0


def _cmd_review_export(args) -> int:
    from edge.review.archive_export import export_archive
    if args.sample_size < 1:
        raise UserError("--sample-size must be at least 1")
    summary = export_archive(args.session, args.out, tuple(args.include), args.sample_size, args.seed)
    print(f"wrote {summary['archive']}: {summary['rejected']} rejected and {summary['accepted_sample']} "
          f"accepted-sample cells; open review.html inside it (archive {summary['archive_id']})")
    return 0


def _cmd_review_import(args) -> int:
    from edge.review.label_import import FINAL_RESULTS, import_labels
    summary = import_labels(args.session, args.labels, args.reviewer, args.dataset)
    print(f"{summary['labels']} labels from {summary['reviewer']}: {summary['changed']} changed, "
          f"{summary['unchanged']} already recorded")
    for session_id, final in summary["final"].items():
        shares = "  ".join(f"{n} {p:.1f} %" for n, p in final["differential_percent"].items())
        state = "complete" if final["complete"] else f"incomplete ({final['rejected']['pending']} unlabelled, " \
                                                     f"{final['rejected']['unsure']} unsure)"
        print(f"{session_id}: {final['counted']} cells counted, {state} -> {FINAL_RESULTS}\n  {shares}")
    if summary["dataset_crops"] is not None:
        print(f"wrote {summary['dataset_crops']} labelled crops under {args.dataset}")
    return 0


def _cmd_firmware_sim(args) -> int:
    from firmware_bridge.simulator import FirmwareSimulator, run_console
    if args.fields < 1 or args.settle_ms < 0 or not 0 <= args.noise < 1 or (args.baud or 1) < 1:
        raise UserError("--fields must be at least 1, --settle-ms at least 0, --noise from 0 to below 1, "
                        "and --baud positive")
    sim = FirmwareSimulator(args.fields, settle_s=args.settle_ms / 1000, noise=args.noise, seed=args.seed,
                            link_path=args.link, baud=args.baud)
    return run_console(sim, sys.stdin, sys.stdout)


def _emit(report: dict, path: Path | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
