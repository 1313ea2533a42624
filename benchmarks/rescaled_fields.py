"""Copies of the BCCD test fields at other magnifications: each field and its boxes rescaled by a factor,
written as a VOC folder per factor (OUT/x{factor}), for `edge eval detect` without --pixel-size.

    python benchmarks/rescaled_fields.py --data ../shared/data/bccd --out runs/pixel-size/fields --scales 0.5,2
"""
from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2


def rescale_split(data: Path, out: Path, factor: float, split: str = "test") -> int:
    names = (data / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    shrink = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    for name in names:
        image = cv2.imread(str(data / "JPEGImages" / f"{name}.jpg"))
        image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=shrink)
        cv2.imwrite(str(out / "JPEGImages" / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        tree = ET.parse(data / "Annotations" / f"{name}.xml")
        size = tree.find("size")
        size.find("width").text, size.find("height").text = str(image.shape[1]), str(image.shape[0])
        for box in tree.iter("bndbox"):
            for key in ("xmin", "ymin", "xmax", "ymax"):
                box.find(key).text = str(int(round(float(box.find(key).text) * factor)))
        tree.write(out / "Annotations" / f"{name}.xml")
    (out / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return len(names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the BCCD VOC folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scales", default="0.5,0.75,1.5,2,3")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    for factor in args.scales.split(","):
        target = args.out / f"x{factor}"
        if not (target / "ImageSets").exists():
            print(f"x{factor}: {rescale_split(args.data, target, float(factor), args.split)} fields")


if __name__ == "__main__":
    main()
