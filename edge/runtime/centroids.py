"""CCL centroids held in a bundle file, so that a lab's expert labels can move them without retraining.

A bundle that states `ccl_centroids` has a classifier with a second output,
"embeddings" (B, C, M): the per-class embeddings W_c^T f that the CCL head
compares with its centroids. The device then computes the kernel values D
from them and the bundle's centroids (C, M) with the head's own formula,
instead of reading the scores the graph computes from the centroids baked
into it. `edge export expose-embeddings` converts a bundle; `edge calibrate
--adapt-centroids` moves the centroids.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBEDDINGS = "embeddings"
CENTROIDS_FILE = "centroids.npy"
KEYS = {"file", "sha256", "adapted"}


@dataclass(frozen=True)
class CentroidsSpec:
    """The manifest's `ccl_centroids` section: the centroids file, its SHA-256 and, when a site's
    expert labels moved them, how (`adapted`, free-form provenance)."""

    file: str
    sha256: str
    adapted: dict | None = None

    def to_dict(self) -> dict:
        d = {"file": self.file, "sha256": self.sha256}
        return d if self.adapted is None else d | {"adapted": self.adapted}

    @classmethod
    def from_dict(cls, d: dict) -> "CentroidsSpec":
        if not isinstance(d, dict):
            raise ValueError("it is not an object")
        extra = sorted(set(d) - KEYS)
        if extra:
            raise ValueError(f"unknown fields {', '.join(extra)}")
        if not (isinstance(d.get("file"), str) and d["file"]):
            raise ValueError("file must be a file name")
        sha = d.get("sha256")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdefABCDEF" for c in sha)):
            raise ValueError("sha256 must be a 64-character hex digest")
        adapted = d.get("adapted")
        if adapted is not None and not isinstance(adapted, dict):
            raise ValueError("adapted must be an object")
        return cls(d["file"], sha.lower(), adapted)


def centroids_bytes(centroids: np.ndarray) -> bytes:
    """The .npy bytes a centroids file holds: float32, C order."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(centroids, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def centroids_sha256(centroids: np.ndarray) -> str:
    """The SHA-256 of the file `save_centroids` writes for this array."""
    return hashlib.sha256(centroids_bytes(centroids)).hexdigest()


def save_centroids(path: Path, centroids: np.ndarray) -> None:
    check_centroids(np.asarray(centroids, dtype=np.float32), None)
    Path(path).write_bytes(centroids_bytes(centroids))


def read_centroids(path: Path, classes: int | None = None) -> np.ndarray:
    """The (C, M) float32 centroids of a file; ValueError if it is not one."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {Path(path).name} as a .npy array ({exc})") from None
    check_centroids(array, classes)
    return array


def check_centroids(array: np.ndarray, classes: int | None) -> None:
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"centroids must be a (classes, M) float32 array, got {array.dtype} {array.shape}")
    if classes is not None and array.shape[0] != classes:
        raise ValueError(f"there are {array.shape[0]} centroids for {classes} classes")
    if not np.isfinite(array).all():
        raise ValueError("the centroids hold NaN or Inf")


def ccl_kernel(embeddings: np.ndarray, centroids: np.ndarray, sigma: float) -> np.ndarray:
    """D (B, C) = exp(-mean_m (e_c - mu_c)^2 / (2 sigma^2)) for embeddings (B, C, M), as the CCL head does."""
    sq = np.square(embeddings - centroids[None]).mean(axis=-1)
    return np.exp(sq * np.float32(-0.5 / sigma ** 2)).astype(np.float32)
