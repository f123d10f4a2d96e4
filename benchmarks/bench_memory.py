"""Peak memory of reranking a large run: the streamed file path vs the whole-run dict path.

    python benchmarks/bench_memory.py                         # 10k and 100k pairs, max length 256
    python benchmarks/bench_memory.py --pairs 1000 10000      # quicker

Each measurement is a child process of its own (peak RSS = its ``VmHWM``), which reads a
synthetic collection and writes a reranked run:

* ``stream``: ``relevance-lens rerank``'s path, :func:`relevance_lens.score.stream.rerank_to_file`
  over a :class:`~relevance_lens.data.formats.RunSpool` (run on disk, scored ``chunk_pairs`` at a
  time, written through a :class:`~relevance_lens.data.formats.RunWriter`);
* ``dict``: the whole-run path the CLI took before, ``read_run`` → ``score.rerank`` → ``write_run``.

Both write the same bytes (checked: the benchmark stops with ``BENCHMARK FAILED`` otherwise).
The model is the tiny-config random LLaMA of ``tests/tiny.py`` (hidden 32, 4 layers, its own
256-token BPE): memory of a run does not depend on what the weights are, and a 135M model would
take hours for 100k pairs on a 2-core CPU. Queries and corpus are the same for every size (the
run's depth changes), so what grows is what grows with the run. ``compile`` is off (compiling
is its own memory, not the run's). ``--with-long`` adds one 10 MB passage and one >100k-token
query to the collection.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common  # noqa: E402

WORDS = (
    "query document what is the capital of france paris is the capital of france bananas are yellow fruit "
    "how do i sort a list in python use sorted or list sort debian package manager apt installs packages "
    "perl regular expressions match text"
).split()


# ---------------------------------------------------------------- inputs


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_collection(folder: Path, queries: int, passages: int, long: bool, seed: int = 0) -> None:
    """Queries (~8 words) and passages (~60 words, MS MARCO's mean) as TSV; with ``long`` a 10 MB
    passage and a >100k-token query."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "queries.tsv", "w") as f:
        for q in range(queries):
            text = _words(rng, 60_000) if long and q == 0 else _words(rng, 8)
            f.write(f"{q}\t{text}\n")
    with open(folder / "corpus.tsv", "w") as f:
        for d in range(passages):
            text = _words(rng, 1_800_000)[: 10 << 20] if long and d == 0 else _words(rng, 60)
            f.write(f"d{d}\t\t{text}\n")


def write_run(path: Path, queries: int, passages: int, depth: int, seed: int = 1) -> None:
    """A first-stage run, ``depth`` distinct passages per query, grouped by query as first stages write it."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for q in range(queries):
            for rank, d in enumerate(rng.sample(range(passages), depth), 1):
                f.write(f"{q} Q0 d{d} {rank} {100 - rank / depth:.6f} bm25\n")


# ---------------------------------------------------------------- the probe (a child process)


def probe(args) -> None:
    from relevance_lens.data.formats import RunSpool, read_corpus, read_queries, read_run, write_run
    from relevance_lens.model.reranker import Reranker, RerankerConfig
    from relevance_lens.score.config import ScoreConfig, prepare
    from relevance_lens.score.rerank import rerank
    from relevance_lens.score.stream import rerank_to_file

    config = ScoreConfig(depth=args.depth, dtype="fp32", device="cpu", compile="off")
    settings = RerankerConfig(model=str(args.model), max_length=args.max_length)
    start = time.perf_counter()
    queries, corpus = read_queries(args.data / "queries.tsv"), read_corpus(args.data / "corpus.tsv")
    reranker = prepare(Reranker.from_pretrained(str(args.model), config=settings), config)
    if args.probe == "stream":
        with RunSpool(args.run, queries=queries, corpus=corpus) as run:
            rerank_to_file(reranker, queries, corpus, run, args.output, config, progress=False)
    else:
        run = read_run(args.run, queries=queries, corpus=corpus)
        write_run(rerank(reranker, queries, corpus, run, config, progress=False), args.output, tag="relevance-lens")
    common.report_peak_rss(seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- the benchmark


def main(argv: list[str] | None = None) -> dict:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--pairs", type=int, nargs="+", default=[10_000, 100_000], help="Run sizes, in pairs.")
    parser.add_argument("--queries", type=int, default=1000, help="Queries (the run's depth = pairs / queries).")
    parser.add_argument("--passages", type=int, default=20_000, help="Passages in the corpus.")
    parser.add_argument("--max-length", type=int, default=256, help="Tokens per pair (RerankerConfig's default).")
    parser.add_argument("--with-long", action="store_true", help="Add a 10 MB passage and a >100k-token query.")
    parser.add_argument("--name", default="memory", help="Result name: results/<name>.json and .md.")
    parser.add_argument(
        "--results", type=Path, default=common.RESULTS, help="Folder for the JSON and Markdown results."
    )
    parser.add_argument("--work", type=Path, default=None, help="Where inputs and outputs go (default results/_work).")
    # the child's arguments
    parser.add_argument("--probe", choices=["stream", "dict"], help=argparse.SUPPRESS)
    for name in ("model", "data", "run", "output"):
        parser.add_argument(f"--{name}", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args)
        return {}
    work = (args.work or args.results / "_work") / "memory"
    info = common.machine(measure=False)
    model = work / "tiny-llama"
    if not (model / "config.json").is_file():
        from tiny import save_tiny

        save_tiny("llama", model)
    data = work / ("data-long" if args.with_long else "data")
    write_collection(data, args.queries, args.passages, args.with_long)
    rows = []
    for pairs in args.pairs:
        depth = pairs // args.queries
        if not 1 <= depth <= args.passages:
            raise common.BenchmarkError(f"--pairs {pairs} with --queries {args.queries}: depth {depth} is out of range")
        run = work / f"first-{pairs}.run"
        write_run(run, args.queries, args.passages, depth)
        outputs = {}
        for path in ("stream", "dict"):
            outputs[path] = work / f"{path}-{pairs}.run"
            inputs = common.flags(model=model, data=data, run=run, output=outputs[path], depth=depth)
            peak, report = common.run_probe(Path(__file__), path, *inputs, *common.flags(args, ["max_length"]))
            rows.append(
                {"path": path, "pairs": args.queries * depth, "peak_rss_bytes": peak, "seconds": report["seconds"]}
            )
            print(json.dumps(rows[-1]), flush=True)
        if outputs["stream"].read_bytes() != outputs["dict"].read_bytes():
            raise common.BenchmarkError(f"{pairs} pairs: the streamed run differs from the dict path's")
        # Written after each size, so a run cut short (a shared machine's load) keeps what it measured.
        record = _record(args, info, rows, complete=pairs == args.pairs[-1])
        common.publish(args.name, record, render(record), args.results)
    return record


def _record(args, info: dict, rows: list[dict], complete: bool) -> dict:
    return {
        "benchmark": args.name,
        "machine": info,
        "config": {
            "model": "tests/tiny.py llama (random, hidden 32, 4 layers, 256-token BPE), fp32, compile off",
            "queries": args.queries,
            "passages": args.passages,
            "max_length": args.max_length,
            "with_long": args.with_long,
            "load_average_end": common.load_average(),
            "complete": complete,
        },
        "rows": rows,
    }


def render(record: dict) -> str:
    cfg = record["config"]
    table = common.markdown_table(
        ["path", "pairs", "peak RSS MiB", "seconds"],
        [[r["path"], f"{r['pairs']:,}", f"{r['peak_rss_bytes'] / 2**20:,.0f}", r["seconds"]] for r in record["rows"]],
    )
    long = "; with a 10 MB passage and a >100k-token query" if cfg["with_long"] else ""
    partial = "" if cfg.get("complete", True) else " **Partial: the run stopped before its last size.**"
    return "\n".join(
        [
            f"**Memory of a rerank** — {common.machine_line(record['machine'])}",
            "",
            f"{cfg['model']}; {cfg['queries']:,} queries, {cfg['passages']:,} passages of ~60 words, "
            f"max length {cfg['max_length']}{long}. Peak RSS of a child process that reads the inputs, loads the "
            f"model and writes the reranked run (both paths write identical bytes). Load average at end: "
            f"{cfg['load_average_end']:.2f}.{partial}",
            "",
            table,
        ]
    )


if __name__ == "__main__":
    main()
