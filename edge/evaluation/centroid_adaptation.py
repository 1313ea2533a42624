"""Moving a bundle's CCL centroids toward a lab's expert-labelled cells (`edge calibrate --adapt-centroids`).

A centroid is a mean of embeddings, so adapting it needs no training stack:
each class's centroid moves toward the mean embedding of that class's labelled
cells with shrinkage, mu' = (k mu + n_c mean_c) / (k + n_c); the old centroid
counts as k cells. A class without labelled cells keeps its centroid.

The thresholds are then refitted on cells that did not move the centroids: the
labelled cells are split at random within each class, `share` of them to move
the centroids and the rest to fit the thresholds on the scores under the new
centroids. The fitting cells are then independent of the deployed centroids,
so the Clopper-Pearson guarantee of `edge calibrate` holds as stated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.runtime.centroids import ccl_kernel

SHRINKAGE = 10.0   # k: the old centroid weighs as much as this many labelled cells
ADAPT_SHARE = 0.5  # share of each class's labelled cells that moves the centroids


@dataclass(frozen=True)
class Adaptation:
    centroids: np.ndarray  # (C, M) the moved centroids
    scores: np.ndarray     # (n, C) the held-out cells' kernel values under them
    labels: np.ndarray     # (n,) their labels
    note: dict             # what was done, for the manifest


def adapt_centroids(centroids: np.ndarray, embeddings: np.ndarray, labels: np.ndarray,
                    shrinkage: float = SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """(new centroids (C, M), cells per class (C,)) from embeddings (N, C, M) of cells labelled `labels`.

    Class c's centroid is compared with the c-th embedding, so its mean is over
    embeddings[labels == c, c].
    """
    if shrinkage < 0:
        raise ValueError(f"the shrinkage k must be at least 0, got {shrinkage}")
    classes = len(centroids)
    counts = np.bincount(labels, minlength=classes)
    own = embeddings[np.arange(len(labels)), labels].astype(np.float64)  # (N, M)
    sums = np.zeros(centroids.shape, np.float64)
    np.add.at(sums, labels, own)
    weight = counts[:, None].astype(np.float64)
    moved = (shrinkage * centroids + sums) / np.maximum(shrinkage + weight, 1e-12)
    return np.where(weight > 0, moved, centroids).astype(np.float32), counts


def split_cells(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(adapt, fit) indices: within each class a random `share` of its cells (rounded at random) adapt."""
    if not 0 < share < 1:
        raise ValueError(f"the adaptation share must be in (0, 1), got {share}")
    rng = np.random.default_rng(seed)
    adapt, fit = [], []
    for c in np.unique(labels):
        cells = rng.permutation(np.flatnonzero(labels == c))
        k = int(np.floor(share * len(cells) + rng.random()))
        adapt.append(cells[:k])
        fit.append(cells[k:])
    return np.sort(np.concatenate(adapt)), np.sort(np.concatenate(fit))


def adapt_on_cells(centroids: np.ndarray, sigma: float, embeddings: np.ndarray, labels: np.ndarray,
                   class_names: tuple[str, ...], shrinkage: float = SHRINKAGE, share: float = ADAPT_SHARE,
                   seed: int = 0) -> Adaptation:
    """Split the labelled cells, move the centroids on one part, score the other under the new centroids."""
    adapt, fit = split_cells(labels, share, seed)
    moved, counts = adapt_centroids(centroids, embeddings[adapt], labels[adapt], shrinkage)
    distance = np.sqrt(np.square(moved - centroids).mean(axis=1))
    held = np.bincount(labels[fit], minlength=len(class_names))
    note = {"shrinkage_k": shrinkage, "adapt_share": share, "seed": seed,
            "adapting_cells": {n: int(k) for n, k in zip(class_names, counts) if k},
            "threshold_cells": {n: int(k) for n, k in zip(class_names, held) if k},
            "rms_move": {n: float(d) for n, d, k in zip(class_names, distance, counts) if k}}
    return Adaptation(moved, ccl_kernel(embeddings[fit], moved, sigma), labels[fit], note)
