"""What an analysis scores: queries, qrels, a first-stage run to rerank, and metric functions.

Every analysis (checkpoints, ablations, lens) reranks the top-``depth`` of one first-stage run
over a fixed set of judged queries, so all its numbers share one query set and can be
compared pairwise. A metric is a plain function ``run -> {query_id: value}`` (the per-query
values a paired test needs); :func:`ir_metrics` builds them from ir_measures names.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from relevance_lens.data.candidates import top_candidates
from relevance_lens.data.faq import load_faq
from relevance_lens.data.formats import Passage, read_corpus, read_qrels, read_queries, read_run
from relevance_lens.data.irds import (
    dataset_passages,
    dataset_qrels,
    dataset_queries,
    dataset_run,
    load_dataset,
)
from relevance_lens.errors import InputError
from relevance_lens.evaluate.metrics import binary_relevance_level, evaluate, parse_metrics
from relevance_lens.score.batching import EncodedPairs, Run, candidate_pairs, encode_pairs

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
        max_queries: keep a random sample of N judged queries (seeded by ``query_seed``), for
            quick looks; the first N ids would be a biased sample where ids follow topics or time.
        query_seed: the seed of that sample.
        binary_relevance_level: the grade from which binary measures (RR, R, P, AP) count a passage
            as relevant: 2 for TREC DL (see :func:`binary_relevance_level`), 1 otherwise.
        source: what the run is, for error messages (a file, ``ir_datasets X scoreddocs``).
    """

    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: dict[str, Passage]
    run: dict[str, dict[str, float]]
    depth: int = 10
    max_queries: int | None = None
    query_seed: int = 0
    binary_relevance_level: int = 1
    source: str = "the first-stage run"
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
        if self.max_queries and self.max_queries < len(judged):
            judged = sorted(random.Random(self.query_seed).sample(judged, self.max_queries))
        self._query_ids = judged

    @property
    def query_ids(self) -> list[str]:
        """The scored queries: judged queries of the run, sorted; a seeded sample of ``max_queries``."""
        return list(self._query_ids)

    def pairs(self) -> list[tuple[str, str]]:
        """(qid, docid) for each scored query's top-``depth`` in the first-stage run."""
        wanted = set(self._query_ids)
        sub_run = {q: docs for q, docs in self.run.items() if q in wanted}
        return candidate_pairs(sub_run, self.queries, self.corpus, self.depth, self.source)

    def first_stage(self) -> Run:
        """The first-stage run restricted to the scored queries and ``depth``."""
        out: Run = {}
        for qid in self._query_ids:
            out[qid] = dict(top_candidates(self.run[qid], self.depth, qid=qid, source=self.source))
        return out

    def describe(self) -> dict:
        """The settings that decide the numbers (goes into every result row's config)."""
        return {
            "eval": self.name,
            "depth": self.depth,
            "max_queries": self.max_queries,
            "n_queries": len(self._query_ids),
            # Only when they apply, so results stored before these settings existed keep their hash.
            **({"query_sample": f"random, seed {self.query_seed}"} if self.max_queries else {}),
            **({"binary_relevance_level": self.binary_relevance_level} if self.binary_relevance_level != 1 else {}),
        }


def faq_evalset(split: str, depth: int = 10, max_queries: int | None = None) -> EvalSet:
    """A split (``dev``, ``test``) of the embedded FAQ collection with its BM25 run."""
    data = load_faq(split)
    return EvalSet(f"faq-{split}", data.queries, data.qrels, data.corpus, data.run, depth, max_queries)


def file_evalset(
    queries: str | Path,
    qrels: str | Path,
    corpus: str | Path,
    run: str | Path,
    depth: int = 10,
    max_queries: int | None = None,
) -> EvalSet:
    """An eval set from files (queries and corpus TSV, JSONL, CSV or Parquet; TREC qrels and run)."""
    qs, docs = read_queries(queries), read_corpus(corpus)
    return EvalSet(
        Path(run).stem,
        qs,
        read_qrels(qrels),
        docs,
        read_run(run, queries=qs, corpus=docs),
        depth,
        max_queries,
        source=f"run {run}",
    )


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


def encode_evalset(reranker, evalset: EvalSet, batch_tokens: int = 8192, max_batch: int = 64) -> EncodedPairs:
    """Tokenize the eval set's pairs and batch them by a padded-token budget."""
    return encode_pairs(reranker, evalset.pairs(), evalset.queries, evalset.corpus, batch_tokens, max_batch)


# ---------------------------------------------------------------- metrics


def ir_metric(evalset: EvalSet, name: str) -> MetricFn:
    """Per-query values of one ir_measures metric over the eval set's queries (missing = 0)."""

    def metric(run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        result = evaluate(
            evalset.qrels,
            run,
            [name],
            query_ids=evalset.query_ids,
            binary_relevance_level=evalset.binary_relevance_level,
        )
        return {qid: value for qid, _, value in result.per_query}

    metric.__name__ = name
    return metric


def ir_metrics(evalset: EvalSet, names: Sequence[str]) -> dict[str, MetricFn]:
    """``{name: metric function}`` for ir_measures names such as ``nDCG@10``, ``RR@10``."""
    parse_metrics(list(names))  # unknown names fail here, before any model runs
    return {name: ir_metric(evalset, name) for name in names}


def mean(values: Mapping[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


# ---------------------------------------------------------------- eval sets named by a study


def build_evalset(ev: dict[str, Any]):
    """The EvalSet of a study's eval spec, named as the study names it."""
    if ev.get("split"):
        evalset = faq_evalset(ev["split"], ev["depth"], ev["max_queries"])
    elif ev.get("ir_datasets"):
        evalset = ir_datasets_evalset(ev["ir_datasets"], ev["depth"], ev["max_queries"])
    else:
        evalset = file_evalset(ev["queries"], ev["qrels"], ev["corpus"], ev["run"], ev["depth"], ev["max_queries"])
    evalset.name = ev["name"]
    evalset.binary_relevance_level = binary_relevance_level(ev.get("ir_datasets"), ev.get("binary_relevance_level"))
    return evalset


def ir_datasets_evalset(dataset_id: str, depth: int, max_queries: int | None):
    """An EvalSet from an ir_datasets id with queries, qrels and scoreddocs (the first stage);
    only the passages in the scored top-``depth`` are fetched from its docs store."""
    dataset = load_dataset(dataset_id)
    qrels = dataset_qrels(dataset, dataset_id)
    run = dataset_run(dataset, dataset_id, query_ids=qrels)
    source = f"ir_datasets {dataset_id} scoreddocs"
    evalset = EvalSet(dataset_id, dataset_queries(dataset), qrels, {}, run, depth, max_queries, source=source)
    wanted = {d for q in evalset.query_ids for d, _ in top_candidates(run[q], depth, qid=q, source=source)}
    evalset.corpus = dataset_passages(dataset, dataset_id, wanted)
    return evalset
