"""`edge calibrate`: refit a bundle's reject thresholds on its own deployed classifier.

The bundle's ONNX classifier runs (through the same backend and preprocessing
as `edge eval classify`) over labelled single-cell images; the chosen rule is
fitted on its outputs and a new bundle is written: the same model files, the
new thresholds bound to the classifier's SHA-256, and the calibration figures.
Every rule that applies to the head is fitted on the same cells for the report,
and so are the native rules of `compare` bundles (e.g. a softmax-head model
beside a CCL one).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from calibration.rules import RuleFit, fit_rule, rule_confidence, rules_for_head
from edge.runtime.bundle import THRESHOLD_RULES, Bundle, Thresholds, derive_bundle, load_bundle, sha256_file
from edge.runtime.centroids import centroids_sha256, read_centroids
from edge.runtime.decision import RejectRule
from edge.runtime.drift import DriftBands, fit_drift_bands
from edge.runtime.engine import CellCounter
from edge.evaluation.centroid_adaptation import ADAPT_SHARE, SHRINKAGE, Adaptation, adapt_on_cells
from edge.evaluation.evaluate import read_class_folders, single_cell_scores
from edge.evaluation.report_plot import RiskCoveragePanel, draw_risk_coverage

log = logging.getLogger("edge.evaluation.calibrate")

SEARCHES = ("clopper-pearson", "descending")
# Cuts at or below this could let two classes be plausible at once; see calibration.conformal.
_ICP_EXACT_CUT = 0.5


class CalibrationError(ValueError):
    """Calibration that cannot produce a trustworthy bundle; the message says why."""


def classifier_outputs(bundle: Bundle, data: Path, only: set[str] | None = None,
                       backend: str = "onnxruntime", threads: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, labels, skipped): the bundle's classifier outputs on a folder per class.

    An unreadable image is logged and counted in `skipped`, never given a label.
    """
    paths, labels = read_class_folders(Path(data), bundle.class_names, only)
    with CellCounter(bundle, backend=backend, threads=threads) as counter:
        cells = single_cell_scores(counter, paths)
        scores, kept = cells.scores, cells.kept
    if not kept:
        raise CalibrationError(f"no readable images under {data}")
    return scores, labels[kept], len(paths) - len(kept)


def site_outputs(bundle: Bundle, sessions: tuple[Path, ...], backend: str = "onnxruntime",
                 threads: int | None = None, embeddings: bool = False) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(scores, labels, sessions): the bundle's classifier on the cells experts labelled in these sessions;
    with `embeddings`, its per-class CCL embeddings (N, C, M) in place of the scores."""
    from edge.review import ReviewError
    from edge.evaluation.site_cells import read_site_cells
    try:
        site = read_site_cells(bundle, list(sessions))
    except ReviewError as exc:
        raise CalibrationError(str(exc)) from None
    with CellCounter(bundle, backend=backend, threads=threads) as counter:
        run = counter.embed_crops if embeddings else counter.classify_crops
        return run(site.crops), site.labels, site.sessions


def adapted_site_outputs(bundle: Bundle, sessions: tuple[Path, ...], shrinkage: float, share: float, seed: int,
                         backend: str = "onnxruntime", threads: int | None = None
                         ) -> tuple[Adaptation, list[dict]]:
    """The bundle's centroids moved toward part of the sessions' labelled cells, and the other part's
    scores under them (edge.evaluation.centroid_adaptation)."""
    if bundle.ccl_centroids is None:
        raise CalibrationError(f"{bundle.root} keeps its CCL centroids inside the classifier graph; convert it "
                               "with `edge export expose-embeddings` before --adapt-centroids")
    embeddings, labels, site_sessions = site_outputs(bundle, sessions, backend, threads, embeddings=True)
    centroids = read_centroids(bundle.root / bundle.ccl_centroids.file, len(bundle.class_names))
    try:
        adaptation = adapt_on_cells(centroids, bundle.ccl_sigma, embeddings, labels, bundle.class_names,
                                    shrinkage, share, seed)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None
    adaptation.note.update(source_centroids_sha256=bundle.ccl_centroids.sha256, date=time.strftime("%Y-%m-%d"),
                           sessions=[s["session_id"] for s in site_sessions])
    return adaptation, site_sessions


def calibrate_bundle(bundle_path: Path, data_dir: Path | None, out_path: Path, *, target_accuracy: float,
                     confidence: float = 0.95, per_class: bool = False, method: str | None = None,
                     only: set[str] | None = None, backend: str = "onnxruntime",
                     threads: int | None = None, search: str = "clopper-pearson",
                     min_per_class: int = 30, evaluate_only: set[str] | None = None,
                     compare: tuple[Path, ...] = (), report_dir: Path | None = None,
                     source_note: dict | None = None, review_sessions: tuple[Path, ...] = (),
                     adapt_centroids: bool = False, shrinkage: float = SHRINKAGE, adapt_share: float = ADAPT_SHARE,
                     seed: int = 0) -> dict:
    """Fit `method` (default: the head's own rule) on the bundle's classifier outputs for the
    images of `data_dir` (only those in `only`, e.g. a calibration split) and write bundle
    `out_path`; return the report, also written to `report_dir` when given.

    `search` "clopper-pearson" holds accepted accuracy >= `target_accuracy` on new
    cells with probability `confidence`; "descending" is the CCL paper's search.
    `evaluate_only` names held-out images on which every rule is also judged. When
    the deployed rule cannot reach the target, the report is still written (with
    "bundle": null) and CalibrationError says why; no bundle is written.

    `review_sessions` (site recalibration): the cells experts labelled in these
    sessions join the cells of `data_dir` (which may then be None); the sessions
    are recorded in the thresholds' calibration figures and the provenance. The
    new bundle also gets drift bands fitted on the same cells, and keeps the
    source bundle's quality section.

    `adapt_centroids` (with `review_sessions` only): `adapt_share` of each class's labelled cells move
    the CCL centroids (shrinkage `shrinkage`, split drawn with `seed`) and the thresholds are fitted
    on the other cells' scores under the moved centroids, which the new bundle carries.
    """
    if search not in SEARCHES:
        raise CalibrationError(f"unknown search {search!r}; known: {', '.join(SEARCHES)}")
    if not 0.0 < confidence < 1.0:
        raise CalibrationError(f"--confidence must be in (0, 1), got {confidence}")
    if not 0.0 < target_accuracy <= 1.0:
        raise CalibrationError(f"--target-accuracy must be in (0, 1], got {target_accuracy}")
    out_path = Path(out_path)
    if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
        raise CalibrationError(f"{out_path} already exists; choose a new --out")
    bundle = load_bundle(bundle_path, check_thresholds=False)
    method = method or bundle.classifier_head
    if method not in THRESHOLD_RULES[bundle.classifier_head]:
        raise CalibrationError(
            f"a {bundle.classifier_head} bundle cannot deploy the {method} rule (it can deploy "
            f"{', '.join(THRESHOLD_RULES[bundle.classifier_head])}); compare rules with --compare instead")
    settings = dict(target_accuracy=target_accuracy, search=search, delta=1.0 - confidence,
                    per_class=per_class, min_per_class=min_per_class)
    if data_dir is None and not review_sessions:
        raise CalibrationError("give labelled cells: --data DIR, --from-review SESSION ..., or both")
    if review_sessions and (compare or evaluate_only):
        raise CalibrationError("--from-review cannot be combined with --compare or --eval-split")
    adaptation = None
    if adapt_centroids:
        if not review_sessions or data_dir is not None:
            raise CalibrationError("--adapt-centroids learns from expert labels only: give --from-review "
                                   "and no --data")
        adaptation, sessions = adapted_site_outputs(bundle, tuple(review_sessions), shrinkage, adapt_share, seed,
                                                    backend, threads)
        site = (adaptation.scores, adaptation.labels, sessions)
        source_note = {**(source_note or {}), "centroid_adaptation": adaptation.note}
    else:
        site = site_outputs(bundle, tuple(review_sessions), backend, threads) if review_sessions else None
    if site is not None:
        source_note = {**(source_note or {}), "site_sessions": site[2]}

    entries, deployed = [], None
    for b in [bundle] + [load_bundle(p, check_thresholds=False) for p in compare]:
        if b.class_names != bundle.class_names:
            raise CalibrationError(f"bundle {b.root} has other classes than {bundle.root}")
        scores, labels, skipped = (classifier_outputs(b, data_dir, only, backend, threads) if data_dir is not None
                                   else (np.zeros((0, len(b.class_names)), np.float32), np.zeros(0, np.int64), 0))
        if site is not None:
            scores, labels = np.concatenate([scores, site[0]]), np.concatenate([labels, site[1]])
        held_out = classifier_outputs(b, data_dir, evaluate_only, backend, threads) if evaluate_only else None
        for rule in rules_for_head(b.classifier_head):
            deploy = b is bundle and rule == method
            try:
                fit = fit_rule(scores, labels, b.classifier_head, rule, num_classes=len(b.class_names),
                               **{**settings, "per_class": per_class and rule != "icp"})
            except ValueError as exc:
                if deploy:
                    raise CalibrationError(str(exc)) from None
                log.warning("%s rule on %s not fitted: %s", rule, b.root, exc)
                entries.append({"bundle": str(b.root), "head": b.classifier_head, "rule": rule, "error": str(exc)})
                continue
            entry = {"bundle": str(b.root), "head": b.classifier_head, "rule": rule, "deployed": deploy,
                     "fit": fit.to_dict(), "n_skipped_images": skipped,
                     "calibration": fit.calibration.to_dict()}
            if held_out is not None:
                entry["evaluation"] = fit.report(held_out[0], held_out[1], len(b.class_names)).to_dict()
            entries.append(entry)
            if deploy:
                deployed = (fit, scores, entry)

    report = {"bundle": None, "source_bundle": str(bundle.root), "data": str(data_dir) if data_dir else None,
              "target_accuracy": target_accuracy, "search": search,
              "confidence": confidence if search == "clopper-pearson" else None,
              "per_class": per_class, "deployed_rule": method, "entries": entries, **(source_note or {})}
    fit, scores, entry = deployed
    try:
        thresholds = _thresholds_for(fit, bundle, entry, report["confidence"], site and site[2],
                                     _centroids_sha256(bundle, adaptation))
    except CalibrationError as exc:
        if report_dir is None:
            raise
        write_report(report, Path(report_dir))  # the figures show why
        raise CalibrationError(f"{exc} (figures in {report_dir})") from None
    drift = _drift_bands(fit, scores, bundle.drift)
    report["drift_bands"] = drift.to_dict()
    _write_calibrated(bundle, out_path, thresholds, {
        "script": "edge calibrate", "date": time.strftime("%Y-%m-%d"), "data": str(data_dir) if data_dir else None,
        "source_bundle": str(bundle.root), "source_manifest_sha256": bundle.manifest_sha256,
        **(source_note or {})}, drift, adaptation)
    _check_device_agrees(out_path, fit, scores)
    report["bundle"] = str(out_path)
    if report_dir is not None:
        write_report(report, Path(report_dir))
    return report


def _drift_bands(fit: RuleFit, scores: np.ndarray, base: DriftBands | None) -> DriftBands:
    """Drift bands from the calibration cells as the device will see them at the fitted thresholds."""
    # the device's confidence: the rule's own; an ICP is deployed as cuts on the top class probability
    confidence, _ = rule_confidence(scores, fit.head, "softmax" if fit.rule == "icp" else fit.rule)
    _, _, accepted = fit.decide(scores)
    return fit_drift_bands(confidence, accepted, {"rule": fit.rule}, base)


def _centroids_sha256(bundle: Bundle, adaptation: Adaptation | None) -> str | None:
    """The centroids file the new thresholds are fitted with: the moved centroids, else the bundle's own."""
    if adaptation is not None:
        return centroids_sha256(adaptation.centroids)
    return bundle.ccl_centroids and bundle.ccl_centroids.sha256


def _thresholds_for(fit: RuleFit, bundle: Bundle, entry: dict, confidence: float | None,
                    site_sessions: list[dict] | None = None, centroids: str | None = None) -> Thresholds:
    if not fit.reached:
        raise CalibrationError(f"no {fit.rule} threshold reaches accepted accuracy {fit.target_accuracy} "
                               f"on these {fit.n_calibration} cells" +
                               (f" with confidence {confidence}" if confidence else "") +
                               "; calibrate on more cells, lower the target or improve the model")
    names = bundle.class_names
    per_class = {names[c]: t for c, t in fit.per_class.items()}
    if fit.rule == "icp":
        low = [names[c] for c, t in fit.per_class.items() if t <= _ICP_EXACT_CUT]
        if low:
            raise CalibrationError(
                f"at epsilon {fit.icp.epsilon:.4f} the ICP's probability cuts for {', '.join(low)} are at "
                "or below 0.5, where several classes can be plausible at once; the device's threshold "
                "rule cannot run that ICP exactly, so no bundle is written (deploy the softmax rule)")
    calibration = {key: _without_curves(entry[key]) for key in ("calibration", "evaluation") if key in entry}
    if fit.icp is not None:
        calibration["icp"] = fit.icp.to_dict()
    if site_sessions:
        calibration["site_sessions"] = site_sessions  # which sessions' expert labels it learned from
    return Thresholds(float(fit.threshold), fit.target_accuracy, fit.search, per_class, calibration,
                      classifier_sha256=bundle.classifier.sha256, rule=fit.rule, confidence=confidence,
                      centroids_sha256=centroids)


def _write_calibrated(bundle: Bundle, out: Path, thresholds: Thresholds, provenance_note: dict,
                      drift: DriftBands | None = None, adaptation: Adaptation | None = None) -> None:
    """The bundle with the new thresholds (and drift bands, and moved centroids), written and verified at `out`."""
    if sha256_file(bundle.model_path(bundle.classifier)) != thresholds.classifier_sha256:
        raise CalibrationError(f"{bundle.classifier.file} changed while it was being calibrated")
    moved = {} if adaptation is None else {
        "centroids": adaptation.centroids, "ccl_centroids": replace(bundle.ccl_centroids, adapted=adaptation.note)}
    derive_bundle(bundle, out, "calibration", provenance_note, thresholds=thresholds, drift=drift, **moved)


def _check_device_agrees(out: Path, fit: RuleFit, scores: np.ndarray) -> None:
    """The written bundle, run by the device's reject rule, decides as the fitted rule did."""
    device = RejectRule(load_bundle(out)).decide(scores)
    _, predicted, accepted = fit.decide(scores)
    if not (np.array_equal(device.accepted, accepted)
            and np.array_equal(device.predicted[accepted], predicted[accepted])):
        raise RuntimeError(f"the bundle written to {out} decides differently from the fitted "
                           f"{fit.rule} rule on the calibration cells; this is a bug")


def _without_curves(d: dict) -> dict:
    out = {k: v for k, v in d.items() if k != "curve"}
    out["per_class"] = {c: {k: v for k, v in m.items() if k != "curve"} for c, m in d["per_class"].items()}
    return out


# ---------------------------------------------------------------- report

def write_report(report: dict, folder: Path) -> None:
    """report.json, report.md (a table per data set) and risk_coverage.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(markdown_table(report))
    panels = [RiskCoveragePanel(f"{_short(e['bundle'])}: {e['rule']}",
                                _curve(e.get("calibration")), _curve(e.get("evaluation")),
                                _point(e.get("evaluation") or e["calibration"]),
                                1.0 - report["target_accuracy"])
              for e in report["entries"] if "error" not in e]
    draw_risk_coverage(panels, folder / "risk_coverage.png")


def markdown_table(report: dict) -> str:
    search = report["search"] + (f", confidence {report['confidence']}" if report["confidence"] else "")
    site = "".join(f"; expert labels of session {s['session_id']} ({s['cells']['rejected']} rejected, "
                   f"{s['cells']['accepted_sample']} accepted-sample cells)" for s in report.get("site_sessions", []))
    lines = [f"Target accepted accuracy {report['target_accuracy']} ({search}); data {report['data']}{site}.", ""]
    sets = [("calibration", "fitted on")] + ([("evaluation", "held out")]
                                             if any("evaluation" in e for e in report["entries"]) else [])
    lines += ["| bundle | rule | cells | set | Rr | Ra | R | AURC |", "|---|---|---|---|---|---|---|---|"]
    for e in report["entries"]:
        if "error" in e:
            lines.append(f"| {_short(e['bundle'])} | {e['rule']} | | | not fitted: {e['error']} | | | |")
            continue
        for key, label in sets:
            m = e[key]
            mark = (" (deployed)" if report["bundle"] else " (not reached)") if e["deployed"] else ""
            lines.append(f"| {_short(e['bundle'])} | {e['rule']}{mark} "
                         f"| {m['n']} | {label} | {_pct(m['rejection_rate'])} | {_pct(m['accepted_accuracy'])} "
                         f"| {_pct(m['reliability'])} | {m['aurc']:.4f} |")
    return "\n".join(lines) + "\n"


def _short(path: str) -> str:
    return Path(path).name


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _curve(d: dict | None) -> tuple[np.ndarray, np.ndarray] | None:
    if d is None:
        return None
    return np.asarray(d["curve"]["coverage"]), np.asarray(d["curve"]["risk"])


def _point(d: dict) -> tuple[float, float] | None:
    if d["accepted_accuracy"] is None:
        return None
    return 1.0 - d["rejection_rate"], 1.0 - d["accepted_accuracy"]
