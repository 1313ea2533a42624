"""On-device cell counting engine: numpy, OpenCV, ONNX Runtime and pyserial only (never torch).

    import edge
    counter = edge.CellCounter(edge.load_bundle(edge.DEFAULT_BUNDLE))
    for frame in edge.open_source("demo"):
        result = counter.count_field(frame.image)
"""
from pathlib import Path

from edge.runtime.bundle import Bundle, BundleError, load_bundle
from edge.runtime.engine import CellCounter, FieldResult
from edge.counting.sources import open_source

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default_bundle"

__all__ = ["DEFAULT_BUNDLE", "Bundle", "BundleError", "CellCounter", "FieldResult",
           "load_bundle", "open_source"]
