"""The demo's time as a newcomer meets it: the whole run, and each cell's share of it.

    python benchmarks/bench_demo.py                          # results/demo.json and .md
    python benchmarks/bench_demo.py --name demo-epyc --results /tmp/r
    python benchmarks/bench_demo.py --study my.toml          # any study file, through `study run`

Runs ``relevance-lens demo --workdir W`` (or ``study run STUDY --workdir W``) in a child process,
in a new work folder, with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR``) and no
scoring-path calibration file (``RELEVANCE_LENS_CALIBRATION``), as on a newcomer's first run:
every compile is cold and ``compile=auto`` decides on its prior. Run it from a fresh clone with
``scripts/setup.sh`` done first (not counted), nothing else running.

What it records: the child's wall time and peak RSS; each cell's wall seconds as the study
stored them (:func:`relevance_lens.study.measured_seconds`); the bf16 2048² matmul rate just
before and after (fastest product and sustained over ``--rate-seconds``) and the load average,
since the hosts of one machine kind run at very different rates from day to day; and the bar of
issue 11 that applies to this CPU (12 minutes where bf16 runs on AMX, 20 where it runs on
AVX-512 BF16 only). The bar is for a quiet machine: the record says whether this one was, by
its rate, but decides nothing on its own about that.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402
from relevance_lens import study as st  # noqa: E402
from relevance_lens.provenance import cpu_features  # noqa: E402
from relevance_lens.store import Store  # noqa: E402

#: Issue 11's bars, minutes for the demo with set-up excluded, by the CPU's fastest bf16 path.
BARS = (("amx_bf16", 12.0, "AMX"), ("avx512_bf16", 20.0, "AVX-512 BF16 only"))


def bar_for(features: str) -> tuple[float, str] | None:
    """The demo's time bar for a CPU with these features (``provenance.cpu_features``), or None."""
    flags = set(features.split(","))
    return next(((minutes, label) for flag, minutes, label in BARS if flag in flags), None)


def command(study: str, workdir: Path) -> list[str]:
    """The child's command line: the packaged demo as the README runs it, or ``study run`` of a file."""
    cli = [sys.executable, "-m", "relevance_lens"]
    if study == "demo":
        return [*cli, "demo", "--workdir", str(workdir)]
    return [*cli, "study", "run", study, "--workdir", str(workdir)]


def run_child(argv: list[str], workdir: Path, log: Path, timeout: float) -> tuple[float, int]:
    """Run the study in a child with a cold cache and no calibration; returns (wall seconds, peak RSS bytes).

    Peak RSS: the largest of this process's children (``RUSAGE_CHILDREN``); the child is the only one.
    """
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor-", dir=workdir.parent),
        "RELEVANCE_LENS_CALIBRATION": str(workdir.parent / "scoring-paths.json"),
    }
    started = time.perf_counter()
    with open(log, "w") as fh:
        try:
            done = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise common.BenchmarkError(f"{' '.join(argv)} ran past {timeout:.0f} s; its output: {log}") from None
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise common.BenchmarkError(f"{' '.join(argv)} failed ({done.returncode}); its output ({log}) ends:\n{tail}")
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def cell_times(study: str, store_path: Path) -> list[dict]:
    """Each cell of the study with the seconds its store holds for it (None: not timed)."""
    store = Store(store_path)
    cells = st.expand(st.load_study(study))
    return [
        {"run": c.run, "what": c.what, "kind": c.kind, "seconds": st.measured_seconds(c, store)}
        for c in cells
        if c.kind != "search"
    ]


def rates(seconds: float) -> dict:
    """The bf16 2048² matmul rate now: the fastest product and the rate sustained over ``seconds``."""
    return {
        "peak_gflops": common.matmul_rate(torch.bfloat16),
        "sustained_gflops": common.sustained_rate(torch.bfloat16, seconds=seconds),
        "load_average_1min": common.load_average(),
    }


def summarize(cells: list[dict], wall: float, features: str) -> dict:
    """Minutes, the cells' sum and the rest, and the bar for this CPU with whether the run met it."""
    timed = [c["seconds"] for c in cells if c["seconds"] is not None]
    if len(timed) != len(cells):
        missing = [f"{c['what']} · {c['run']}" for c in cells if c["seconds"] is None]
        raise common.BenchmarkError(f"cells without a timing (resumed, or run before): {', '.join(missing)}")
    bar = bar_for(features)
    return {
        "minutes": wall / 60,
        "cells_seconds": sum(timed),
        "outside_cells_seconds": wall - sum(timed),
        "bar_minutes": bar[0] if bar else None,
        "bar_for": bar[1] if bar else None,
        "within_bar": (wall / 60 <= bar[0]) if bar else None,
    }


def markdown(record: dict) -> str:
    info, summary = record["machine"], record["summary"]
    before, after = record["rate_before"], record["rate_after"]
    wall = record["wall_seconds"]
    rows = [[c["what"], c["run"], c["seconds"], f"{100 * c['seconds'] / wall:.0f}%"] for c in record["cells"]]
    rows.append(["outside the cells (start-up; the demo: its report)", "", summary["outside_cells_seconds"], ""])
    bar = (
        f"the bar for {summary['bar_for']}: {summary['bar_minutes']:g} min on a quiet machine, "
        f"{'met' if summary['within_bar'] else 'missed'} on this one"
        if summary["bar_minutes"]
        else "no bar for this CPU (bf16 on neither AMX nor AVX-512 BF16)"
    )
    return (
        f"{common.machine_line(info)} · CPU features {record['cpu_features']}\n\n"
        f"`{record['command']}`: **{summary['minutes']:.1f} min** wall, peak RSS "
        f"{record['peak_rss_bytes'] / 2**30:.1f} GiB; {bar}. bf16 2048² rate before: "
        f"{before['peak_gflops']:,.0f} GFLOP/s fastest, {before['sustained_gflops']:,.0f} sustained (load "
        f"{before['load_average_1min']:.2f}); after: {after['peak_gflops']:,.0f} / {after['sustained_gflops']:,.0f} "
        f"(load {after['load_average_1min']:.2f}).\n\n"
        + common.markdown_table(["cell", "run", "seconds", "share"], rows)
    )


def main(argv: list[str] | None = None) -> dict:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--study", default="demo", help="demo (the packaged one, as `relevance-lens demo`) or a file.")
    parser.add_argument("--name", default="demo", help="Result name: results/NAME.json and .md.")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="Folder for the JSON and Markdown.")
    parser.add_argument("--work", type=Path, default=None, help="Work folder (default: a new one under /tmp).")
    parser.add_argument("--rate-seconds", type=float, default=4.0, help="Seconds of the sustained-rate measure.")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="Stop the child after this many seconds.")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-demo-")) if args.work is None else args.work
    workdir = base / "demo"
    if workdir.exists():
        raise common.BenchmarkError(f"--work {base}: {workdir} exists; the demo is timed from an empty work folder")
    base.mkdir(parents=True, exist_ok=True)
    argv_child = command(args.study, workdir)
    info = common.machine(measure=False)
    before = rates(args.rate_seconds)
    wall, peak = run_child(argv_child, workdir, base / "demo.log", args.timeout)
    after = rates(args.rate_seconds)
    study = st.load_study(args.study)
    store = st.default_paths(study, workdir, None, None)[1]
    cells = cell_times(args.study, store)
    record = {
        "benchmark": "demo",
        "machine": info,
        "cpu_features": cpu_features(),
        "command": " ".join(["relevance-lens", *argv_child[3:]]),
        "wall_seconds": wall,
        "peak_rss_bytes": peak,
        "rate_before": before,
        "rate_after": after,
        "cells": cells,
        "summary": summarize(cells, wall, cpu_features()),
        "log": str(base / "demo.log"),
    }
    return common.publish(args.name, record, markdown(record), args.results)


if __name__ == "__main__":
    main()
