"""What an analysis scores: queries, qrels, a first-stage run to rerank, and metric functions.

Every analysis (checkpoints, ablations, lens) reranks the top-``depth`` of one first-stage run
over a fixed set of judged queries, so all its numbers share one query set and can be
compared pairwise. A metric is a plain function ``run -> {query_id: value}`` (the per-query
values a paired test needs); :func:`ir_metrics` builds them from ir_measures names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from .data import Passage, read_corpus, read_qrels, read_queries, read_run
from .errors import InputError
from .evaluate import evaluate
from .score import ScoreConfig, _batches, candidate_pairs

Run = dict[str, dict[str, float]]
MetricFn = Callable[[Mapping[str, Mapping[str, float]]], dict[str, float]]


@dataclass
class EvalSet:
    """Queries to rerank and judge.

    Args:
        name: a label for tables and the results store (``faq-test``, a folder name).
        queries: ``{qid: text}``.
        qrels: ``{qid: {docid: relevance}}``.
        corpus: ``{docid: Passage}``.
        run: the first-stage run whose top-``depth`` is reranked.
        depth: passages reranked per query.
        max_queries: keep only the first N judged queries (sorted by id), for quick looks.
    """

    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: dict[str, Passage]
    run: dict[str, dict[str, float]]
    depth: int = 10
    max_queries: int | None = None
    _query_ids: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise InputError(f"--depth {self.depth}: expected a positive number of passages per query")
        if self.max_queries is not None and self.max_queries < 1:
            raise InputError(f"--max-queries {self.max_queries}: expected a positive number (or leave it out)")
        judged = sorted(q for q in self.run if self.qrels.get(q) and q in self.queries)
        if not judged:
            raise InputError(
                f"eval set {self.name}: no query of the run has both text and relevance judgements; "
                "check that queries, qrels and run are for the same queries"
            )
        self._query_ids = judged[: self.max_queries] if self.max_queries else judged

    @property
    def query_ids(self) -> list[str]:
        """The scored queries: judged queries of the run, sorted, cut at ``max_queries``."""
        return list(self._query_ids)

    def pairs(self) -> list[tuple[str, str]]:
        """(qid, docid) for each scored query's top-``depth`` in the first-stage run."""
        wanted = set(self._query_ids)
        sub_run = {q: docs for q, docs in self.run.items() if q in wanted}
        return candidate_pairs(sub_run, self.queries, self.corpus, self.depth)

    def first_stage(self) -> Run:
        """The first-stage run restricted to the scored queries and ``depth``."""
        out: Run = {}
        for qid in self._query_ids:
            ranked = sorted(self.run[qid].items(), key=lambda kv: (-kv[1], kv[0]))[: self.depth]
            out[qid] = dict(ranked)
        return out

    def describe(self) -> dict:
        """The settings that decide the numbers (goes into every result row's config)."""
        return {"eval": self.name, "depth": self.depth, "max_queries": self.max_queries, "n_queries": len(self._query_ids)}


def faq_evalset(split: str, depth: int = 10, max_queries: int | None = None) -> EvalSet:
    """A split (``dev``, ``test``) of the embedded FAQ collection with its BM25 run."""
    from .faq import load_faq

    data = load_faq(split)
    return EvalSet(f"faq-{split}", data.queries, data.qrels, data.corpus, data.run, depth, max_queries)


def file_evalset(
    queries: str | Path, qrels: str | Path, corpus: str | Path, run: str | Path, depth: int = 10, max_queries: int | None = None
) -> EvalSet:
    """An eval set from files (queries TSV, TREC qrels, corpus TSV/JSONL, TREC run)."""
    qs, docs = read_queries(queries), read_corpus(corpus)
    return EvalSet(Path(run).stem, qs, read_qrels(qrels), docs, read_run(run, queries=qs, corpus=docs), depth, max_queries)


def resolve_evalset(
    split: str | None = None,
    *,
    queries: str | Path | None = None,
    qrels: str | Path | None = None,
    corpus: str | Path | None = None,
    run: str | Path | None = None,
    depth: int = 10,
    max_queries: int | None = None,
) -> EvalSet:
    """A FAQ split by name, or explicit files (all four); refuses a mix or a partial set."""
    files = {"queries": queries, "qrels": qrels, "corpus": corpus, "run": run}
    given = [k for k, v in files.items() if v is not None]
    if given and split is not None:
        raise InputError(f"pass either --split or the files (--{', --'.join(given)}), not both")
    if given:
        missing = [k for k in files if files[k] is None]
        if missing:
            raise InputError(f"eval files: missing --{', --'.join(missing)}; pass all of queries, qrels, corpus, run")
        return file_evalset(queries, qrels, corpus, run, depth, max_queries)
    return faq_evalset(split or "dev", depth, max_queries)


# ---------------------------------------------------------------- pairs -> batches


@dataclass
class EncodedPairs:
    """Tokenized pairs cut into length-sorted batches; ``batches`` index into ``pairs``."""

    pairs: list[tuple[str, str]]
    ids: list[list[int]]
    batches: list[list[int]]

    def tensors(self, reranker, batch: list[int]) -> dict[str, torch.Tensor]:
        tensors = reranker.collate([self.ids[i] for i in batch])
        return {k: v.to(reranker.device) for k, v in tensors.items()}

    def tokens(self, batch: list[int]) -> int:
        """Padded tokens of a batch: the unit forward work is counted in."""
        return len(batch) * max(len(self.ids[i]) for i in batch)


def encode_pairs(reranker, evalset: EvalSet, batch_tokens: int = 8192, max_batch: int = 64) -> EncodedPairs:
    """Tokenize the eval set's pairs and batch them by a padded-token budget."""
    pairs = evalset.pairs()
    ids = reranker.tokenize([reranker.format(evalset.queries[q], evalset.corpus[d]) for q, d in pairs])
    lengths = [len(x) for x in ids]
    order = sorted(range(len(ids)), key=lambda i: (lengths[i], i))
    config = ScoreConfig(batch_tokens=batch_tokens, max_batch=max_batch)
    return EncodedPairs(pairs, ids, list(_batches(lengths, order, config)))


def run_from_scores(pairs: Sequence[tuple[str, str]], scores: Sequence[float]) -> Run:
    """``{qid: {docid: score}}`` from parallel pair and score lists."""
    out: Run = {}
    for (qid, docid), value in zip(pairs, scores):
        out.setdefault(qid, {})[docid] = float(value)
    return out


# ---------------------------------------------------------------- metrics


def ir_metric(evalset: EvalSet, name: str) -> MetricFn:
    """Per-query values of one ir_measures metric over the eval set's queries (missing = 0)."""

    def metric(run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        result = evaluate(evalset.qrels, run, [name], query_ids=evalset.query_ids)
        return {qid: value for qid, _, value in result.per_query}

    metric.__name__ = name
    return metric


def ir_metrics(evalset: EvalSet, names: Sequence[str]) -> dict[str, MetricFn]:
    """``{name: metric function}`` for ir_measures names such as ``nDCG@10``, ``RR@10``."""
    from .evaluate import parse_metrics

    parse_metrics(list(names))  # unknown names fail here, before any model runs
    return {name: ir_metric(evalset, name) for name in names}


def mean(values: Mapping[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


@torch.inference_mode()
def score_encoded(reranker, encoded: EncodedPairs) -> list[float]:
    """The reranker's score for every encoded pair (eval mode, batches as encoded)."""
    was_training = reranker.training
    reranker.eval()
    scores = [0.0] * len(encoded.pairs)
    try:
        for batch in encoded.batches:
            values = reranker(**encoded.tensors(reranker, batch)).float().cpu().tolist()
            for i, value in zip(batch, values):
                scores[i] = value
    finally:
        reranker.train(was_training)
    return scores
