"""`edge export ...`: the offline model-making commands (need the export extra)."""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields
from pathlib import Path

from edge import DEFAULT_BUNDLE


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
    tc.add_argument("--arch", default="crossformer_t", help="CrossFormer config name")
    tc.add_argument("--img-size", type=int, default=224)
    tc.add_argument("--head", choices=("ccl", "softmax"), default="ccl")
    tc.add_argument("--epochs", type=int, default=100)
    tc.add_argument("--batch-size", type=int, default=64, help="per process")
    tc.add_argument("--lr", type=float, default=1e-4)
    tc.add_argument("--weight-decay", type=float, default=0.01)
    tc.add_argument("--lr-drops", type=_fractions, default=(0.3, 0.6),
                    help="fractions of the epochs where lr is cut x0.1 (default the paper's 0.3,0.6)")
    tc.add_argument("--workers", type=int, default=2, help="DataLoader processes per training process")
    tc.add_argument("--threads", type=int, help="torch threads per process (default: torch's choice)")
    tc.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the backbone")
    tc.add_argument("--target-accuracy", type=float, default=0.99,
                    help="accepted accuracy the per-epoch provisional reject threshold is fitted for")
    tc.add_argument("--seed", type=int, default=0, help="split, initialisation, sampling and augmentation")
    tc.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                    help="continue from OUT/last.pt if it exists")
    tc.add_argument("--max-images-per-class", type=int, help="use at most about this many per class (quick runs)")
    tc.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
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

    mi = sub.add_parser("model-info", help="parameters and GFLOPs (multiply-adds) of a CrossFormer config")
    mi.add_argument("--arch", default="crossformer_t")
    mi.add_argument("--img-size", type=int, default=224)
    mi.set_defaults(handler=_model_info)

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
            resume=args.resume, progress=args.progress)
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


def _model_info(args) -> int:
    from export.models.crossformer import build_backbone, count_params_and_flops
    params, macs = count_params_and_flops(build_backbone(args.arch, args.img_size), args.img_size)
    print(json.dumps({"arch": args.arch, "img_size": args.img_size, "params_m": round(params / 1e6, 2),
                      "gflops": round(macs / 1e9, 3), "note": "backbone only; FLOPs counted as "
                      "multiply-adds, as the CrossFormer paper does"}, indent=2))
    return 0


def _fractions(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    if not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give fractions between 0 and 1, e.g. 0.3,0.6")
    return values
