"""TensorRT and pycuda, imported only when asked for, and the GPU they run on.

edge/ must import without either package, so nothing here runs at import time.
Each function raises BackendError with one sentence naming what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass

from edge.runtime.backends.base import BackendError

INSTALL_HINT = ("on a Jetson use JetPack's python3-libnvinfer (TensorRT 10) and pip install pycuda; "
                "elsewhere pip install -e '.[jetson]'")


@dataclass(frozen=True)
class GpuIdentity:
    """What an engine is built for: TensorRT engines run only on the GPU model that built them."""

    name: str
    compute_capability: tuple[int, int]


def import_tensorrt():
    """The tensorrt module, version 10 or later."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(f"the tensorrt Python package (TensorRT 10) is missing ({exc}); "
                           f"{INSTALL_HINT}") from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise BackendError(f"TensorRT 10 or later is needed, found {tensorrt.__version__}")
    return tensorrt


def import_cuda_driver():
    """pycuda.driver, initialised, on a machine with at least one CUDA device."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:  # also raised when libcuda (the driver) is absent
        raise BackendError(f"pycuda or the CUDA driver is missing ({exc}); {INSTALL_HINT}") from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as exc:
        raise BackendError(f"CUDA does not start ({exc}): no usable CUDA driver or device") from None
    if count == 0:
        raise BackendError("no CUDA device: TensorRT needs an NVIDIA GPU")
    return cuda


def gpu_identity(cuda, device: int = 0) -> GpuIdentity:
    d = cuda.Device(device)
    return GpuIdentity(d.name(), tuple(d.compute_capability()))
