"""Inference backends, chosen by name. Each is a `Runner` (see base.py)."""
from __future__ import annotations

from pathlib import Path

from edge.runtime.backends.base import BackendError, Runner, TensorSpec

BACKENDS = ("onnxruntime", "tensorrt")


def open_runner(backend: str, model_path: str | Path, threads: int | None = None) -> Runner:
    """Open `model_path` on the named backend."""
    if backend == "onnxruntime":
        from edge.runtime.backends.onnxruntime import OrtRunner
        return OrtRunner(model_path, threads=threads)
    if backend == "tensorrt":  # needs tensorrt and pycuda, imported only now
        from edge.runtime.backends.tensorrt import TrtRunner
        return TrtRunner(model_path)
    raise BackendError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "BackendError", "Runner", "TensorSpec", "open_runner"]
