"""Tiny MS MARCO-shaped collections in local files, registered with ir_datasets' own registry and
its own formats (TsvDocs, TsvQueries, TrecQrels, TrecScoredDocs, TsvDocPairs over LocalDownload):
no network and no stand-in classes, so ``ir_datasets.load(id)`` reads them as it reads MS MARCO."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

_serial = itertools.count()

#: MS MARCO's and TREC DL's grades, as ir_datasets describes them.
QRELS_DEFS = {0: "irrelevant", 1: "relevant", 2: "highly relevant", 3: "perfectly relevant"}


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def register(prefix: str, *, docs: Path, queries: Path, qrels: Path, scoreddocs=None, docpairs=None) -> str:
    """Register local files as one ir_datasets dataset; returns its id, ``<prefix>-<n>/<pid>``
    (the registry refuses a name twice, so each call gets a new one). ``prefix`` may hold
    ``trec-dl`` to get TREC DL's binary relevance level, as the real ids do."""
    import ir_datasets
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import TrecQrels, TrecScoredDocs, TsvDocPairs, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    parts = [
        TsvDocs(LocalDownload(docs), namespace="msmarco", lang="en"),
        TsvQueries(LocalDownload(queries), namespace="msmarco", lang="en"),
        TrecQrels(LocalDownload(qrels), QRELS_DEFS),
    ]
    if scoreddocs is not None:
        parts.append(TrecScoredDocs(LocalDownload(scoreddocs)))
    if docpairs is not None:
        parts.append(TsvDocPairs(LocalDownload(docpairs)))
    name = f"{prefix}-{next(_serial)}/{os.getpid()}"
    ir_datasets.registry.register(name, Dataset(*parts))
    return name


WORDS = (
    "paris france capital bananas yellow fruit sort list python debian package apt perl regular "
    "expressions match text query document install sorted manager what how is the of"
).split()


def msmarco_like(folder: Path, n_docs: int = 40, seed: int = 0) -> Path:
    """A passage collection ``docid<TAB>text`` (MS MARCO's collection.tsv shape): numeric ids, short
    texts of the tiny tokenizer's words. Returns the docs file."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    return write_lines(
        folder / "collection.tsv", (f"{i}\t{' '.join(rng.choices(WORDS, k=rng.randint(5, 12)))}" for i in range(n_docs))
    )


def split_files(folder: Path, name: str, qids, n_docs: int, depth: int, graded: bool, seed: int) -> dict[str, Path]:
    """One split's queries TSV, qrels and a BM25-like scoreddocs run (TREC format, scores falling,
    the judged positive somewhere in each query's top ``depth``)."""
    rng = random.Random(f"{seed}:{name}")
    queries, qrels, run = [], [], []
    for qid in qids:
        queries.append(f"{qid}\t{' '.join(rng.choices(WORDS, k=rng.randint(3, 6)))}")
        ranked = rng.sample(range(n_docs), depth)
        positive = ranked[rng.randrange(depth)]
        qrels.append(f"{qid} 0 {positive} {rng.choice((2, 3)) if graded else 1}")
        if graded:  # TREC DL judges a few more passages, some of them not relevant
            qrels += [f"{qid} 0 {d} {rng.choice((0, 1, 2))}" for d in ranked[:3] if d != positive]
        run += [f"{qid} Q0 {d} {k + 1} {20.0 - 0.5 * k:.2f} bm25" for k, d in enumerate(ranked)]
    base = folder / name
    return {
        "queries": write_lines(base.with_suffix(".queries.tsv"), queries),
        "qrels": write_lines(base.with_suffix(".qrels"), qrels),
        "scoreddocs": write_lines(base.with_suffix(".run"), run),
    }
