"""The PBC validation split under lab-like shifts, written as folders per class for `edge eval classify`.

The shifts were fixed before any result was seen (issue 20), one per kind a lab's microscope differs in:

- stain: hue turned by 10 degrees (OpenCV hue +5 of 180), as another stain batch or recipe;
- cast: a warm colour cast, BGR gains 0.85 / 1.0 / 1.1, as another lamp or white balance;
- blur: Gaussian blur of sigma 1.5 px, as a slightly defocused objective;
- scale: resized by 0.6, as a lower magnification (a 60x field seen by a 100x-trained model).

    python benchmarks/lab_shifts.py --data ../shared/data/pbc --split-file runs/default-build/pbc_split.json \\
        --out runs/lab-shifts/images
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np


def stain(image: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + 5) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def cast(image: np.ndarray) -> np.ndarray:
    return np.clip(image * np.array([0.85, 1.0, 1.1]), 0, 255).astype(np.uint8)


def blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 1.5)


def scale(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)


SHIFTS = {"none": lambda im: im, "stain": stain, "cast": cast, "blur": blur, "scale": scale}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split-file", type=Path, required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    names = json.loads(args.split_file.read_text())["splits"][args.split]
    for shift, fn in SHIFTS.items():
        for name in names:
            target = args.out / shift / name
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), fn(cv2.imread(str(args.data / name))), [cv2.IMWRITE_JPEG_QUALITY, 95])
        print(f"{shift}: {len(names)} images")


if __name__ == "__main__":
    main()
