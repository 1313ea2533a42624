"""Stitching time per 1000 cells on a 4096 x 3000 frame with the synthetic bundle's tiling.

    python benchmarks/stitching.py [--repeats 30] [--threshold-ms 2]

Cells are disjoint boxes of 10 to 40 pixels, and twenty of 100 to 200 (larger
than the overlap, so the corner-distance merge works too). The detector
is the oracle that reports the visible part of each cell in each tile, in the K
slots per tile of a static-shape detector (K = 100, the synthetic bundle's, or the
most cells one tile sees if more). Each row checks that every cell is found once.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edge.runtime.bundle import load_bundle
from edge.runtime.tiling import TileGrid, make_grid, stitch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the tests package
from tests.helpers import SYNTHETIC_BUNDLE  # noqa: E402

WIDTH, HEIGHT = 4096, 3000
SLOTS = 100


def cell_layout(count: int, rng: np.random.Generator) -> np.ndarray:
    """About `count` disjoint cells: one per site of a jittered lattice, twenty large ones among them."""
    large = _lattice_cells(20, rng, (100, 200))
    small = _lattice_cells(count, rng, (10, 40))
    clear = ((small[:, None, 2] <= large[None, :, 0]) | (small[:, None, 0] >= large[None, :, 2])
             | (small[:, None, 3] <= large[None, :, 1]) | (small[:, None, 1] >= large[None, :, 3])).all(axis=1)
    return np.concatenate([large, small[clear]])


def _lattice_cells(count: int, rng: np.random.Generator, sides: tuple[int, int]) -> np.ndarray:
    """Cells inside the sites of a lattice of about `count` sites; sides shrink to fit a site."""
    pitch = np.sqrt(WIDTH * HEIGHT / count)
    xs, ys = np.meshgrid(np.arange(0, WIDTH - pitch + 1, pitch), np.arange(0, HEIGHT - pitch + 1, pitch))
    sites = np.stack([xs.ravel(), ys.ravel()], axis=1)
    side = rng.uniform(*sides, size=(len(sites), 2)).clip(max=pitch - 1)
    corner = sites + rng.uniform(0, 1, size=side.shape) * (pitch - side)
    return np.round(np.concatenate([corner, corner + side], axis=1) * 2) / 2


def oracle_detections(cells: np.ndarray, grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    """(T, K, 4), (T, K): the visible part of every cell in every tile, in tile pixels."""
    t = grid.tile_size
    parts = []
    for x, y in grid.origins:
        local = (cells - [x, y, x, y]).clip(0, t)
        parts.append(local[(local[:, 2] - local[:, 0] > 1) & (local[:, 3] - local[:, 1] > 1)])
    k = max(SLOTS, max(len(p) for p in parts))
    boxes = np.zeros((len(grid), k, 4), np.float32)
    scores = np.zeros((len(grid), k), np.float32)
    for i, p in enumerate(parts):
        boxes[i, :len(p)], scores[i, :len(p)] = p, 0.9
    return boxes, scores


def time_stitch(boxes: np.ndarray, scores: np.ndarray, grid: TileGrid, threshold: float,
                repeats: int) -> tuple[float, int]:
    """Median seconds of one stitch, and the number of cells it found."""
    found, _ = stitch(boxes, scores, grid, threshold)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        stitch(boxes, scores, grid, threshold)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), len(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threshold-ms", type=float, default=2.0, help="target per 1000 cells")
    args = parser.parse_args()
    tiling = load_bundle(SYNTHETIC_BUNDLE).tiling
    grid = make_grid(WIDTH, HEIGHT, tiling.tile_size, tiling.overlap)
    rng = np.random.default_rng(0)
    print(f"frame {WIDTH}x{HEIGHT}, tile {tiling.tile_size}, overlap {tiling.overlap}, {len(grid)} tiles")
    print(f"{'cells':>7} {'K':>5} {'found':>7} {'stitch ms':>10} {'ms/1000 cells':>14}")
    worst = 0.0
    for count in (1000, 2000, 5000, 10000, 20000):
        cells = cell_layout(count, rng)
        boxes, scores = oracle_detections(cells, grid)
        seconds, found = time_stitch(boxes, scores, grid, tiling.score_threshold, args.repeats)
        per_1000 = seconds * 1e3 / len(cells) * 1000
        worst = max(worst, per_1000)
        print(f"{len(cells):>7} {boxes.shape[1]:>5} {found:>7} {seconds * 1e3:>10.2f} {per_1000:>14.3f}")
        if found != len(cells):
            print(f"wrong: {found} found for {len(cells)} cells", file=sys.stderr)
            return 1
    print(f"worst {worst:.3f} ms per 1000 cells (target {args.threshold_ms} ms)")
    return 0 if worst <= args.threshold_ms else 1


if __name__ == "__main__":
    sys.exit(main())
