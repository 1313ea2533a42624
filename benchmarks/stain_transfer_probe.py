"""Probe: does a plain colour transfer toward the training lab help on another lab's fields?

Writes every field of FIELDS (a VOC folder's JPEGImages/) with its LAB mean and
standard deviation matched to the average of REFERENCE's single-cell images
(Reinhard et al. 2001), into OUT/JPEGImages/, for `edge eval fields --data OUT`.
An experiment for run-time stain normalisation, not part of the device path.

    .venv/bin/python benchmarks/stain_transfer_probe.py --reference ../shared/data/pbc \\
        --fields ../shared/data/bccd --out /tmp/bccd-reinhard
    .venv/bin/edge eval fields --data /tmp/bccd-reinhard --labels ../shared/data/bccd/wbc_subtypes.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def lab_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float32)
    return lab.mean(0), lab.std(0)


def transfer(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32)
    m, s = lab_stats(image)
    lab = (lab - m) / np.maximum(s, 1e-3) * std + mean
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, required=True, help="single-cell images, a folder per class")
    p.add_argument("--fields", type=Path, required=True, help="a VOC folder (JPEGImages/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    paths = sorted(args.reference.glob("*/*.jpg"))
    chosen = np.random.default_rng(args.seed).choice(len(paths), min(args.samples, len(paths)), replace=False)
    stats = np.array([lab_stats(cv2.imread(str(paths[i]))) for i in chosen])
    mean, std = stats[:, 0].mean(0), stats[:, 1].mean(0)
    out = args.out / "JPEGImages"
    out.mkdir(parents=True, exist_ok=True)
    fields = sorted((args.fields / "JPEGImages").glob("*.jpg"))
    for path in fields:
        cv2.imwrite(str(out / path.name), transfer(cv2.imread(str(path)), mean, std))
    print(f"{len(fields)} fields written to {out}; reference LAB mean {mean.round(1)}, sd {std.round(1)}")


if __name__ == "__main__":
    main()
