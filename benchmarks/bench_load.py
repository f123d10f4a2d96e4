"""Peak host RAM to load a 7B-class model for scoring, through relevance-lens's own loading path.

    python benchmarks/bench_load.py                          # Mistral-7B: ~14.5 GB to /tmp, ~18 GiB RAM
    python benchmarks/bench_load.py --model llama-3.1-8b     # or pythia-6.9b
    python benchmarks/bench_load.py --smoke --results /tmp/x # tiny shape: what the test suite runs

A model folder of the real config (``configs/``) with random bf16 weights, sharded safetensors as
the hub ships them (lm_head included, as in the real checkpoint; the backbone loader drops it), a
placeholder tokenizer; then a fresh child process loads it with
:func:`relevance_lens.score.config.load_for_scoring` (``dtype="bf16"``, CPU), reads every weight
(so every byte is resident, not just mapped) and scores one pair. The child's peak resident set
(VmHWM: anonymous memory and the mapped file pages, both counted) is compared with the bf16 size of
the weights it holds. The weights are random: how much memory loading takes does not depend on
their values (they are a random block tiled, which writes 14.5 GB in seconds).

``--compare-layers N`` also loads the first N layers of the same shape both ways, ours and the
loading this replaced (fp32 ``from_pretrained``, then cast to bf16), to show the difference at a
size this machine can hold twice over. The folder is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import shapes  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
    BenchmarkError,
    child_peak_rss,
    machine,
    machine_line,
    markdown_table,
    publish,
    python_argv,
    report_peak_rss,
    write_result,
)

SHARD_BYTES = 1 << 30  # 1 GiB shards: writing holds one at a time
POOL = 1 << 24  # random values tiled into every tensor
TARGET_RATIO = 1.2  # issue 12: peak host RAM at most 1.2x the bf16 weights


# ---------------------------------------------------------------- the model folder


def write_model(name: str, folder: Path, *, tiny: bool = False, layers: int | None = None) -> dict:
    """A loadable model folder of ``name``'s shape with random bf16 weights; returns its sizes."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    config = shapes.config(name, tiny=tiny, layers=layers)
    config.dtype = torch.bfloat16
    with torch.device("meta"):  # shapes only: nothing allocated
        shapes_only = AutoModelForCausalLM.from_config(config)
    tensors = {k: tuple(v.shape) for k, v in shapes_only.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    pool = (torch.randn(POOL, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    weight_map, shard, shard_bytes, files = {}, {}, 0, []
    total = 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            file = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, folder / file, metadata={"format": "pt"})
            files.append(file)
            weight_map.update({k: file for k in shard})
        shard, shard_bytes = {}, 0

    for i, (key, shape) in enumerate(tensors.items()):
        n = int(torch.Size(shape).numel())
        if shard_bytes + 2 * n > SHARD_BYTES:
            flush()
        shard[key] = _tiled(pool, n, offset=(i * 7919) % POOL).view(shape)
        shard_bytes += 2 * n
        total += 2 * n
    flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(folder)
    shapes.placeholder_tokenizer().save_pretrained(folder)
    return {"files": len(files), "file_bytes": total, "tensors": len(tensors)}


def _tiled(pool: torch.Tensor, n: int, offset: int) -> torch.Tensor:
    """``n`` values: ``pool`` from ``offset`` on, wrapped around as often as needed."""
    out = torch.empty(n, dtype=pool.dtype)
    filled = 0
    while filled < n:
        take = min(n - filled, pool.numel() - offset)
        out[filled : filled + take] = pool[offset : offset + take]
        filled, offset = filled + take, 0
    return out


# ---------------------------------------------------------------- the child that loads


def _status() -> dict:
    keys = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
    lines = Path("/proc/self/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines if line.startswith(keys)}


def child(folder: Path, path: str) -> None:
    """Load ``folder`` for scoring (``path``: ours or the fp32-then-cast one), read every weight, score a pair."""
    from relevance_lens.data.formats import Passage
    from relevance_lens.model.reranker import Reranker
    from relevance_lens.score.config import ScoreConfig, load_for_scoring, prepare

    config = ScoreConfig(dtype="bf16", device="cpu")
    before = _status()
    started = time.perf_counter()
    if path == "ours":
        reranker = load_for_scoring(str(folder), None, config)
    else:  # what cli.rerank did before load_for_scoring: fp32 weights, then cast
        reranker = prepare(Reranker.from_pretrained(str(folder)), config)
    load_s = time.perf_counter() - started
    loaded = _status()
    weights = list(reranker.parameters()) + list(reranker.buffers())
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in reranker.parameters()})
    with torch.inference_mode():
        checksum = sum(float(p.float().sum()) if p.numel() < (1 << 20) else float(p.sum()) for p in weights)
    touched = _status()
    started = time.perf_counter()
    score = reranker.score_pairs("w1 w2 w3", [Passage("d", "", "w4 w5 w6 w7")])[0]
    score_s = time.perf_counter() - started
    report_peak_rss(
        path=path,
        bf16_bytes=sum(p.numel() * 2 for p in reranker.parameters()),
        held_bytes=sum(p.numel() * p.element_size() for p in reranker.parameters()),
        dtypes=dtypes,
        load_s=load_s,
        score_s=score_s,
        finite=bool(checksum == checksum and score == score),
        status={"start": before, "loaded": loaded, "touched": touched, "scored": _status()},
    )


def measure(folder: Path, path: str) -> dict:
    peak, report = child_peak_rss(python_argv(Path(__file__), "--child", str(folder), "--path", path))
    if not report["finite"]:
        raise BenchmarkError(f"{path}: the loaded model scored a non-finite value")
    report["ratio"] = peak / report["bf16_bytes"]
    return report


# ---------------------------------------------------------------- main


def table(record: dict) -> str:
    gib = 1024**3
    rows = []
    for label, r in record["rows"].items():
        rows.append(
            [
                label,
                r["path"],
                "/".join(r["dtypes"]),
                f"{r['bf16_bytes'] / gib:.2f}",
                f"{r['peak_rss_bytes'] / gib:.2f}",
                f"{r['ratio']:.2f}x",
                f"{r['status']['touched']['RssAnon'] / gib:.2f}",
                f"{r['status']['touched']['RssFile'] / gib:.2f}",
                r["load_s"],
            ]
        )
    headers = ["model", "loading", "dtype", "bf16 weights GiB", "peak RSS GiB", "peak / bf16", "anon GiB", "file GiB"]
    headers.append("load s")
    return f"{machine_line(record['machine'])}\n\n{markdown_table(headers, rows)}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mistral-7b-v0.1", choices=shapes.MODELS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/relevance-lens-bench-load"), help="Model folders.")
    parser.add_argument("--compare-layers", type=int, default=2, help="Compare both loadings on N layers (0: skip).")
    parser.add_argument("--no-full", action="store_true", help="Only the --compare-layers comparison.")
    parser.add_argument("--smoke", action="store_true", help="Tiny shape of the config (the test suite's run).")
    parser.add_argument("--keep", action="store_true", help="Keep the model folders.")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="ours", choices=("ours", "fp32-then-cast"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.path)
        return {}
    record = {"machine": machine(measure=False), "model": args.model, "smoke": args.smoke, "rows": {}}
    name = "load-smoke" if args.smoke else f"load-{args.model}"
    try:
        if args.compare_layers:
            folder = args.work / f"{args.model}-{args.compare_layers}layers"
            record["compare_files"] = write_model(args.model, folder, tiny=args.smoke, layers=args.compare_layers)
            for path in ("fp32-then-cast", "ours"):
                record["rows"][f"{args.model}, first {args.compare_layers} layers ({path})"] = measure(folder, path)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        if not args.no_full:
            folder = args.work / args.model
            started = time.perf_counter()
            record["files"] = write_model(args.model, folder, tiny=args.smoke)
            record["write_s"] = time.perf_counter() - started
            full = measure(folder, "ours")
            record["rows"][f"{args.model} (whole)"] = full
            record["ratio"] = full["ratio"]
            record["target_ratio"] = TARGET_RATIO
            record["meets_target"] = full["ratio"] <= TARGET_RATIO
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    record["machine"]["load_average_1min_end"] = machine(measure=False)["load_average_1min"]
    if args.results == RESULTS:
        return publish(name, record, table(record))
    write_result(name, record, table(record), args.results, None)
    return record


if __name__ == "__main__":
    main()
