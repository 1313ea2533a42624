"""Drift alarms: bands fitted on calibration cells, alarms on drift and not on noise, and where alarms go."""
import io
import json

import numpy as np
import pytest

from edge.runtime.bundle import load_bundle, write_bundle
from edge.runtime.drift import DriftBands, DriftHistory, DriftMonitor, fit_drift_bands
from edge.counting.runloop import run_session
from edge.counting.sources import DEMO_SPEC
from firmware_bridge import FirmwareLink, StatusCode
from firmware_bridge.messages import HostStatus, from_frame, to_frame
from firmware_bridge.simulator import FirmwareSimulator
from tests.helpers import SYNTHETIC_BUNDLE

CLASSES = ("a", "b", "c", "d", "e")
THRESHOLD = 0.7


def cells(rng, n, wrong_share=0.02, mix=(0.5, 0.3, 0.1, 0.06, 0.04)):
    """(predicted, confidence, accepted) of n cells: confident ones, and a share of doubtful ones."""
    doubtful = rng.random(n) < wrong_share
    confidence = np.where(doubtful, rng.uniform(0.4, 0.8, n), rng.beta(20, 1.2, n))
    return rng.choice(len(mix), n, p=mix), confidence, confidence >= THRESHOLD


@pytest.fixture(scope="module")
def bands():
    rng = np.random.default_rng(0)
    _, confidence, accepted = cells(rng, 2000)
    return fit_drift_bands(confidence, accepted, {"data": "synthetic"})


def feed(monitor, rng, fields, per_field=15, frame0=0, angle=1.5, angle_sd=0.8, **kw):
    alarms = []
    for f in range(fields):
        predicted, confidence, accepted = cells(rng, per_field, **kw)
        alarms += monitor.add_field(frame0 + f, predicted, confidence, accepted, rng.normal(angle, angle_sd))
    return alarms


def test_bands_are_fitted_from_the_calibration_cells(bands):
    assert 0.0 < bands.fitted_on["rejection_rate"] < bands.max_rejection_rate < 0.2
    assert bands.min_mean_confidence < bands.fitted_on["mean_confidence"]
    assert DriftBands.from_dict(bands.to_dict(), CLASSES) == bands


def test_no_alarm_on_noise_over_many_sessions(bands, tmp_path):
    history = DriftHistory(tmp_path / "h.jsonl")
    rng = np.random.default_rng(1)
    for session in range(12):
        monitor = DriftMonitor(bands, CLASSES, "sha", history)
        assert feed(monitor, rng, fields=60) == []
        assert monitor.finish() == []
        history.append(monitor.history_row(f"s{session}", "m"))
    assert len(history.sessions("sha")) == 12


@pytest.mark.parametrize("drift, statistic", [
    (dict(wrong_share=0.25), "rejection_rate"),
    (dict(wrong_share=0.25), "mean_confidence"),
    (dict(angle=5.0), "stain_angle"),
    (dict(mix=(0.1, 0.1, 0.1, 0.1, 0.6)), "class_mix"),
])
def test_the_alarm_fires_when_a_statistic_drifts(bands, tmp_path, drift, statistic):
    history = DriftHistory(tmp_path / "h.jsonl")
    rng = np.random.default_rng(2)
    earlier = DriftMonitor(bands, CLASSES, "sha", history)
    feed(earlier, rng, fields=40)
    history.append(earlier.history_row("before", "m"))   # the site's usual class mix
    monitor = DriftMonitor(bands, CLASSES, "sha", history)
    assert feed(monitor, rng, fields=30) == []            # 450 normal cells first
    alarms = feed(monitor, rng, fields=40, frame0=30, **drift)
    fired = [a for a in alarms if a.statistic == statistic]
    assert len(fired) == 1 and fired[0].scope == "session" and fired[0].frame_id >= 30
    assert monitor.summary()["alarms"][0]["message"].startswith("drift (this session): ")


def test_slow_drift_shows_across_sessions(bands, tmp_path):
    """A rate a little above the band in every session: too few cells in one window, clear when pooled."""
    history = DriftHistory(tmp_path / "h.jsonl")
    rng = np.random.default_rng(3)
    above = bands.max_rejection_rate + 0.05
    sessions_alarms = []
    for session in range(5):
        monitor = DriftMonitor(bands, CLASSES, "sha", history)
        for f in range(20):
            confidence = np.full(10, 0.99)
            accepted = rng.random(10) >= above
            monitor.add_field(f, np.zeros(10, int), confidence, accepted)
        sessions_alarms.append([a.statistic for a in monitor.finish()])
        history.append(monitor.history_row(f"s{session}", "m"))
    assert sessions_alarms[0] == []
    assert "rejection_rate" in sessions_alarms[-1]


def test_a_resumed_session_adds_up_in_the_history(bands, tmp_path):
    history = DriftHistory(tmp_path / "h.jsonl")
    for part in range(2):
        monitor = DriftMonitor(bands, CLASSES, "sha", history)
        monitor.add_field(part, np.zeros(3, int), np.full(3, 0.9), np.ones(3, bool))
        history.append(monitor.history_row("same", "m"))
    (row,) = history.sessions("sha")
    assert row["cells"] == 6 and row["accepted_counts"][0] == 6


def test_status_messages_reach_the_device():
    assert from_frame(to_frame(HostStatus(2, "drift: x"), 7)) == HostStatus(2, "drift: x")
    with FirmwareSimulator(fields=1) as sim, FirmwareLink(sim.path).open() as link:
        link.show_status(StatusCode.DRIFT_ALARM, "rejection rate 30 %")
    assert [(s.code, s.text) for s in sim.statuses] == [(2, "rejection rate 30 %")]


def test_a_run_raises_the_alarm_on_the_terminal_in_results_and_on_the_microscope(tmp_path):
    """The synthetic bundle with a band its own synthetic fields exceed: a drifted model as the loop sees it."""
    bundle = load_bundle(SYNTHETIC_BUNDLE)
    tight = DriftBands(max_rejection_rate=0.0, min_mean_confidence=None, window_cells=30)
    root = tmp_path / "bundle"
    root.mkdir()
    for spec in (bundle.detector, bundle.classifier):
        (root / spec.file).write_bytes(bundle.model_path(spec).read_bytes())
    write_bundle(root, class_names=list(bundle.class_names), classifier_head=bundle.classifier_head,
                 ccl_sigma=bundle.ccl_sigma, detector=bundle.detector, classifier=bundle.classifier,
                 thresholds=bundle.thresholds, tiling=bundle.tiling, provenance=bundle.provenance, drift=tight)
    live = io.StringIO()
    with FirmwareSimulator(fields=6, settle_s=0.01) as sim:
        results = run_session(root, DEMO_SPEC, tmp_path / "s", threads=1, save_fields=False, live=live,
                              serial=sim.path)
    alarms = results["drift"]["alarms"]
    assert alarms and alarms[0]["statistic"] == "rejection_rate"
    assert "DRIFT ALARM drift (this session): rejection rate" in live.getvalue()
    assert any(s.code == StatusCode.DRIFT_ALARM and "rejection rate" in s.text for s in sim.statuses)
    on_disk = json.loads((tmp_path / "s" / "results.json").read_text())
    assert on_disk["drift"]["alarms"] == alarms
    (row,) = DriftHistory(tmp_path / "drift-history.jsonl").sessions(bundle.classifier.sha256)
    assert row["alarms"] == ["rejection_rate/session"]


def test_the_microscope_is_told_the_tally_is_provisional_while_cells_await_review(tmp_path):
    with FirmwareSimulator(fields=4, settle_s=0.01) as sim:
        results = run_session(SYNTHETIC_BUNDLE, "synthetic:frames=4,seed=2", tmp_path / "s", threads=1,
                              save_fields=False, live=io.StringIO(), serial=sim.path)
    provisional = [s for s in sim.statuses if s.code == StatusCode.PROVISIONAL]
    in_review = results["rejected"]
    assert in_review > 0 and sim.tallies[-1].rejected == in_review
    assert len(provisional) == 2  # the first cell sent to review, and the end of counting
    assert f"{in_review} cell(s) in review" in provisional[-1].text and "final after expert review" in provisional[-1].text
