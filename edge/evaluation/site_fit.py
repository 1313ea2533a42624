"""`edge site fit`: fit a bundle to a lab's microscope and stain from its own first fields, without labels.

From a lab's good fields (a folder or a live source) it fits what depends on the site and not on the
cells' classes:

- the field quality limits: the stain reference (the fields' mean nucleus colour), the largest stain
  angle a good field of this lab shows, and the focus floor (edge.runtime.quality.fit_quality_limits);
  the light and density limits stay the bundle's;
- the pixel size, when given (`--pixel-size`): the frames are then resampled to the detector's scale;
- the drift bands: the rejection rate and confidence the bundle shows on this lab's cells
  (edge.runtime.drift.fit_drift_bands), so that later sessions are compared with the site itself.

It writes a new bundle (models unchanged, verified on load) whose provenance records the site fit,
and reports what the gate made of the fields before and after. The reject thresholds are not
refitted: without labels nothing says which cells are right; `edge calibrate --from-review` does that
once an expert has labelled the site's rejected cells.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edge.counting.sources import open_source
from edge.runtime.bundle import derive_bundle, load_bundle
from edge.runtime.drift import fit_drift_bands
from edge.runtime.engine import CellCounter
from edge.runtime.frames import FrameError
from edge.runtime.quality import QualityGate, QualityLimits, fit_quality_limits

log = logging.getLogger("edge.site")

MIN_FIELDS = 5       # fewer fields give no stable stain reference or focus floor
MIN_CELLS = 20       # fewer cells give drift bands no better than the bundle's own


class SiteFitError(ValueError):
    """The site's fields cannot be fitted on; the message says why and what to do."""


def read_fields(source_spec: str, limit: int) -> tuple[list[np.ndarray], int]:
    """Up to `limit` frames of the source, and how many could not be read (each logged)."""
    source = open_source(source_spec)
    images, unreadable = [], 0
    try:
        while len(images) < limit:
            try:
                frame = source.read(timeout=30.0)
            except FrameError as exc:
                unreadable += 1
                log.warning("skipped a frame: %s", exc)
                continue
            if frame is None:
                break
            images.append(frame.image)
    finally:
        source.close()
    return images, unreadable


def fit_site(bundle_path: Path, source_spec: str, out: Path, fields: int = 30,
             pixel_size_um: float | None = None, threads: int | None = None) -> dict:
    """Fit the site (see the module docstring), write the bundle to `out`, return the report."""
    bundle = load_bundle(bundle_path).at_pixel_size(pixel_size_um)
    images, unreadable = read_fields(source_spec, fields)
    if len(images) < MIN_FIELDS:
        raise SiteFitError(f"{source_spec} gave {len(images)} readable fields; a site fit needs at least "
                           f"{MIN_FIELDS} good fields of the lab's own slides")
    before = QualityLimits() if bundle.quality is None else bundle.quality
    try:
        limits = fit_quality_limits(images, before)
    except ValueError as exc:
        raise SiteFitError(f"cannot fit field quality limits on {source_spec}: {exc}") from None
    old_gate, new_gate = QualityGate(before), QualityGate(limits)
    old_passed = [old_gate.check(im).passed for im in images]
    new_reports = [new_gate.check(im) for im in images]
    counted = [im for im, r in zip(images, new_reports) if r.passed]
    confidence, accepted, cells = [], [], 0
    with CellCounter(bundle, threads=threads) as counter:
        for image in counted:
            decisions = counter.count_field(image).decisions
            confidence.append(decisions.confidence)
            accepted.append(decisions.accepted)
            cells += len(decisions.accepted)
    drift, drift_note = bundle.drift, f"kept the bundle's: only {cells} cells in the site's fields"
    if cells >= MIN_CELLS:
        drift = fit_drift_bands(np.concatenate(confidence), np.concatenate(accepted),
                                {"site": source_spec, "cells": cells}, bundle.drift)
        drift_note = f"fitted on {cells} cells of {len(counted)} fields"
    note = {"script": "edge site fit", "date": time.strftime("%Y-%m-%d"), "source": source_spec,
            "fields_read": len(images), "unreadable": unreadable, "fields_counted": len(counted),
            "cells": cells, "pixel_size_um": bundle.tiling.pixel_size_um,
            "pixel_size_source": "setting (--pixel-size)" if pixel_size_um is not None else "the bundle's",
            "quality": "stain reference, max stain angle and min focus fitted on the site's fields",
            "drift": drift_note, "thresholds": "not refitted (no labels); see edge calibrate --from-review"}
    written = derive_bundle(bundle, out, "site", note, tiling=bundle.tiling, quality=limits, drift=drift)
    refused = [r.reason for r in new_reports if not r.passed]
    return {"bundle": str(written.root), **note,
            "gate_before": {"passed": int(sum(old_passed)), "of": len(images)},
            "gate_after": {"passed": len(counted), "of": len(images), "refused": refused},
            "stain_reference": list(limits.stain_reference), "max_stain_angle": limits.max_stain_angle,
            "min_focus": limits.min_focus}
