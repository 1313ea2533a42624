"""What tests (and the benchmarks built on them) share: the bundles they run on and the helpers
that make sessions, archives, data folders and faults. One module, so no test reads another's.

SYNTHETIC_BUNDLE is the project's synthetic bundle (`edge export
synthetic-bundle`; the default bundle until the real-data one): tiny models trained on the synthetic
smear generator's fields and cells, so a test can check counts and classes
against the generator's ground truth. The shipped default bundle
(edge.DEFAULT_BUNDLE) is trained on real smears and is tested for what it is.
"""
import csv
import hashlib
import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from edge.cli import main as edge_main
from edge.review import ReviewError
from edge.review.label_import import import_labels
from edge.runtime.bundle import BundleError, load_bundle, sha256_file
from edge.synthetic.datasets import write_voc_fields
from edge.synthetic.smear import render_cell_crops
from firmware_bridge.framing import FrameDecoder
from firmware_bridge.messages import ProtocolError, from_frame

SYNTHETIC_BUNDLE = Path(__file__).parent / "fixtures" / "synthetic_bundle"


def add_tensorrt_variant(root: Path, role: str, source: Path | None = None) -> str:
    """Make `role` of the bundle folder `root` an INT8 model with a TensorRT variant; returns the variant's name.

    The variant is `source` copied into the bundle (by default a copy of the
    model's own file: enough for what reads only the manifest and the hashes).
    """
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["models"][role]
    name = Path(entry["file"]).stem + "-tensorrt.onnx"
    shutil.copyfile(source or root / entry["file"], root / name)
    entry["precision"] = "int8"
    entry["tensorrt"] = {"file": name, "sha256": hashlib.sha256((root / name).read_bytes()).hexdigest()}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return name


# ---------------------------------------------------------------- single-cell image folders


def write_crops(root, per_class=10, size=48):
    for label, name in enumerate(("neutrophil", "lymphocyte", "monocyte")):
        (root / name).mkdir(parents=True)
        for i, crop in enumerate(render_cell_crops(np.full(per_class, label), size, seed=label)):
            cv2.imwrite(str(root / name / f"{i:02d}.{'png' if i % 2 else 'jpg'}"), crop)
    return root


# ---------------------------------------------------------------- detection fields


def write_split_fields(root, seed=11):
    """Synthetic VOC fields (class 'cell') with train and val splits."""
    write_voc_fields(root, count=4, width=512, height=384, seed=seed)
    names = sorted(p.stem for p in (root / "Annotations").iterdir())
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(names[2:]) + "\n")
    return root


# ---------------------------------------------------------------- sessions, review archives and labels


def make_session(root, frames=2, threshold=0.97, seed=5):
    """An `edge run` session on synthetic fields; a high threshold sends many cells to review."""
    bundle = root / "bundle"
    if not bundle.exists():
        shutil.copytree(SYNTHETIC_BUNDLE, bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["thresholds"]["global"] = threshold
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    out = root / f"session-{seed}"
    assert edge_main(["run", "--bundle", str(bundle), "--source", f"synthetic:frames={frames},seed={seed}",
                 "--out", str(out)]) == 0
    return out


def rename_class(session, old, new):
    """Rename a class throughout a session's records, as a bundle with that class name would have written them."""
    meta = json.loads((session / "session.json").read_text())
    meta["class_names"] = [new if n == old else n for n in meta["class_names"]]
    (session / "session.json").write_text(json.dumps(meta))
    with sqlite3.connect(session / "review" / "queue.sqlite") as db:
        db.execute("UPDATE rejected_cells SET suggested = ? WHERE suggested = ?", (new, old))
    with open(session / "cells.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    column = rows[0].index("predicted")
    for row in rows[1:]:
        row[column] = new if row[column] == old else row[column]
    with open(session / "cells.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def export(session_dirs, out, *extra):
    args = ["review", "export", "--out", str(out), *extra]
    for s in session_dirs:
        args += ["--session", str(s)]
    assert edge_main(args) == 0
    return out


def archive_manifest(archive):
    with zipfile.ZipFile(archive) as zf:
        raw = zf.read("manifest.json")
    return json.loads(raw), hashlib.sha256(raw).hexdigest()


def labels_for(archive, answers, reviewer="Dr Test"):
    """A labels file as the review page saves it; answers maps cell id -> label."""
    manifest, sha = archive_manifest(archive)
    return {"format": "edge-review-labels", "version": 1, "archive_id": manifest["archive_id"],
            "manifest_sha256": sha, "reviewer": reviewer, "saved": "2026-11-22T10:00:00Z",
            "labels": [{"cell_id": c, "label": v, "labelled_at": "2026-11-22T09:59:00Z"} for c, v in answers.items()]}


# ---------------------------------------------------------------- fuzz targets: each input loads or is refused with the module's own error


def check_manifest(bundle: Path, raw: bytes) -> str:
    """Load a bundle whose manifest.json is `raw`: 'loaded' or 'refused', never another error."""
    (bundle / "manifest.json").write_bytes(raw)
    try:
        load_bundle(bundle)
    except BundleError:
        return "refused"
    return "loaded"


def check_labels(session: Path, raw: bytes, name: str = "labels.json") -> str:
    """Import `raw` as a labels file (or a returned archive, by its name): 'imported' or 'refused'."""
    path = session.parent / name
    path.write_bytes(raw)
    try:
        import_labels([session], path)
    except ReviewError:
        return "refused"
    return "imported"


def check_serial(raw: bytes) -> int:
    """Decode a byte stream from the serial line; every frame it yields reads as a message or
    is refused as a ProtocolError. Returns the number of frames."""
    frames = FrameDecoder().feed(raw)
    for frame in frames:
        try:
            from_frame(frame)
        except ProtocolError:
            pass
    return len(frames)


# ---------------------------------------------------------------- kill and resume


EDGE = [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main(sys.argv[1:]))"]


def session_state(out: Path) -> dict:
    """What a session holds, without the ids that differ between runs."""
    with open(out / "cells.csv") as fh:
        cells = sorted((r["frame_id"], r["x1"], r["y1"], r["x2"], r["y2"], r["predicted"], r["accepted"])
                       for r in csv.DictReader(fh))
    results = json.loads((out / "results.json").read_text())
    state = {"cells": cells, "counts": results["counts"], "rejected": results["rejected"],
             "frames": results["frames"], "finished": results["finished"]}
    for name in ("session.sqlite", "review/queue.sqlite"):
        db = sqlite3.connect(out / name)
        try:
            state[name] = db.execute("PRAGMA integrity_check").fetchone()[0]
            if name == "session.sqlite":
                state["db_cells"] = db.execute("SELECT frame_id, x1, y1, x2, y2, predicted, accepted FROM cells"
                                               " ORDER BY frame_id, x1, y1").fetchall()
            else:
                rows = db.execute("SELECT frame_id, x1, y1, x2, y2 FROM rejected_cells").fetchall()
                state["queued"] = sorted(rows)
                state["queued_crops_present"] = all(
                    (out / "review" / f).is_file()
                    for (f,) in db.execute("SELECT crop_file FROM rejected_cells"))
        finally:
            db.close()
    return state


def assert_same_as_uninterrupted(out: Path, reference: dict) -> None:
    state = session_state(out)
    assert state["session.sqlite"] == state["review/queue.sqlite"] == "ok"
    assert state["finished"]
    for key in ("cells", "counts", "rejected", "frames", "queued"):
        assert state[key] == reference[key], key
    assert len(state["db_cells"]) == len(state["cells"]) and state["queued_crops_present"]
    assert len(state["queued"]) == state["rejected"], "every rejected cell queued, once"


def start_edge_run(out: Path, source: str, resume: bool) -> subprocess.Popen:
    args = ["run", "--out", str(out), "--no-save-fields", "--threads", "1"]
    args += ["--resume"] if resume else ["--bundle", str(SYNTHETIC_BUNDLE), "--source", source]
    return subprocess.Popen(EDGE + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_and_resume(out: Path, source: str, kills: int, rng: random.Random, max_delay_s: float) -> dict:
    """SIGKILL `edge run` on `out` `kills` times, each after a random delay in [0, max_delay_s);
    each next start resumes the session (or starts it afresh when the kill came before the
    session existed); finally run it to its end. Returns what happened."""
    done = {"kills": 0, "finished_before_kill": 0, "resumes": 0, "fresh_starts": 0}
    while done["kills"] < kills:
        resume = (out / "session.json").exists()
        done["resumes" if resume else "fresh_starts"] += 1
        proc = start_edge_run(out, source, resume)
        try:
            proc.wait(timeout=rng.uniform(0, max_delay_s))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done["kills"] += 1
            continue
        stderr = proc.stderr.read().decode()
        assert proc.returncode == 0, stderr
        done["finished_before_kill"] += 1
        if json.loads((out / "results.json").read_text())["finished"]:
            return done  # it ran to its end before the kill came
    resume = (out / "session.json").exists()
    final = start_edge_run(out, source, resume)
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()
    done["resumes" if resume else "fresh_starts"] += 1
    return done


# ---------------------------------------------------------------- tiny hand-made models

# Every tile of the tiny detector reports one cell at this box (tile pixels), score 0.9.
TINY_BOX = (100.0, 100.0, 140.0, 140.0)


def save_model(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def tiny_detector(path, nan_when_dark=False, tile=256):
    """One cell per tile. With `nan_when_dark`, a tile whose normalised mean is negative (a dark
    tile) gets NaN boxes and scores: Sqrt of a negative number."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, tile, tile])
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 1, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Identity" if nan_when_dark else "Abs", ["mean"], ["signed"]),
        helper.make_node("Sqrt", ["signed"], ["root"]),
        helper.make_node("Mul", ["root", "zero"], ["nought"]),            # 0, or NaN for a dark tile
        helper.make_node("Unsqueeze", ["nought", "ax12"], ["n3"]),
        helper.make_node("Add", ["n3", "box"], ["boxes"]),
        helper.make_node("Unsqueeze", ["nought", "ax1"], ["n2"]),
        helper.make_node("Add", ["n2", "score"], ["scores"]),
    ]
    inits = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("box", TensorProto.FLOAT, [1, 1, 4], list(TINY_BOX)),
             helper.make_tensor("score", TensorProto.FLOAT, [1], [0.9]),
             helper.make_tensor("ax12", TensorProto.INT64, [2], [1, 2]),
             helper.make_tensor("ax1", TensorProto.INT64, [1], [1])]
    save_model(helper.make_graph(nodes, "tiny_detector", [image], [boxes, scores], inits), path)


def tiny_classifier(path, classes=5, inf_when_dark=False, size=64):
    """Class scores in (0, 1) from the crop's mean colour. With `inf_when_dark`, a crop whose
    normalised mean is negative scores -Inf: Log(Relu(x)) of a negative x."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])
    weights = np.random.default_rng(0).normal(0, 1, (3, classes)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["colour"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["colour", "weights"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["d"]),
        helper.make_node("ReduceMean", ["colour"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Relu" if inf_when_dark else "Abs", ["mean"], ["positive"]),
        helper.make_node("Add", ["positive", "tiny"] if not inf_when_dark else ["positive", "nothing"],
                         ["guarded"]),
        helper.make_node("Log", ["guarded"], ["log"]),
        helper.make_node("Mul", ["log", "small"], ["offset"]),            # about 0, or -Inf when dark
        helper.make_node("Add", ["d", "offset"], ["scores"]),
    ]
    inits = [helper.make_tensor("weights", TensorProto.FLOAT, [3, classes], weights.ravel().tolist()),
             helper.make_tensor("tiny", TensorProto.FLOAT, [], [1e-3]),
             helper.make_tensor("nothing", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("small", TensorProto.FLOAT, [], [1e-6])]
    save_model(helper.make_graph(nodes, "tiny_classifier", [image], [scores], inits), path)


def tiny_bundle(root, *, detector_nan=False, classifier_inf=False, tile=256):
    """The default bundle's manifest with the tiny models in place of its own, resealed."""
    shutil.copytree(SYNTHETIC_BUNDLE, root)
    tiny_detector(root / "detector.onnx", nan_when_dark=detector_nan, tile=tile)
    tiny_classifier(root / "classifier.onnx", inf_when_dark=classifier_inf)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["models"]["detector"]["input_shape"][2:] = [tile, tile]
    manifest["tiling"]["tile_size"] = tile
    for role in ("detector", "classifier"):
        manifest["models"][role]["sha256"] = sha256_file(root / f"{role}.onnx")
    manifest["thresholds"]["classifier_sha256"] = manifest["models"]["classifier"]["sha256"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
