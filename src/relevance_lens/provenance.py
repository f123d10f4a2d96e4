"""What every run records about where it came from: library versions and the machine."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

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
    found = {"python": sys.version.split()[0], "platform": platform.platform(), "processor": _cpu_model()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
