"""The bundles the tests run on.

SYNTHETIC_BUNDLE is the project's synthetic bundle (`edge export
synthetic-bundle`; the default bundle until the real-data one): tiny models trained on the synthetic
smear generator's fields and cells, so a test can check counts and classes
against the generator's ground truth. The shipped default bundle
(edge.DEFAULT_BUNDLE) is trained on real smears and is tested for what it is.
"""
import hashlib
import json
import shutil
from pathlib import Path

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
