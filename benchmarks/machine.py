"""The machine every benchmark runs on: CPU, cores, versions and measured matmul rates.

    python benchmarks/machine.py            # writes benchmarks/results/machine.json and .md

The bf16 and fp32 rates (2048² matmul, best of ~1 s of runs, this process's threads) are the
denominators of the "fraction of the hardware limit" the scoring benchmark reports; the other
benchmarks measure them again in their own process, since load changes them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine, machine_line, markdown_table, publish  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="Folder for the JSON and Markdown results.")
    args = parser.parse_args(argv)
    info = machine(measure=True)
    rates = info["matmul_gflops"]
    table = markdown_table(
        ["CPU", "cores", "torch", "bf16 matmul GFLOP/s", "fp32 matmul GFLOP/s", "load avg"],
        [[info["cpu"], info["cores"], info["torch"], rates["bf16"], rates["fp32"], info["load_average_1min"]]],
    )
    markdown = f"{machine_line(info)}\n\n{table}"
    publish("machine", {"machine": info}, markdown, args.results)
    return info


if __name__ == "__main__":
    main()
