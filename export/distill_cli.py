"""`edge export distil-classifier` and `edge export distil-detector`."""
from __future__ import annotations

import json
from pathlib import Path

from export.cli_options import add_cache_option, add_framing_option, add_run_options, fractions


def add_distil_commands(sub) -> None:
    dc = sub.add_parser("distil-classifier",
                        help="distil a CCL teacher run into a small CrossFormer-CCL student; report teacher vs student")
    dc.add_argument("--teacher", type=Path, required=True, help="the teacher's train-classifier run folder")
    dc.add_argument("--teacher-checkpoint", default="best.pt")
    dc.add_argument("--data", type=Path, required=True, help="the folder per class the teacher trained on")
    dc.add_argument("--split-file", type=Path, required=True, help="the teacher's split file")
    dc.add_argument("--out", type=Path, required=True,
                    help="run folder: last.pt, best.pt, log.jsonl, classifier.onnx, report.json, report.md")
    dc.add_argument("--arch", default="crossformer_student", help="the student's CrossFormer config")
    dc.add_argument("--img-size", type=int, default=64, help="the student's input size")
    dc.add_argument("--epochs", type=int, default=30)
    dc.add_argument("--batch-size", type=int, default=64)
    dc.add_argument("--lr", type=float, default=5e-4)
    dc.add_argument("--weight-decay", type=float, default=0.01)
    dc.add_argument("--lr-drops", type=fractions, default=(0.6, 0.85),
                    help="fractions of the epochs where lr is cut x0.1")
    dc.add_argument("--warmup-epochs", type=float, default=1.0,
                    help="epochs over which the learning rate rises linearly from 0, step by step")
    dc.add_argument("--max-grad-norm", type=float, default=1.0,
                    help="cut the gradient's global norm to this before each step (0: no cut)")
    dc.add_argument("--soft-weight", type=float, default=0.5,
                    help="share of the teacher's D vector in the target (the rest is the hard label)")
    dc.add_argument("--teacher-views", type=int, default=0, metavar="K",
                    help="make K augmented views of every training image and the teacher's D on each once, "
                         "then train the student on them (turned and flipped) instead of running the teacher "
                         "every batch: about twice as fast an epoch on a CPU (default 0: online)")
    dc.add_argument("--target-accuracy", type=float, default=0.99, help="accepted accuracy of the reject thresholds")
    dc.add_argument("--workers", type=int, default=2, help="DataLoader processes")
    dc.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: their choice)")
    dc.add_argument("--seed", type=int, default=0)
    dc.add_argument("--max-images-per-class", type=int, help="use at most about this many per class (quick runs)")
    add_cache_option(dc)
    add_framing_option(dc)
    add_run_options(dc)
    dc.set_defaults(handler=_distil_classifier)

    from export.distill_detector import DetectorDistilConfig
    from export.models.detector import list_detectors
    dd = sub.add_parser("distil-detector",
                        help="distil a train-detector run into a smaller detector (bundle it with detector-bundle)")
    dd.add_argument("--teacher", type=Path, required=True, help="the teacher's train-detector run folder")
    dd.add_argument("--out", type=Path, required=True, help="run folder: run.json, last.pt, log.jsonl")
    dd.add_argument("--arch", choices=list_detectors(), default=DetectorDistilConfig.arch)
    for name in ("epochs", "steps_per_epoch", "batch_size", "lr", "soft_weight", "seed"):
        default = getattr(DetectorDistilConfig, name)
        dd.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    dd.add_argument("--workers", type=int, default=0, help="DataLoader processes")
    dd.add_argument("--threads", type=int, help="torch threads")
    add_run_options(dd)
    dd.set_defaults(handler=_distil_detector)


def _distil_detector(args) -> int:
    import logging

    import torch

    from export.distill_detector import DetectorDistilConfig, distil_detector_run
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = DetectorDistilConfig(arch=args.arch, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                                  batch_size=args.batch_size, lr=args.lr, soft_weight=args.soft_weight,
                                  seed=args.seed)
    summary = distil_detector_run(args.teacher, args.out, config, resume=args.resume, workers=args.workers,
                                  progress=args.progress, log=logging.getLogger("export.distil").info)
    print(json.dumps(summary, indent=2))
    return 0


def _distil_classifier(args) -> int:
    import tempfile

    import torch

    from edge.runtime.preprocess import Normalisation
    from export.classifier_training import load_weights
    from export.datasets import Split
    from export.distill_classifier import DistilConfig, best_checkpoint, distil_on_folder, load_run_classifier
    from export.onnx_export import export_onnx
    from export.report import SplitCells, compare_classifiers, write_report

    if not 0.0 <= args.soft_weight <= 1.0:
        raise SystemExit(f"edge export: error: --soft-weight must be in [0, 1], got {args.soft_weight}")
    if args.teacher_views < 0:
        raise SystemExit(f"edge export: error: --teacher-views must be 0 or more, got {args.teacher_views}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = DistilConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          weight_decay=args.weight_decay, lr_drops=args.lr_drops, seed=args.seed,
                          target_accuracy=args.target_accuracy, soft_weight=args.soft_weight,
                          teacher_views=args.teacher_views, warmup_epochs=args.warmup_epochs,
                          max_grad_norm=args.max_grad_norm or None)
    student, history = distil_on_folder(
        args.teacher, args.data, args.split_file, args.out, config, arch=args.arch, img_size=args.img_size,
        teacher_checkpoint=args.teacher_checkpoint, workers=args.workers,
        max_per_class=args.max_images_per_class, resume=args.resume, progress=args.progress,
        cache_side=args.cache_side, framing=args.framing_bundle)
    chosen = best_checkpoint(args.out)
    state = load_weights(student.cpu(), chosen)
    student_onnx = export_onnx(student.eval(), args.img_size, args.out / "classifier.onnx", output_name="scores")
    teacher, teacher_meta = load_run_classifier(args.teacher, args.teacher_checkpoint)
    split = Split.from_json(json.loads(args.split_file.read_text()))
    if args.max_images_per_class is not None:
        split = split.limited(args.max_images_per_class)
    with tempfile.TemporaryDirectory() as tmp:
        teacher_onnx = export_onnx(teacher, teacher_meta["img_size"], Path(tmp) / "teacher.onnx")
        report = compare_classifiers(
            {"teacher FP32": teacher_onnx, "student FP32": student_onnx}, SplitCells(args.data, split, args.framing_bundle),
            Normalisation.from_dict(teacher_meta["normalisation"]), target_accuracy=args.target_accuracy,
            threads=args.threads)
    report["models"]["teacher FP32"]["file"] = f"{args.teacher}/{args.teacher_checkpoint}"
    report["notes"] = {"teacher": f"{args.teacher}/{args.teacher_checkpoint} ({teacher_meta['arch']}, "
                                  f"{teacher_meta['img_size']} px)",
                       "student": f"{chosen} ({args.arch}, {args.img_size} px), epoch {state['epoch']} "
                                  f"of {len(history)}, soft weight {args.soft_weight}, teacher targets "
                                  f"{f'{args.teacher_views} cached augmented views per image' if args.teacher_views else 'online'}"}
    json_path, md_path = write_report(report, args.out / "report", "Distillation: teacher vs student")
    print(json.dumps({"report": str(json_path), "markdown": str(md_path)} | report["models"], indent=2))
    return 0
