"""Shared parts of the benchmarks: set-up, the machine record, matmul rates, peak memory, result files.

A benchmark script puts this folder on ``sys.path`` and imports this module before the library:
importing it puts ``src/`` first on the path, so the scripts time this checkout's library.

Every benchmark writes ``results/<name>.json`` (the full record, machine included) and
``results/<name>.md`` (its table), and refreshes that table in ``benchmarks/README.md`` between
``<!-- results:<name> -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"

sys.path.insert(0, str(HERE.parent / "src"))


class BenchmarkError(SystemExit):
    """Raised (exit status 1) when systems disagree: a benchmark never times wrong outputs."""

    def __init__(self, message: str):
        super().__init__(f"BENCHMARK FAILED: {message}")
        self.message = message


# ---------------------------------------------------------------- the machine


def cpu_model() -> str:
    from relevance_lens.provenance import cpu_name

    return cpu_name()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _square_operands(dtype: torch.dtype, n: int, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``n x n`` operands, ``n`` halved until one product takes at most a quarter of ``seconds``.

    A dtype the CPU has no kernels for (bf16 on an AVX2-only CPU runs at ~1 GFLOP/s: 14 s for one
    2048² product) is measured at the largest size that allows, from a 256² probe, so a
    measurement stays about ``seconds`` long on every CPU.
    """
    probe = torch.randn(256, 256).to(dtype)
    probe @ probe
    start = time.perf_counter()
    probe @ probe
    rough = 2 * 256**3 / max(time.perf_counter() - start, 1e-9)
    while n > 256 and 2 * n**3 / rough > seconds / 4:
        n //= 2
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    return a, b


def matmul_rate(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """Peak GFLOP/s of an ``n x n`` matmul in ``dtype`` on this process's threads: its fastest product."""
    with torch.inference_mode():
        a, b = _square_operands(dtype, n, seconds)
        best = float("inf")
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return 2 * a.shape[0] ** 3 / best / 1e9


def sustained_rate(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """GFLOP/s an ``n x n`` matmul in ``dtype`` sustains over ``seconds``: all products over all time.

    On a shared host the fastest single product (:func:`matmul_rate`) can catch a burst the
    machine does not keep up (2026-12-03: 1,731 then 573 GFLOP/s a second apart); a benchmark row
    is compared with this rate measured just before and after it, so both see the same host.
    """
    with torch.inference_mode():
        a, b = _square_operands(dtype, n, seconds)
        products = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            products += 1
        elapsed = time.perf_counter() - start
    return 2 * a.shape[0] ** 3 * products / elapsed / 1e9


def machine(measure: bool = True) -> dict:
    """CPU, cores, versions, load; with ``measure``, the bf16 and fp32 matmul rates in GFLOP/s."""
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "sentence_transformers": _version("sentence-transformers"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": load_average(),
    }
    if measure:
        info["matmul_gflops"] = {"bf16": matmul_rate(torch.bfloat16), "fp32": matmul_rate(torch.float32)}
    return info


def machine_line(info: dict) -> str:
    rates = info.get("matmul_gflops") or {}
    rate = f"; matmul (up to 2048²): bf16 {rates['bf16']:,.0f}, fp32 {rates['fp32']:,.0f} GFLOP/s" if rates else ""
    load = info.get("load_average_1min")
    return (
        f"{info['date']} · {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads) · "
        f"torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}, "
        f"sentence-transformers {info['sentence_transformers']}{rate}"
        + (f" · load average at start {load:.2f}" if load is not None else "")
    )


# ---------------------------------------------------------------- memory


def peak_rss_self() -> int:
    """This process's peak resident set (VmHWM), in bytes.

    VmHWM belongs to the address space, which ``exec`` replaces, so a child reports its own peak.
    ``ru_maxrss`` does not do: it survives ``exec`` and a child of a large parent starts at the
    parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def report_peak_rss(**extra) -> None:
    """Last line of a probe child's stdout: its peak RSS, read by :func:`child_peak_rss`."""
    print(json.dumps({"peak_rss_bytes": peak_rss_self(), **extra}), flush=True)


def child_peak_rss(argv: Sequence[str], timeout: float = 3600) -> tuple[int, dict]:
    """Run a probe child (which ends with :func:`report_peak_rss`); returns (its peak RSS bytes, its report)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{' '.join(argv)} ran past {timeout} s") from None
    if done.returncode != 0:
        raise BenchmarkError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return int(report["peak_rss_bytes"]), report


def python_argv(script: Path, *args: str) -> list[str]:
    return [sys.executable, str(script), *args]


def flags(args=None, names: Sequence[str] = (), **values) -> list[str]:
    """``--name value`` for each of ``names`` (read from the parsed ``args``), then for each of ``values``."""
    pairs = [(name, getattr(args, name)) for name in names] + list(values.items())
    return [part for name, value in pairs for part in (f"--{name.replace('_', '-')}", str(value))]


def run_probe(script: Path, probe: str, *args: str) -> tuple[int, dict]:
    """Run ``script --probe PROBE ARGS`` as a probe child; returns (its peak RSS bytes, its report)."""
    return child_peak_rss(python_argv(script, "--probe", probe, *args))


# ---------------------------------------------------------------- the scripts' command lines and folders


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """The script's parser; ``--help`` shows its docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def work_folder(args) -> Path:
    """The script's ``--work`` folder (default ``_work`` in its ``--results`` folder), created."""
    work = args.work or (args.results / "_work")
    work.mkdir(parents=True, exist_ok=True)
    return work


# ---------------------------------------------------------------- results


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, record: dict, markdown: str, results: Path = RESULTS, readme: Path | None = README) -> Path:
    """Write ``results/<name>.json`` and ``.md``; refresh the README section ``results:<name>``."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    (results / f"{name}.md").write_text(markdown + "\n")
    if readme is not None and readme.is_file():
        text = readme.read_text()
        start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            readme.write_text(f"{head}{start}\n{markdown}\n{end}{tail}")
    return path


def publish(name: str, record: dict, markdown: str, results: Path = RESULTS) -> dict:
    """Write the result (and the README's table when ``results`` is the shipped folder); print the table."""
    write_result(name, record, markdown, results, README if results == RESULTS else None)
    print(markdown)
    return record
