"""`edge site fit`: fit a bundle to a lab's microscope and stain from its own first fields, without labels.

From a lab's good fields (a folder or a live source) it fits what depends on the site and not on the
cells' classes:

- the field quality limits: the stain reference (the fields' mean nucleus colour), the largest stain
  angle a good field of this lab shows, and the focus floor (edge.runtime.quality.fit_quality_limits);
  the light and density limits stay the bundle's;
- the pixel size: given (`--pixel-size`), or else estimated from the red cells in the site's fields
  (edge.runtime.red_cell_ruler); the frames are then resampled to the detector's scale. With a given
  pixel size the ruler itself is re-read on the site's fields, so later sessions estimate right there;
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
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.counting.sources import open_source
from edge.runtime.bundle import Bundle, derive_bundle, load_bundle
from edge.runtime.drift import fit_drift_bands
from edge.runtime.engine import CellCounter
from edge.runtime.frames import FrameError
from edge.runtime.quality import QualityGate, QualityLimits, fit_quality_limits
from edge.runtime.red_cell_ruler import median_interval, read_red_cells

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


def _site_scale(bundle: Bundle, images: list[np.ndarray], pixel_size_um: float | None
                ) -> tuple[Bundle, dict]:
    """The bundle at the site's pixel size, and what the site record says about it."""
    chords = [r.chord_px for r in map(read_red_cells, images) if r.chord_px is not None]
    tiling = bundle.tiling
    if pixel_size_um is not None:
        bundle = bundle.at_pixel_size(pixel_size_um)
        if chords:  # the site's own ruler: its modal chord at the pixel size it states
            chord_um = float(np.median(chords)) * pixel_size_um
            bundle = replace(bundle, tiling=replace(bundle.tiling, red_cell_chord_um=chord_um))
        return bundle, {"um_per_pixel": pixel_size_um, "source": "setting (--pixel-size)",
                        "red_cell_chord_um": bundle.tiling.red_cell_chord_um,
                        "fields_with_red_cells": len(chords)}
    if tiling.red_cell_chord_um is None or not chords:
        why = ("the bundle states no red-cell ruler" if tiling.red_cell_chord_um is None
               else "too few red cells in the site's fields")
        return bundle, {"um_per_pixel": tiling.pixel_size_um, "source": f"the bundle's ({why})"}
    estimates = [tiling.red_cell_chord_um / c for c in chords]
    estimate = float(np.median(estimates))
    low, high = median_interval(estimates)
    return bundle.at_pixel_size(estimate), {
        "um_per_pixel": estimate, "source": "estimated from the red cells in the site's fields",
        "interval95": [low, high], "fields_with_red_cells": len(chords)}


def state_ruler(bundle_path: Path, source_spec: str, out: Path, fields: int = 1000) -> dict:
    """`edge site ruler`: the bundle with its red-cell ruler read on `source_spec`, fields at the
    bundle's own pixel size; written to `out` and returned as a report."""
    bundle = load_bundle(bundle_path)
    if bundle.tiling.pixel_size_um is None:
        raise SiteFitError("the bundle states no pixel size (tiling.pixel_size_um): a ruler needs one")
    images, unreadable = read_fields(source_spec, fields)
    if len(images) < MIN_FIELDS:
        raise SiteFitError(f"{source_spec} gave {len(images)} readable fields; at least {MIN_FIELDS} needed")
    ruled, note = _site_scale(bundle, images, bundle.tiling.pixel_size_um)
    if note["fields_with_red_cells"] < MIN_FIELDS:
        raise SiteFitError(f"only {note['fields_with_red_cells']} of {len(images)} fields show enough red cells "
                           f"to read their size; at least {MIN_FIELDS} needed")
    note = {"script": "edge site ruler", "date": time.strftime("%Y-%m-%d"), "source": source_spec,
            "fields_read": len(images), "unreadable": unreadable,
            "fields_with_red_cells": note["fields_with_red_cells"],
            "red_cell_chord_um": note["red_cell_chord_um"], "at_um_per_pixel": note["um_per_pixel"]}
    written = derive_bundle(bundle, out, "red_cell_ruler", note, tiling=replace(
        bundle.tiling, red_cell_chord_um=ruled.tiling.red_cell_chord_um))
    return {"bundle": str(written.root), **note}


def fit_site(bundle_path: Path, source_spec: str, out: Path, fields: int = 30,
             pixel_size_um: float | None = None, threads: int | None = None) -> dict:
    """Fit the site (see the module docstring), write the bundle to `out`, return the report."""
    images, unreadable = read_fields(source_spec, fields)
    if len(images) < MIN_FIELDS:
        raise SiteFitError(f"{source_spec} gave {len(images)} readable fields; a site fit needs at least "
                           f"{MIN_FIELDS} good fields of the lab's own slides")
    bundle, pixel_note = _site_scale(load_bundle(bundle_path), images, pixel_size_um)
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
            "cells": cells, "pixel_size": pixel_note,
            "quality": "stain reference, max stain angle and min focus fitted on the site's fields",
            "drift": drift_note, "thresholds": "not refitted (no labels); see edge calibrate --from-review"}
    written = derive_bundle(bundle, out, "site", note, tiling=bundle.tiling, quality=limits, drift=drift)
    refused = [r.reason for r in new_reports if not r.passed]
    return {"bundle": str(written.root), **note,
            "gate_before": {"passed": int(sum(old_passed)), "of": len(images)},
            "gate_after": {"passed": len(counted), "of": len(images), "refused": refused},
            "stain_reference": list(limits.stain_reference), "max_stain_angle": limits.max_stain_angle,
            "min_focus": limits.min_focus}
