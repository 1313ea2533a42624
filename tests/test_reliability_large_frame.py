"""Reliability: a 20000 x 20000 frame is counted with memory bounded by the frame itself.

Its overlapping tiles would take 1.5 times the frame's 1.2 GB if they were cut at once (2.5
times with the default bundle's 256-pixel tiles), and four times that as float32; the engine
cuts and normalises them a detector batch at a time, and normalises cell crops a classifier
batch at a time. The tiny real ONNX models of test_reliability_inputs.py, on 512-pixel tiles,
keep the run to seconds: normalising 400 megapixels for a detector is itself most of the time. Peak memory is measured with tracemalloc,
which sees NumPy's allocations (ONNX Runtime's own arena is not counted, and is bounded by
the batch).
"""
import tracemalloc

import numpy as np

from edge.runtime.bundle import load_bundle
from edge.runtime.engine import CellCounter
from edge.runtime.tiling import make_grid
from tests.helpers import tiny_bundle

SIDE = 20_000


def test_a_20000_pixel_frame_is_counted_in_batches_with_bounded_memory(tmp_path):
    bundle = load_bundle(tiny_bundle(tmp_path / "b", tile=512))
    frame = np.full((SIDE, SIDE, 3), 200, np.uint8)
    tiles = len(make_grid(SIDE, SIDE, bundle.tiling.tile_size, bundle.tiling.overlap))
    with CellCounter(bundle, threads=1) as counter:
        tracemalloc.start()
        try:
            result = counter.count_field(frame)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(result) == tiles == 48 * 48  # the tiny detector puts one cell in every tile
    # Left: the crops of 2304 cells (12 KB each) and small per-batch arrays; all the tiles at
    # once would be 1.8 GB.
    crops = tiles * 64 * 64 * 3
    assert peak < crops + (64 << 20), f"peak {peak / 2**20:.0f} MiB for a {frame.nbytes / 2**20:.0f} MiB frame"
