"""What machine a benchmark ran on, and a Jetson's memory and power from tegrastats."""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
              "asimd", "asimddp", "asimdhp", "sve")
# rails that carry the whole board's input power, by Jetson generation
INPUT_RAILS = ("VDD_IN", "VIN_SYS_5V0", "POM_5V_IN")


def describe_machine() -> dict:
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^(?:model name|Hardware)\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    return {
        "cpu": model.group(1).strip() if model else (platform.processor() or platform.machine()),
        "board": _read("/proc/device-tree/model").strip("\x00\n") or None,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "simd": sorted(set(flags.group(1).split()) & set(SIMD_FLAGS)) if flags else [],
        "memory_mb": int(meminfo.group(1)) // 1024 if meminfo else None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class TegraSample:
    """One tegrastats line. A Jetson's GPU shares the RAM, so RAM used is the GPU's memory too."""

    ram_used_mb: int | None
    ram_total_mb: int | None
    gpu_load_percent: float | None
    power_mw: dict[str, int]  # rail -> current milliwatts


_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GPU_LOAD = re.compile(r"\bGR3D_FREQ (\d+)%")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


def parse_tegrastats(line: str) -> TegraSample:
    ram = _RAM.search(line)
    load = _GPU_LOAD.search(line)
    return TegraSample(int(ram.group(1)) if ram else None, int(ram.group(2)) if ram else None,
                       float(load.group(1)) if load else None,
                       {m.group(1): int(m.group(2)) for m in _RAIL.finditer(line)})


def summarise_tegrastats(samples: list[TegraSample]) -> dict | None:
    if not samples:
        return None
    ram = [s.ram_used_mb for s in samples if s.ram_used_mb is not None]
    load = [s.gpu_load_percent for s in samples if s.gpu_load_percent is not None]
    rails = sorted({r for s in samples for r in s.power_mw})
    power = {r: float(np.mean([s.power_mw[r] for s in samples if r in s.power_mw])) for r in rails}
    board = next((r for r in INPUT_RAILS if r in power), None)
    return {
        "samples": len(samples),
        "ram_used_mb_max": max(ram) if ram else None,
        "gpu_load_percent_mean": float(np.mean(load)) if load else None,
        "power_mw_mean": power,
        "board_power_mw_mean": power[board] if board else None,
    }


class Tegrastats:
    """Runs the tegrastats binary, when the machine has one, for the length of a `with` block."""

    def __init__(self, interval_ms: int = 100):
        self.binary = shutil.which("tegrastats")
        self.interval_ms = interval_ms
        self.samples: list[TegraSample] = []
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> "Tegrastats":
        if self.binary:
            self._process = subprocess.Popen([self.binary, "--interval", str(self.interval_ms)],
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._reader = threading.Thread(target=self._read_lines, daemon=True)
            self._reader.start()
        return self

    def _read_lines(self) -> None:
        for line in self._process.stdout:
            self.samples.append(parse_tegrastats(line))

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=5)
            self._reader.join(timeout=5)

    def summary(self) -> dict | None:
        return summarise_tegrastats(self.samples)
