"""Collections named by ir_datasets id (``msmarco-passage/trec-dl-2019/judged``).

The ``bm25``, ``rerank``, ``evaluate`` and ``train`` commands and the study's eval sets read
queries, qrels, the first stage (scoreddocs, in the dataset's own order; for training also
docpairs) and passages through these functions, so an id means the same data everywhere. ir_datasets is optional
(``pip install 'relevance-lens[datasets]'``); passages are fetched by id from its docs store,
so only the ones scored are read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from relevance_lens.data.formats import Passage
from relevance_lens.errors import InputError


def need_ir_datasets() -> Any:
    """The ``ir_datasets`` module, or a one-line InputError saying how to install it."""
    try:
        import ir_datasets
    except ImportError:
        raise InputError(
            "an ir_datasets id was given, but ir_datasets is not installed: pip install 'relevance-lens[datasets]'"
        ) from None
    return ir_datasets


def load_dataset(dataset_id: str) -> Any:
    """``ir_datasets.load(dataset_id)``, with an unknown id refused in one line."""
    irds = need_ir_datasets()
    try:
        return irds.load(dataset_id)
    except KeyError:
        raise InputError(
            f"ir_datasets id {dataset_id!r} not found; see https://ir-datasets.com (e.g. msmarco-passage/trec-dl-2019)"
        ) from None


def dataset_queries(dataset: Any) -> dict[str, str]:
    return {q.query_id: q.text for q in dataset.queries_iter()}


def dataset_qrels(dataset: Any, dataset_id: str, purpose: str = "to evaluate against") -> dict[str, dict[str, int]]:
    if not dataset.has_qrels():
        raise InputError(f"ir_datasets {dataset_id}: has no qrels (relevance judgements) {purpose}")
    qrels: dict[str, dict[str, int]] = {}
    for q in dataset.qrels_iter():
        qrels.setdefault(q.query_id, {})[q.doc_id] = int(q.relevance)
    return qrels


def dataset_run(dataset: Any, dataset_id: str, query_ids: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """The dataset's scoreddocs as a run, each query's passages in the dataset's order (the order
    :mod:`relevance_lens.data.candidates` keeps for tied scores); only ``query_ids`` when given."""
    if not dataset.has_scoreddocs():
        raise InputError(f"ir_datasets {dataset_id}: has no scoreddocs (first-stage run); give a run file instead")
    wanted = None if query_ids is None else set(query_ids)
    run: dict[str, dict[str, float]] = {}
    for s in dataset.scoreddocs_iter():
        if wanted is None or s.query_id in wanted:
            run.setdefault(s.query_id, {}).setdefault(s.doc_id, float(s.score))
    return run


def dataset_docpair_run(
    dataset: Any, query_ids: Iterable[str], exclude: dict[str, dict[str, int]], depth: int
) -> dict[str, dict[str, float]]:
    """Training negatives from the dataset's docpairs (MS MARCO triples: ``doc_id_a`` preferred to
    ``doc_id_b``) as a run: each query's first ``depth`` distinct ``doc_id_b`` not judged relevant in
    ``exclude``, in the file's order (scores descending from 0, so every cut keeps that order).
    Holds at most ``depth`` passages a query while streaming, not the whole file."""
    wanted = set(query_ids)
    run: dict[str, dict[str, float]] = {}
    for pair in dataset.docpairs_iter():
        qid, docid = pair.query_id, pair.doc_id_b
        if qid not in wanted or exclude.get(qid, {}).get(docid, 0) > 0:
            continue
        docs = run.setdefault(qid, {})
        if len(docs) < depth and docid not in docs:
            docs[docid] = -float(len(docs))
    return run


def dataset_passages(dataset: Any, dataset_id: str, docids: Iterable[str]) -> dict[str, Passage]:
    """The passages ``docids`` from the dataset's docs store (title, where it has one, and text)."""
    wanted = sorted(set(docids))
    docs = dataset.docs_store().get_many(wanted)
    missing = [d for d in wanted if d not in docs]
    if missing:
        raise InputError(f"ir_datasets {dataset_id}: {len(missing)} passages are not in its docs (e.g. {missing[0]!r})")
    return {d: _passage(doc) for d, doc in docs.items()}


def dataset_corpus(dataset: Any) -> dict[str, Passage]:
    """Every passage of the dataset (for BM25 over its whole collection)."""
    return {doc.doc_id: _passage(doc) for doc in dataset.docs_iter()}


def _passage(doc: Any) -> Passage:
    return Passage(doc.doc_id, getattr(doc, "title", "") or "", doc.text)
