import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py

# compile="auto" chooses from the scoring calibration this machine measured (score.paths): tests
# start from an empty one of their own (subprocesses inherit it), never the user's ~/.cache.
os.environ["RELEVANCE_LENS_CALIBRATION"] = str(Path(tempfile.mkdtemp(prefix="rl-test-calibration-")) / "paths.json")

#: Environment variables that choose the CPU kernels, and so the rounding, of every matmul.
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")


def kernel_path() -> str:
    """Which CPU kernel path the tests run on: CPU bf16 features, ATen's vector ISA and any ISA caps set.

    Numerical tolerances depend on it (AMX vs AVX-512 bf16 matmuls round differently); CI runs the
    precision-sensitive tests a second time with AMX and MKL's AVX-512 paths disabled (.ci/run).
    """
    import torch

    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    features = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    caps = [f"{k}={os.environ[k]}" for k in KERNEL_ENV if k in os.environ]
    return (
        f"CPU {' '.join(features) or 'unknown'}; ATen {torch.backends.cpu.get_cpu_capability()}; "
        f"{' '.join(caps) or 'no ISA caps set'}"
    )


def pytest_report_header(config):
    return f"kernel path: {kernel_path()}"


def pytest_collection_finish(session):
    """Move everything imported and built so far (torch, transformers, the test modules) out of the
    garbage collector's view: ``study run`` calls ``gc.collect()`` after every cell, and each call
    otherwise walks the whole test process's heap (a sixth of a tiny study's time). Objects the
    tests create are still collected; nothing frozen here was ever garbage."""
    import gc

    gc.collect()
    gc.freeze()
