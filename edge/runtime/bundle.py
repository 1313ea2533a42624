"""Model bundle v1: the only contract between the export stage and the device.

A bundle is a folder (or a .tar of one) holding manifest.json and the model
files it names. Loading verifies every field and every SHA-256 before anything
runs, and refuses a bad bundle with a `BundleError` whose message names the
problem in one sentence. The manifest's rules are also published as a JSON
Schema (manifest.schema.json beside this file) that other implementations can
read; the loader checks every manifest against it too, after its own checks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.runtime.centroids import EMBEDDINGS, CentroidsSpec, read_centroids, save_centroids
from edge.runtime.class_roles import check_roles, infer_roles
from edge.runtime.drift import DriftBands
from edge.runtime.preprocess import Normalisation
from edge.runtime.quality import QualityLimits
from edge.runtime.stain_normaliser import StainReference

log = logging.getLogger("edge.runtime.bundle")

FORMAT_NAME = "edge-cell-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCHEMA = Path(__file__).with_name("manifest.schema.json")
MODEL_ROLES = ("detector", "classifier")
CLASSIFIER_HEADS = ("ccl", "softmax")
PRECISIONS = ("fp32", "fp16", "int8")
THRESHOLD_RULES = {"ccl": ("ccl",), "softmax": ("softmax", "icp")}
THRESHOLD_KEYS = {"global", "target_accuracy", "method", "confidence", "rule", "per_class",
                  "classifier_sha256", "calibration", "centroids_sha256"}
TILING_KEYS = {"tile_size", "overlap", "scale", "score_threshold", "crop_context", "pixel_size_um",
               "red_cell_chord_um"}


class BundleError(ValueError):
    """A bundle that does not verify; the message says what is wrong."""


@dataclass(frozen=True)
class TensorRTVariant:
    """The file TensorRT builds an INT8 model's engine from: the same model quantised symmetrically.

    An INT8 model file is QDQ with uint8 activations (U8S8, what ONNX Runtime
    runs fast on x86); TensorRT parses only symmetric int8 Q/DQ (zero points
    0), so the export writes this twin beside it, calibrated on the same
    ranges. Verified on load like the main file.
    """

    file: str
    sha256: str

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256}


@dataclass(frozen=True)
class ModelSpec:
    """One model file and how to feed it; an INT8 model may carry its TensorRT variant."""

    file: str
    sha256: str
    input_name: str
    input_shape: tuple[int, int, int, int]  # N, C, H, W; N = -1 for a dynamic batch
    outputs: tuple[str, ...]
    layout: str = "NCHW"
    dtype: str = "float32"
    colour_order: str = "RGB"
    normalisation: Normalisation = field(default_factory=Normalisation)
    precision: str = "fp32"
    tensorrt: TensorRTVariant | None = None  # only for precision int8; older bundles have none

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input_shape[2], self.input_shape[3]

    @property
    def files(self) -> tuple[str, ...]:
        """The model's files in its bundle: its own, then its TensorRT variant's if it has one."""
        return (self.file,) if self.tensorrt is None else (self.file, self.tensorrt.file)

    def to_dict(self) -> dict:
        d = {
            "file": self.file, "sha256": self.sha256, "input_name": self.input_name,
            "input_shape": list(self.input_shape), "outputs": list(self.outputs),
            "layout": self.layout, "dtype": self.dtype, "colour_order": self.colour_order,
            "normalisation": self.normalisation.to_dict(), "precision": self.precision,
        }
        if self.tensorrt is not None:
            d["tensorrt"] = self.tensorrt.to_dict()
        return d


@dataclass(frozen=True)
class Thresholds:
    """Reject thresholds, fitted on the outputs of the classifier whose SHA-256 they record.

    `rule` is what they were fitted for: "ccl" (the CCL confidence), "softmax"
    (the top probability) or "icp" (a conformal predictor's per-class probability
    cuts); None means the head's own rule. `method` is the search ("descending",
    the CCL paper's, or "clopper-pearson"), `confidence` its 1 - delta. A
    per-class threshold of inf sends every cell predicted as that class to review.
    """

    global_threshold: float
    target_accuracy: float
    method: str
    per_class: dict[str, float] = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    classifier_sha256: str | None = None
    rule: str | None = None
    confidence: float | None = None
    centroids_sha256: str | None = None  # the bundle's ccl_centroids file they were fitted with, if any

    def for_class(self, name: str) -> float:
        return self.per_class.get(name, self.global_threshold)

    def to_dict(self) -> dict:
        return {"global": self.global_threshold, "target_accuracy": self.target_accuracy,
                "method": self.method, "confidence": self.confidence, "rule": self.rule,
                "per_class": {k: v if math.isfinite(v) else "inf" for k, v in self.per_class.items()},
                "classifier_sha256": self.classifier_sha256, "calibration": self.calibration} | (
                    {} if self.centroids_sha256 is None else {"centroids_sha256": self.centroids_sha256})


@dataclass(frozen=True)
class Tiling:
    tile_size: int
    overlap: int
    scale: float = 1.0  # frames are resized by this factor before tiling
    score_threshold: float = 0.3
    crop_context: float = 1.3  # crop side = context x the longer box side
    # micrometres per pixel of the camera frames `scale` is for; the detector sees pixel_size_um / scale.
    # None: not stated (the frames must then come from a camera like the bundle's own)
    pixel_size_um: float | None = None
    # the modal red-cell chord (edge.runtime.red_cell_ruler) in micrometres, as read at the bundle's
    # own lab; None: the pixel size cannot be estimated from the fields
    red_cell_chord_um: float | None = None

    def to_dict(self) -> dict:
        d = {"tile_size": self.tile_size, "overlap": self.overlap, "scale": self.scale,
             "score_threshold": self.score_threshold, "crop_context": self.crop_context}
        if self.pixel_size_um is not None:
            d["pixel_size_um"] = self.pixel_size_um
        if self.red_cell_chord_um is not None:
            d["red_cell_chord_um"] = self.red_cell_chord_um
        return d

    def detector_pixel_size(self) -> float | None:
        """Micrometres per pixel of the frames as the detector sees them (after `scale`)."""
        return None if self.pixel_size_um is None else self.pixel_size_um / self.scale

    def for_pixel_size(self, pixel_size_um: float) -> "Tiling":
        """This tiling for frames of `pixel_size_um`: rescaled so the detector sees cells at its own
        scale. The cell view needs no change: it is cut relative to each cell's box."""
        if self.pixel_size_um is None:
            raise BundleError("this bundle does not state the pixel size its detector expects "
                              "(tiling.pixel_size_um), so --pixel-size cannot be applied")
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise BundleError(f"a pixel size must be a positive number of micrometres, got {pixel_size_um}")
        scale = self.scale * pixel_size_um / self.pixel_size_um
        if not 0 < scale <= 8:
            raise BundleError(f"frames of {pixel_size_um} um per pixel would need the detector's frames "
                              f"resized by {scale:.3g}, outside (0, 8]: is the pixel size right?")
        return replace(self, scale=scale, pixel_size_um=float(pixel_size_um))


@dataclass(frozen=True)
class Bundle:
    root: Path
    class_names: tuple[str, ...]
    classifier_head: str
    ccl_sigma: float | None
    detector: ModelSpec
    classifier: ModelSpec
    thresholds: Thresholds
    tiling: Tiling
    provenance: dict
    manifest_sha256: str
    quality: QualityLimits | None = None   # the field quality gate's limits; None: the defaults
    drift: DriftBands | None = None        # expected bands of the drift statistics; None: not fitted
    class_roles: dict[str, str] = field(default_factory=dict)  # class -> leukocyte | nrbc | platelet | other
    class_roles_stated: bool = False       # given by the manifest (else read from the class names)
    ccl_centroids: CentroidsSpec | None = None  # the device scores with these (edge.runtime.centroids)
    stain_reference: StainReference | None = None  # views normalised toward it; None: not normalised

    def at_pixel_size(self, pixel_size_um: float | None) -> "Bundle":
        """This bundle for a camera of `pixel_size_um` micrometres per pixel (None: unchanged)."""
        return self if pixel_size_um is None else replace(self, tiling=self.tiling.for_pixel_size(pixel_size_um))

    def model_path(self, spec: ModelSpec) -> Path:
        return self.root / spec.file

    def tensorrt_path(self, spec: ModelSpec) -> Path:
        """The file TensorRT builds from and looks engines up by: the TensorRT variant if any, else the model's."""
        return self.root / (spec.tensorrt.file if spec.tensorrt is not None else spec.file)


# ---------------------------------------------------------------- writing

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_model_files(bundle: Bundle, spec: ModelSpec, root: Path) -> None:
    """Copy one of `bundle`'s models into the folder `root`: its file and its TensorRT variant, if any."""
    for name in spec.files:
        target = Path(root) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle.root / name, target)


def derive_bundle(bundle: Bundle, out: Path, provenance_key: str, note: dict,
                  centroids: np.ndarray | None = None, **changes) -> Bundle:
    """A new bundle at `out`: `bundle`'s models, its manifest with `changes` (any of thresholds,
    tiling, quality, drift) and `note` recorded under provenance[provenance_key]. Written to a
    staging folder, sealed, verified by loading, then moved to `out` (which must not exist, or be an
    empty folder): a failure leaves no half-written bundle. `centroids` (C, M) replace the CCL
    centroids file of a bundle with a ccl_centroids section."""
    unknown = set(changes) - {"thresholds", "tiling", "quality", "drift", "stain_reference", "ccl_centroids"}
    if unknown:
        raise ValueError(f"derive_bundle cannot change {sorted(unknown)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not empty; give a new folder for the bundle")
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for spec in (bundle.detector, bundle.classifier):
            copy_model_files(bundle, spec, staging)
        _place_centroids(bundle, changes.get("ccl_centroids", bundle.ccl_centroids), centroids, staging)
        fields = {"ccl_centroids": bundle.ccl_centroids, "thresholds": bundle.thresholds, "tiling": bundle.tiling, "quality": bundle.quality,
                  "drift": bundle.drift, "stain_reference": bundle.stain_reference} | changes
        write_bundle(staging, class_names=list(bundle.class_names), classifier_head=bundle.classifier_head,
                     ccl_sigma=bundle.ccl_sigma, detector=bundle.detector, classifier=bundle.classifier,
                     provenance={**bundle.provenance, provenance_key: note},
                     class_roles=bundle.class_roles if bundle.class_roles_stated else None, **fields)
        load_bundle(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return load_bundle(out)


def _place_centroids(bundle: Bundle, spec: CentroidsSpec | None, centroids: np.ndarray | None,
                     root: Path) -> None:
    """The centroids file of a derived bundle: `centroids` when given, else a copy of `bundle`'s."""
    if spec is None:
        if centroids is not None:
            raise ValueError("new centroids need a ccl_centroids section")
        return
    target = Path(root) / spec.file
    target.parent.mkdir(parents=True, exist_ok=True)
    if centroids is not None:
        save_centroids(target, centroids)
    else:
        shutil.copyfile(bundle.root / bundle.ccl_centroids.file, target)


def write_bundle(root: Path, *, class_names: list[str], classifier_head: str,
                 ccl_sigma: float | None, detector: ModelSpec, classifier: ModelSpec,
                 thresholds: Thresholds, tiling: Tiling, provenance: dict,
                 quality: QualityLimits | None = None, drift: DriftBands | None = None,
                 class_roles: dict[str, str] | None = None,
                 stain_reference: StainReference | None = None,
                 ccl_centroids: CentroidsSpec | None = None) -> Path:
    """Write manifest.json for model files (and a centroids file) already placed in `root`.

    The SHA-256 fields of the specs (and of their TensorRT variants) are
    recomputed from the files, so a caller cannot seal a bundle whose hashes
    disagree with its contents.
    """
    root = Path(root)
    models = {}
    for role, spec in (("detector", detector), ("classifier", classifier)):
        entry = spec.to_dict()
        entry["sha256"] = sha256_file(root / spec.file)
        if spec.tensorrt is not None:
            entry["tensorrt"]["sha256"] = sha256_file(root / spec.tensorrt.file)
        models[role] = entry
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "class_names": list(class_names),
        "classifier_head": classifier_head,
        "ccl_sigma": ccl_sigma,
        "models": models,
        "thresholds": thresholds.to_dict(),
        "tiling": tiling.to_dict(),
        "provenance": provenance,
    }
    if quality is not None:
        manifest["quality"] = quality.to_dict()
    if drift is not None:
        manifest["drift"] = drift.to_dict()
    if class_roles is not None:
        manifest["class_roles"] = dict(class_roles)
    if stain_reference is not None:
        manifest["stain_normalisation"] = stain_reference.to_dict()
    if ccl_centroids is not None:
        manifest["ccl_centroids"] = replace(ccl_centroids, sha256=sha256_file(root / ccl_centroids.file)).to_dict()
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return root


# ---------------------------------------------------------------- loading

def load_bundle(path: str | Path, check_thresholds: bool = True) -> Bundle:
    """Load and verify a bundle folder or .tar; raise BundleError if it does not verify.

    `check_thresholds=False` skips only the check that the thresholds were fitted
    on this classifier, for `edge calibrate`, which replaces them.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    if path.is_file():
        path = _extract_tar(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a bundle: it has no {MANIFEST}")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc})") from None
    bundle = _parse_manifest(manifest, path.resolve(), hashlib.sha256(raw).hexdigest(), check_thresholds)
    for role, spec in (("detector", bundle.detector), ("classifier", bundle.classifier)):
        _verify_file(bundle.root, spec.file, spec.sha256, "model file")
        if spec.tensorrt is not None:
            _verify_file(bundle.root, spec.tensorrt.file, spec.tensorrt.sha256, f"the {role}'s TensorRT variant")
    if bundle.ccl_centroids is not None:
        _verify_centroids(bundle.root, bundle.ccl_centroids, len(bundle.class_names))
    return bundle


def _verify_centroids(root: Path, spec: CentroidsSpec, classes: int) -> None:
    _verify_file(root, spec.file, spec.sha256, "centroids file")
    try:
        read_centroids(root / spec.file, classes)
    except ValueError as exc:
        raise BundleError(f"centroids file {spec.file}: {exc}") from None


def _extract_tar(archive: Path) -> Path:
    if not tarfile.is_tarfile(archive):
        raise BundleError(f"bundle {archive} is neither a folder nor a tar archive")
    target = Path(tempfile.mkdtemp(prefix="edge-bundle-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")  # refuses members that escape or are links out
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise BundleError(f"cannot unpack bundle {archive}: {exc}") from None
    entries = [p for p in target.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and not (target / MANIFEST).exists():
        return entries[0]
    return target


def manifest_schema() -> dict:
    """The published JSON Schema of manifest.json (format version 1)."""
    return json.loads(SCHEMA.read_text())


def check_against_schema(manifest: Any) -> None:
    """BundleError naming the first rule of the JSON Schema that `manifest` breaks."""
    import jsonschema  # only loading a bundle needs it

    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(manifest_schema()).iter_errors(manifest))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "the manifest"
        raise BundleError(f"{where} does not match the manifest schema: {error.message}")


def _parse_manifest(m: Any, root: Path, manifest_sha: str, check_thresholds: bool = True) -> Bundle:
    _require(isinstance(m, dict), "the manifest is not a JSON object")
    _require(m.get("format") == FORMAT_NAME,
             f"the manifest's format is {m.get('format')!r}, expected {FORMAT_NAME!r}")
    version = m.get("format_version")
    _require(version == FORMAT_VERSION,
             f"unknown bundle format version {version!r}; this engine reads version {FORMAT_VERSION}")
    known = {"format", "format_version", "class_names", "classifier_head", "ccl_sigma",
             "models", "thresholds", "tiling", "provenance", "quality", "drift", "class_roles",
             "stain_normalisation", "ccl_centroids"}
    extra = sorted(set(m) - known)
    _require(not extra, f"the manifest has unknown fields: {', '.join(extra)}")

    names = m.get("class_names")
    _require(isinstance(names, list) and len(names) >= 2
             and all(isinstance(n, str) and n for n in names),
             "class_names must be a list of at least two non-empty strings")
    _require(len(set(names)) == len(names), "class_names has duplicates")
    head = m.get("classifier_head")
    _require(head in CLASSIFIER_HEADS, f"classifier_head must be one of {CLASSIFIER_HEADS}, got {head!r}")
    sigma = m.get("ccl_sigma")
    if head == "ccl":
        _require(_is_number(sigma) and sigma > 0, "ccl_sigma must be a positive number for a CCL head")

    models = m.get("models")
    _require(isinstance(models, dict) and set(models) == set(MODEL_ROLES),
             f"models must name exactly {', '.join(MODEL_ROLES)}")
    detector = _parse_model("detector", models["detector"], root)
    classifier = _parse_model("classifier", models["classifier"], root)
    _require(set(detector.outputs) == {"boxes", "scores"},
             "the detector must have outputs 'boxes' and 'scores'")
    _require(classifier.outputs[0] != EMBEDDINGS and classifier.outputs[1:] in ((), (EMBEDDINGS,)),
             f"the classifier must have one output, or its scores then {EMBEDDINGS!r}")
    centroids = _parse_optional("ccl_centroids", m.get("ccl_centroids"), CentroidsSpec.from_dict)
    if centroids is not None:
        _require(head == "ccl", "ccl_centroids is only for a CCL head")
        _require(EMBEDDINGS in classifier.outputs, f"ccl_centroids needs the classifier output {EMBEDDINGS!r} "
                 "(convert the bundle with `edge export expose-embeddings`)")
        _parse_file(centroids.file, root, "ccl_centroids.file")

    thresholds = _parse_thresholds(m.get("thresholds"), names, head)
    if check_thresholds:
        _check_thresholds_fit(thresholds, classifier, root, centroids)
    tiling = _parse_tiling(m.get("tiling"), detector)
    provenance = m.get("provenance")
    _require(isinstance(provenance, dict), "provenance must be an object")
    quality = _parse_optional("quality", m.get("quality"), QualityLimits.from_dict)
    drift = _parse_optional("drift", m.get("drift"), lambda d: DriftBands.from_dict(d, names))
    stain = _parse_optional("stain_normalisation", m.get("stain_normalisation"), StainReference.from_dict)
    stated = m.get("class_roles")
    try:
        roles = infer_roles(names) if stated is None else check_roles(stated, names)
    except ValueError as exc:
        raise BundleError(str(exc)) from None
    check_against_schema(m)
    return Bundle(root=root, class_names=tuple(names), classifier_head=head,
                  ccl_sigma=float(sigma) if sigma is not None else None,
                  detector=detector, classifier=classifier, thresholds=thresholds,
                  tiling=tiling, provenance=provenance, manifest_sha256=manifest_sha,
                  quality=quality, drift=drift, class_roles=roles, class_roles_stated=stated is not None,
                  stain_reference=stain, ccl_centroids=centroids)


def _parse_optional(name: str, d: Any, parse):
    """An optional manifest section (absent in older bundles): None, or parsed with its errors as BundleError."""
    if d is None:
        return None
    try:
        return parse(d)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"the manifest's {name} section is invalid: {exc}") from None


def _parse_model(role: str, d: Any, root: Path) -> ModelSpec:
    _require(isinstance(d, dict), f"models.{role} is not an object")
    fields = {"file", "sha256", "input_name", "input_shape", "outputs", "layout", "dtype",
              "colour_order", "normalisation", "precision"}
    missing = sorted(fields - set(d))
    _require(not missing, f"models.{role} lacks {', '.join(missing)}")
    extra = sorted(set(d) - fields - {"tensorrt"})
    _require(not extra, f"models.{role} has unknown fields: {', '.join(extra)}")
    file = _parse_file(d["file"], root, f"models.{role}.file")
    _require(_is_sha256(d["sha256"]), f"models.{role}.sha256 must be a 64-character hex digest")
    shape = d["input_shape"]
    _require(isinstance(shape, list) and len(shape) == 4
             and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
             and (shape[0] == -1 or shape[0] > 0) and shape[1] == 3
             and shape[2] > 0 and shape[3] > 0,
             f"models.{role}.input_shape must be [N|-1, 3, H, W] with positive integers")
    _require(isinstance(d["input_name"], str) and d["input_name"], f"models.{role}.input_name must be a string")
    outputs = d["outputs"]
    _require(isinstance(outputs, list) and outputs and all(isinstance(o, str) for o in outputs),
             f"models.{role}.outputs must be a list of names")
    _require(d["layout"] == "NCHW", f"models.{role}.layout must be NCHW")
    _require(d["dtype"] == "float32", f"models.{role}.dtype must be float32")
    _require(d["colour_order"] == "RGB", f"models.{role}.colour_order must be RGB")
    _require(d["precision"] in PRECISIONS, f"models.{role}.precision must be one of {PRECISIONS}")
    norm = d["normalisation"]
    _require(isinstance(norm, dict) and set(norm) == {"mean", "std"} and all(
        isinstance(norm[k], list) and len(norm[k]) == 3 and all(_is_finite(v) for v in norm[k])
        for k in ("mean", "std")) and all(v > 0 for v in norm["std"]),
        f"models.{role}.normalisation must have three-number mean and positive std, and nothing else")
    tensorrt = None
    if "tensorrt" in d:
        tensorrt = _parse_tensorrt(d["tensorrt"], role, d["precision"], file, root)
    return ModelSpec(file=file, sha256=d["sha256"].lower(), input_name=d["input_name"],
                     input_shape=tuple(shape), outputs=tuple(outputs), layout=d["layout"],
                     dtype=d["dtype"], colour_order=d["colour_order"],
                     normalisation=Normalisation.from_dict(norm), precision=d["precision"], tensorrt=tensorrt)


def _parse_file(file: Any, root: Path, where: str) -> str:
    _require(isinstance(file, str) and file, f"{where} must be a file name")
    _require((root / file).resolve().is_relative_to(root), f"{where} {file!r} points outside the bundle")
    return file


def _parse_tensorrt(d: Any, role: str, precision: str, model_file: str, root: Path) -> TensorRTVariant:
    where = f"models.{role}.tensorrt"
    _require(precision == "int8", f"{where} is only for an int8 model; this {role} is {precision}")
    _require(isinstance(d, dict), f"{where} is not an object")
    missing = sorted({"file", "sha256"} - set(d))
    _require(not missing, f"{where} lacks {', '.join(missing)}")
    _require_known_keys(d, {"file", "sha256"}, where)
    file = _parse_file(d["file"], root, f"{where}.file")
    _require((root / file).resolve() != (root / model_file).resolve(),
             f"{where}.file must be a file of its own, not the model file {model_file!r}")
    _require(_is_sha256(d["sha256"]), f"{where}.sha256 must be a 64-character hex digest")
    return TensorRTVariant(file, d["sha256"].lower())


def _parse_thresholds(d: Any, names: list[str], head: str) -> Thresholds:
    _require(isinstance(d, dict), "thresholds is not an object")
    _require_known_keys(d, THRESHOLD_KEYS, "thresholds")
    g = d.get("global")
    _require(_is_number(g) and math.isfinite(g), "thresholds.global must be a finite number")
    target = d.get("target_accuracy")
    _require(_is_number(target) and 0 < target <= 1, "thresholds.target_accuracy must be in (0, 1]")
    _require(isinstance(d.get("method"), str), "thresholds.method must be a string")
    per_class = d.get("per_class", {})
    _require(isinstance(per_class, dict) and all(
        k in names and (v == "inf" or _is_number(v) and math.isfinite(v)) for k, v in per_class.items()),
        'thresholds.per_class must map known class names to finite numbers or "inf"')
    calibration = d.get("calibration", {})
    _require(isinstance(calibration, dict), "thresholds.calibration must be an object")
    sha = d.get("classifier_sha256")
    _require(sha is None or isinstance(sha, str) and len(sha) == 64,
             "thresholds.classifier_sha256 must be a 64-character hex digest")
    centroids_sha = d.get("centroids_sha256")
    _require(centroids_sha is None or _is_sha256(centroids_sha),
             "thresholds.centroids_sha256 must be a 64-character hex digest")
    rule = d.get("rule")
    allowed = THRESHOLD_RULES[head]
    _require(rule is None or rule in allowed,
             f"thresholds.rule {rule!r} does not apply to a {head} head (allowed: {', '.join(allowed)})")
    confidence = d.get("confidence")
    _require(confidence is None or _is_number(confidence) and 0 < confidence < 1,
             "thresholds.confidence must be in (0, 1) or null")
    return Thresholds(float(g), float(target), d["method"],
                      {k: float(v) for k, v in per_class.items()}, calibration,
                      sha.lower() if sha else None, rule,
                      float(confidence) if confidence is not None else None,
                      centroids_sha.lower() if centroids_sha else None)


def _check_thresholds_fit(thresholds: Thresholds, classifier: ModelSpec, root: Path,
                          centroids: CentroidsSpec | None = None) -> None:
    """Thresholds belong to the model (and CCL centroids) they were fitted on: refuse them on any other."""
    bound, stated = thresholds.centroids_sha256, centroids and centroids.sha256
    if bound != stated:
        raise BundleError(
            ("the thresholds do not record the CCL centroids they were fitted with" if bound is None else
             f"the thresholds were fitted with CCL centroids sha256 {bound[:12]}..., " +
             ("but the bundle states no ccl_centroids" if stated is None else
              f"not this bundle's {centroids.file} ({stated[:12]}...)")) +
            ": refit them on this model with `edge calibrate`")
    fitted = thresholds.classifier_sha256
    if fitted is None:
        log.warning("the thresholds of bundle %s do not record the classifier they were fitted for; "
                    "refit them on this model with `edge calibrate`", root)
    elif fitted != classifier.sha256:
        raise BundleError(f"the thresholds were fitted for classifier sha256 {fitted[:12]}..., not for this "
                          f"bundle's {classifier.file} ({classifier.sha256[:12]}...): "
                          "refit them on this model with `edge calibrate`")


def _parse_tiling(d: Any, detector: ModelSpec) -> Tiling:
    _require(isinstance(d, dict), "tiling is not an object")
    _require_known_keys(d, TILING_KEYS, "tiling")
    tile, overlap = d.get("tile_size"), d.get("overlap")
    _require(_is_int(tile) and tile > 0, "tiling.tile_size must be a positive integer")
    _require(_is_int(overlap) and 0 <= overlap < tile,
             "tiling.overlap must be an integer in [0, tile_size)")
    _require(detector.input_hw == (tile, tile),
             f"tiling.tile_size {tile} does not match the detector input {detector.input_hw}")
    scale = d.get("scale", 1.0)
    _require(_is_number(scale) and 0 < scale <= 8, "tiling.scale must be in (0, 8]")
    score = d.get("score_threshold", 0.3)
    _require(_is_number(score) and 0 <= score <= 1, "tiling.score_threshold must be in [0, 1]")
    context = d.get("crop_context", 1.3)
    _require(_is_number(context) and 1 <= context <= 4, "tiling.crop_context must be in [1, 4]")
    pixel = d.get("pixel_size_um")
    _require(pixel is None or _is_finite(pixel) and pixel > 0,
             "tiling.pixel_size_um must be a positive number of micrometres per pixel")
    chord = d.get("red_cell_chord_um")
    _require(chord is None or _is_finite(chord) and 1 <= chord <= 15,
             "tiling.red_cell_chord_um must be a number of micrometres in [1, 15]")
    _require(chord is None or pixel is not None,
             "tiling.red_cell_chord_um needs tiling.pixel_size_um: the ruler reads a pixel size")
    return Tiling(tile, overlap, float(scale), float(score), float(context),
                  None if pixel is None else float(pixel), None if chord is None else float(chord))


def _verify_file(root: Path, file: str, sha256: str, what: str) -> None:
    path = root / file
    if not path.is_file():
        raise BundleError(f"{what} {file} named in the manifest is missing")
    actual = sha256_file(path)
    if actual != sha256:
        raise BundleError(f"{what} {file} fails its SHA-256 check "
                          f"(manifest {sha256[:12]}..., file {actual[:12]}...): "
                          "the bundle is damaged or was altered")


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdefABCDEF" for c in v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _require_known_keys(d: dict, known: set[str], where: str) -> None:
    """A misspelt optional key would otherwise be ignored and its default used without a word."""
    extra = sorted(set(d) - known)
    _require(not extra, f"{where} has unknown fields: {', '.join(map(str, extra))}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BundleError(message)
