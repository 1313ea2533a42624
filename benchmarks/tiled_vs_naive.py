"""The engine's tiled detection against the naive way, with the same weights, on one big field.

    python benchmarks/tiled_vs_naive.py --checkpoint runs/synthetic-bundle/detector/last.pt

Naive: what a researcher would write first: the torch model in eager FP32,
one tile at a time over the same overlapping grid, every tile's decoded boxes
moved to frame coordinates and merged by NMS over the whole frame. Engine:
`CellCounter.detect` on a bundle holding the same weights exported to ONNX
(all tiles in one ONNX Runtime batch, stitched by centre ownership). Both are
timed in the same process, alternating, so the ratio is fair on a noisy machine.
"""
from __future__ import annotations

import sys
import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import nms

from edge.runtime.bundle import load_bundle, write_bundle
from edge.runtime.engine import CellCounter
from edge.synthetic.smear import SmearConfig, render_field
from edge.runtime.tiling import cut_tiles, make_grid
from export.models.detector import DecodedDetector, build_detector
from export.onnx_export import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the tests package
from tests.helpers import SYNTHETIC_BUNDLE  # noqa: E402


def load_detector(checkpoint: Path) -> torch.nn.Module:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = build_detector(state["config_name"], max_detections=state["config"]["max_detections"])
    model.load_state_dict(state["model"])
    return DecodedDetector(model.eval()).eval()


def bundle_with(detector: torch.nn.Module, folder: Path) -> Path:
    """A copy of the synthetic bundle whose detector is `detector`."""
    source = load_bundle(SYNTHETIC_BUNDLE)
    shutil.copytree(source.root, folder, dirs_exist_ok=True)
    export_onnx(detector, source.tiling.tile_size, folder / source.detector.file, output_names=("boxes", "scores"))
    write_bundle(folder, class_names=list(source.class_names), classifier_head=source.classifier_head,
                 ccl_sigma=source.ccl_sigma, detector=source.detector, classifier=source.classifier,
                 thresholds=source.thresholds, tiling=replace(source.tiling, scale=1.0),
                 provenance=source.provenance)
    return folder


def naive_preprocess(tile_bgr: np.ndarray, norm, dtype=np.float64) -> torch.Tensor:
    """The preprocessing as a researcher writes it first: NumPy arithmetic on one tile (in float64,
    NumPy's default, unless `dtype` says otherwise)."""
    x = (tile_bgr[..., ::-1].astype(dtype) / dtype(255) - np.array(norm.mean, dtype)) / np.array(norm.std, dtype)
    # contiguous NCHW: a channels-last-strided tensor would make torch's convolutions ~10x
    # slower here, an accident of layout that would flatter the engine
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32))


@torch.no_grad()
def naive_detect(detector: torch.nn.Module, image: np.ndarray, tile: int, overlap: int,
                 score_threshold: float, norm, dtype=np.float64) -> np.ndarray:
    grid = make_grid(image.shape[1], image.shape[0], tile, overlap)
    boxes, scores = [], []
    for (x, y), t in zip(grid.origins, cut_tiles(image, grid)):
        b, s = detector(naive_preprocess(t, norm, dtype))
        keep = s[0] >= score_threshold
        boxes.append(b[0][keep] + torch.tensor([x, y, x, y], dtype=torch.float32))
        scores.append(s[0][keep])
    boxes, scores = torch.cat(boxes), torch.cat(scores)
    return boxes[nms(boxes, scores, 0.5)].numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("runs/synthetic-bundle/detector/last.pt"))
    p.add_argument("--size", default="4096x3000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both torch and ONNX Runtime (default: torch's and ORT's own)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    detector = load_detector(args.checkpoint)
    field = render_field(SmearConfig(width=width, height=height), seed=1)
    with tempfile.TemporaryDirectory() as tmp, CellCounter(load_bundle(bundle_with(detector, Path(tmp))), threads=args.threads) as counter:
        t = counter.bundle.tiling
        norm = counter.bundle.detector.normalisation
        counter.detect(field.image)  # warm-up, both ways
        naive_detect(detector, field.image[:t.tile_size * 2, :t.tile_size * 2], t.tile_size, t.overlap,
                     t.score_threshold, norm)
        engine_s, naive_s = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            engine_boxes, _ = counter.detect(field.image)
            engine_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            naive_boxes = naive_detect(detector, field.image, t.tile_size, t.overlap, t.score_threshold, norm)
            naive_s.append(time.perf_counter() - start)
    tiles = len(make_grid(width, height, t.tile_size, t.overlap))
    e, n = float(np.median(engine_s)), float(np.median(naive_s))
    print(f"{width}x{height} field, {tiles} tiles of {t.tile_size} (overlap {t.overlap}), "
          f"{len(field.boxes)} true cells, threads {args.threads or 'default'} (torch {torch.get_num_threads()})")
    print(f"engine (ONNX Runtime, batched, ownership stitching): {e:7.2f} s  {len(engine_boxes)} cells")
    print(f"naive  (torch eager, tile by tile, whole-frame NMS):   {n:7.2f} s  {len(naive_boxes)} cells")
    print(f"speed-up {n / e:.1f}x (median of {args.repeats})")


if __name__ == "__main__":
    main()
