"""ONNX Runtime runner (CPU by default)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.runtime.backends.base import BackendError, Runner, TensorSpec

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8"}


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int | None = None,
                 providers: list[str] | None = None):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Idle workers sleep instead of spinning: the detector's and the classifier's pools, the record
        # writer and the loop share the cores, and spinning workers starve them (2 cores, demo fields:
        # 28.9 fields/s spinning, 61.1 not; docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options,
                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BackendError(f"ONNX Runtime cannot load {model_path}: {exc}") from None
        self._output_names = [o.name for o in self._session.get_outputs()]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [_spec(t) for t in self._session.get_inputs()]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [_spec(t) for t in self._session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, values))


def _spec(t) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in t.shape)
    return TensorSpec(t.name, shape, _ORT_TYPES.get(t.type, t.type))
