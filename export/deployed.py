"""Helpers for measuring and sealing exported models: run them as the device does, record provenance."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge.runtime.backends import open_runner
from edge.runtime.bundle import ModelSpec, load_bundle
from edge.runtime.engine import run_batched
from edge.runtime.preprocess import Normalisation, to_model_input


def onnx_scores(path: Path, crops: np.ndarray, norm: Normalisation) -> np.ndarray:
    """Classifier outputs of the ONNX file at `path` for uint8 BGR crops, through ONNX Runtime."""
    with open_runner("onnxruntime", path) as runner:
        spec = ModelSpec(path.name, "0" * 64, "image", (-1, 3) + crops.shape[1:3], ("scores",))
        return run_batched(runner, spec, to_model_input(crops, None, norm), 256)["scores"]


def git_commit() -> str:
    """The code commit that made a model, for its bundle's provenance."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def staged_bundle(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out` to build a bundle in; on success it must verify, then replaces `out`.

    A failure anywhere leaves `out` as it was: a good bundle is never replaced
    by a half-written or unverifiable one.
    """
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    yield staging
    load_bundle(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
