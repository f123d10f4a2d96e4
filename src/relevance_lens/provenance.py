"""What every run records about where it came from: library versions and the machine."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "relevance-lens",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "ir_measures",
    "bm25s",
    "safetensors",
    "numpy",
)


def versions() -> dict[str, str]:
    """Versions of Python, the machine and the libraries that decide results."""
    found = {"python": sys.version.split()[0], "platform": platform.platform(), "processor": cpu_name()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_features() -> str:
    """The CPU's matmul-relevant instruction sets, and the caps oneDNN and MKL run under.

    Machines of one kind differ here (AMX or AVX-512 BF16 only), and bf16 speed with them.
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    kinds = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    caps = [f"{v}={os.environ[v]}" for v in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if os.environ.get(v)]
    return ",".join(kinds + caps)


def machine() -> dict:
    """Where a timing was taken: CPU and its features, torch's threads, the GPU if any, the load.

    A measured duration is stored with this, so that nobody compares seconds across machines unawares.
    """
    import torch

    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "processor": cpu_name(),
        "cpu_features": cpu_features(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average": load,
        "torch": torch.__version__,
    }
