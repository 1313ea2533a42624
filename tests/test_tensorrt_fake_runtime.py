"""Our TensorRT builder and runner logic, driven through stand-in tensorrt and pycuda modules.

What this proves: the orchestration and bookkeeping that are ours. The builder
sets the planned flags, one optimisation profile with the planned shapes, the
workspace limit, and loads and saves the timing cache; the engine cache reuses
fresh engines and rebuilds stale ones. The runner finds the engine for its ONNX
file and GPU, sizes pinned host and device buffers for the profile's largest
batch, binds every named tensor, sets each batch's input shape, copies only
from pinned memory, runs on its own stream with a CUDA context pushed,
synchronises before it reads results, splits batches larger than the profile,
frees its memory on close, and plugs into CellCounter.

What it does not prove: anything about real TensorRT or CUDA. The stand-ins
follow the TensorRT 10 and pycuda signatures we call, but the "engine" is the
ONNX model run by ONNX Runtime, and "device memory" is host memory (copies and
kernels are queued per stream and run at synchronize, as on a GPU). Real
engines are checked by the conformance suite in test_tensorrt.py, on a machine
with TensorRT and a CUDA device.
"""
from __future__ import annotations

import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.helpers import SYNTHETIC_BUNDLE, add_tensorrt_variant
from edge.runtime.backends import BackendError, open_runner
from edge.runtime.backends.onnxruntime import OrtRunner
from edge.runtime.backends.tensorrt_build import WORKSPACE_BYTES, build_engines
from edge.runtime.backends.tensorrt_cache import CACHE_ENV, EngineCache
from edge.runtime.backends.tensorrt_plan import plan_builds
from edge.runtime.bundle import load_bundle, sha256_file
from edge.cli import main
from edge.runtime.engine import CellCounter
from edge.runtime.preprocess import to_model_input
from edge.synthetic.smear import SmearConfig, render_cell_crops, render_field
from export.quantise import ImageCalibrationReader, quantise_int8

TRT_VERSION = "10.3.0"


# ---------------------------------------------------------------- stand-in pycuda.driver

class FakeGpu:
    """Host-memory stand-in for one CUDA device, with a record of what was asked of it."""

    def __init__(self, name="Orin (nvgpu)", capability=(8, 7)):
        self.name, self.capability = name, capability
        self.memory: dict[int, np.ndarray] = {}
        self.freed: list[int] = []
        self.pinned: list[np.ndarray] = []
        self.context_stack: list = []
        self.streams: dict[int, list] = {}
        self.executions: list[tuple[int, int]] = []  # (stream handle, batch)
        self._next_address = 1 << 20

    def require_context(self):
        assert self.context_stack, "CUDA call without a current context"

    def require_pinned(self, array: np.ndarray):
        start = array.__array_interface__["data"][0]
        for buf in self.pinned:
            lo = buf.__array_interface__["data"][0]
            if lo <= start and start + array.nbytes <= lo + buf.nbytes:
                return
        raise AssertionError("asynchronous copy from or to memory that is not page-locked")

    def driver(self) -> types.ModuleType:
        gpu = self
        cuda = types.ModuleType("pycuda.driver")
        cuda.Error = type("Error", (Exception,), {})
        cuda.init = lambda: None

        class Device:
            @staticmethod
            def count():
                return 1

            def __init__(self, index):
                assert index == 0

            def name(self):
                return gpu.name

            def compute_capability(self):
                return gpu.capability

            def retain_primary_context(self):
                return PrimaryContext()

        class PrimaryContext:
            detached = False

            def push(self):
                gpu.context_stack.append(self)

            def detach(self):
                assert self not in gpu.context_stack
                self.detached = True

        class Context:
            @staticmethod
            def pop():
                gpu.context_stack.pop()

        class Stream:
            def __init__(self):
                gpu.require_context()
                self.handle = 0xC0DE + len(gpu.streams)
                gpu.streams[self.handle] = []

            def synchronize(self):
                for op in gpu.streams[self.handle]:
                    op()
                gpu.streams[self.handle].clear()

        class DeviceAllocation:
            def __init__(self, nbytes):
                self.address = gpu._next_address
                gpu._next_address += nbytes + 256
                gpu.memory[self.address] = np.zeros(nbytes, np.uint8)

            def __int__(self):
                return self.address

            def free(self):
                gpu.require_context()
                del gpu.memory[self.address]
                gpu.freed.append(self.address)

        def pagelocked_empty(shape, dtype):
            array = np.empty(shape, dtype)
            gpu.pinned.append(array)
            return array

        def mem_alloc(nbytes):
            gpu.require_context()
            return DeviceAllocation(nbytes)

        def memcpy_htod_async(dest, src, stream):
            gpu.require_context()
            gpu.require_pinned(src)

            def op(dest=int(dest), data=src.reshape(-1).view(np.uint8)):
                gpu.memory[dest][:data.size] = data
            stream_ops(stream).append(op)

        def memcpy_dtoh_async(dest, src, stream):
            gpu.require_context()
            gpu.require_pinned(dest)

            def op(target=dest.reshape(-1).view(np.uint8), src=int(src)):
                target[:] = gpu.memory[src][:target.size]
            stream_ops(stream).append(op)

        def stream_ops(stream):
            assert isinstance(stream, Stream)
            return gpu.streams[stream.handle]

        cuda.Device, cuda.Context, cuda.Stream = Device, Context, Stream
        cuda.pagelocked_empty, cuda.mem_alloc = pagelocked_empty, mem_alloc
        cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
        return cuda


# ---------------------------------------------------------------- stand-in tensorrt

class FakeTensorRT:
    """Builder, parser and runtime with TensorRT 10's names; the "engine" runs the ONNX in ONNX Runtime."""

    def __init__(self, gpu: FakeGpu):
        self.gpu = gpu
        self.builds: list[dict] = []
        self.parse_error = None

    def module(self) -> types.ModuleType:
        fake, gpu = self, self.gpu
        trt = types.ModuleType("tensorrt")
        trt.__version__ = TRT_VERSION

        class Logger:
            WARNING = 2

            def __init__(self, level):
                self.level = level

        trt.Logger = Logger
        trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", INT64="INT64")
        trt.nptype = {"FLOAT": np.float32, "INT64": np.int64}.__getitem__
        trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        trt.LayerType = types.SimpleNamespace(QUANTIZE="QUANTIZE", CONVOLUTION="CONVOLUTION")

        class Network:
            onnx = None

            @property
            def num_inputs(self):
                return len(self.session.get_inputs())

            def get_input(self, i):
                return types.SimpleNamespace(name=self.session.get_inputs()[i].name)

            @property
            def num_layers(self):
                return len(self.layers)

            def get_layer(self, i):
                return types.SimpleNamespace(type=self.layers[i])

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.num_errors, self.error = network, 0, None

            def get_error(self, i):
                return self.error

            def parse_from_file(self, path):
                self.error = fake.parse_error or _uint8_qdq_error(path)  # TensorRT parses int8 Q/DQ only
                if self.error:
                    self.num_errors = 1
                    return False
                data = Path(path).read_bytes()
                self.network.onnx, self.network.session = str(path), _session(path)
                self.network.layers = ["CONVOLUTION"] + (["QUANTIZE"] if b"QuantizeLinear" in data else [])
                return True

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, min, opt, max):
                self.shapes[name] = [list(min), list(opt), list(max)]

        class TimingCache:
            def __init__(self, data):
                self.data = bytes(data)

            def serialize(self):
                return self.data + b"+"

        class Config:
            def __init__(self):
                self.flags, self.profiles, self.pools, self.timing = [], [], {}, None

            def set_memory_pool_limit(self, pool, size):
                self.pools[pool] = size

            def set_flag(self, flag):
                self.flags.append(flag)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)

            def create_timing_cache(self, data):
                return TimingCache(data) if data in (b"",) or data.startswith(b"timing") else None

            def set_timing_cache(self, cache, ignore_mismatch):
                self.timing, self.timing_loaded, self.ignore_mismatch = cache, cache.data, ignore_mismatch
                return True

            def get_timing_cache(self):
                return self.timing

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                assert len(config.profiles) == 1
                if not config.timing.data:
                    config.timing.data = b"timing"
                fake.builds.append({"onnx": network.onnx, "flags": config.flags, "pools": config.pools,
                                    "profile": config.profiles[0].shapes,
                                    "timing_loaded": config.timing_loaded,
                                    "ignore_mismatch": config.ignore_mismatch})
                return json.dumps({"onnx": network.onnx, "profile": config.profiles[0].shapes}).encode()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, blob):
                gpu.require_context()
                try:
                    return Engine(json.loads(blob))
                except ValueError:
                    return None

        class Engine:
            def __init__(self, plan):
                self.session, self.profile = _session(plan["onnx"]), plan["profile"]
                self.inputs = [t.name for t in self.session.get_inputs()]
                self.names = self.inputs + [t.name for t in self.session.get_outputs()]
                self.meta = {t.name: t for t in self.session.get_inputs() + self.session.get_outputs()}

            num_io_tensors = property(lambda self: len(self.names))

            def get_tensor_name(self, i):
                return self.names[i]

            def get_tensor_mode(self, name):
                return "INPUT" if name in self.inputs else "OUTPUT"

            def get_tensor_shape(self, name):
                return [d if isinstance(d, int) else -1 for d in self.meta[name].shape]

            def get_tensor_dtype(self, name):
                return {"tensor(float)": "FLOAT", "tensor(int64)": "INT64"}[self.meta[name].type]

            def get_tensor_profile_shape(self, name, index):
                assert index == 0
                return self.profile[name]

            def create_execution_context(self):
                return Context(self)

        class Context:
            def __init__(self, engine):
                self.engine, self.shapes, self.addresses, self.output_shapes = engine, {}, {}, {}

            def set_input_shape(self, name, shape):
                lo, _, hi = self.engine.profile[name]
                if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)) or len(shape) != len(lo):
                    return False
                self.shapes[name] = tuple(shape)
                return True

            def get_tensor_shape(self, name):
                if name in self.engine.inputs:
                    return self.shapes[name]
                return self._run_zeros()[name].shape

            def set_tensor_address(self, name, address):
                self.addresses[name] = address

            def _run_zeros(self):
                key = tuple(sorted(self.shapes.items()))
                if key not in self.output_shapes:
                    feed = {n: np.zeros(s, np.float32) for n, s in self.shapes.items()}
                    names = self.engine.names[len(self.engine.inputs):]
                    self.output_shapes[key] = dict(zip(names, self.engine.session.run(names, feed)))
                return self.output_shapes[key]

            def execute_async_v3(self, stream_handle):
                gpu.require_context()
                shapes, addresses = dict(self.shapes), dict(self.addresses)
                batch = next(iter(shapes.values()))[0]

                def op():
                    feed = {n: gpu.memory[addresses[n]][:4 * int(np.prod(s))].view(np.float32).reshape(s)
                            for n, s in shapes.items()}
                    names = self.engine.names[len(self.engine.inputs):]
                    for name, value in zip(names, self.engine.session.run(names, feed)):
                        raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
                        gpu.memory[addresses[name]][:raw.size] = raw
                    gpu.executions.append((stream_handle, batch))
                gpu.streams[stream_handle].append(op)
                return True

        trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
        return trt


def _uint8_qdq_error(path) -> str | None:
    """TensorRT's refusal of a Q/DQ node with a uint8 zero point, or None."""
    model = onnx.load(str(path))
    uint8 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in uint8:
            return f"{node.name}: only int8 quantization is supported (uint8 zero point)"
    return None


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Stand-in tensorrt and pycuda installed, and an empty engine cache as the default."""
    gpu = FakeGpu()
    trt = FakeTensorRT(gpu)
    driver = gpu.driver()
    package = types.ModuleType("pycuda")
    package.driver = driver
    monkeypatch.setitem(sys.modules, "tensorrt", trt.module())
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    trt.cache = EngineCache(tmp_path / "cache")
    return trt


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(SYNTHETIC_BUNDLE)


def _classifier_feed(bundle, n, seed=0):
    crops = render_cell_crops(np.arange(n) % len(bundle.class_names), 64, seed=seed)
    return {"image": to_model_input(crops, None, bundle.classifier.normalisation)}


# ---------------------------------------------------------------- builder

def test_build_sets_planned_flags_profile_workspace_and_timing_cache(fake, bundle):
    builds = plan_builds(bundle, max_batch=16)
    outcomes = build_engines(builds, fake.cache)
    assert [o.action for o in outcomes] == ["built", "built"]
    for build, record in zip(builds, fake.builds):
        assert record["onnx"] == str(build.onnx)
        assert record["flags"] == ["FP16"]
        assert record["profile"] == {"image": [list(s) for s in build.profile.shapes(build.input_chw)]}
        assert record["pools"] == {"WORKSPACE": WORKSPACE_BYTES}
        assert record["ignore_mismatch"] is False
    # the first build starts an empty timing cache; the second loads what the first saved
    assert fake.builds[0]["timing_loaded"] == b"" and fake.builds[1]["timing_loaded"] == b"timing+"
    assert fake.cache.timing_cache_path(_gpu(), TRT_VERSION).read_bytes() == b"timing++"


def _gpu():
    from edge.runtime.backends.tensorrt_deps import GpuIdentity
    return GpuIdentity("Orin (nvgpu)", (8, 7))


def test_fresh_engines_are_reused_and_damaged_ones_rebuilt(fake, bundle):
    builds = plan_builds(bundle)
    first = build_engines(builds, fake.cache)
    assert [o.action for o in build_engines(builds, fake.cache)] == ["cached", "cached"]
    assert len(fake.builds) == 2
    first[1].engine.write_bytes(b"{}")
    again = build_engines(builds, fake.cache)
    assert [o.action for o in again] == ["cached", "rebuilt"] and "SHA-256" in again[1].reason
    assert [o.action for o in build_engines(builds, fake.cache, force=True)] == ["rebuilt", "rebuilt"]


def test_an_unreadable_timing_cache_is_replaced(fake, bundle):
    path = fake.cache.timing_cache_path(_gpu(), TRT_VERSION)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    build_engines(plan_builds(bundle)[:1], fake.cache)
    assert fake.builds[0]["timing_loaded"] == b"" and path.read_bytes() == b"timing+"


def test_int8_from_a_graph_without_qdq_nodes_is_refused(fake, bundle_copy):
    add_tensorrt_variant(bundle_copy, "classifier")  # says INT8, but the variant is a copy of the FP32 graph
    builds = plan_builds(load_bundle(bundle_copy))
    with pytest.raises(BackendError, match="classifier-tensorrt.onnx has no QuantizeLinear nodes"):
        build_engines(builds, fake.cache)


@pytest.mark.parametrize("precision,hint", [("fp16", False), ("int8", True)])
def test_parser_errors_are_reported_with_the_int8_hint(fake, bundle_copy, precision, hint):
    if precision == "int8":
        add_tensorrt_variant(bundle_copy, "detector")
    fake.parse_error = "QuantizeLinear: UINT8 is not supported"
    name = "detector-tensorrt.onnx" if precision == "int8" else "detector.onnx"
    with pytest.raises(BackendError, match=f"TensorRT cannot parse {name}: QuantizeLinear: UINT8") as err:
        build_engines(plan_builds(load_bundle(bundle_copy))[:1], fake.cache)
    assert ("zero points 0" in str(err.value)) == hint


def test_an_int8_bundle_builds_runs_and_counts_from_its_tensorrt_variant(fake, bundle_copy):
    """The engine is built from the symmetric twin and found by its hash; the uint8 file is never parsed."""
    source = load_bundle(bundle_copy)
    crops = render_cell_crops(np.arange(32) % len(source.class_names), 64, seed=3)
    reader = ImageCalibrationReader(crops, "image", source.classifier.normalisation, batch=8)
    fp32, cache = source.model_path(source.classifier), bundle_copy.parent / "calibration.json"
    u8 = quantise_int8(fp32, bundle_copy / "classifier-int8.onnx", reader, calibration_cache=cache)
    twin = quantise_int8(fp32, bundle_copy.parent / "twin.onnx", reader, symmetric=True, calibration_cache=cache)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["models"]["classifier"].update(file=u8.name, sha256=sha256_file(u8))
    manifest["thresholds"]["classifier_sha256"] = sha256_file(u8)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    add_tensorrt_variant(bundle_copy, "classifier", source=twin)
    bundle = load_bundle(bundle_copy)

    outcomes = build_engines(plan_builds(bundle), fake.cache)
    assert [o.build.precision for o in outcomes] == ["fp16", "int8"]
    assert fake.builds[1]["onnx"] == str(bundle.root / "classifier-int8-tensorrt.onnx")
    assert fake.builds[1]["flags"] == ["INT8", "FP16"]
    image = render_field(SmearConfig(), seed=11).image
    with CellCounter(bundle, backend="tensorrt") as trt_counter:
        got = trt_counter.count_field(image)
        crops = to_model_input(trt_counter.crop(image, got.boxes), None, bundle.classifier.normalisation)
    assert len(got) > 0
    twin_scores = OrtRunner(bundle.tensorrt_path(bundle.classifier), threads=1).infer({"image": crops})["scores"]
    np.testing.assert_allclose(got.class_scores, twin_scores, atol=1e-6)  # the twin's engine ran
    with pytest.raises(BackendError, match="TensorRT cannot parse classifier-int8.onnx: .*uint8 zero point"):
        build_engines([replace(plan_builds(bundle)[1], onnx=bundle.model_path(bundle.classifier),
                               model_sha256=bundle.classifier.sha256)], fake.cache)  # what the twin avoids


def test_cli_builds_then_reuses(fake, capsys):
    args = ["build-engines", "--bundle", str(SYNTHETIC_BUNDLE), "--max-batch", "8"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("detector   fp16 batch 1/8/8  built in ") and "built" in lines[1]
    assert main(args) == 0
    assert all("  cached  " in line for line in capsys.readouterr().out.splitlines())


# ---------------------------------------------------------------- runner

def test_runner_matches_onnxruntime_on_every_batch_size(fake, bundle):
    build_engines(plan_builds(bundle, max_batch=12), fake.cache)
    path = bundle.model_path(bundle.classifier)
    reference = OrtRunner(path, threads=1)
    with open_runner("tensorrt", path) as runner:
        assert runner.max_batch == 12
        assert [(t.name, t.shape, t.dtype) for t in runner.inputs] == [("image", (None, 3, 64, 64), "float32")]
        assert [(t.name, t.shape) for t in runner.outputs] == [("scores", (None, 5))]
        for n in (1, 7, 12, 30):
            feed = _classifier_feed(bundle, n, seed=n)
            got = runner.infer(feed)
            np.testing.assert_array_equal(got["scores"], reference.infer(feed)["scores"])
    # 30 = 12 + 12 + 6: the batch larger than the profile ran in chunks the engine takes
    assert [b for _, b in fake.gpu.executions] == [1, 7, 12, 12, 12, 6]


def test_runner_buffers_streams_and_contexts(fake, bundle):
    build_engines(plan_builds(bundle, max_batch=10), fake.cache)
    gpu = fake.gpu
    detector = open_runner("tensorrt", bundle.model_path(bundle.detector))
    classifier = open_runner("tensorrt", bundle.model_path(bundle.classifier))
    shapes = sorted(tuple(b.shape) for b in gpu.pinned)
    # pinned buffers for the largest batch: input and outputs of each engine
    out = OrtRunner(bundle.model_path(bundle.detector), threads=1).infer(
        {"image": np.zeros((10, 3, 256, 256), np.float32)})
    assert shapes == sorted([(10, 3, 256, 256), (10, 3, 64, 64), (10, 5)] + [v.shape for v in out.values()])
    assert sorted(m.size for m in gpu.memory.values()) == sorted(b.nbytes for b in gpu.pinned)
    detector.infer({"image": np.zeros((3, 3, 256, 256), np.float32)})
    classifier.infer(_classifier_feed(bundle, 4))
    (det_stream, _), (cls_stream, _) = gpu.executions
    assert det_stream != cls_stream  # one stream per stage
    assert gpu.context_stack == []   # every push popped
    detector.close()
    classifier.close()
    detector.close()  # twice is harmless
    assert gpu.memory == {} and len(gpu.freed) == 5


@pytest.mark.parametrize("feed,message", [
    ({"pixels": np.zeros((2, 3, 64, 64), np.float32)}, r"takes inputs \['image'\], the feed has \['pixels'\]"),
    ({"image": np.zeros((2, 3, 32, 32), np.float32)}, r"has shape \(2, 3, 32, 32\)"),
    ({"image": np.zeros((0, 3, 64, 64), np.float32)}, "non-zero batch"),
])
def test_runner_refuses_feeds_the_engine_cannot_take(fake, bundle, feed, message):
    build_engines(plan_builds(bundle), fake.cache)
    with open_runner("tensorrt", bundle.model_path(bundle.classifier)) as runner:
        with pytest.raises(BackendError, match=message):
            runner.infer(feed)


def test_no_engine_for_this_gpu_says_how_to_build_one(fake, bundle):
    build_engines(plan_builds(bundle), fake.cache)
    fake.gpu.name = "NVIDIA Jetson AGX Xavier"  # engines built on the Orin are foreign here
    with pytest.raises(BackendError, match=r"no TensorRT engine for classifier.onnx .* NVIDIA Jetson AGX "
                                           r"Xavier with TensorRT 10.3.0 .*edge build-engines --bundle"):
        open_runner("tensorrt", bundle.model_path(bundle.classifier))


def test_a_damaged_engine_is_never_loaded(fake, bundle):
    outcomes = build_engines(plan_builds(bundle), fake.cache)
    outcomes[1].engine.write_bytes(outcomes[1].engine.read_bytes() + b" ")
    with pytest.raises(BackendError, match="no TensorRT engine for classifier.onnx"):
        open_runner("tensorrt", bundle.model_path(bundle.classifier))


def test_the_latest_engine_of_a_model_is_loaded(fake, bundle):
    build_engines(plan_builds(bundle, max_batch=4), fake.cache)
    records = sorted((fake.cache.root / "engines").glob("*.json"))
    for record_file in records:  # make the first build look older
        record = json.loads(record_file.read_text())
        record["built_at"] = "2026-01-01T00:00:00+00:00"
        record_file.write_text(json.dumps(record))
    build_engines(plan_builds(bundle, max_batch=9), fake.cache)
    with open_runner("tensorrt", bundle.model_path(bundle.classifier)) as runner:
        assert runner.max_batch == 9


def test_cell_counter_on_tensorrt_counts_like_onnxruntime(fake, bundle):
    build_engines(plan_builds(bundle), fake.cache)
    image = render_field(SmearConfig(), seed=11).image
    with CellCounter(bundle, backend="tensorrt") as trt_counter, CellCounter(bundle, threads=1) as ort_counter:
        got, want = trt_counter.count_field(image), ort_counter.count_field(image)
    assert len(want) > 0
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.class_scores, want.class_scores)
    np.testing.assert_array_equal(got.decisions.accepted, want.decisions.accepted)
    assert fake.gpu.context_stack == []
