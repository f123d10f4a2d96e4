"""The ``relevance-lens`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .errors import InputError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="LoRA rerankers and where relevance lives in them.")
data_app = typer.Typer(no_args_is_help=True, help="Build and inspect the embedded data.")
app.add_typer(data_app, name="data")
console = Console(stderr=True)
out = Console()


@app.command()
def bm25(
    queries: Path = typer.Option(..., help="Queries TSV (qid<TAB>text)."),
    corpus: Path = typer.Option(..., help="Corpus TSV or JSONL (docid, title, text)."),
    output: Path = typer.Option(..., help="TREC run to write."),
    depth: int = typer.Option(100, help="Passages per query."),
):
    """First-stage BM25 (bm25s) over a corpus; writes a TREC run."""
    from .data import read_corpus, read_queries, write_run
    from .retrieve import bm25_search

    if depth < 1:
        raise InputError(f"--depth {depth}: expected a positive number")
    run = bm25_search(read_queries(queries), read_corpus(corpus), depth=depth)
    write_run(run, output, tag="bm25")
    console.print(f"wrote {output} ({len(run)} queries)")


@app.command()
def rerank(
    model: Optional[str] = typer.Option(None, help="Base model: smollm2-135m, gemma3-270m, a GGUF path, folder or hub id. Default: the adapter's, else smollm2-135m."),
    adapter: Optional[Path] = typer.Option(None, help="Adapter folder (LoRA + score head) written by train."),
    queries: Path = typer.Option(..., help="Queries TSV."),
    corpus: Path = typer.Option(..., help="Corpus TSV or JSONL."),
    run: Path = typer.Option(..., help="First-stage TREC run to rerank."),
    output: Path = typer.Option(..., help="Reranked TREC run to write."),
    depth: int = typer.Option(100, help="Rerank this many passages per query."),
    dtype: str = typer.Option("auto", help="auto (bf16 where the hardware is fast at it), bf16, fp32."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    batch_tokens: int = typer.Option(8192, help="Padded tokens per batch."),
):
    """Rerank a first-stage run with an LLM reranker; writes a TREC run."""
    from .data import read_corpus, read_queries, read_run, write_run
    from .reranker import Reranker
    from .score import ScoreConfig, prepare
    from .score import rerank as rerank_run

    config = ScoreConfig(depth=depth, dtype=dtype, device=device, batch_tokens=batch_tokens)
    qs, docs = read_queries(queries), read_corpus(corpus)
    first = read_run(run, queries=qs, corpus=docs)
    reranker = prepare(Reranker.from_pretrained(model, adapter), config)
    scored = rerank_run(reranker, qs, docs, first, config)
    write_run(scored, output, tag="relevance-lens")
    console.print(f"wrote {output} ({len(scored)} queries)")


@app.command()
def evaluate(
    qrels: Path = typer.Option(..., help="TREC qrels."),
    run: Path = typer.Option(..., help="TREC run."),
    queries: Optional[Path] = typer.Option(None, help="Score exactly these queries (missing from the run = 0)."),
    metrics: List[str] = typer.Option(["nDCG@10", "RR@10", "R@100"], help="ir_measures names."),
    per_query: bool = typer.Option(False, "--per-query", help="Also print one row per query and metric."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object of metric -> value."),
):
    """Evaluate a run with ir_measures."""
    from .data import read_qrels, read_queries, read_run
    from .evaluate import evaluate as evaluate_run
    from .evaluate import format_table

    query_ids = list(read_queries(queries)) if queries is not None else None
    result = evaluate_run(read_qrels(qrels), read_run(run), metrics, query_ids=query_ids)
    if as_json:
        out.print_json(json.dumps(result.aggregate))
    else:
        out.print(format_table({run.name: result}))
    if per_query:
        for qid, metric, value in result.per_query:
            out.print(f"{qid}\t{metric}\t{value:.4f}", highlight=False)
    console.print(
        f"scored {result.n_queries} queries; {result.n_missing} had no result in the run (scored 0)"
        + (f"; {result.n_unjudged} run queries had no qrels and were left out" if result.n_unjudged else "")
    )


def _int_list(text: Optional[str], flag: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated integers such as 5,10,25") from None


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, help="TOML file with training settings (flags override it)."),
    model: Optional[str] = typer.Option(None, help="Base model (default smollm2-135m)."),
    output: Optional[Path] = typer.Option(None, help="Run folder."),
    data: Optional[str] = typer.Option(None, help="faq | faq+weak | files."),
    queries: Optional[Path] = typer.Option(None, help="Queries TSV (data=files)."),
    qrels: Optional[Path] = typer.Option(None, help="Qrels (data=files)."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus (data=files)."),
    negatives_run: Optional[Path] = typer.Option(None, help="Run to draw hard negatives from (data=files)."),
    tevatron: Optional[Path] = typer.Option(None, help="Tevatron train JSONL (data=files)."),
    rank: Optional[int] = typer.Option(None, help="LoRA rank."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha."),
    targets: Optional[str] = typer.Option(None, help="mha | mlp | all | none | roles such as q,k."),
    layers: Optional[str] = typer.Option(None, help="Only these layers, e.g. 4,5,6."),
    group_size: Optional[int] = typer.Option(None, help="1 positive + G-1 negatives."),
    queries_per_device: Optional[int] = typer.Option(None, help="Query groups per device per micro-batch."),
    grad_accum: Optional[int] = typer.Option(None, help="Gradient accumulation steps."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    max_length: Optional[int] = typer.Option(None, help="Tokens per pair."),
    save_steps: Optional[str] = typer.Option(None, help="Checkpoint steps, e.g. 5,10,25,50,100,200."),
    save_every: Optional[int] = typer.Option(None, help="Also checkpoint every N steps."),
    precision: Optional[str] = typer.Option(None, help="auto | bf16 | fp32."),
    seed: Optional[int] = typer.Option(None, help="Seed."),
    eval_split: Optional[str] = typer.Option(None, help="FAQ split for the final evaluation ('none' to skip)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest complete checkpoint."),
):
    """Fine-tune a LoRA reranker (contrastive groups, HF Trainer); checkpoints are adapter folders."""
    from .train import evaluate_final, load_config
    from .train import train as run_training

    settings = load_config(
        config, model=model, output=str(output) if output else None, data=data,
        queries=_str(queries), qrels=_str(qrels), corpus=_str(corpus), negatives_run=_str(negatives_run),
        tevatron=_str(tevatron), rank=rank, alpha=alpha, targets=targets, layers=_int_list(layers, "--layers"),
        group_size=group_size, queries_per_device=queries_per_device, grad_accum=grad_accum, lr=lr,
        max_steps=max_steps, max_length=max_length, save_steps=_int_list(save_steps, "--save-steps"),
        save_every=save_every, precision=precision, seed=seed,
        eval_split=None if eval_split == "none" else eval_split,
    )
    if eval_split == "none":
        settings.eval_split = None
    run_dir = run_training(settings, resume=resume)
    import os

    if settings.eval_split and settings.data != "files" and os.environ.get("RANK", "0") == "0":
        result = evaluate_final(run_dir, settings.eval_split, settings.eval_depth)
        from rich.table import Table

        table = Table(title=f"FAQ {settings.eval_split}: BM25 top-{settings.eval_depth} reranked ({result['n_queries']} queries)")
        table.add_column("system")
        for metric in result["bm25"]:
            table.add_column(metric, justify="right")
        for name in ("bm25", "reranker"):
            table.add_row(name, *(f"{v:.4f}" for v in result[name].values()))
        out.print(table)
    console.print(f"run folder: {run_dir}")


def _str(path: Optional[Path]) -> Optional[str]:
    return str(path) if path is not None else None


@data_app.command("build-faq")
def build_faq(
    output: Path = typer.Option(None, help="Where to write the collection (default: the packaged data folder)."),
    debs: Optional[Path] = typer.Option(None, help="Folder with perl-doc, python3.11-doc and debian-faq .deb files (default: apt-get download them)."),
    weak: bool = typer.Option(True, help="Also build weakly labelled man-page training pairs."),
):
    """Rebuild the embedded FAQ collection from Debian's .deb files."""
    from . import faq

    summary = faq.build_faq(output or faq.DATA_DIR, debs, weak=weak)
    out.print_json(json.dumps(summary, default=str))


@app.command()
def demo(
    model: str = typer.Option("smollm2-135m", help="Embedded model."),
    split: str = typer.Option("test", help="FAQ split to score."),
    depth: int = typer.Option(20, help="Rerank BM25's top-k."),
    output: Path = typer.Option(Path("runs/demo"), help="Where runs are written."),
):
    """Score the embedded FAQ with the embedded model, beside BM25."""
    from .demo import run_demo

    run_demo(model=model, split=split, depth=depth, output=output, console=console, out=out)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except InputError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
