"""`edge export ...`: the offline model-making commands (need the export extra)."""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields
from pathlib import Path

from edge import DEFAULT_BUNDLE
from export.cli_options import add_cache_option, add_framing_option, add_run_options, fractions, names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge export", description="Make models and bundles.")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    syn = sub.add_parser("synthetic-bundle",
                         help="train tiny models on synthetic smears and write a bundle (the default bundle's recipe)")
    syn.add_argument("--out", type=Path, default=DEFAULT_BUNDLE)
    syn.add_argument("--work", type=Path, default=Path("runs/synthetic-bundle"),
                     help="checkpoints and report; a rerun resumes from them")
    from export.synthetic_bundle import SyntheticBundleRecipe
    for f in fields(SyntheticBundleRecipe):
        syn.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    syn.set_defaults(handler=_synthetic_bundle)

    tc = sub.add_parser("train-classifier",
                        help="train a CrossFormer classifier on a folder per class; export the best to ONNX")
    tc.add_argument("--data", type=Path, required=True, help="folder with one sub-folder of images per class")
    tc.add_argument("--out", type=Path, required=True, help="checkpoints, log.jsonl and classifier.onnx")
    tc.add_argument("--split-file", type=Path, help="train/calibration/validation split (default OUT/split.json)")
    tc.add_argument("--arch", default="crossformer_t",
                    help="CrossFormer config name, or efficientnet_lite0/1/2 (ImageNet weights from their packages)")
    tc.add_argument("--img-size", type=int, default=224)
    tc.add_argument("--head", choices=("ccl", "softmax"), default="ccl")
    tc.add_argument("--epochs", type=int, default=100)
    tc.add_argument("--batch-size", type=int, default=64, help="per process")
    tc.add_argument("--lr", type=float, default=1e-4)
    tc.add_argument("--weight-decay", type=float, default=0.01)
    tc.add_argument("--lr-drops", type=fractions, default=(0.3, 0.6),
                    help="fractions of the epochs where lr is cut x0.1 (default the paper's 0.3,0.6)")
    tc.add_argument("--workers", type=int, default=2, help="DataLoader processes per training process")
    tc.add_argument("--threads", type=int, help="torch threads per process (default: torch's choice)")
    tc.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the backbone")
    tc.add_argument("--target-accuracy", type=float, default=0.99,
                    help="accepted accuracy the per-epoch provisional reject threshold is fitted for")
    tc.add_argument("--seed", type=int, default=0, help="split, initialisation, sampling and augmentation")
    tc.add_argument("--max-images-per-class", type=int, help="use at most about this many per class (quick runs)")
    add_cache_option(tc)
    add_framing_option(tc)
    add_run_options(tc)
    tc.set_defaults(handler=_train_classifier)

    cb = sub.add_parser("classifier-bundle",
                        help="a bundle from a train-classifier run: ONNX export, thresholds fitted on it")
    cb.add_argument("--run", type=Path, required=True, help="the --out folder of train-classifier")
    cb.add_argument("--data", type=Path, required=True, help="the folder per class the run trained on")
    cb.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
    cb.add_argument("--split-file", type=Path, help="default RUN/split.json")
    cb.add_argument("--checkpoint", default="best.pt", help="best.pt (default) or last.pt")
    cb.add_argument("--detector-bundle", type=Path, help="take the detector and tiling from here "
                    "(default: the shipped bundle)")
    cb.add_argument("--target-accuracy", type=float, default=0.99)
    cb.add_argument("--method", default="descending", help="threshold rule: descending or clopper-pearson")
    cb.set_defaults(handler=_classifier_bundle)

    td = sub.add_parser("train-detector",
                        help="train the centre-heatmap detector on real fields (resized to --scale) mixed "
                             "with synthetic ones; export OUT/detector.onnx")
    td.add_argument("--out", type=Path, required=True, help="run folder: run.json, last.pt, log.jsonl, detector.onnx")
    td.add_argument("--data", help="VOC or YOLO folder of real fields, e.g. ../shared/data/bccd "
                                   "(default: synthetic fields only)")
    td.add_argument("--format", choices=("voc", "yolo"), default="voc")
    td.add_argument("--classes", type=names, default=("WBC",), help="comma-separated classes that are cells")
    td.add_argument("--splits", type=names, default=("train",), help="comma-separated training splits")
    td.add_argument("--val-split", default="val", help="split validated on every epoch ('none': no validation)")
    td.add_argument("--synthetic-fraction", type=float, default=0.3, help="share of synthetic samples with --data")
    td.add_argument("--scale", type=float, default=0.28,
                    help="resize factor of the real fields, as the bundle's tiling.scale (BCCD: 0.28 = 4 px/µm)")
    from export.models.detector import list_detectors
    td.add_argument("--arch", choices=list_detectors(), default="detector_small")
    td.add_argument("--tile", type=int, default=256, help="tile side in pixels")
    td.add_argument("--epochs", type=int, default=30)
    td.add_argument("--steps-per-epoch", type=int, default=100)
    td.add_argument("--batch-size", type=int, default=16)
    td.add_argument("--lr", type=float, default=3e-3)
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--workers", type=int, default=0, help="DataLoader processes")
    td.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    add_run_options(td)
    td.set_defaults(handler=_train_detector)

    db = sub.add_parser("detector-bundle",
                        help="a bundle from a train-detector run and the classifier of another bundle")
    db.add_argument("--run", type=Path, required=True, help="the --out folder of train-detector")
    db.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
    db.add_argument("--classifier-bundle", type=Path, help="take the classifier, classes and thresholds "
                    "from here (default: the shipped bundle)")
    db.add_argument("--scale", type=float, help="frame resize factor before tiling (default: the run's)")
    db.add_argument("--overlap", type=_overlap, default=None,
                    help="tile overlap in pixels, or 'auto' (default): the largest expected cell")
    db.add_argument("--score-threshold", type=float, default=0.3)
    db.add_argument("--crop-context-from", type=Path, metavar="DIR",
                    help="the classifier's training images (a folder per class): fit the crop context so that "
                         "the device frames detected cells as these images frame theirs")
    db.set_defaults(handler=_detector_bundle)

    ch = sub.add_parser("compare-heads",
                        help="CCL against softmax and ICP on the same network: accuracy, Rr, Ra, R on the validation split")
    ch.add_argument("--run", type=Path, required=True, help="a CCL train-classifier or distil-classifier run folder")
    ch.add_argument("--checkpoint", default="last.pt")
    ch.add_argument("--data", type=Path, required=True, help="the folder per class the run trained on")
    ch.add_argument("--split-file", type=Path, required=True, help="the run's split file")
    ch.add_argument("--target-accuracy", type=float, default=0.99)
    ch.add_argument("--json", type=Path, help="write the figures here too")
    add_cache_option(ch)
    add_framing_option(ch)
    ch.set_defaults(handler=_compare_heads)

    ee = sub.add_parser("expose-embeddings",
                        help="a CCL bundle whose classifier also outputs its embeddings and whose centroids are a "
                             "file, so that `edge calibrate --adapt-centroids` can move them")
    ee.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    ee.add_argument("--out", type=Path, required=True, help="the bundle folder to write (must not exist)")
    ee.set_defaults(handler=_expose_embeddings)

    mi = sub.add_parser("model-info", help="parameters and GFLOPs (multiply-adds) of a CrossFormer config")
    mi.add_argument("--arch", default="crossformer_t")
    mi.add_argument("--img-size", type=int, default=224)
    mi.set_defaults(handler=_model_info)

    from export.distill_cli import add_distil_commands
    from export.quantise_cli import add_quantise_commands
    add_distil_commands(sub)
    add_quantise_commands(sub)

    args = p.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.INFO)  # `edge` may have configured the root already
    if not hasattr(args, "handler"):
        p.print_help()
        return 2
    return args.handler(args)


def _synthetic_bundle(args) -> int:
    from export.synthetic_bundle import SyntheticBundleRecipe, make_synthetic_bundle
    recipe = SyntheticBundleRecipe(**{f.name: getattr(args, f.name) for f in fields(SyntheticBundleRecipe)})
    report = make_synthetic_bundle(args.out, recipe, args.work)
    print(json.dumps({k: v for k, v in report.items() if k != "classifier"} | {
        "classifier_validation": report["classifier"]["validation"]}, indent=2, default=str))
    return 0


def _train_classifier(args) -> int:
    import torch

    from export.classifier_training import (BEST, LAST, LOG, ClassifierTrainConfig, distributed_from_env,
                                            json_record, load_weights, train_on_folder)
    from export.onnx_export import export_onnx

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = ClassifierTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   weight_decay=args.weight_decay, lr_drops=args.lr_drops, seed=args.seed, bf16=args.bf16,
                                   target_accuracy=args.target_accuracy)
    with distributed_from_env() as (rank, _):
        model, history = train_on_folder(
            args.data, args.out, config, arch=args.arch, img_size=args.img_size, head=args.head,
            split_file=args.split_file, workers=args.workers, max_per_class=args.max_images_per_class,
            resume=args.resume, progress=args.progress, cache_side=args.cache_side, framing=args.framing_bundle)
    if rank != 0:
        return 0
    chosen = args.out / BEST if (args.out / BEST).exists() else args.out / LAST
    state = load_weights(model.cpu(), chosen)
    onnx_path = export_onnx(model, args.img_size, args.out / "classifier.onnx", output_name="scores")
    best = history[state["epoch"] - 1]
    print(json.dumps({"onnx": str(onnx_path), "checkpoint": str(chosen), "epochs": len(history),
                      "log": str(args.out / LOG), "best": json_record(best)}, indent=2))
    return 0


def _classifier_bundle(args) -> int:
    from export.classifier_bundle import bundle_from_run
    report = bundle_from_run(args.run, args.data, args.out, split_file=args.split_file,
                             detector_bundle=args.detector_bundle, target_accuracy=args.target_accuracy,
                             method=args.method, checkpoint=args.checkpoint)
    print(json.dumps(report, indent=2))
    return 0


def _train_detector(args) -> int:
    import torch

    from export.detector_training import DetectorRecipe, train_detector_run

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    recipe = DetectorRecipe(
        data=str(args.data) if args.data else None, format=args.format, classes=args.classes,
        splits=args.splits, val_split=None if args.val_split == "none" else args.val_split,
        synthetic_fraction=args.synthetic_fraction if args.data else 1.0, scale=args.scale,
        arch=args.arch, tile_size=args.tile, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    summary = train_detector_run(args.out, recipe, resume=args.resume, progress=args.progress,
                                 workers=args.workers, log=logging.getLogger("export.detector").info)
    print(json.dumps(summary, indent=2))
    return 0


def _compare_heads(args) -> int:
    from export.head_comparison import compare_heads
    result = compare_heads(args.run, args.data, args.split_file, args.framing_bundle, args.checkpoint,
                           args.target_accuracy, args.cache_side)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


def _detector_bundle(args) -> int:
    from export.detector_bundle import bundle_from_detector_run
    report = bundle_from_detector_run(args.run, args.out, classifier_bundle=args.classifier_bundle,
                                      scale=args.scale, overlap=args.overlap,
                                      score_threshold=args.score_threshold,
                                      crop_context_from=args.crop_context_from)
    print(json.dumps(report, indent=2))
    return 0


def _expose_embeddings(args) -> int:
    from export.expose_embeddings import expose_bundle_embeddings
    print(json.dumps(expose_bundle_embeddings(args.bundle, args.out), indent=2))
    return 0


def _model_info(args) -> int:
    from export.models.crossformer import build_backbone, count_params_and_flops
    params, macs = count_params_and_flops(build_backbone(args.arch, args.img_size), args.img_size)
    print(json.dumps({"arch": args.arch, "img_size": args.img_size, "params_m": round(params / 1e6, 2),
                      "gflops": round(macs / 1e9, 3), "note": "backbone only; FLOPs counted as "
                      "multiply-adds, as the CrossFormer paper does"}, indent=2))
    return 0


def _overlap(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give 'auto' or a number of pixels")
    return int(text)
