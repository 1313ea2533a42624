"""`edge site stain`: state the stain reference a bundle's classifier views are normalised toward.

The reference is the average CIELAB mean and standard deviation of the classifier's own training
images (edge.runtime.stain_normaliser). `--off` writes the bundle without normalisation.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from edge.runtime.bundle import derive_bundle, load_bundle
from edge.runtime.frames import IMAGE_SUFFIXES
from edge.runtime.stain_normaliser import reference_from_images


class StainReferenceError(ValueError):
    """The reference images cannot be used; the message says why."""


def state_stain_reference(bundle_path: Path, reference: Path | None, out: Path, samples: int = 300,
                          seed: int = 0) -> dict:
    """Write `out`: the bundle with views normalised toward `reference`'s images (None: not normalised)."""
    bundle = load_bundle(bundle_path)
    if reference is None:
        note = {"script": "edge site stain --off", "date": time.strftime("%Y-%m-%d")}
        written = derive_bundle(bundle, out, "stain_normalisation", note, stain_reference=None)
        return {"bundle": str(written.root), **note}
    paths = sorted(p for p in Path(reference).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise StainReferenceError(f"no images under {reference}")
    chosen = np.random.default_rng(seed).choice(len(paths), min(samples, len(paths)), replace=False)
    images = [cv2.imread(str(paths[i])) for i in sorted(chosen)]
    unreadable = sum(im is None for im in images)
    ref = reference_from_images([im for im in images if im is not None],
                                f"{reference} ({len(images) - unreadable} images, seed {seed})")
    note = {"script": "edge site stain", "date": time.strftime("%Y-%m-%d"), "reference": str(reference),
            "images": len(images) - unreadable, "unreadable": unreadable}
    written = derive_bundle(bundle, out, "stain_normalisation", note, stain_reference=ref)
    return {"bundle": str(written.root), **note, **ref.to_dict()}
