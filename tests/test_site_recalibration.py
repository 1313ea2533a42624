"""Site recalibration: a lab whose stain is paler than the training smears counts a session, experts label
its review archive, and `edge calibrate --from-review` refits the thresholds on those labels."""
import io
import json
import zipfile

import cv2
import numpy as np
import pytest

from edge.runtime.bundle import load_bundle
from edge.cli import main
from edge.runtime.decision import RejectRule
from edge.runtime.engine import CellCounter
from edge.review.archive_export import export_archive
from edge.review.label_import import import_labels
from edge.review.page import LABELS_FORMAT, LABELS_VERSION
from edge.counting.runloop import run_session
from edge.synthetic.smear import SmearConfig, render_cell_crops, render_field
from tests.helpers import SYNTHETIC_BUNDLE

TARGET = 0.98
FIELDS = 16
SITE = SmearConfig(nucleated_per_mpx=200)


def pale(image: np.ndarray) -> np.ndarray:
    """This site's stain: half the saturation of the training smears."""
    hsv = cv2.cvtColor(image.reshape(-1, image.shape[-2], 3), cv2.COLOR_BGR2HSV)
    hsv[..., 1] //= 2
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).reshape(image.shape)


def accepted_accuracy(bundle_path, crops, labels) -> float:
    bundle = load_bundle(bundle_path)
    with CellCounter(bundle, threads=1) as counter:
        d = RejectRule(bundle).decide(counter.classify_crops(crops))
    return float((d.predicted[d.accepted] == labels[d.accepted]).mean())


def expert_labels(session, archive) -> list[dict]:
    """What an expert would say: the true class of the synthetic cell under each box, or not_a_cell."""
    with zipfile.ZipFile(archive["archive"]) as zf:
        cells = json.loads(zf.read("manifest.json"))["cells"]
    truth = {i: render_field(SITE, seed=i) for i in range(FIELDS)}
    out = []
    for cell in cells:
        field = truth[cell["frame_id"]]
        x1, y1, x2, y2 = cell["box"]
        distance = np.hypot(*(field.centres - [(x1 + x2) / 2, (y1 + y2) / 2]).T)
        best = int(np.argmin(distance)) if len(distance) else -1
        label = field.class_names[field.labels[best]] if best >= 0 and distance[best] < 8 else "not_a_cell"
        out.append({"cell_id": cell["cell_id"], "label": label})
    return out


@pytest.fixture(scope="module")
def labelled_session(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "fields").mkdir()
    for i in range(FIELDS):
        cv2.imwrite(str(root / "fields" / f"{i:03d}.png"), pale(render_field(SITE, seed=i).image))
    session = root / "session"
    # dense fields, for many cells per field; the gate would refuse this site's stain (tests/test_quality_gate.py)
    run_session(SYNTHETIC_BUNDLE, str(root / "fields"), session, threads=1, save_fields=False,
                live=io.StringIO(), quality={"enabled": False})
    archive = export_archive([session], root / "review.zip", ("accepted-sample",), sample_size=100000)
    labels = {"format": LABELS_FORMAT, "version": LABELS_VERSION, "archive_id": archive["archive_id"],
              "manifest_sha256": archive["manifest_sha256"], "reviewer": "site haematologist",
              "labels": expert_labels(session, archive)}
    (root / "labels.json").write_text(json.dumps(labels))
    import_labels([session], root / "labels.json")
    return root, session


def test_recalibration_on_expert_labels_brings_accepted_accuracy_back_to_target(labelled_session, tmp_path):
    root, session = labelled_session
    labels = np.repeat(np.arange(5), 80)
    fresh = pale(render_cell_crops(labels, 64, seed=99))
    before = accepted_accuracy(SYNTHETIC_BUNDLE, fresh, labels)
    assert before < TARGET  # the premise: the shipped thresholds do not hold on this site's stain

    out = tmp_path / "site-bundle"
    code = main(["calibrate", "--bundle", str(SYNTHETIC_BUNDLE), "--from-review", str(session),
                 "--target-accuracy", str(TARGET), "--out", str(out), "--threads", "1"])
    assert code == 0
    assert accepted_accuracy(out, fresh, labels) >= TARGET

    bundle = load_bundle(out)
    learned = bundle.thresholds.calibration["site_sessions"]
    session_id = json.loads((session / "session.json").read_text())["session_id"]
    assert [s["session_id"] for s in learned] == [session_id]
    assert learned[0]["cells"]["rejected"] > 0 and learned[0]["cells"]["accepted_sample"] > 0
    assert bundle.provenance["calibration"]["site_sessions"] == learned
    assert bundle.drift is not None and bundle.drift.max_rejection_rate is not None
    report = (out.parent / (out.name + "-report") / "report.md").read_text()
    assert f"expert labels of session {session_id}" in report


def test_from_review_without_labels_is_one_clear_error(tmp_path, capsys):
    session = tmp_path / "s"
    run_session(SYNTHETIC_BUNDLE, "synthetic:frames=1,seed=3", session, threads=1, save_fields=False,
                live=io.StringIO())
    code = main(["calibrate", "--bundle", str(SYNTHETIC_BUNDLE), "--from-review", str(session),
                 "--target-accuracy", "0.9", "--out", str(tmp_path / "b")])
    assert code == 2
    assert "no cells that an expert labelled" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
