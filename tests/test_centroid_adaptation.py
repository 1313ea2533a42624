"""CCL centroids as a bundle file: exposing the embeddings keeps the scores, the device scores with the
bundle's centroids, a tampered centroids file is refused, and `edge calibrate --adapt-centroids` moves
them toward a site's expert labels and refits the thresholds."""
import io
import json
import shutil
import zipfile
from dataclasses import replace

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.evaluation.centroid_adaptation import adapt_centroids, split_cells
from edge.evaluation.site_cells import read_site_cells
from edge.review.archive_export import export_archive
from edge.review.label_import import import_labels
from edge.review.page import LABELS_FORMAT, LABELS_VERSION
from edge.counting.runloop import run_session
from edge.runtime.backends.onnxruntime import OrtRunner
from edge.runtime.bundle import BundleError, derive_bundle, load_bundle, sha256_file
from edge.runtime.centroids import ccl_kernel, centroids_sha256, read_centroids, save_centroids
from edge.runtime.engine import CellCounter
from edge.runtime.preprocess import to_model_input
from edge.synthetic.smear import SmearConfig, render_cell_crops, render_field
from tests.helpers import SYNTHETIC_BUNDLE, add_tensorrt_variant

# synthetic cells, and noise that the classifier should send to review
CROPS = np.concatenate([render_cell_crops(np.repeat(np.arange(5), 8), 64, seed=3),
                        np.random.default_rng(3).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)])


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    """The synthetic bundle, given a TensorRT twin, converted by `edge export expose-embeddings`."""
    root = tmp_path_factory.mktemp("expose")
    source = root / "source"
    shutil.copytree(SYNTHETIC_BUNDLE, source)
    add_tensorrt_variant(source, "classifier")
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["thresholds"]["classifier_sha256"] = manifest["models"]["classifier"]["sha256"]
    (source / "manifest.json").write_text(json.dumps(manifest))
    assert main(["export", "expose-embeddings", "--bundle", str(source), "--out", str(root / "out")]) == 0
    return source, root / "out"


def graph_outputs(path, crops, bundle):
    x = to_model_input(crops, None, bundle.classifier.normalisation)
    return OrtRunner(path, threads=1).infer({"image": x})


def test_exposing_the_embeddings_keeps_the_scores_and_the_decisions(exposed):
    source, out = exposed
    before, after = load_bundle(source), load_bundle(out)
    assert after.classifier.outputs == ("scores", "embeddings")
    assert after.ccl_centroids is not None and after.thresholds.centroids_sha256 == after.ccl_centroids.sha256
    for path_before, path_after in ((before.model_path(before.classifier), after.model_path(after.classifier)),
                                    (before.tensorrt_path(before.classifier), after.tensorrt_path(after.classifier))):
        old, new = graph_outputs(path_before, CROPS, before), graph_outputs(path_after, CROPS, after)
        assert np.array_equal(old["scores"], new["scores"])
        assert new["embeddings"].shape == (len(CROPS), 5, read_centroids(out / "centroids.npy").shape[1])
    with CellCounter(before, threads=1) as a, CellCounter(after, threads=1) as b:
        old_scores, new_scores = a.classify_crops(CROPS), b.classify_crops(CROPS)
        assert b.centroids is not None and a.centroids is None
        assert np.abs(new_scores - old_scores).max() < 1e-5
        old_d, new_d = a.rule.decide(old_scores), b.rule.decide(new_scores)
    assert np.array_equal(old_d.predicted, new_d.predicted) and np.array_equal(old_d.accepted, new_d.accepted)
    assert old_d.accepted.any() and not old_d.accepted.all()  # the comparison decides something


def test_moving_a_centroid_onto_a_cells_embedding_makes_its_kernel_one(exposed, tmp_path):
    _, out = exposed
    bundle = load_bundle(out)
    with CellCounter(bundle, threads=1) as counter:
        embeddings = counter.embed_crops(CROPS)
        before = counter.classify_crops(CROPS)
    centroids = read_centroids(out / "centroids.npy")
    moved, counts = adapt_centroids(centroids, embeddings[:1], np.array([2]), shrinkage=0.0)
    assert counts.tolist() == [0, 0, 1, 0, 0]
    assert np.array_equal(np.delete(moved, 2, axis=0), np.delete(centroids, 2, axis=0))
    thresholds = replace(bundle.thresholds, centroids_sha256=centroids_sha256(moved))
    derived = derive_bundle(bundle, tmp_path / "moved", "test", {}, centroids=moved, thresholds=thresholds,
                            ccl_centroids=bundle.ccl_centroids)
    with CellCounter(derived, threads=1) as counter:
        after = counter.classify_crops(CROPS)
    assert after[0, 2] == pytest.approx(1.0, abs=1e-6) and before[0, 2] < 0.99
    assert np.array_equal(np.delete(after, 2, axis=1), np.delete(before, 2, axis=1))
    assert np.allclose(after, ccl_kernel(embeddings, moved, bundle.ccl_sigma))


def test_shrinkage_weighs_the_old_centroid_as_k_cells():
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(3, 4)).astype(np.float32)
    embeddings = rng.normal(size=(5, 3, 4)).astype(np.float32)
    labels = np.array([0, 0, 1, 0, 1])
    moved, counts = adapt_centroids(centroids, embeddings, labels, shrinkage=2.0)
    assert counts.tolist() == [3, 2, 0]
    expected0 = (2 * centroids[0] + embeddings[[0, 1, 3], 0].sum(axis=0)) / 5
    expected1 = (2 * centroids[1] + embeddings[[2, 4], 1].sum(axis=0)) / 4
    assert np.allclose(moved[0], expected0) and np.allclose(moved[1], expected1)
    assert np.array_equal(moved[2], centroids[2])


def test_the_split_keeps_adapting_and_fitting_cells_apart():
    labels = np.repeat(np.arange(4), [10, 7, 1, 30])
    adapt, fit = split_cells(labels, 0.5, seed=1)
    assert not set(adapt) & set(fit) and len(adapt) + len(fit) == len(labels)
    assert abs(np.sum(labels[adapt] == 3) - 15) <= 1


def reseal(out, edit):
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [
    ("bytes", "centroids file centroids.npy fails its SHA-256 check"),
    ("shape", "there are 4 centroids for 5 classes"),
    ("nan", "the centroids hold NaN or Inf"),
    ("stale thresholds", "the thresholds were fitted with CCL centroids"),
    ("no thresholds binding", "the thresholds do not record the CCL centroids"),
    ("no embeddings output", "ccl_centroids needs the classifier output 'embeddings'"),
])
def test_a_damaged_centroids_file_or_binding_is_refused(exposed, tmp_path, damage, message):
    _, source = exposed
    out = tmp_path / "b"
    shutil.copytree(source, out)
    centroids = read_centroids(out / "centroids.npy")
    if damage == "bytes":
        raw = bytearray((out / "centroids.npy").read_bytes())
        raw[-1] ^= 1
        (out / "centroids.npy").write_bytes(bytes(raw))
    else:
        if damage in ("shape", "nan", "stale thresholds"):
            changed = {"shape": centroids[:4], "stale thresholds": centroids + 0.01}.get(damage)
            if damage == "nan":
                changed = centroids.copy()
                changed[0, 0] = np.nan
                np.save(out / "centroids.npy", changed)
            else:
                save_centroids(out / "centroids.npy", changed)
            sha = sha256_file(out / "centroids.npy")

            def edit(m):
                m["ccl_centroids"]["sha256"] = sha
                if damage != "stale thresholds":
                    m["thresholds"]["centroids_sha256"] = sha
        elif damage == "no thresholds binding":
            def edit(m):
                del m["thresholds"]["centroids_sha256"]
        else:
            def edit(m):
                m["models"]["classifier"]["outputs"] = ["scores"]
        reseal(out, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(out)


SITE = SmearConfig(nucleated_per_mpx=200)
FIELDS = 6
UNLABELLED = "basophil"  # the expert leaves these cells unsure: their centroid must stay


@pytest.fixture(scope="module")
def labelled_session(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "fields").mkdir()
    for i in range(FIELDS):
        cv2.imwrite(str(root / "fields" / f"{i:03d}.png"), render_field(SITE, seed=i).image)
    session = root / "session"
    run_session(SYNTHETIC_BUNDLE, str(root / "fields"), session, threads=1, save_fields=False,
                live=io.StringIO(), quality={"enabled": False})
    archive = export_archive([session], root / "review.zip", ("accepted-sample",), sample_size=100000)
    with zipfile.ZipFile(archive["archive"]) as zf:
        cells = json.loads(zf.read("manifest.json"))["cells"]
    answers = []
    for cell in cells:
        field = render_field(SITE, seed=cell["frame_id"])
        x1, y1, x2, y2 = cell["box"]
        distance = np.hypot(*(field.centres - [(x1 + x2) / 2, (y1 + y2) / 2]).T)
        best = int(np.argmin(distance))
        label = field.class_names[field.labels[best]] if distance[best] < 8 else "not_a_cell"
        answers.append({"cell_id": cell["cell_id"], "label": "unsure" if label == UNLABELLED else label})
    (root / "labels.json").write_text(json.dumps({
        "format": LABELS_FORMAT, "version": LABELS_VERSION, "archive_id": archive["archive_id"],
        "manifest_sha256": archive["manifest_sha256"], "reviewer": "site haematologist", "labels": answers}))
    import_labels([session], root / "labels.json")
    return session


def test_calibrate_adapts_the_centroids_and_refits_the_thresholds(exposed, labelled_session, tmp_path):
    _, source = exposed
    out = tmp_path / "adapted"
    assert main(["calibrate", "--bundle", str(source), "--from-review", str(labelled_session),
                 "--adapt-centroids", "--shrinkage", "5", "--target-accuracy", "0.9",
                 "--out", str(out), "--threads", "1"]) == 0
    base, adapted = load_bundle(source), load_bundle(out)
    note = adapted.ccl_centroids.adapted
    assert note["shrinkage_k"] == 5 and UNLABELLED not in note["adapting_cells"]
    assert adapted.provenance["calibration"]["centroid_adaptation"] == note
    assert adapted.thresholds.centroids_sha256 == adapted.ccl_centroids.sha256 != base.ccl_centroids.sha256
    assert adapted.thresholds.calibration["site_sessions"]
    assert sum(note["threshold_cells"].values()) == adapted.thresholds.calibration["calibration"]["n"]

    # the written centroids are the shrinkage of the adapting half's embeddings, and only for labelled classes
    site = read_site_cells(base, [labelled_session])
    with CellCounter(base, threads=1) as counter:
        embeddings = counter.embed_crops(site.crops)
    adapt, _ = split_cells(site.labels, 0.5, seed=0)
    expected, _ = adapt_centroids(read_centroids(source / "centroids.npy"), embeddings[adapt], site.labels[adapt], 5)
    written = read_centroids(out / adapted.ccl_centroids.file)
    assert np.allclose(written, expected, atol=1e-6)
    names = adapted.class_names
    for c, name in enumerate(names):
        same = np.array_equal(written[c], read_centroids(source / "centroids.npy")[c])
        assert same == (name not in note["adapting_cells"])
    assert not np.array_equal(written, read_centroids(source / "centroids.npy"))


def test_adapt_centroids_needs_a_bundle_with_a_centroids_file(labelled_session, tmp_path, capsys):
    code = main(["calibrate", "--bundle", str(SYNTHETIC_BUNDLE), "--from-review", str(labelled_session),
                 "--adapt-centroids", "--target-accuracy", "0.9", "--out", str(tmp_path / "b")])
    assert code == 2
    assert "expose-embeddings" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
