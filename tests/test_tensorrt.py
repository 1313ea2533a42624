"""The TensorRT path: everything that runs without a GPU, and the runner conformance suite.

Proven here without TensorRT: the engine cache key and layout, the freshness
decisions (a stale or foreign engine is never reported fresh), batch profiles
from a bundle and the loop's configuration, the bundle -> build plan (ONNX
file, precision flags), and the one-line errors of `edge build-engines`,
`edge run --backend tensorrt` and open_runner("tensorrt") when TensorRT,
pycuda or CUDA is missing.

The conformance suite runs every backend in BACKENDS on the same feeds as ONNX
Runtime. Its TensorRT cases build real engines and need the tensorrt package,
pycuda and a CUDA device; where any is missing they skip and say which.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.runtime.backends import BACKENDS, BackendError, open_runner
from edge.runtime.backends.onnxruntime import OrtRunner
from edge.runtime.backends.tensorrt_cache import CACHE_ENV, EngineCache, EngineKey, default_cache_dir
from edge.runtime.backends.tensorrt_deps import GpuIdentity
from edge.runtime.backends.tensorrt_plan import BatchProfile, BuildPlanError, plan_builds, tiles_per_frame
from edge.runtime.bundle import load_bundle
from edge.cli import main
from edge.runtime.engine import CLASSIFIER_BATCH
from edge.runtime.preprocess import to_model_input
from edge.synthetic.smear import SmearConfig, render_cell_crops, render_field
from edge.runtime.tiling import cut_tiles, make_grid
from tests.helpers import SYNTHETIC_BUNDLE, add_tensorrt_variant

GPU = GpuIdentity("Orin (nvgpu)", (8, 7))
KEY = EngineKey("Orin (nvgpu)", (8, 7), "10.3.0", "a" * 64, "fp16", "image",
                ((1, 3, 64, 64), (64, 3, 64, 64), (64, 3, 64, 64)))


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(SYNTHETIC_BUNDLE)


def _edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


# ---------------------------------------------------------------- cache key and layout

@pytest.mark.parametrize("field,value", [
    ("gpu_name", "NVIDIA H100 80GB HBM3"), ("compute_capability", (8, 6)), ("tensorrt_version", "10.3.1"),
    ("model_sha256", "b" * 64), ("precision", "int8"), ("input_name", "pixels"),
    ("profile", ((1, 3, 64, 64), (32, 3, 64, 64), (64, 3, 64, 64)))])
def test_cache_key_changes_with_each_component(field, value):
    other = EngineKey(**{**KEY.__dict__, field: value})
    assert other.digest != KEY.digest
    assert EngineKey(**KEY.__dict__).digest == KEY.digest


def test_cache_key_survives_its_json_record():
    assert EngineKey.from_components(json.loads(json.dumps(KEY.components()))) == KEY


def test_cache_layout(tmp_path):
    cache = EngineCache(tmp_path)
    assert cache.engine_path(KEY) == tmp_path / "engines" / f"{KEY.digest}.engine"
    assert cache.record_path(KEY) == tmp_path / "engines" / f"{KEY.digest}.json"
    assert cache.timing_cache_path(GPU, "10.3.0") == tmp_path / "timing" / "orin-nvgpu-sm87-trt10.3.0.cache"


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "trt"))
    assert default_cache_dir() == tmp_path / "trt"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edge-cellcount" / "tensorrt"


# ---------------------------------------------------------------- freshness

def test_a_stored_engine_is_fresh_and_records_its_key(tmp_path):
    cache = EngineCache(tmp_path)
    assert cache.check(KEY).state == "missing"
    path = cache.store(KEY, b"engine bytes", role="classifier", built_at="2026-11-23T10:00:00+00:00")
    assert path.read_bytes() == b"engine bytes"
    assert cache.check(KEY).state == "fresh"
    record = json.loads(cache.record_path(KEY).read_text())
    assert record["key"]["gpu_name"] == "Orin (nvgpu)" and record["role"] == "classifier"


def test_a_damaged_engine_is_stale(tmp_path):
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"engine bytes")
    cache.engine_path(KEY).write_bytes(b"engine bytez")
    state = cache.check(KEY)
    assert state.state == "stale" and "SHA-256" in state.reason


def test_a_foreign_engine_under_this_key_is_stale(tmp_path):
    """An engine copied in from another device keeps its own record: the record names what differs."""
    cache = EngineCache(tmp_path)
    foreign = EngineKey(**{**KEY.__dict__, "gpu_name": "NVIDIA GeForce RTX 4090", "tensorrt_version": "10.8.0"})
    cache.store(foreign, b"built elsewhere")
    cache.engine_path(foreign).rename(cache.engine_path(KEY))
    cache.record_path(foreign).rename(cache.record_path(KEY))
    state = cache.check(KEY)
    assert state.state == "stale"
    assert "GPU" in state.reason and "TensorRT version" in state.reason and "model" not in state.reason


@pytest.mark.parametrize("damage", ["no record", "garbage record", "no engine"])
def test_a_half_written_entry_is_stale(tmp_path, damage):
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"engine bytes")
    if damage == "no record":
        cache.record_path(KEY).unlink()
    elif damage == "garbage record":
        cache.record_path(KEY).write_text("{not json")
    else:
        cache.engine_path(KEY).unlink()
    assert cache.check(KEY).state == "stale"


def test_fresh_engines_for_a_model_skip_other_gpus_versions_and_stale_entries(tmp_path):
    cache = EngineCache(tmp_path)
    older = KEY
    newer = EngineKey(**{**KEY.__dict__, "precision": "int8"})
    other_gpu = EngineKey(**{**KEY.__dict__, "gpu_name": "Xavier", "compute_capability": (7, 2)})
    other_trt = EngineKey(**{**KEY.__dict__, "tensorrt_version": "10.4.0"})
    damaged = EngineKey(**{**KEY.__dict__, "input_name": "x"})
    for key, when in ((older, "2026-11-20"), (newer, "2026-11-21"), (other_gpu, "2026-11-22"),
                      (other_trt, "2026-11-22"), (damaged, "2026-11-23")):
        cache.store(key, key.digest.encode(), built_at=when)
    cache.engine_path(damaged).write_bytes(b"truncated")
    found = cache.fresh_engines_for(KEY.model_sha256, GPU, "10.3.0")
    assert [k for k, _ in found] == [newer, older]
    assert cache.fresh_engines_for("c" * 64, GPU, "10.3.0") == []


# ---------------------------------------------------------------- profiles and the build plan

def test_tiles_per_frame_is_what_the_engine_cuts(bundle, bundle_copy):
    assert tiles_per_frame(bundle, 640, 480) == len(make_grid(640, 480, 256, 96)) == 12
    assert tiles_per_frame(bundle, 4096, 3000) == 475
    _edit_manifest(bundle_copy, lambda m: m["tiling"].update(scale=0.35))
    scaled = load_bundle(bundle_copy)
    for w, h in ((1920, 1080), (4096, 3000), (641, 479)):
        resized = cv2.resize(np.zeros((h, w, 3), np.uint8), None, fx=0.35, fy=0.35, interpolation=cv2.INTER_AREA)
        grid = make_grid(resized.shape[1], resized.shape[0], 256, 96)
        assert tiles_per_frame(scaled, w, h) == len(grid)


def test_default_plan_builds_each_fp32_model_in_fp16_from_the_bundles_onnx(bundle):
    detector, classifier = plan_builds(bundle)
    assert detector.onnx == bundle.root / "detector.onnx" and detector.model_sha256 == bundle.detector.sha256
    assert classifier.onnx == bundle.root / "classifier.onnx"
    assert detector.flags == classifier.flags == ("FP16",)
    assert detector.profile == BatchProfile(1, 12, 12)
    assert classifier.profile == BatchProfile(1, CLASSIFIER_BATCH, CLASSIFIER_BATCH)
    assert classifier.profile.shapes((3, 64, 64)) == ((1, 3, 64, 64), (64, 3, 64, 64), (64, 3, 64, 64))


def test_plan_profiles_follow_frame_size_and_max_batch(bundle):
    tiles = len(make_grid(1920, 1080, 256, 96))  # 12 x 7
    detector, classifier = plan_builds(bundle, max_batch=32, frame_size=(1920, 1080))
    assert detector.profile == BatchProfile(1, 32, 32)
    assert classifier.profile == BatchProfile(1, 32, 32)
    detector, classifier = plan_builds(bundle, max_batch=256, frame_size=(1920, 1080))
    assert detector.profile == BatchProfile(1, tiles, 256)
    assert classifier.profile == BatchProfile(1, CLASSIFIER_BATCH, 256)


def test_an_int8_qdq_bundle_plans_int8_with_fp16_fallback_from_its_tensorrt_variants(bundle_copy):
    names = [add_tensorrt_variant(bundle_copy, role) for role in ("detector", "classifier")]
    b = load_bundle(bundle_copy)
    builds = plan_builds(b)
    assert [x.flags for x in builds] == [("INT8", "FP16")] * 2
    # built from the symmetric twin, and keyed by its hash, never from the uint8-activation file
    assert [x.onnx for x in builds] == [b.root / n for n in names]
    assert [x.model_sha256 for x in builds] == [b.detector.tensorrt.sha256, b.classifier.tensorrt.sha256]
    assert [x.precision for x in plan_builds(b, "int8")] == ["int8", "int8"]
    with pytest.raises(BuildPlanError, match="INT8 QDQ model; build it with int8"):
        plan_builds(b, "fp16")


def test_a_changed_tensorrt_variant_changes_the_engine_key(bundle_copy):
    add_tensorrt_variant(bundle_copy, "classifier")
    before = plan_builds(load_bundle(bundle_copy))[1]
    add_tensorrt_variant(bundle_copy, "classifier", source=bundle_copy / "detector.onnx")  # another twin, same model
    after = plan_builds(load_bundle(bundle_copy))[1]
    assert after.model_sha256 != before.model_sha256
    assert EngineKey.for_build(after, GPU, "10.3.0").digest != EngineKey.for_build(before, GPU, "10.3.0").digest


def test_an_int8_model_without_a_tensorrt_variant_cannot_be_planned(bundle_copy, monkeypatch, capsys):
    _edit_manifest(bundle_copy, lambda m: m["models"]["classifier"].update(precision="int8"))  # an older bundle
    with pytest.raises(BuildPlanError, match=r"the bundle's classifier \(classifier.onnx\) is INT8 with uint8 "
                                             r"activations.*no TensorRT variant.*re-run `edge export quantise`"):
        plan_builds(load_bundle(bundle_copy))
    _without(monkeypatch, "tensorrt")
    assert main(["build-engines", "--bundle", str(bundle_copy), "--dry-run"]) == 2
    assert "re-run `edge export quantise`" in capsys.readouterr().err


def test_a_static_batch_model_gets_its_own_batch(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["models"]["classifier"].update(input_shape=[8, 3, 64, 64]))
    _, classifier = plan_builds(load_bundle(bundle_copy), max_batch=100)
    assert classifier.profile == BatchProfile(8, 8, 8)


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "int8"}, "INT8 needs a QDQ model, but the bundle's detector"),
    ({"precision": "fp32"}, "precision must be one of"),
    ({"max_batch": 0}, "largest batch must be at least 1"),
    ({"frame_size": (0, 480)}, "frame size must be positive")])
def test_plans_that_cannot_be_built_say_why(bundle, kwargs, message):
    with pytest.raises(BuildPlanError, match=message):
        plan_builds(bundle, **kwargs)


# ---------------------------------------------------------------- errors without TensorRT

def _without(monkeypatch, *modules):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError


def _fake_tensorrt(monkeypatch, version):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))


def test_build_engines_without_tensorrt_is_one_line_naming_it(monkeypatch, capsys):
    _without(monkeypatch, "tensorrt")
    assert main(["build-engines"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("edge: error: the tensorrt Python package (TensorRT 10) is missing")
    assert "pip install -e '.[jetson]'" in err


def test_build_engines_without_pycuda_names_pycuda(monkeypatch, capsys):
    _fake_tensorrt(monkeypatch, "10.3.0")
    _without(monkeypatch, "pycuda", "pycuda.driver")
    assert main(["build-engines"]) == 2
    assert capsys.readouterr().err.startswith("edge: error: pycuda or the CUDA driver is missing")


def test_build_engines_refuses_tensorrt_8(monkeypatch, capsys):
    _fake_tensorrt(monkeypatch, "8.6.1")
    assert main(["build-engines"]) == 2
    assert "TensorRT 10 or later is needed, found 8.6.1" in capsys.readouterr().err


def test_plan_errors_come_before_the_missing_tensorrt(monkeypatch, capsys):
    _without(monkeypatch, "tensorrt")
    assert main(["build-engines", "--bundle", str(SYNTHETIC_BUNDLE), "--precision", "int8"]) == 2
    assert "INT8 needs a QDQ model" in capsys.readouterr().err
    assert main(["build-engines", "--frame-size", "1920by1080"]) == 2
    assert "--frame-size must be WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["build-engines", "--bundle", "/nonexistent"]) == 2
    assert "bundle not found" in capsys.readouterr().err


def test_dry_run_prints_the_plan_without_tensorrt(monkeypatch, capsys):
    _without(monkeypatch, "tensorrt", "pycuda", "pycuda.driver")
    assert main(["build-engines", "--bundle", str(SYNTHETIC_BUNDLE), "--dry-run", "--frame-size", "4096x3000",
                 "--max-batch", "128"]) == 0
    detector, classifier = capsys.readouterr().out.splitlines()
    assert detector.startswith("detector   detector.onnx") and "fp16 flags FP16" in detector
    assert "batch 1/128/128 (min/opt/max) x 3x256x256" in detector
    assert "batch 1/64/128 (min/opt/max) x 3x64x64" in classifier


def test_the_default_bundle_plans_int8_engines_from_its_twins(monkeypatch, capsys):
    _without(monkeypatch, "tensorrt", "pycuda", "pycuda.driver")
    assert main(["build-engines", "--dry-run", "--frame-size", "1920x1080"]) == 0
    detector, classifier = capsys.readouterr().out.splitlines()
    assert detector.startswith("detector   detector-int8-tensorrt.onnx") and "int8 flags INT8+FP16" in detector
    assert "batch 1/6/6 (min/opt/max)" in detector  # 1920 x 1080 at scale 0.28: 6 tiles of 256
    assert classifier.startswith("classifier classifier-int8-tensorrt.onnx") and "int8 flags INT8+FP16" in classifier


def test_open_runner_tensorrt_without_tensorrt_names_it(monkeypatch):
    _without(monkeypatch, "tensorrt")
    with pytest.raises(BackendError, match=r"tensorrt Python package \(TensorRT 10\) is missing"):
        open_runner("tensorrt", SYNTHETIC_BUNDLE / "classifier.onnx")


def test_edge_run_on_tensorrt_without_it_is_one_line(monkeypatch, capsys, tmp_path):
    _without(monkeypatch, "tensorrt")
    assert main(["run", "--backend", "tensorrt", "--out", str(tmp_path / "s"), "--max-frames", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorrt Python package" in err


def test_the_tensorrt_modules_import_without_tensorrt_or_pycuda():
    code = ("import sys\n"
            "import edge.runtime.backends.tensorrt, edge.runtime.backends.tensorrt_build, edge.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'pycuda', 'torch')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- runner conformance (all backends)

FP16_CLASSIFIER_ATOL = 0.02  # CCL D values in (0, 1]
FP16_SCORE_ATOL = 0.03       # detector scores, compared sorted per tile
FP16_BOX_ATOL = 2.0          # pixels, for confident detections (score >= 0.5)
CONFORMANCE_MAX_BATCH = 16   # engines built small, so that batch 20 exercises chunking


def _tensorrt_or_skip():
    pytest.importorskip("tensorrt", reason="tensorrt not installed")
    try:
        import pycuda.driver as cuda
    except ImportError:
        pytest.skip("pycuda not installed (or no CUDA driver)")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            pytest.skip("no CUDA device")
    except cuda.Error:
        pytest.skip("no CUDA device")


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory, bundle):
    """Real engines for the synthetic bundle, built once; only for the TensorRT cases."""
    _tensorrt_or_skip()
    from edge.runtime.backends.tensorrt_build import build_engines
    cache = EngineCache(tmp_path_factory.mktemp("trt-cache"))
    build_engines(plan_builds(bundle, max_batch=CONFORMANCE_MAX_BATCH), cache)
    return cache


@pytest.fixture
def backend_runner(request, monkeypatch, bundle):
    backend, role = request.param
    if backend == "tensorrt":
        monkeypatch.setenv(CACHE_ENV, str(request.getfixturevalue("engine_cache").root))
    spec = getattr(bundle, role)
    with open_runner(backend, bundle.model_path(spec), threads=1) as runner:
        yield backend, role, spec, runner


def _feed(bundle, role, batch):
    if role == "classifier":
        crops = render_cell_crops(np.arange(batch) % len(bundle.class_names), 64, seed=batch)
        return to_model_input(crops, None, bundle.classifier.normalisation)
    field = render_field(SmearConfig(width=1024, height=768), seed=batch)
    tiles = cut_tiles(field.image, make_grid(1024, 768, 256, 96))
    return to_model_input(tiles[:batch], None, bundle.detector.normalisation)


def _assert_close(backend, role, got, want):
    if backend == "onnxruntime":
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    elif role == "classifier":
        assert np.abs(got["scores"] - want["scores"]).max() <= FP16_CLASSIFIER_ATOL
    else:
        np.testing.assert_allclose(-np.sort(-got["scores"], axis=1), -np.sort(-want["scores"], axis=1),
                                   atol=FP16_SCORE_ATOL)
        for tile in range(len(want["scores"])):
            candidates = got["boxes"][tile][got["scores"][tile] >= 0.3]
            for box in want["boxes"][tile][want["scores"][tile] >= 0.5]:
                assert len(candidates) and np.abs(candidates - box).max(axis=1).min() <= FP16_BOX_ATOL


@pytest.mark.parametrize("backend_runner", [(b, r) for b in BACKENDS for r in ("detector", "classifier")],
                         indirect=True, ids=lambda p: "-".join(p))
def test_runner_conformance(backend_runner, bundle):
    """Same feeds through the backend and ONNX Runtime: names, shapes, batch sizes, values within tolerance."""
    backend, role, spec, runner = backend_runner
    inputs = {t.name: t for t in runner.inputs}
    assert list(inputs) == [spec.input_name]
    assert inputs[spec.input_name].shape[1:] == tuple(spec.input_shape[1:])
    assert set(spec.outputs) <= {t.name for t in runner.outputs}
    reference = OrtRunner(bundle.model_path(spec), threads=1)
    for batch in (1, 5, 20):
        feed = {spec.input_name: _feed(bundle, role, batch)}
        got, want = runner.infer(feed), reference.infer(feed)
        assert set(got) == set(want)
        for name in want:
            assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype
        _assert_close(backend, role, got, want)
