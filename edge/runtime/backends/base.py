"""The runner interface every inference backend implements (Polygraphy style).

A runner is opened on one model file, describes its named inputs and outputs,
and runs `infer(feed) -> outputs` on dicts of named numpy arrays. Comparing two
backends is running two runners on the same feed.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


# The largest batch of cells the engine hands the classifier in one call: a TensorRT plan's
# classifier profile is built for it (tensorrt_plan), so it lives here, below both.
CLASSIFIER_BATCH = 64


class BackendError(RuntimeError):
    """A backend that cannot open or run a model; the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]  # None for a dynamic axis
    dtype: str


class Runner(ABC):
    name: str = "abstract"

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:
        """Release the model; the default has nothing to release."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
