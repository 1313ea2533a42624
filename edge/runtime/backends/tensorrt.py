"""TensorRT runner (pycuda for memory and streams).

Opened on a bundle's ONNX file, it loads the engine that `edge build-engines`
built from that file for this GPU and TensorRT version (the most recent fresh
one in the engine cache, $EDGE_TRT_CACHE or ~/.cache/edge-cellcount/tensorrt).
It never builds: a missing engine is an error that says which command builds it.

Per runner: one CUDA stream (a runner serves one stage of the loop, so stages
overlap on the GPU), pinned host buffers and device buffers sized once for the
profile's largest batch, and tensor addresses bound once. `infer` sets the
batch with set_input_shape, copies in, runs and copies out asynchronously on
the stream, reads output shapes back from the context and synchronises once.
A batch larger than the engine's profile is run in chunks. One runner is used
by one thread at a time.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge.runtime.backends.base import BackendError, Runner, TensorSpec
from edge.runtime.backends.tensorrt_cache import EngineCache, default_cache_dir
from edge.runtime.backends.tensorrt_deps import GpuIdentity, gpu_identity, import_cuda_driver, import_tensorrt
from edge.runtime.bundle import sha256_file

log = logging.getLogger(__name__)


class TrtRunner(Runner):
    name = "tensorrt"

    def __init__(self, model_path: str | Path, cache_dir: str | Path | None = None, device: int = 0):
        trt = import_tensorrt()
        self._cuda = cuda = import_cuda_driver()
        engine_file = find_engine(Path(model_path), EngineCache(cache_dir or default_cache_dir()),
                                  gpu_identity(cuda, device), str(trt.__version__))
        self._gpu_context = cuda.Device(device).retain_primary_context()
        self._device_buffers: list = []
        try:
            with self._active():
                self._open(trt, engine_file)
        except BaseException:
            self.close()
            raise
        log.info("TensorRT engine %s for %s, batch up to %d", engine_file.name, Path(model_path).name,
                 self.max_batch)

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self._check_feed(feed)
        if batch <= self.max_batch:
            return self._run(feed, batch)
        parts = [self._run({k: v[i:i + self.max_batch] for k, v in feed.items()},
                           min(self.max_batch, batch - i))
                 for i in range(0, batch, self.max_batch)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def close(self) -> None:
        if self._gpu_context is None:
            return
        with self._active():
            for buffer in self._device_buffers:
                buffer.free()
            self._device_buffers = []
            # TensorRT wants the context released before its engine, the engine before its runtime
            self._context = self._engine = self._runtime = self._stream = None
        self._gpu_context.detach()
        self._gpu_context = None

    # ------------------------------------------------------------ internals

    @contextmanager
    def _active(self):
        self._gpu_context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def _open(self, trt, engine_file: Path) -> None:
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self._engine is None:
            raise BackendError(f"TensorRT cannot load the engine {engine_file}; "
                               "rebuild it with edge build-engines --force")
        self._context = self._engine.create_execution_context()
        self._stream = self._cuda.Stream()
        self._inputs, self._outputs = _io_specs(trt, self._engine)
        self.max_batch = _max_batch(self._engine, self._inputs)
        self._host, self._device = self._allocate()

    def _allocate(self) -> tuple[dict[str, np.ndarray], dict]:
        """Pinned host and device buffers for the largest batch; addresses bound once."""
        for spec in self._inputs:
            self._set_input_shape(spec.name, (self.max_batch, *spec.shape[1:]))
        host, device = {}, {}
        for spec in self._inputs + self._outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise BackendError(f"the engine's {spec.name!r} has a data-dependent shape {shape}, "
                                   "which this runner does not support")
            host[spec.name] = self._cuda.pagelocked_empty(shape, np.dtype(spec.dtype))
            device[spec.name] = self._cuda.mem_alloc(max(host[spec.name].nbytes, 1))
            self._device_buffers.append(device[spec.name])
            self._context.set_tensor_address(spec.name, int(device[spec.name]))
        return host, device

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(name, shape):
            raise BackendError(f"the engine does not take {name!r} of shape {shape} "
                               f"(its profile allows batches up to {self.max_batch})")

    def _check_feed(self, feed: dict[str, np.ndarray]) -> int:
        names = {s.name for s in self._inputs}
        if set(feed) != names:
            raise BackendError(f"the engine takes inputs {sorted(names)}, the feed has {sorted(feed)}")
        batches = set()
        for spec in self._inputs:
            shape = np.shape(feed[spec.name])
            fixed = spec.shape[1:]
            if len(shape) != len(spec.shape) or any(f is not None and f != s for f, s in zip(fixed, shape[1:])):
                raise BackendError(f"input {spec.name!r} has shape {shape}, the engine takes {spec.shape}")
            batches.add(shape[0])
        if len(batches) != 1 or 0 in batches:
            raise BackendError(f"the inputs must share one non-zero batch size, got {sorted(batches)}")
        return batches.pop()

    def _run(self, feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        cuda, stream = self._cuda, self._stream
        with self._active():
            for spec in self._inputs:
                staged = _prefix(self._host[spec.name], (batch, *np.shape(feed[spec.name])[1:]))
                np.copyto(staged, feed[spec.name], casting="same_kind")
                self._set_input_shape(spec.name, staged.shape)
                cuda.memcpy_htod_async(self._device[spec.name], staged, stream)
            if not self._context.execute_async_v3(stream.handle):
                raise BackendError("TensorRT failed to run the engine")
            results = {}
            for spec in self._outputs:
                results[spec.name] = _prefix(self._host[spec.name], tuple(self._context.get_tensor_shape(spec.name)))
                cuda.memcpy_dtoh_async(results[spec.name], self._device[spec.name], stream)
            stream.synchronize()
        return {name: out.copy() for name, out in results.items()}  # the pinned buffers are reused


def find_engine(model_path: Path, cache: EngineCache, gpu: GpuIdentity, tensorrt_version: str) -> Path:
    """The most recently built fresh engine for this ONNX file, GPU and TensorRT version."""
    if not model_path.is_file():
        raise BackendError(f"model file not found: {model_path}")
    model_sha = sha256_file(model_path)
    found = cache.fresh_engines_for(model_sha, gpu, tensorrt_version)
    if not found:
        raise BackendError(
            f"no TensorRT engine for {model_path.name} (sha256 {model_sha[:12]}...) built on this "
            f"{gpu.name} with TensorRT {tensorrt_version} in {cache.root}; "
            f"build it with: edge build-engines --bundle {model_path.parent} --cache {cache.root}")
    key, record = found[0]
    if len(found) > 1:
        log.info("%d engines for %s; using the latest, %s %s built %s", len(found), model_path.name,
                 key.precision, "x".join(map(str, key.profile[2])), record.get("built_at"))
    return cache.engine_path(key)


def _io_specs(trt, engine) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(d if d >= 0 else None for d in engine.get_tensor_shape(name))
        spec = TensorSpec(name, shape, np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return inputs, outputs


def _max_batch(engine, inputs: list[TensorSpec]) -> int:
    """The largest batch of profile 0 (the only profile edge build-engines makes)."""
    largest = {int(engine.get_tensor_profile_shape(s.name, 0)[2][0]) if s.shape[0] is None else s.shape[0]
               for s in inputs}
    if len(largest) != 1:
        raise BackendError(f"the engine's inputs allow different largest batches {sorted(largest)}")
    return largest.pop()


def _prefix(buffer: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A view of the first elements of a contiguous buffer, in `shape`."""
    size = int(np.prod(shape))
    if size > buffer.size:
        raise BackendError(f"a tensor of shape {shape} does not fit its buffer of {buffer.size} elements")
    return buffer.reshape(-1)[:size].reshape(shape)
