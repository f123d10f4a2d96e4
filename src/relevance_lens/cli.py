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
    lora_dropout: Optional[float] = typer.Option(None, help="LoRA dropout (the study: 0.1)."),
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
    compile: Optional[str] = typer.Option(None, "--compile", help="torch.compile the decoder blocks: auto | on | off."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest complete checkpoint."),
):
    """Fine-tune a LoRA reranker (contrastive groups, HF Trainer); checkpoints are adapter folders."""
    from .train import evaluate_final, load_config
    from .train import train as run_training

    settings = load_config(
        config, model=model, output=str(output) if output else None, data=data,
        queries=_str(queries), qrels=_str(qrels), corpus=_str(corpus), negatives_run=_str(negatives_run),
        tevatron=_str(tevatron), rank=rank, alpha=alpha, lora_dropout=lora_dropout, targets=targets, layers=_int_list(layers, "--layers"),
        group_size=group_size, queries_per_device=queries_per_device, grad_accum=grad_accum, lr=lr,
        max_steps=max_steps, max_length=max_length, save_steps=_int_list(save_steps, "--save-steps"),
        save_every=save_every, precision=precision, seed=seed,
        eval_split=None if eval_split == "none" else eval_split, compile=compile,
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
    quick: bool = typer.Option(False, "--quick", help="Only score the FAQ with the untrained model beside BM25 (a minute)."),
    workdir: Path = typer.Option(Path("runs/demo"), help="Work folder of the demo study (runs, results store, report)."),
    model: str = typer.Option("smollm2-135m", help="--quick: embedded model."),
    split: str = typer.Option("test", help="--quick: FAQ split to score."),
    depth: int = typer.Option(20, help="--quick: rerank BM25's top-k."),
):
    """Train, dissect and report on the embedded model and FAQ (the packaged demo study)."""
    if quick:
        from .demo import run_demo

        run_demo(model=model, split=split, depth=depth, output=workdir, console=console, out=out)
        return
    from .demo import run_study_demo

    run_study_demo(workdir=workdir, console=console, out=out)


# ---------------------------------------------------------------- studies and reports

study_app = typer.Typer(no_args_is_help=True, help="Run a grid of trainings and analyses from one study file.")
app.add_typer(study_app, name="study")


@study_app.command("run")
def study_run(
    study: str = typer.Argument(..., help="Study TOML file, or a packaged study: demo, embedded-grid, paper."),
    shard: Optional[str] = typer.Option(None, help="i/n: run only shard i of n (0-based; e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List cells, estimated cost and status; load no weights."),
    store: Optional[Path] = typer.Option(None, help="Results store (default WORKDIR/results.sqlite, one per shard)."),
    workdir: Optional[Path] = typer.Option(None, help="Work folder for the runs (default runs/<study name>)."),
):
    """Train and analyse every cell of a study; a rerun skips what is done and resumes the rest."""
    from .study import RunOptions, default_paths, dry_run as list_cells, load_study, parse_shard, run_study

    spec = load_study(study)
    part = parse_shard(shard)
    workdir, store = default_paths(spec, workdir, store, part)
    options = RunOptions(workdir=workdir, store=store, shard=part)
    if dry_run:
        list_cells(spec, options, out)
    else:
        run_study(spec, options, console)


@study_app.command("merge")
def study_merge(
    output: Path = typer.Argument(..., help="Store to write (created, or added to)."),
    stores: List[Path] = typer.Argument(..., help="Shard stores to merge."),
):
    """Combine the results stores of several shards into one."""
    from .study import merge_stores

    merge_stores(output, stores, console)


@app.command()
def report(
    store: Path = typer.Argument(..., help="Results store (SQLite) written by study run or analyze."),
    output: Path = typer.Option(Path("report.html"), help="HTML file to write (one self-contained page)."),
):
    """Write one self-contained HTML page answering the study's questions from a results store."""
    from .report import write_report

    path = write_report(store, output)
    out.print(f"report: {path.resolve()}", highlight=False)


# ---------------------------------------------------------------- analyze (dissection)

analyze_app = typer.Typer(no_args_is_help=True, help="Dissect adapters: checkpoints, ablations, weights, lens.")
app.add_typer(analyze_app, name="analyze")

_SPLIT = typer.Option(None, help="FAQ split to evaluate on (dev, test); default dev unless files are given.")
_QUERIES = typer.Option(None, "--queries", help="Queries TSV (instead of --split; with --qrels, --corpus, --run).")
_QRELS = typer.Option(None, "--qrels", help="TREC qrels.")
_CORPUS = typer.Option(None, "--corpus", help="Corpus TSV or JSONL.")
_FIRST = typer.Option(None, "--run", help="First-stage TREC run whose top-k is reranked.")
_DEPTH = typer.Option(10, help="Rerank this many first-stage passages per query.")
_MAX_Q = typer.Option(None, help="Only the first N judged queries (sorted by id).")
_METRICS = typer.Option(["nDCG@10", "RR@10"], "--metric", help="ir_measures names (repeat the option).")
_STORE = typer.Option(Path("runs/results.sqlite"), help="SQLite results store rows are appended to.")
_DTYPE = typer.Option("auto", help="auto (bf16 where fast), bf16, fp32.")
_DEVICE = typer.Option("auto", help="auto, cpu, cuda, cuda:N.")
_BATCH = typer.Option(8192, help="Padded tokens per batch.")
_FORCE = typer.Option(False, "--force", help="Recompute even if the store has these results.")


def _eval_inputs(split, queries, qrels, corpus, first, depth, max_queries):
    from .evalset import resolve_evalset

    return resolve_evalset(split, queries=queries, qrels=qrels, corpus=corpus, run=first, depth=depth, max_queries=max_queries)


def _scoring(depth, dtype, device, batch_tokens):
    from .score import ScoreConfig

    return ScoreConfig(depth=depth, dtype=dtype, device=device, batch_tokens=batch_tokens)


@analyze_app.command("checkpoints")
def analyze_checkpoints_cmd(
    run_dir: Path = typer.Argument(..., help="Training run folder (checkpoint-<step>/ and final/)."),
    baseline: Optional[Path] = typer.Option(None, help="Head-only run folder (targets none): the 'before' point."),
    split: Optional[str] = _SPLIT, queries: Optional[Path] = _QUERIES, qrels: Optional[Path] = _QRELS,
    corpus: Optional[Path] = _CORPUS, first: Optional[Path] = _FIRST, depth: int = _DEPTH, max_queries: Optional[int] = _MAX_Q,
    metric: List[str] = _METRICS, store: Path = _STORE, dtype: str = _DTYPE, device: str = _DEVICE,
    batch_tokens: int = _BATCH, force: bool = _FORCE,
):
    """Metrics of every checkpoint of a run, beside BM25 and a head-only baseline."""
    from .analyze import analyze_checkpoints
    from .store import Store

    evalset = _eval_inputs(split, queries, qrels, corpus, first, depth, max_queries)
    analyze_checkpoints(run_dir, evalset, metric, baseline_run_dir=baseline, store=Store(store), force=force,
                        score=_scoring(depth, dtype, device, batch_tokens), console=out)


@analyze_app.command("ablate")
def analyze_ablate_cmd(
    adapter: Path = typer.Argument(..., help="Adapter folder (a checkpoint or final/)."),
    sweep: List[str] = typer.Option(["drop-layer"], "--sweep", help="drop-layer, keep-layer, window, bottom-up, top-down, roles, drop-layer-role, keep-layer-role (repeat)."),
    window: int = typer.Option(3, help="Width of the 'window' sweep."),
    window_stride: int = typer.Option(1, help="Step between window starts."),
    naive: bool = typer.Option(False, "--naive", help="Run every variant in full (no cached restarts)."),
    merge: str = typer.Option("auto", help="Variants on merged weights (W or W+ΔW per module) instead of LoRA layers: auto | on | off."),
    permutations: int = typer.Option(10000, help="Sign flips of the paired randomization test."),
    split: Optional[str] = _SPLIT, queries: Optional[Path] = _QUERIES, qrels: Optional[Path] = _QRELS,
    corpus: Optional[Path] = _CORPUS, first: Optional[Path] = _FIRST, depth: int = _DEPTH, max_queries: Optional[int] = _MAX_Q,
    metric: List[str] = _METRICS, store: Path = _STORE, dtype: str = _DTYPE, device: str = _DEVICE,
    batch_tokens: int = _BATCH, force: bool = _FORCE,
):
    """Switch parts of ΔW off (by layer, role, window...) and measure what ranking loses."""
    from .ablate import SweepConfig
    from .analyze import analyze_ablate
    from .store import Store

    evalset = _eval_inputs(split, queries, qrels, corpus, first, depth, max_queries)
    analyze_ablate(adapter, evalset, sweep, metric, window=window, window_stride=window_stride, sweep_config=SweepConfig(cached=not naive, merge=merge, permutations=permutations),
                   store=Store(store), score=_scoring(depth, dtype, device, batch_tokens), force=force, console=out)


@analyze_app.command("weights")
def analyze_weights_cmd(
    adapter: Path = typer.Argument(..., help="Adapter folder, or a run folder (each checkpoint vs final)."),
    other: Optional[Path] = typer.Option(None, help="Second adapter for subspace similarity (e.g. the r32 run's final/)."),
    side: str = typer.Option("left", help="left: output-space directions of ΔW; right: input-space."),
    store: Path = _STORE, force: bool = _FORCE,
):
    """ΔW norms, spectra and effective ranks per layer x role; subspace similarity."""
    from .analyze import analyze_weights
    from .store import Store

    analyze_weights(adapter, other=other, side=side, store=Store(store), force=force, console=out)


@analyze_app.command("lens")
def analyze_lens_cmd(
    adapter: Optional[Path] = typer.Argument(None, help="Adapter folder (omit with --model for a bare base model)."),
    model: Optional[str] = typer.Option(None, help="Base model when no adapter is given (its head is untrained)."),
    adapter_off: bool = typer.Option(False, "--adapter-off", help="Trained head on the frozen base (all LoRA parts off)."),
    probe: str = typer.Option("none", help="Per-layer probe: none, ridge, logistic."),
    probe_split: str = typer.Option("train", help="FAQ split the probe is fitted on."),
    l2: float = typer.Option(1.0, help="Probe L2 penalty."),
    split: Optional[str] = _SPLIT, queries: Optional[Path] = _QUERIES, qrels: Optional[Path] = _QRELS,
    corpus: Optional[Path] = _CORPUS, first: Optional[Path] = _FIRST, depth: int = _DEPTH, max_queries: Optional[int] = _MAX_Q,
    metric: List[str] = _METRICS, store: Path = _STORE, dtype: str = _DTYPE, device: str = _DEVICE,
    batch_tokens: int = _BATCH, force: bool = _FORCE,
):
    """Rank with the score head on every layer's last-token state (and optional probes)."""
    from .analyze import analyze_lens
    from .evalset import faq_evalset
    from .lens import LensConfig
    from .store import Store

    evalset = _eval_inputs(split, queries, qrels, corpus, first, depth, max_queries)
    config = LensConfig(probe=probe, l2=l2)
    probe_set = faq_evalset(probe_split, depth) if config.probe != "none" else None
    analyze_lens(adapter, evalset, metric, model=model, adapter_off=adapter_off, lens_config=config, probe_set=probe_set,
                 store=Store(store), score=_scoring(depth, dtype, device, batch_tokens), force=force, console=out)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except InputError as exc:
        from rich.markup import escape  # messages name TOML tables like [study]: not markup

        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
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
