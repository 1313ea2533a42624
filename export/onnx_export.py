"""Export an image model to ONNX: NCHW float32 input, dynamic batch axis.

Uses torch's torch.export-based exporter (dynamo=True), the default since
torch 2.9. It traces the CrossFormer's padding, grouping and masking (all
fixed once the image size is) into a plain graph that onnxscript's optimizer
constant-folds; its output matches the model to float32 rounding in
onnxruntime. The legacy TorchScript exporter (dynamo=False) also works but
leaves a graph five times larger, full of Shape/Gather/Concat arithmetic, and
is deprecated.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from export.models.crossformer import frozen_position_biases

# 20: GELU is one Gelu node (opset 20) instead of five elementwise ones, which
# ONNX Runtime runs faster on this CPU (about 16 % on the FP32 student, 34 % on
# its INT8 copy). The TensorRT twin of an INT8 model is written at opset 18
# with the Gelu expanded again (export.quantise.for_tensorrt).
OPSET = 20


def export_onnx(model: nn.Module, img_size: int, path: str | Path, input_name: str = "image",
                output_name: str = "scores", opset: int = OPSET,
                output_names: Sequence[str] | None = None) -> Path:
    """Write `model` (eval mode) for (batch, 3, img_size, img_size) inputs to `path`.

    `output_names` names the outputs of a model that returns a tuple, and then
    replaces `output_name`. The file is self-contained (no external data),
    passes onnx.checker and strict shape inference, and has a symbolic batch
    dimension named "batch".
    """
    if opset < 17:
        raise ValueError(f"opset {opset} < 17: LayerNormalization needs opset 17")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # Batch 2: torch.export specialises a dimension whose example size is 0 or 1.
    example = torch.zeros(2, 3, img_size, img_size, device=device)
    try:
        with frozen_position_biases(model, img_size), torch.no_grad():
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset,
                input_names=[input_name],
                output_names=list(output_names) if output_names is not None else [output_name],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                optimize=True, verbose=False,
            )
    finally:
        model.train(was_training)
    program.save(str(path), external_data=False)
    check_onnx(path)
    return path


def check_onnx(path: str | Path) -> onnx.ModelProto:
    """onnx.checker plus strict shape inference; returns the inferred model."""
    onnx.checker.check_model(str(path), full_check=True)
    return onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)
