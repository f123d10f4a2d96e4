"""Scoring whole runs: rerank the top-k of a first stage with a :class:`Reranker`.

Pairs are tokenized in chunks, sorted by length inside a chunk and cut into batches under a
token budget, so padding stays small and memory stays flat however large the run is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal, Mapping

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .data import Passage
from .errors import InputError
from .models import bf16_supported
from .reranker import Reranker

Run = dict[str, dict[str, float]]


@dataclass
class ScoreConfig:
    """Batching and precision for scoring."""

    depth: int = field(default=100, metadata={"help": "Rerank this many top passages per query."})
    batch_tokens: int = field(default=8192, metadata={"help": "Token budget per batch (padded tokens)."})
    max_batch: int = field(default=128, metadata={"help": "At most this many pairs per batch."})
    chunk_pairs: int = field(default=4096, metadata={"help": "Pairs tokenized and length-sorted together."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where fast), bf16, fp32."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N."})
    fast: bool = field(
        default=True,
        metadata={"help": "Score with relevance_lens.fastscore (same scores, tested): the paths below. Off: the plain forward."},
    )
    merge_lora: bool = field(
        default=True, metadata={"help": "fast: merge LoRA into a scoring copy (costs one copy of the model's memory)."}
    )
    share_prefix: bool = field(
        default=True, metadata={"help": "fast: run each query's shared prefix once and reuse its KV cache."}
    )
    compile: Literal["auto", "on", "off"] = field(
        default="auto", metadata={"help": "fast: torch.compile the decoder blocks; auto = when the run is large enough to pay."}
    )

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise InputError(f"--depth {self.depth}: expected a positive number of passages per query")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise InputError(f"--dtype {self.dtype}: expected auto, bf16 or fp32")
        if self.batch_tokens < 16 or self.max_batch < 1:
            raise InputError("batch_tokens must be >= 16 and max_batch >= 1")
        if self.compile not in ("auto", "on", "off"):
            raise InputError(f"--compile {self.compile}: expected auto, on or off")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "fp32":
        return torch.float32
    if name == "bf16" or bf16_supported(device):
        return torch.bfloat16
    return torch.float32


def prepare(reranker: Reranker, config: ScoreConfig) -> Reranker:
    """Move to the device and dtype scoring should run in; eval mode."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    return reranker.to(device=device, dtype=dtype).eval()


def candidate_pairs(
    run: Mapping[str, Mapping[str, float]], queries: Mapping[str, str], corpus: Mapping[str, Passage], depth: int
) -> list[tuple[str, str]]:
    """(qid, docid) of each query's top-``depth`` in the run, validated against the inputs."""
    pairs = []
    for qid in sorted(run):
        if qid not in queries:
            raise InputError(f"run query {qid!r} is not in the queries file: pass the queries the run was made from")
        ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
        for docid, _ in ranked:
            if docid not in corpus:
                raise InputError(f"run passage {docid!r} (query {qid!r}) is not in the corpus file")
            pairs.append((qid, docid))
    return pairs


def _batches(lengths: list[int], order: list[int], config: ScoreConfig) -> Iterator[list[int]]:
    batch: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, lengths[i])
        if batch and (new_width * (len(batch) + 1) > config.batch_tokens or len(batch) >= config.max_batch):
            yield batch
            batch, new_width = [], lengths[i]
        batch.append(i)
        width = new_width
    if batch:
        yield batch


def rerank(
    reranker: Reranker,
    queries: Mapping[str, str],
    corpus: Mapping[str, Passage],
    run: Mapping[str, Mapping[str, float]],
    config: ScoreConfig | None = None,
    *,
    progress: bool = True,
    description: str = "reranking",
) -> Run:
    """Score each query's top-``depth`` passages; returns a run of reranker scores.

    With ``config.fast`` (the default) the scores come from a
    :class:`relevance_lens.fastscore.FastScorer` built once for the run; ``reranker`` itself is
    left as it was (LoRA unmerged, not compiled).
    """
    config = config or ScoreConfig()
    pairs = candidate_pairs(run, queries, corpus, config.depth)
    out: Run = {qid: {} for qid in run}
    scorer = None
    if config.fast:
        from .fastscore import FastScorer

        scorer = FastScorer(reranker, config, expected_tokens=len(pairs) * reranker.settings.max_length)
    with _progress(progress) as bar:
        task = bar.add_task(description, total=len(pairs))
        for start in range(0, len(pairs), config.chunk_pairs):
            chunk = pairs[start : start + config.chunk_pairs]
            items = [(queries[q], corpus[d]) for q, d in chunk]
            if scorer is not None:
                scores = scorer.score(items, bar, task)
            else:
                scores = score_chunk(reranker, items, config, bar, task)
            for (qid, docid), value in zip(chunk, scores):
                out[qid][docid] = value
    return out


@torch.inference_mode()
def score_chunk(reranker: Reranker, items, config: ScoreConfig, bar=None, task=None) -> list[float]:
    """Scores for (query text, passage) items, batched by length to minimise padding."""
    ids = reranker.tokenize([reranker.format(q, p) for q, p in items])
    lengths = [len(x) for x in ids]
    order = sorted(range(len(ids)), key=lambda i: (lengths[i], i))
    scores = [0.0] * len(ids)
    for batch in _batches(lengths, order, config):
        tensors = reranker.collate([ids[i] for i in batch])
        tensors = {k: v.to(reranker.device) for k, v in tensors.items()}
        values = reranker(**tensors).float().cpu().tolist()
        for i, value in zip(batch, values):
            scores[i] = value
        if bar is not None:
            bar.advance(task, len(batch))
    return scores


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
