"""First-stage retrieval: BM25 over title + text with bm25s.

Tokenisation, stopwords and scoring are bm25s's own; this module fixes the order of
results so that the same inputs always give the same run, ties included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import bm25s
import numpy as np
from bm25s.tokenization import Tokenized, Tokenizer

from relevance_lens.data.formats import Passage
from relevance_lens.errors import InputError


def bm25_search(
    queries: Mapping[str, str],
    corpus: Mapping[str, Passage],
    depth: int = 100,
    *,
    k1: float = 0.9,
    b: float = 0.4,
    stemmer: str | None = "english",
) -> dict[str, dict[str, float]]:
    """Retrieve the top ``depth`` passages per query with BM25.

    Only passages sharing at least one term with the query are returned, so a query
    made of stopwords or words absent from the corpus gets an empty result. Results
    are ordered by score, ties by docid, and hold at most ``min(depth, len(corpus))``.

    Args:
        queries: ``{qid: text}``.
        corpus: ``{docid: Passage}``; title and text are indexed together.
        depth: passages kept per query.
        k1: BM25 term-frequency saturation (0.9 is Anserini's MS MARCO default).
        b: BM25 length normalisation (0.4 likewise).
        stemmer: a Snowball language for PyStemmer (``"english"``), or None for none.

    Returns:
        ``{qid: {docid: score}}`` for every query, in rank order.

    Raises:
        InputError: an empty corpus, a depth below 1, or a stemmer that cannot be loaded.
    """
    if depth < 1:
        raise InputError(f"depth={depth}: expected a positive number of passages per query")
    if not corpus:
        raise InputError("the corpus is empty: expected at least one passage to search")
    # Indexing in sorted docid order makes the index position a docid tie-breaker.
    docids = sorted(corpus)
    tokenizer = Tokenizer(stopwords="en", stemmer=_load_stemmer(stemmer))
    retriever = _index(tokenizer, [_indexed_text(corpus[docid]) for docid in docids], k1, b)
    qids = list(queries)
    query_tokens = tokenizer.tokenize(
        [queries[qid] for qid in qids], update_vocab=False, show_progress=False, allow_empty=False
    )
    k = min(depth, len(docids))
    return {qid: _search_one(retriever, tokens, docids, k) for qid, tokens in zip(qids, query_tokens)}


def _load_stemmer(language: str | None) -> Any:
    """Load a PyStemmer stemmer; bm25s uses any object with ``stemWord``."""
    if language is None:
        return None
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        raise InputError(
            f"stemmer={language!r} needs PyStemmer, which is not installed: "
            "pip install PyStemmer, or pass stemmer=None to index unstemmed words"
        ) from None
    try:
        return Stemmer.Stemmer(language)
    except KeyError:
        raise InputError(
            f"stemmer={language!r}: unknown language; expected one of {', '.join(sorted(Stemmer.algorithms()))}"
        ) from None


def _indexed_text(passage: Passage) -> str:
    return f"{passage.title}\n{passage.text}" if passage.title else passage.text


def _index(tokenizer: Tokenizer, texts: list[str], k1: float, b: float) -> bm25s.BM25:
    """Build the index from token ids, so queries share the corpus vocabulary."""
    token_ids = tokenizer.tokenize(texts, update_vocab=True, show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(Tokenized(ids=token_ids, vocab=tokenizer.get_vocab_dict()), show_progress=False)
    return retriever


def _search_one(retriever: bm25s.BM25, tokens: list[int], docids: list[str], k: int) -> dict[str, float]:
    """Top ``k`` matching passages for one tokenised query, score-descending, docid-ascending."""
    if not tokens:
        return {}
    scores = retriever.get_scores_from_ids(tokens)
    top = _top_k(scores, k)
    return {docids[i]: float(scores[i]) for i in top}


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best positive scores, ties to the lower index.

    Everything tied with the k-th score is kept before the final sort, so the cut-off
    never depends on how ``np.partition`` happened to order equal values.
    """
    candidates = np.flatnonzero(scores > 0)
    if len(candidates) > k:
        kth = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
        candidates = candidates[scores[candidates] >= kth]
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order][:k]
