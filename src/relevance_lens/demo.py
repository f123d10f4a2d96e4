"""The quick demo: BM25 vs the embedded LLM reranker on the embedded FAQ collection."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from relevance_lens.data.faq import load_faq
from relevance_lens.data.formats import write_run
from relevance_lens.evaluate.metrics import evaluate, format_table
from relevance_lens.quiet import console as make_console
from relevance_lens.report.page import write_report
from relevance_lens.score.config import ScoreConfig, load_for_scoring
from relevance_lens.score.rerank import rerank
from relevance_lens.study import RunOptions, default_paths, load_study, run_study

METRICS = ("nDCG@10", "RR@10", "R@100")


def run_demo(
    *,
    model: str = "smollm2-135m",
    adapter: str | None = None,
    split: str = "test",
    depth: int = 20,
    output: Path = Path("runs/demo"),
    console: Console | None = None,
    out: Console | None = None,
) -> dict:
    """Rerank BM25's top-``depth`` of a FAQ split and print both systems' metrics."""
    console = console or make_console(stderr=True)
    out = out or make_console()
    data = load_faq(split)
    qids = list(data.queries)
    console.print(f"FAQ {split}: {len(qids)} queries, {len(data.corpus)} passages; model {model}")
    started = time.perf_counter()
    config = ScoreConfig(depth=depth)
    reranker = load_for_scoring(model, adapter, config)
    scored = rerank(reranker, data.queries, data.corpus, data.run, config)
    seconds = time.perf_counter() - started
    output.mkdir(parents=True, exist_ok=True)
    write_run(scored, output / f"{split}.rerank.run", tag="relevance-lens")
    results = {
        "BM25": evaluate(data.qrels, data.run, METRICS, query_ids=qids),
        f"{model} {'+ adapter' if adapter else '(untrained head)'}": evaluate(
            data.qrels, scored, METRICS, query_ids=qids
        ),
    }
    out.print(format_table(results))
    pairs = sum(min(depth, len(r)) for r in data.run.values())
    console.print(f"reranked {pairs} pairs in {seconds:.1f} s (load included); run written to {output}")
    return {name: ev.aggregate for name, ev in results.items()}


def run_study_demo(
    *, workdir: Path = Path("runs/demo"), console: Console | None = None, out: Console | None = None
) -> Path:
    """The README's demo: run the packaged ``demo`` study (resumable), then write its report."""
    console = console or make_console(stderr=True)
    out = out or make_console()
    started = time.perf_counter()
    study = load_study("demo")
    workdir, store = default_paths(study, workdir, None, None)
    run_study(study, RunOptions(workdir=workdir, store=store), console)
    report = write_report(store, workdir / "report.html")
    out.print(
        f"demo finished in {(time.perf_counter() - started) / 60:.1f} min; report: {report.resolve()}", highlight=False
    )
    return report
