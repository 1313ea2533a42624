"""What `edge build-engines` builds for a bundle: which ONNX file, which precision flags, which batch profile.

Pure bookkeeping from the manifest and the loop's configuration; needs no GPU.

Precision: an INT8 model in the bundle is a QDQ graph (explicit quantisation),
which TensorRT builds with its INT8 flag and no calibrator; FP16 is allowed too
for the layers outside Q/DQ pairs. The INT8 model file itself has uint8
activations (for ONNX Runtime on x86), which TensorRT does not parse: the build
takes the model's TensorRT variant (symmetric int8, zero points 0) that the
export writes beside it, and the engine's key carries that file's SHA-256. An
FP32 model is built in FP16.

Batch profiles: every engine accepts batches from 1 to `max`, tuned for `opt`.
The detector's `opt` is the number of tiles in one frame of the configured
size (the engine sends a frame's tiles as one batch); the classifier's is the
engine's classifier batch. `max` defaults to `opt`; the runner splits a larger
batch into chunks the engine takes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.runtime.bundle import Bundle, ModelSpec
from edge.runtime.backends.base import CLASSIFIER_BATCH
from edge.runtime.tiling import make_grid

PRECISIONS = ("fp16", "int8")
DEFAULT_FRAME_SIZE = (640, 480)  # width, height of the demo fields and a VGA camera
_FLAGS = {"fp16": ("FP16",), "int8": ("INT8", "FP16")}


class BuildPlanError(ValueError):
    """A build that cannot be planned for this bundle; the message says why."""


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    def shapes(self, chw: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
        """Input shapes (min, opt, max) for TensorRT's optimisation profile."""
        return tuple((n, *chw) for n in (self.min, self.opt, self.max))


@dataclass(frozen=True)
class EngineBuild:
    """One engine to build from one of the bundle's ONNX files."""

    role: str
    onnx: Path
    model_sha256: str
    input_name: str
    input_chw: tuple[int, int, int]
    precision: str
    profile: BatchProfile

    @property
    def flags(self) -> tuple[str, ...]:
        """TensorRT BuilderFlag names to set."""
        return _FLAGS[self.precision]

    def summary(self) -> str:
        p, (c, h, w) = self.profile, self.input_chw
        return (f"{self.role:<10} {self.onnx.name} (sha256 {self.model_sha256[:12]}...)  {self.precision} "
                f"flags {'+'.join(self.flags)}  {self.input_name} batch {p.min}/{p.opt}/{p.max} "
                f"(min/opt/max) x {c}x{h}x{w}")


def tiles_per_frame(bundle: Bundle, width: int, height: int) -> int:
    """Detector tiles in one frame of this size, as the engine cuts it (after the bundle's scale)."""
    scale = bundle.tiling.scale
    # cv2.resize rounds half to even, like Python's round
    w, h = (width, height) if scale == 1.0 else (round(width * scale), round(height * scale))
    return len(make_grid(w, h, bundle.tiling.tile_size, bundle.tiling.overlap))


def plan_builds(bundle: Bundle, precision: str | None = None, max_batch: int | None = None,
                frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE) -> list[EngineBuild]:
    """The detector's and the classifier's engine builds; raise BuildPlanError if one cannot be built."""
    if precision is not None and precision not in PRECISIONS:
        raise BuildPlanError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if max_batch is not None and max_batch < 1:
        raise BuildPlanError(f"the largest batch must be at least 1, got {max_batch}")
    width, height = frame_size
    if width < 1 or height < 1:
        raise BuildPlanError(f"the frame size must be positive, got {width} x {height}")
    loop_batch = {"detector": tiles_per_frame(bundle, width, height), "classifier": CLASSIFIER_BATCH}
    builds = []
    for role, spec in (("detector", bundle.detector), ("classifier", bundle.classifier)):
        chosen = _precision(role, spec, precision)
        onnx, sha = bundle.model_path(spec), spec.sha256
        if chosen == "int8":
            if spec.tensorrt is None:
                raise BuildPlanError(
                    f"the bundle's {role} ({spec.file}) is INT8 with uint8 activations, which TensorRT does not "
                    "parse, and the bundle has no TensorRT variant of it (symmetric int8); re-run "
                    "`edge export quantise` to write a bundle with the TensorRT variant")
            onnx, sha = bundle.tensorrt_path(spec), spec.tensorrt.sha256
        builds.append(EngineBuild(
            role=role, onnx=onnx, model_sha256=sha,
            input_name=spec.input_name, input_chw=tuple(spec.input_shape[1:]),
            precision=chosen, profile=_profile(spec, loop_batch[role], max_batch)))
    return builds


def _precision(role: str, spec: ModelSpec, requested: str | None) -> str:
    quantised = spec.precision == "int8"
    if requested is None:
        return "int8" if quantised else "fp16"
    if requested == "int8" and not quantised:
        raise BuildPlanError(
            f"INT8 needs a QDQ model, but the bundle's {role} ({spec.file}) is {spec.precision}: "
            "TensorRT builds INT8 here only from explicit Q/DQ nodes, never by calibration")
    if requested == "fp16" and quantised:
        raise BuildPlanError(f"the bundle's {role} ({spec.file}) is an INT8 QDQ model; build it with int8")
    return requested


def _profile(spec: ModelSpec, loop_batch: int, max_batch: int | None) -> BatchProfile:
    fixed = spec.input_shape[0]
    if fixed > 0:
        return BatchProfile(fixed, fixed, fixed)
    largest = max_batch or loop_batch
    return BatchProfile(1, min(loop_batch, largest), largest)
