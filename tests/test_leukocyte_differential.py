"""The differential as a haematology lab reads it: leukocytes only, NRBC per 100 leukocytes, platelets
apart, provisional ranges that hold whatever the review decides, and a flag where rejection depends on
the class."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.counting.differential import leukocyte_differential
from edge.counting.runloop import run_session
from edge.counting.tally import Tally
from edge.runtime.class_roles import infer_roles
from edge.runtime.decision import Decisions
from tests.helpers import SYNTHETIC_BUNDLE

NAMES = ("neutrophil", "lymphocyte", "monocyte", "erythroblast", "platelet")
ROLES = infer_roles(NAMES)


def test_roles_are_read_from_the_names_when_a_bundle_does_not_state_them():
    assert ROLES == {"neutrophil": "leukocyte", "lymphocyte": "leukocyte", "monocyte": "leukocyte",
                     "erythroblast": "nrbc", "platelet": "platelet"}
    assert infer_roles(["Band", "smudge"]) == {"Band": "leukocyte", "smudge": "other"}


def test_percentages_are_of_leukocytes_only_nrbc_per_100_and_platelets_apart():
    d = leukocyte_differential(NAMES, ROLES, accepted=[60, 30, 10, 5, 40], rejected_by_class=[0] * 5,
                               rejected_scores=[0.0] * 5)
    assert not d["provisional"] and d["leukocytes_accepted"] == 100
    assert {n: c["percent_of_accepted"] for n, c in d["classes"].items()} == {
        "neutrophil": 60.0, "lymphocyte": 30.0, "monocyte": 10.0}
    assert d["nrbc_per_100_leukocytes"] == {"accepted": 5, "value": 5.0}
    assert d["counted_apart"] == {"platelet": 40}
    low, high = d["classes"]["neutrophil"]["range_percent"]
    assert low < 60 < high and (low, high) == pytest.approx((49.7, 69.7), abs=0.1)  # exact 95 % for 60/100
    assert "warning" not in d


@settings(max_examples=200, deadline=None)
@given(accepted=st.lists(st.integers(0, 40), min_size=5, max_size=5),
       truth=st.lists(st.integers(0, 5), min_size=0, max_size=30))
def test_the_ranges_hold_whatever_the_review_decides(accepted, truth):
    """Each cell in review turns out any class (5 = not a cell); the final leukocyte share of every
    class lies in its provisional range."""
    review = len(truth)
    d = leukocyte_differential(NAMES, ROLES, accepted, rejected_by_class=[review, 0, 0, 0, 0],
                               rejected_scores=[review, 0, 0, 0, 0])
    final = np.array(accepted, dtype=float)
    for t in truth:
        if t < 5:
            final[t] += 1
    leukocytes = final[:3].sum()
    for i, name in enumerate(NAMES[:3]):
        if leukocytes == 0 or d["classes"][name]["range_percent"] is None:
            continue
        low, high = d["classes"][name]["range_percent"]
        assert low - 1e-9 <= 100 * final[i] / leukocytes <= high + 1e-9


def test_the_point_estimate_gives_each_cell_in_review_its_scores():
    d = leukocyte_differential(NAMES, ROLES, accepted=[10, 10, 0, 0, 0], rejected_by_class=[2, 0, 0, 0, 0],
                               rejected_scores=[0.5, 0.5, 1.0, 0.0, 0.0])
    assert d["provisional"] and d["in_review"] == 2
    assert d["classes"]["monocyte"]["point_percent"] == pytest.approx(100 * 1.0 / 22, abs=0.005)
    assert d["classes"]["neutrophil"]["point_percent"] == pytest.approx(100 * 10.5 / 22, abs=0.005)


def test_class_dependent_rejection_is_flagged_from_the_bundle_or_the_session():
    even = {"neutrophil": 0.1, "lymphocyte": 0.12, "monocyte": 0.1}
    skewed = {"neutrophil": 0.1, "lymphocyte": 0.9, "monocyte": 0.1}
    base = dict(accepted=[100, 100, 100, 0, 0], rejected_by_class=[5, 5, 5, 0, 0], rejected_scores=[5, 5, 5, 0, 0])
    assert not leukocyte_differential(NAMES, ROLES, **base, bundle_rejection=even)["class_dependent_rejection"]["flag"]
    flagged = leukocyte_differential(NAMES, ROLES, **base, bundle_rejection=skewed)["class_dependent_rejection"]
    assert flagged["flag"] and "lymphocyte 90 %" in flagged["message"]
    session = leukocyte_differential(NAMES, ROLES, accepted=[100, 10, 100, 0, 0], rejected_by_class=[5, 90, 5, 0, 0],
                                     rejected_scores=[5, 90, 5, 0, 0])["class_dependent_rejection"]
    assert session["flag"] and "session" in session["message"]
    nothing_in_review = leukocyte_differential(NAMES, ROLES, accepted=[10, 10, 10, 0, 0], rejected_by_class=[0] * 5,
                                               rejected_scores=[0] * 5, bundle_rejection=skewed)
    assert not nothing_in_review["class_dependent_rejection"]["flag"]


def test_few_leukocytes_are_warned_of():
    d = leukocyte_differential(NAMES, ROLES, accepted=[5, 3, 1, 0, 0], rejected_by_class=[0] * 5,
                               rejected_scores=[0] * 5)
    assert "fewer than 100" in d["warning"]


def test_the_target_counts_leukocytes_only():
    tally = Tally(NAMES)
    tally.add(Decisions(np.array([0, 1, 3, 4, 4, 2]), np.ones(6), np.zeros(6), np.array([1, 1, 1, 1, 0, 0], bool)),
              np.eye(5)[[0, 1, 3, 4, 4, 2]])
    assert tally.leukocytes(ROLES) == 3  # neutrophil, lymphocyte accepted; monocyte in review
    np.testing.assert_allclose(tally.rejected_scores, [0, 0, 1, 0, 1])


@pytest.fixture
def platelet_bundle(tmp_path):
    """The synthetic bundle with its basophils declared platelets, so some cells are not leukocytes."""
    root = tmp_path / "bundle"
    shutil.copytree(SYNTHETIC_BUNDLE, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["class_roles"] = {n: ("platelet" if n == "basophil" else "leukocyte") for n in manifest["class_names"]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_a_session_stops_at_the_target_in_leukocytes_and_reports_apart(platelet_bundle, tmp_path):
    results = run_session(platelet_bundle, "synthetic:frames=6,seed=3", tmp_path / "s", threads=1,
                          target=30, save_fields=False, live=open("/dev/null", "w"))
    d = results["leukocyte_differential"]
    assert results["stop_reason"] == "target of 30 leukocytes reached" and results["target"]["reached"]
    assert "basophil" not in d["classes"] and d["counted_apart"]["basophil"] == results["counts"]["basophil"]
    assert results["target"]["leukocytes"] >= 30
    assert sum(c["accepted"] for c in d["classes"].values()) == d["leukocytes_accepted"]


def test_a_count_that_ends_below_its_target_says_so(platelet_bundle, tmp_path, capsys):
    results = run_session(platelet_bundle, "synthetic:frames=1,seed=3", tmp_path / "s", threads=1,
                          target=1000, save_fields=False)
    assert not results["target"]["reached"] and "below the target of 1000" in results["target"]["warning"]
    assert "WARNING the count stopped at" in capsys.readouterr().out


def test_a_resumed_session_rebuilds_the_review_figures(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(SYNTHETIC_BUNDLE, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["thresholds"]["global"] = 0.97  # many cells to review
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    quiet = open("/dev/null", "w")
    whole = run_session(bundle, "synthetic:frames=3,seed=8", tmp_path / "whole", threads=1, save_fields=False, live=quiet)
    run_session(bundle, "synthetic:frames=3,seed=8", tmp_path / "parts", threads=1, save_fields=False, live=quiet,
                max_frames=2)
    resumed = run_session(None, None, tmp_path / "parts", threads=1, save_fields=False, live=quiet, resume=True)
    assert whole["leukocyte_differential"]["in_review"] > 0
    assert resumed["leukocyte_differential"] == whole["leukocyte_differential"]
