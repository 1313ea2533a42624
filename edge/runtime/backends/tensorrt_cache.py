"""The TensorRT engine cache: one key per engine, a folder layout, and the freshness check.

A TensorRT engine is valid only for the GPU model and TensorRT version that
built it, and only for the model, precision and batch profile it was built
from. The key names all of them; an engine whose record disagrees with its key,
or whose bytes fail their SHA-256, is stale: it is rebuilt, never loaded.

    <cache>/engines/<key>.engine    serialised engine
    <cache>/engines/<key>.json      its record: the key's components, the engine's SHA-256, when built
    <cache>/timing/<gpu>-sm<XY>-trt<version>.cache   TensorRT timing cache, shared by all builds there
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.runtime.atomic import write_atomic
from edge.runtime.backends.tensorrt_deps import GpuIdentity
from edge.runtime.backends.tensorrt_plan import EngineBuild
from edge.runtime.bundle import sha256_file

CACHE_ENV = "EDGE_TRT_CACHE"


def default_cache_dir() -> Path:
    """$EDGE_TRT_CACHE, else $XDG_CACHE_HOME/edge-cellcount/tensorrt, else ~/.cache/..."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edge-cellcount" / "tensorrt"


@dataclass(frozen=True)
class EngineKey:
    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    model_sha256: str
    precision: str
    input_name: str
    profile: tuple[tuple[int, ...], ...]  # input shapes min, opt, max

    @classmethod
    def for_build(cls, build: EngineBuild, gpu: GpuIdentity, tensorrt_version: str) -> "EngineKey":
        return cls(gpu.name, tuple(gpu.compute_capability), str(tensorrt_version), build.model_sha256,
                   build.precision, build.input_name, build.profile.shapes(build.input_chw))

    @classmethod
    def from_components(cls, d: dict) -> "EngineKey":
        return cls(d["gpu_name"], tuple(d["compute_capability"]), d["tensorrt_version"],
                   d["model_sha256"], d["precision"], d["input_name"],
                   tuple(tuple(s) for s in d["profile"]))

    def components(self) -> dict:
        """The key as JSON-ready values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.components(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CacheState:
    state: str  # "fresh", "missing" or "stale"
    reason: str


class EngineCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / "engines" / f"{key.digest}.engine"

    def record_path(self, key: EngineKey) -> Path:
        return self.root / "engines" / f"{key.digest}.json"

    def timing_cache_path(self, gpu: GpuIdentity, tensorrt_version: str) -> Path:
        slug = re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-") or "gpu"
        major, minor = gpu.compute_capability
        return self.root / "timing" / f"{slug}-sm{major}{minor}-trt{tensorrt_version}.cache"

    def check(self, key: EngineKey) -> CacheState:
        engine, record_file = self.engine_path(key), self.record_path(key)
        if not engine.exists() and not record_file.exists():
            return CacheState("missing", "not built yet")
        record = _read_record(record_file)
        if record is None:
            return CacheState("stale", f"its record {record_file.name} is missing or unreadable")
        differs = _differences(record.get("key", {}), key.components())
        if differs:
            return CacheState("stale", f"it was built for another {', '.join(differs)}")
        if not engine.is_file():
            return CacheState("stale", f"the engine file {engine.name} is missing")
        if sha256_file(engine) != record.get("engine_sha256"):
            return CacheState("stale", f"the engine file {engine.name} fails its SHA-256 check")
        return CacheState("fresh", "built earlier for this GPU, TensorRT version, model and profile")

    def store(self, key: EngineKey, engine_bytes: bytes, **info) -> Path:
        """Write the engine, then its record: a build cut short leaves a stale entry, never a fresh one."""
        engine = self.engine_path(key)
        _write_atomic(engine, engine_bytes)
        record = {"key": key.components(), "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(), **info}
        _write_atomic(self.record_path(key), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        return engine

    def fresh_engines_for(self, model_sha256: str, gpu: GpuIdentity,
                          tensorrt_version: str) -> list[tuple[EngineKey, dict]]:
        """Fresh engines of this model for this GPU and TensorRT version, the most recently built first."""
        found = []
        for record_file in sorted((self.root / "engines").glob("*.json")):
            record = _read_record(record_file)
            try:
                key = EngineKey.from_components(record["key"])
            except (TypeError, KeyError, ValueError):
                continue
            if (key.model_sha256, key.gpu_name, key.compute_capability, key.tensorrt_version) != (
                    model_sha256, gpu.name, tuple(gpu.compute_capability), str(tensorrt_version)):
                continue
            if key.digest == record_file.stem and self.check(key).state == "fresh":
                found.append((key, record))
        return sorted(found, key=lambda kr: str(kr[1].get("built_at", "")), reverse=True)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _differences(recorded: dict, wanted: dict) -> list[str]:
    names = {"gpu_name": "GPU", "compute_capability": "compute capability",
             "tensorrt_version": "TensorRT version", "model_sha256": "model",
             "precision": "precision", "input_name": "input", "profile": "batch profile"}
    return [label for field, label in names.items() if recorded.get(field) != wanted[field]]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
