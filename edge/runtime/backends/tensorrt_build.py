"""Build TensorRT engines from a bundle's ONNX files, on the device that will run them.

Each planned build (tensorrt_plan) is looked up in the engine cache
(tensorrt_cache) under its key; a fresh engine is reused, a missing or stale
one is built: the ONNX parsed, precision flags set, one optimisation profile
for the batch range, the GPU's timing cache loaded and saved back.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edge.runtime.backends.base import BackendError
from edge.runtime.backends.tensorrt_cache import EngineCache, EngineKey
from edge.runtime.backends.tensorrt_deps import gpu_identity, import_cuda_driver, import_tensorrt
from edge.runtime.backends.tensorrt_plan import EngineBuild

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30  # a Jetson shares its memory with the CPU: leave room for the rest


@dataclass(frozen=True)
class BuildOutcome:
    build: EngineBuild
    key: EngineKey
    engine: Path
    action: str  # "built", "rebuilt" or "cached"
    reason: str
    seconds: float


def build_engines(builds: list[EngineBuild], cache: EngineCache, force: bool = False) -> list[BuildOutcome]:
    """Build (or reuse from `cache`) an engine for each planned build on GPU 0."""
    trt = import_tensorrt()
    gpu = gpu_identity(import_cuda_driver())
    version = str(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    timing_path = cache.timing_cache_path(gpu, version)
    outcomes = []
    for build in builds:
        key = EngineKey.for_build(build, gpu, version)
        state = cache.check(key)
        if state.state == "fresh" and not force:
            outcomes.append(BuildOutcome(build, key, cache.engine_path(key), "cached", state.reason, 0.0))
            continue
        if state.state == "stale":
            log.warning("rebuilding the %s engine: %s", build.role, state.reason)
        start = time.perf_counter()
        blob = _build_serialized(trt, logger, build, timing_path)
        seconds = time.perf_counter() - start
        path = cache.store(key, blob, role=build.role, onnx=build.onnx.name, build_seconds=round(seconds, 3),
                           built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        action = "built" if state.state == "missing" else "rebuilt"
        outcomes.append(BuildOutcome(build, key, path, action, state.reason, seconds))
    return outcomes


def _build_serialized(trt, logger, build: EngineBuild, timing_path: Path) -> bytes:
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(build.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no reason given"
        if build.precision == "int8":
            errors += ("; TensorRT takes only symmetric int8 Q/DQ (int8 zero points 0, float biases), the form of "
                       "the TensorRT variant that `edge export quantise` writes; a QDQ graph with uint8 "
                       "activations, made for ONNX Runtime on x86, does not parse")
        raise BackendError(f"TensorRT cannot parse {build.onnx.name}: {errors}")
    _check_network(trt, network, build)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    for flag in build.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(build.input_name, *build.profile.shapes(build.input_chw))
    config.add_optimization_profile(profile)
    config.set_timing_cache(_load_timing_cache(config, timing_path), False)  # False: refuse a foreign cache

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT could not build an engine from {build.onnx.name} "
                           f"({build.precision}, batch {build.profile.min}-{build.profile.max}); "
                           "its log above says why")
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _check_network(trt, network, build: EngineBuild) -> None:
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if names != [build.input_name]:
        raise BackendError(f"{build.onnx.name} has inputs {names}; the manifest names one, {build.input_name!r}")
    if build.precision == "int8":
        layer_types = {network.get_layer(i).type for i in range(network.num_layers)}
        if trt.LayerType.QUANTIZE not in layer_types:
            raise BackendError(f"{build.onnx.name} has no QuantizeLinear nodes: INT8 needs the QDQ model "
                               "from the export stage (no calibrator is used)")


def _load_timing_cache(config, path: Path):
    """The saved timing cache, or an empty one when there is none or it cannot be read."""
    data = b""
    if path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None and data:
        log.warning("ignoring the unreadable timing cache %s", path)
        cache = config.create_timing_cache(b"")
    return cache
