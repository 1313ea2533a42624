"""Centroid adaptation from expert labels on another lab's cells: coverage and silent errors against labelled cells.

    .venv/bin/edge export expose-embeddings --out runs/centroid-adaptation/bundle
    .venv/bin/python benchmarks/centroid_adaptation.py --bundle runs/centroid-adaptation/bundle \
        --data ../shared/data/bccd --labels ../shared/data/bccd/wbc_subtypes.csv \
        --out runs/centroid-adaptation --threads 2

Every labelled white cell of BCCD (another lab than the PBC lab the classifier
learned) goes once through the device path of `edge eval fields` (detect,
view, classify); for each cell the detector finds, the classifier's per-class
embeddings are kept (OUT/embeddings.npz). Then, for n labelled cells drawn at
random (each n, --seeds draws), the rest of the found cells are the test cells,
judged three ways:

- shipped: the bundle's centroids and thresholds as they are;
- refit: thresholds refitted on the n cells, centroids unchanged
  (`edge calibrate --from-review`);
- adapted: `edge calibrate --from-review --adapt-centroids`: half of each
  class's n cells move the centroids (shrinkage k), the other half fit the
  thresholds under the moved centroids.

Thresholds are fitted as `edge calibrate` fits them (the CCL rule, Clopper-
Pearson, confidence 0.95) for each --target. A target no threshold reaches on
the fitting cells gives no bundle: counted here as every test cell sent to
review, and the share of draws that reached is reported. Coverage is the share
of test cells accepted, silent errors the share of test cells accepted with the
wrong class, accuracy the share whose top class is right (before rejection).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from calibration.rules import fit_rule
from edge.evaluation.centroid_adaptation import ADAPT_SHARE, SHRINKAGE, adapt_on_cells
from edge.evaluation.evaluate_fields import found_cells, read_field_labels
from edge.runtime.bundle import load_bundle
from edge.runtime.centroids import ccl_kernel, read_centroids
from edge.runtime.decision import RejectRule
from edge.runtime.engine import CellCounter
from edge.runtime.frame_scale import FrameScale

SIZES = (25, 50, 100, 200)


def extract(bundle_path: Path, data: Path, labels: Path, threads: int | None) -> dict:
    """Embeddings (N, C, M), labels and device scores of the labelled cells the detector finds."""
    scale = FrameScale(load_bundle(bundle_path))
    bundle = scale.bundle
    cells = read_field_labels(labels, bundle.class_names)
    embeddings, truth, scores, missed = [], [], [], {}
    with CellCounter(bundle, threads=threads) as counter:
        for cell in found_cells(counter, scale, data, cells, missed):
            view = counter.crop(cell.image, cell.result.boxes[cell.index][None])
            embeddings.append(counter.embed_crops(view)[0])
            truth.append(cell.label)
            scores.append(cell.result.class_scores[cell.index])
    return {"embeddings": np.stack(embeddings), "labels": np.array(truth), "scores": np.stack(scores),
            "labelled": len(cells), "missed": missed}


def judge(accepted: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> dict:
    return {"coverage": float(accepted.mean()), "silent_errors": float((accepted & (predicted != labels)).mean()),
            "accuracy": float((predicted == labels).mean())}


def fitted_decisions(fit_scores, fit_labels, test_scores, target: float, classes: int):
    fit = fit_rule(fit_scores, fit_labels, "ccl", "ccl", target_accuracy=target, search="clopper-pearson",
                   delta=0.05, num_classes=classes)
    _, predicted, accepted = fit.decide(test_scores)
    return accepted, predicted, fit.reached


def experiment(cells: dict, bundle_path: Path, targets: tuple[float, ...], seeds: int, shrinkage: float) -> list[dict]:
    bundle = load_bundle(bundle_path)
    classes, sigma = len(bundle.class_names), bundle.ccl_sigma
    centroids = read_centroids(bundle.root / bundle.ccl_centroids.file, classes)
    emb, labels = cells["embeddings"], cells["labels"]
    shipped_scores = ccl_kernel(emb, centroids, sigma)
    rule = RejectRule(bundle)
    rows = []
    for n in SIZES:
        runs = {}
        for seed in range(seeds):
            rng = np.random.default_rng(1000 + seed)
            order = rng.permutation(len(labels))
            train, test = order[:n], order[n:]
            d = rule.decide(shipped_scores[test])
            runs.setdefault(("shipped", None), []).append(judge(d.accepted, d.predicted, labels[test]) | {"reached": 1})
            adaptation = adapt_on_cells(centroids, sigma, emb[train], labels[train], bundle.class_names,
                                        shrinkage, ADAPT_SHARE, seed)
            adapted_scores = ccl_kernel(emb[test], adaptation.centroids, sigma)
            for target in targets:
                accepted, predicted, reached = fitted_decisions(shipped_scores[train], labels[train],
                                                                shipped_scores[test], target, classes)
                runs.setdefault(("refit", target), []).append(
                    judge(accepted, predicted, labels[test]) | {"reached": int(reached)})
                accepted, predicted, reached = fitted_decisions(adaptation.scores, adaptation.labels,
                                                                adapted_scores, target, classes)
                runs.setdefault(("adapted", target), []).append(
                    judge(accepted, predicted, labels[test]) | {"reached": int(reached)})
        for (method, target), results in runs.items():
            rows.append({"n": n, "method": method, "target": target, "test_cells": len(labels) - n,
                         **{k: float(np.mean([r[k] for r in results])) for k in results[0]},
                         "silent_errors_max": float(np.max([r["silent_errors"] for r in results]))})
    return rows


def markdown(rows: list[dict], seeds: int) -> str:
    lines = ["| n labelled | test cells | method | target | fits reached | coverage | silent errors "
             "(mean / worst draw) | accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target']:.2f}"
        lines.append(f"| {r['n']} | {r['test_cells']} | {r['method']} | {target} | "
                     f"{round(r['reached'] * seeds)}/{seeds} | {100 * r['coverage']:.1f} % | "
                     f"{100 * r['silent_errors']:.2f} % / {100 * r['silent_errors_max']:.2f} % | "
                     f"{100 * r['accuracy']:.1f} % |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="a bundle with ccl_centroids")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--shrinkage", type=float, default=SHRINKAGE)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "embeddings.npz"
    if not cache.exists():
        cells = extract(args.bundle, args.data, args.labels, args.threads)
        np.savez(cache, embeddings=cells["embeddings"], labels=cells["labels"], scores=cells["scores"])
        (args.out / "cells.json").write_text(json.dumps({k: cells[k] for k in ("labelled", "missed")}, indent=2))
    cells = dict(np.load(cache))
    bundle = load_bundle(args.bundle)
    device = ccl_kernel(cells["embeddings"], read_centroids(bundle.root / bundle.ccl_centroids.file,
                                                            len(bundle.class_names)), bundle.ccl_sigma)
    assert np.allclose(device, cells["scores"], atol=1e-5), "the kept embeddings do not give the device's scores"
    rows = experiment(cells, args.bundle, tuple(args.targets), args.seeds, args.shrinkage)
    table = markdown(rows, args.seeds)
    counts = np.bincount(cells["labels"], minlength=len(bundle.class_names))
    header = (f"{len(cells['labels'])} labelled cells found by the detector "
              f"({', '.join(f'{n} {c}' for n, c in zip(bundle.class_names, counts) if c)}); "
              f"shrinkage k {args.shrinkage}, {args.seeds} draws per n\n\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(header + table)
    print(header + table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
