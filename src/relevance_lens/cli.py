"""The ``relevance-lens`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import List, Optional

import typer

from relevance_lens.errors import InputError
from relevance_lens.quiet import console as make_console
from relevance_lens.quiet import quiet_libraries

app = typer.Typer(no_args_is_help=True, add_completion=False, help="LoRA rerankers and where relevance lives in them.")
data_app = typer.Typer(no_args_is_help=True, help="Build the embedded data; import labelled pairs.")
app.add_typer(data_app, name="data")
console = make_console(stderr=True)
out = make_console()
DATASET_OPTION = typer.Option(
    None,
    "--dataset",
    help="An ir_datasets id (msmarco-passage/trec-dl-2019/judged) in place of the files; "
    "pip install 'relevance-lens[datasets]'.",
)
QUERY_COLUMNS_OPTION = typer.Option(
    None,
    "--query-columns",
    help="A CSV/Parquet queries table's columns, e.g. id=qid,text=question (default: guessed from the header).",
)
CORPUS_COLUMNS_OPTION = typer.Option(
    None,
    "--corpus-columns",
    help="A CSV/Parquet corpus table's columns, e.g. id=pid,title=name,text=body (default: guessed; title optional).",
)


def _columns_need_files(**given: tuple[Optional[str], Optional[Path]]) -> None:
    """Refuse a column option without the file it names columns of (with --dataset, or without --queries)."""
    for flag, (spec, path) in given.items():
        if spec is not None and path is None:
            name = flag.replace("_", "-")
            raise InputError(f"--{name} {spec}: names columns of a CSV/Parquet file; give that file too")


def _query_columns(spec: Optional[str]):
    from relevance_lens.data.tables import QueryColumns, parse_columns

    return parse_columns(QueryColumns, spec, "--query-columns")


def _corpus_columns(spec: Optional[str]):
    from relevance_lens.data.tables import CorpusColumns, parse_columns

    return parse_columns(CorpusColumns, spec, "--corpus-columns")


@app.command()
def bm25(
    queries: Optional[Path] = typer.Option(None, help="Queries TSV (qid<TAB>text), JSONL, CSV or Parquet."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus TSV, JSONL, CSV or Parquet (docid, title, text)."),
    output: Path = typer.Option(..., help="TREC run to write."),
    depth: int = typer.Option(100, help="Passages per query."),
    dataset: Optional[str] = DATASET_OPTION,
    query_columns: Optional[str] = QUERY_COLUMNS_OPTION,
    corpus_columns: Optional[str] = CORPUS_COLUMNS_OPTION,
):
    """First-stage BM25 (bm25s) over a corpus; writes a TREC run."""
    from relevance_lens.data.bm25 import bm25_search
    from relevance_lens.data.formats import read_corpus, read_queries, write_run
    from relevance_lens.data.irds import dataset_corpus, dataset_queries, load_dataset

    if depth < 1:
        raise InputError(f"--depth {depth}: expected a positive number")
    _files_or_dataset(dataset, queries=queries, corpus=corpus)
    _columns_need_files(query_columns=(query_columns, queries), corpus_columns=(corpus_columns, corpus))
    if dataset:
        data = load_dataset(dataset)
        qs, docs = dataset_queries(data), dataset_corpus(data)
    else:
        qs = read_queries(queries, _query_columns(query_columns))
        docs = read_corpus(corpus, _corpus_columns(corpus_columns))
    if not qs:  # an empty run would look like a retrieval that found nothing
        raise InputError(f"{queries or dataset}: no queries; expected lines of qid<TAB>text")
    run = bm25_search(qs, docs, depth=depth)
    write_run(run, output, tag="bm25")
    console.print(f"wrote {output} ({len(run)} queries)")


@app.command()
def rerank(
    model: Optional[str] = typer.Option(
        None,
        help=(
            "Base model: smollm2-135m, gemma3-270m, a GGUF path, folder or hub id. Default: the adapter's, "
            "else smollm2-135m."
        ),
    ),
    adapter: Optional[Path] = typer.Option(
        None, help="Adapter folder (LoRA + score head) written by train, or a Tevatron (RankLLaMA) LoRA folder."
    ),
    queries: Optional[Path] = typer.Option(None, help="Queries TSV, JSONL, CSV or Parquet."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus TSV, JSONL, CSV or Parquet."),
    run: Optional[Path] = typer.Option(
        None, help="First-stage TREC run to rerank (with --dataset: instead of its scoreddocs)."
    ),
    output: Path = typer.Option(..., help="Reranked TREC run to write."),
    dataset: Optional[str] = DATASET_OPTION,
    depth: int = typer.Option(100, help="Rerank this many passages per query."),
    keep_tail: bool = typer.Option(
        True,
        "--keep-tail/--drop-tail",
        help="Keep the first stage's passages below --depth, in its order, under the reranked ones.",
    ),
    dtype: str = typer.Option("auto", help="auto (bf16 where the hardware is fast at it), bf16, fp32."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    batch_tokens: int = typer.Option(8192, help="Padded tokens per batch."),
    compile: str = typer.Option(
        "auto",
        "--compile",
        help="torch.compile the decoder blocks: auto (when this machine's measured rates say the job pays the "
        "compile back) | on | off.",
    ),
    allow_other_base: bool = typer.Option(
        False, "--allow-other-base", help="Experts: score an adapter on a base other than the one it was trained on."
    ),
    query_columns: Optional[str] = QUERY_COLUMNS_OPTION,
    corpus_columns: Optional[str] = CORPUS_COLUMNS_OPTION,
):
    """Rerank a first-stage run with an LLM reranker; writes a TREC run."""
    from relevance_lens.data.formats import RunSpool, read_corpus, read_queries, write_run
    from relevance_lens.score.batching import candidate_pairs
    from relevance_lens.score.config import ScoreConfig, load_for_scoring
    from relevance_lens.score.rerank import rerank as rerank_run
    from relevance_lens.score.stream import rerank_to_file

    config = ScoreConfig(
        depth=depth, keep_tail=keep_tail, dtype=dtype, device=device, batch_tokens=batch_tokens, compile=compile
    )
    _files_or_dataset(dataset, queries=queries, corpus=corpus)
    _columns_need_files(query_columns=(query_columns, queries), corpus_columns=(corpus_columns, corpus))
    if dataset:
        qs, docs, first = _dataset_candidates(dataset, run, depth)
        candidate_pairs(first, qs, docs, depth, f"run {run}" if run else f"ir_datasets {dataset} scoreddocs")
        reranker = load_for_scoring(model, adapter, config, allow_other_base=allow_other_base)
        scored = rerank_run(reranker, qs, docs, first, config)
        write_run(scored, output, tag="relevance-lens")
        console.print(f"wrote {output} ({len(scored)} queries)")
        return
    if run is None:
        raise InputError("--run: missing; give the first-stage TREC run to rerank (or --dataset ID)")
    qs = read_queries(queries, _query_columns(query_columns))
    docs = read_corpus(corpus, _corpus_columns(corpus_columns))
    # The run stays on disk and is scored in chunks: memory does not grow with its size.
    with RunSpool(run, queries=qs, corpus=docs) as first:
        for qid in first:
            candidate_pairs({qid: first.docs(qid)}, qs, docs, depth, f"run {run}")  # refuse before loading
        reranker = load_for_scoring(model, adapter, config, allow_other_base=allow_other_base)
        written = rerank_to_file(reranker, qs, docs, first, output, config, tag="relevance-lens")
    console.print(f"wrote {output} ({written} queries)")


def _files_or_dataset(dataset: Optional[str], **files: Optional[Path]) -> None:
    """Refuse a mix of --dataset and the files it replaces, or neither."""
    given = [k for k, v in files.items() if v is not None]
    if dataset and given:
        raise InputError(f"--dataset {dataset}: replaces --{', --'.join(given)}; give one or the other")
    missing = [k for k, v in files.items() if v is None]
    if not dataset and missing:
        raise InputError(f"missing --{', --'.join(missing)}; give the files, or an ir_datasets id with --dataset")


def _dataset_candidates(dataset: str, run: Optional[Path], depth: int):
    """Queries, the candidates' passages and the first stage (a run file, else its scoreddocs) of an
    ir_datasets id; only the top-``depth`` passages are fetched."""
    from relevance_lens.data.candidates import top_candidates
    from relevance_lens.data.formats import read_run
    from relevance_lens.data.irds import dataset_passages, dataset_queries, dataset_run, load_dataset

    data = load_dataset(dataset)
    qs = dataset_queries(data)
    first = read_run(run, queries=qs) if run is not None else dataset_run(data, dataset)
    source = f"run {run}" if run is not None else f"ir_datasets {dataset} scoreddocs"
    wanted = {d for q, docs in first.items() for d, _ in top_candidates(docs, depth, qid=q, source=source)}
    return qs, dataset_passages(data, dataset, wanted), first


@app.command()
def evaluate(
    qrels: Optional[Path] = typer.Option(None, help="TREC qrels."),
    run: Path = typer.Option(..., help="TREC run."),
    queries: Optional[Path] = typer.Option(
        None, help="Score exactly these queries (missing from the run = 0): TSV, JSONL, CSV or Parquet."
    ),
    metrics: List[str] = typer.Option(["nDCG@10", "RR@10", "R@100"], help="ir_measures names."),
    per_query: bool = typer.Option(False, "--per-query", help="Also print one row per query and metric."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object of metric -> value."),
    binary_relevance_level: Optional[int] = typer.Option(
        None,
        help="Binary measures (RR, R, P, AP) count grade >= this as relevant. Default: 2 for a TREC DL "
        "--dataset (its id contains trec-dl), else 1.",
    ),
    dataset: Optional[str] = DATASET_OPTION,
    query_columns: Optional[str] = QUERY_COLUMNS_OPTION,
):
    """Evaluate a run with ir_measures."""
    from relevance_lens.data.formats import read_qrels, read_queries, read_run
    from relevance_lens.evaluate.metrics import binary_relevance_level as relevance_level
    from relevance_lens.evaluate.metrics import evaluate as evaluate_run
    from relevance_lens.evaluate.metrics import format_table

    _columns_need_files(query_columns=(query_columns, queries))
    query_ids = list(read_queries(queries, _query_columns(query_columns))) if queries is not None else None
    _files_or_dataset(dataset, qrels=qrels)
    level = relevance_level(dataset, binary_relevance_level)
    judged = read_qrels(qrels) if qrels is not None else _dataset_qrels(dataset)
    result = evaluate_run(judged, read_run(run), metrics, query_ids=query_ids, binary_relevance_level=level)
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
        + f"; binary measures count grade >= {level} as relevant"
        + (
            " (graded qrels: TREC DL counts >= 2, --binary-relevance-level 2)"
            if level == 1 and max((g for docs in judged.values() for g in docs.values()), default=0) > 1
            else ""
        )
    )


def _dataset_qrels(dataset: str) -> dict[str, dict[str, int]]:
    from relevance_lens.data.irds import dataset_qrels, load_dataset

    return dataset_qrels(load_dataset(dataset), dataset)


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
    data: Optional[str] = typer.Option(None, help="faq | faq+weak | files | dataset (implied by --dataset)."),
    dataset: Optional[str] = DATASET_OPTION,
    queries: Optional[Path] = typer.Option(None, help="Queries TSV, JSONL, CSV or Parquet (data=files)."),
    qrels: Optional[Path] = typer.Option(None, help="Qrels (data=files)."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus TSV, JSONL, CSV or Parquet (data=files)."),
    negatives_run: Optional[Path] = typer.Option(
        None, help="Run to draw hard negatives from (data=files; with --dataset: instead of its scoreddocs)."
    ),
    tevatron: Optional[Path] = typer.Option(
        None, help="Tevatron train JSONL (data=files); its v2 schema (positive_document_ids) needs --corpus too."
    ),
    rank: Optional[int] = typer.Option(None, help="LoRA rank."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha."),
    lora_dropout: Optional[float] = typer.Option(None, help="LoRA dropout (the study: 0.1)."),
    targets: Optional[str] = typer.Option(None, help="mha | mlp | all | none | roles such as q,k."),
    layers: Optional[str] = typer.Option(None, help="Only these layers, e.g. 4,5,6."),
    group_size: Optional[int] = typer.Option(None, help="1 positive + G-1 negatives."),
    queries_per_device: Optional[int] = typer.Option(None, help="Query groups per device per micro-batch."),
    grad_accum: Optional[int] = typer.Option(None, help="Gradient accumulation steps."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    head_lr: Optional[float] = typer.Option(None, help="Learning rate of the score head (default: --lr)."),
    schedule: Optional[str] = typer.Option(None, help="After the warm-up: linear (to 0) | constant | cosine."),
    head_init: Optional[str] = typer.Option(None, help="Score head at step 0: random | zero."),
    random_negatives: Optional[int] = typer.Option(
        None, help="How many of the G-1 negatives are random corpus passages (the rest: the first stage's)."
    ),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear warm-up steps."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    max_length: Optional[int] = typer.Option(None, help="Tokens per pair."),
    save_steps: Optional[str] = typer.Option(None, help="Checkpoint steps, e.g. 5,10,25,50,100,200."),
    save_every: Optional[int] = typer.Option(None, help="Also checkpoint every N steps."),
    precision: Optional[str] = typer.Option(None, help="auto | bf16 | fp32."),
    seed: Optional[int] = typer.Option(None, help="Seed."),
    eval_split: Optional[str] = typer.Option(None, help="FAQ split for the final evaluation ('none' to skip)."),
    compile: Optional[str] = typer.Option(None, "--compile", help="torch.compile the decoder blocks: auto | on | off."),
    attention: Optional[str] = typer.Option(
        None, "--attention", help="Training attention: auto (eager on CPU at short lengths) | sdpa | eager."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest complete checkpoint."),
    wait: Optional[float] = typer.Option(
        None, "--wait", help="If another process is training this --output, wait up to SECONDS (default: fail)."
    ),
):
    """Fine-tune a LoRA reranker (contrastive groups, HF Trainer); checkpoints are adapter folders."""
    from relevance_lens.train.config import load_config
    from relevance_lens.train.trainer import evaluate_final
    from relevance_lens.train.trainer import train as run_training

    settings = load_config(
        config,
        model=model,
        output=str(output) if output else None,
        data=data,
        dataset=dataset,
        queries=_str(queries),
        qrels=_str(qrels),
        corpus=_str(corpus),
        negatives_run=_str(negatives_run),
        tevatron=_str(tevatron),
        rank=rank,
        alpha=alpha,
        lora_dropout=lora_dropout,
        targets=targets,
        layers=_int_list(layers, "--layers"),
        group_size=group_size,
        queries_per_device=queries_per_device,
        grad_accum=grad_accum,
        lr=lr,
        head_lr=head_lr,
        schedule=schedule,
        head_init=head_init,
        random_negatives=random_negatives,
        warmup_steps=warmup_steps,
        max_steps=max_steps,
        max_length=max_length,
        save_steps=_int_list(save_steps, "--save-steps"),
        save_every=save_every,
        precision=precision,
        seed=seed,
        eval_split=None if eval_split == "none" else eval_split,
        compile=compile,
        attention=attention,
    )
    if eval_split == "none":
        settings.eval_split = None
    run_dir = run_training(settings, resume=resume, wait=wait or 0)
    import os

    if settings.eval_split and settings.data in ("faq", "faq+weak") and os.environ.get("RANK", "0") == "0":
        result = evaluate_final(run_dir, settings.eval_split, settings.eval_depth)
        from rich.table import Table

        table = Table(
            title=f"FAQ {settings.eval_split}: BM25 top-{settings.eval_depth} reranked, the rest in BM25 order "
            f"({result['n_queries']} queries)"
        )
        table.add_column("system")
        for metric in result["bm25"]:
            table.add_column(metric, justify="right")
        for name in ("bm25", "reranker"):
            table.add_row(name, *(f"{v:.4f}" for v in result[name].values()))
        out.print(table)
    console.print(f"run folder: {run_dir}")


@app.command()
def export(
    adapter: Path = typer.Argument(..., help="Adapter folder written by train (a checkpoint or final/)."),
    output: Path = typer.Option(..., help="Folder to write (a transformers sequence-classification model)."),
    model: Optional[str] = typer.Option(None, help="Base model, when not the one the adapter names."),
    dtype: str = typer.Option("fp32", help="Stored weights: fp32 or bf16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Reload the folder and compare scores first."),
):
    """Write an adapter as a folder that transformers, sentence-transformers and rerankers load."""
    from relevance_lens.export import ExportConfig, export_adapter

    config = ExportConfig(dtype=dtype, overwrite=overwrite, verify=verify)
    path = export_adapter(adapter, output, model=model, config=config)
    console.print(f"wrote {path} (model card: {path / 'README.md'})")


def _str(path: Optional[Path]) -> Optional[str]:
    return str(path) if path is not None else None


@data_app.command("build-faq")
def build_faq(
    output: Path = typer.Option(None, help="Where to write the collection (default: the packaged data folder)."),
    debs: Optional[Path] = typer.Option(
        None, help="Folder with perl-doc, python3.11-doc and debian-faq .deb files (default: apt-get download them)."
    ),
    weak: bool = typer.Option(True, help="Also build weakly labelled man-page training pairs."),
):
    """Rebuild the embedded FAQ collection from Debian's .deb files."""
    from relevance_lens.data import faq

    summary = faq.build_faq(output or faq.DATA_DIR, debs, weak=weak)
    out.print_json(json.dumps(summary, default=str))


@data_app.command("pairs")
def data_pairs(
    pairs: Path = typer.Argument(
        ..., help="Labelled pairs: CSV, Parquet, TSV with a header row, or JSONL; one (query, passage, label) a row."
    ),
    output: Path = typer.Option(..., help="Folder to write queries.tsv, corpus.jsonl, qrels.txt and run.trec into."),
    columns: Optional[str] = typer.Option(
        None,
        help="Column names by role, e.g. query_id=qid,query=question,docid=pid,title=t,text=passage,label=rel "
        "(default: guessed from the header). Without a query_id or docid column, ids are derived from the text: "
        "q/p + 16 hex digits of its sha256, the same in every run.",
    ),
):
    """Split a labelled-pairs table into queries, corpus, qrels (labels as grades, 0 kept) and a run
    (each query's passages in file order) for rerank, evaluate and train --data files."""
    from relevance_lens.data.pairs import import_pairs
    from relevance_lens.data.tables import PairColumns, parse_columns

    data, paths = import_pairs(pairs, output, parse_columns(PairColumns, columns, "--columns"))
    unjudged = sum(1 for docs in data.qrels.values() if not any(g > 0 for g in docs.values()))
    console.print(
        f"read {data.rows} rows: {len(data.queries)} queries ({unjudged} with no relevant passage), "
        f"{len(data.corpus)} passages"
        + (f"; {' and '.join(data.derived)}s derived from the text" if data.derived else "")
    )
    for role, path in paths.items():
        console.print(f"wrote {path} ({role})")


@app.command()
def demo(
    quick: bool = typer.Option(
        False, "--quick", help="Only score the FAQ with the untrained model beside BM25 (a minute)."
    ),
    workdir: Path = typer.Option(
        Path("runs/demo"), help="Work folder of the demo study (runs, results store, report)."
    ),
    model: str = typer.Option("smollm2-135m", help="--quick: embedded model."),
    split: str = typer.Option("test", help="--quick: FAQ split to score."),
    depth: int = typer.Option(20, help="--quick: rerank BM25's top-k."),
):
    """Train, dissect and report on the embedded model and FAQ (the packaged demo study)."""
    if quick:
        from relevance_lens.demo import run_demo

        run_demo(model=model, split=split, depth=depth, output=workdir, console=console, out=out)
        return
    from relevance_lens.demo import run_study_demo

    run_study_demo(workdir=workdir, console=console, out=out)


# ---------------------------------------------------------------- studies and reports

study_app = typer.Typer(no_args_is_help=True, help="Run a grid of trainings and analyses from one study file.")
app.add_typer(study_app, name="study")


@study_app.command("run")
def study_run(
    study: str = typer.Argument(
        ..., help="Study TOML file, or a packaged study: demo, embedded-grid, paper, recipe-search."
    ),
    shard: Optional[str] = typer.Option(
        None, help="i/n: run only shard i of n (0-based; e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List cells, estimated cost and status; load no weights."),
    store: Optional[Path] = typer.Option(None, help="Results store (default WORKDIR/results.sqlite, one per shard)."),
    workdir: Optional[Path] = typer.Option(None, help="Work folder for the runs (default runs/<study name>)."),
    gpu_tflops: float = typer.Option(989.0, help="--dry-run: peak dense bf16 TFLOP/s of one GPU (H100, H200: 989)."),
    mfu: float = typer.Option(0.4, help="--dry-run: fraction of that peak reached (LoRA on 7B: about 0.3-0.5)."),
):
    """Train and analyse every cell of a study; a rerun skips what is done and resumes the rest."""
    from relevance_lens.study import GpuRate, RunOptions, default_paths, load_study, parse_shard, run_study
    from relevance_lens.study import dry_run as list_cells

    spec = load_study(study)
    part = parse_shard(shard)
    workdir, store = default_paths(spec, workdir, store, part)
    options = RunOptions(workdir=workdir, store=store, shard=part)
    if dry_run:
        list_cells(spec, options, out, GpuRate(gpu_tflops, mfu))
    else:
        run_study(spec, options, console)


@study_app.command("merge")
def study_merge(
    output: Path = typer.Argument(..., help="Store to write (created, or added to)."),
    stores: List[Path] = typer.Argument(..., help="Shard stores to merge."),
):
    """Combine the results stores of several shards into one."""
    from relevance_lens.store import merge_stores

    merge_stores(output, stores, console)


@app.command()
def report(
    store: Path = typer.Argument(..., help="Results store (SQLite) written by study run or analyze."),
    output: Path = typer.Option(Path("report.html"), help="HTML file to write (one self-contained page)."),
    figures: Optional[Path] = typer.Option(
        None,
        help="Also write every figure (PDF, SVG, PNG; sized for a two-column paper) and table (CSV, LaTeX) "
        "into this folder.",
    ),
):
    """Write one self-contained HTML page answering the study's questions from a results store."""
    from relevance_lens.report.page import write_report

    path = write_report(store, output, figures)
    out.print(f"report: {path.resolve()}", highlight=False)
    if figures is not None:
        out.print(f"figures and tables: {figures.resolve()}", highlight=False)


# ---------------------------------------------------------------- analyze (dissection)

analyze_app = typer.Typer(
    no_args_is_help=True, help="Dissect adapters: checkpoints, ablations, weights, lens, heads, attributions, patching."
)
app.add_typer(analyze_app, name="analyze")

# Every analysis of the registry becomes ``analyze NAME``: its inputs (below), its eval set and
# scoring options when it scores, and one option per field of its settings dataclass, so that a
# setting reachable from a study file is reachable here too (tests/test_registry.py).

_EVAL_OPTIONS = [
    ("split", Optional[str], None, "FAQ split to evaluate on (dev, test); default dev unless files are given.", ()),
    ("queries", Optional[Path], None, "Queries TSV (instead of --split; with --qrels, --corpus, --run).", ()),
    ("qrels", Optional[Path], None, "TREC qrels.", ()),
    ("corpus", Optional[Path], None, "Corpus TSV or JSONL.", ()),
    ("first", Optional[Path], None, "First-stage TREC run whose top-k is reranked.", ("--run",)),
    ("depth", int, 10, "Rerank this many first-stage passages per query.", ()),
    ("max_queries", Optional[int], None, "Only a random sample of N judged queries (seed 0), for quick looks.", ()),
    ("metric", List[str], ["nDCG@10", "RR@10"], "ir_measures names (repeat the option).", ()),
]
_SCORE_OPTIONS = [
    ("dtype", str, "auto", "auto (bf16 where fast), bf16, fp32.", ()),
    ("device", str, "auto", "auto, cpu, cuda, cuda:N.", ()),
    ("batch_tokens", int, 8192, "Padded tokens per batch.", ()),
]
_STORE_OPTIONS = [
    ("store", Path, Path("runs/results.sqlite"), "SQLite results store rows are appended to.", ()),
    ("force", bool, False, "Recompute even if the store has these results.", ("--force",)),
]
#: Per analysis: its inputs as (name, type, default, help, declarations); ``...`` = required argument.
_INPUTS = {
    "checkpoints": [
        ("target", Path, ..., "Training run folder (checkpoint-<step>/ and final/).", "arg"),
        ("baseline", Optional[Path], None, "Head-only run folder (targets none): the 'before' point.", ()),
    ],
    "ablate": [("target", Path, ..., "Adapter folder (a checkpoint or final/).", "arg")],
    "weights": [
        ("target", Path, ..., "Adapter folder, or a run folder (each checkpoint vs final).", "arg"),
        ("other", Optional[Path], None, "Second adapter for subspace similarity (e.g. the r32 run's final/).", ()),
    ],
    "lens": [
        ("target", Optional[Path], None, "Adapter folder (omit with --model for a bare base model).", "arg"),
        ("model", Optional[str], None, "Base model when no adapter is given (its head is untrained).", ()),
    ],
    "heads": [("target", Path, ..., "Adapter folder (a checkpoint or final/).", "arg")],
    "attribute": [("target", Path, ..., "Adapter folder (a checkpoint or final/).", "arg")],
    "patch": [("target", Path, ..., "Adapter folder (a checkpoint or final/).", "arg")],
}


def _param(name, annotation, default, help, decls) -> inspect.Parameter:
    if decls == "arg":
        option = typer.Argument(default, help=help)
    else:
        option = typer.Option(default, *decls, help=help)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _cli_type(annotation):
    """A settings field's type as typer takes it: Literal choices as str, ``X | None`` as Optional[X]."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return str
    if origin is list:
        return List[args[0]]
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        return Optional[_cli_type(next(a for a in args if a is not type(None)))]
    return annotation


def settings_params(cls) -> list[inspect.Parameter]:
    """One CLI option per field of a settings dataclass (help and flag from its metadata)."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        annotation = _cli_type(hints[f.name])
        flag = f.metadata.get("flag")
        if flag is None and annotation is bool:
            dashed = f.name.replace("_", "-")
            flag = f"--{dashed}/--no-{dashed}" if default else f"--{dashed}"
        params.append(_param(f.name, annotation, default, f.metadata.get("help", ""), (flag,) if flag else ()))
    return params


def _analysis_command(name: str) -> None:
    from relevance_lens.dissect.registry import ANALYSES

    entry = ANALYSES[name]
    params = [_param(*spec) for spec in _INPUTS[name]]
    params += [_param(*spec) for spec in _EVAL_OPTIONS] if entry.uses_eval else []
    params += settings_params(entry.settings)
    params += [_param(*spec) for spec in _SCORE_OPTIONS] if entry.uses_eval else []
    params += [_param(*spec) for spec in _STORE_OPTIONS]
    settings_names = [f.name for f in dataclasses.fields(entry.settings)]

    def command(**values):
        from relevance_lens.dissect.evalset import resolve_evalset
        from relevance_lens.dissect.registry import Context, Inputs, run_analysis
        from relevance_lens.score.config import ScoreConfig
        from relevance_lens.store import Store

        settings = entry.settings(**{k: values.pop(k) for k in settings_names})
        inputs = Inputs(
            values.pop("target"),
            baseline=values.pop("baseline", None),
            other=values.pop("other", None),
            model=values.pop("model", None),
        )
        store, force = values.pop("store"), values.pop("force")
        score = None
        if entry.uses_eval:
            inputs.metrics = values.pop("metric")
            depth = values.pop("depth")
            inputs.evalset = resolve_evalset(
                values.pop("split"),
                queries=values.pop("queries"),
                qrels=values.pop("qrels"),
                corpus=values.pop("corpus"),
                run=values.pop("first"),
                depth=depth,
                max_queries=values.pop("max_queries"),
            )
            score = ScoreConfig(
                depth=depth,
                dtype=values.pop("dtype"),
                device=values.pop("device"),
                batch_tokens=values.pop("batch_tokens"),
            )
        # The store is opened (and created) only once the inputs are read: a bad file leaves nothing behind.
        context = Context(store=Store(store), score=score, force=force, console=out)
        run_analysis(name, inputs, settings, context)

    command.__signature__ = inspect.Signature(params)
    command.__name__ = f"analyze_{name}"
    analyze_app.command(name, help=entry.help)(command)


for _name in _INPUTS:
    _analysis_command(_name)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2."""
    quiet_libraries()  # before transformers is imported: its bars and logs stay off our console
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
        # typer >= 0.22 raises its vendored click's exceptions (typer._click), older typer plain click's:
        # both are ClickExceptions by shape (show(), exit_code), and neither must end in a traceback.
        if all(hasattr(exc, a) for a in ("show", "exit_code", "format_message")):
            exc.show()
            sys.exit(exc.exit_code)
        raise
