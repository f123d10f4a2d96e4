"""Candidate selection: the one way a first stage's passages are ranked and cut.

A run is ``{qid: {docid: score}}``, and a dict keeps the order its passages were given in:
file order for a TREC run, iterator order for ir_datasets scoreddocs. Everything that takes a
query's top-``depth`` (reranking, eval sets, training negatives) and everything that writes a
ranking goes through :func:`ranked` and :func:`top_candidates`:

- passages by score, highest first; **ties keep their given order**. Never the docid order:
  that would make ``depth`` pick tied passages alphabetically.
- a cut is refused where a query's candidates carry no scores at all (every score equal, more
  candidates than ``depth``). MS MARCO's official top-1000 lists are like that: ir_datasets
  serves them with score 0, and MS MARCO put them in random order, so their "top 100" would be
  100 random passages of the 1000. A cut inside a partial tie keeps the given order (the
  producer's rank order; about 2% of the FAQ train-weak BM25 run has one at depth 10).

:func:`with_tail` puts a reranked head back on top of the first stage's remaining passages.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter

from relevance_lens.errors import InputError


def ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """``(docid, score)`` by score, highest first; tied passages keep their given order."""
    # sorted() is stable, also with reverse=True: equal scores stay in dict (given) order.
    return sorted(docs.items(), key=itemgetter(1), reverse=True)


def top_candidates(
    docs: Mapping[str, float], depth: int, *, qid: str, source: str = "the first-stage run"
) -> list[tuple[str, float]]:
    """A query's top-``depth`` ``(docid, score)`` by :func:`ranked`.

    Args:
        docs: the query's first-stage ``{docid: score}``, in the order it was given.
        depth: how many to keep.
        qid: the query id, for the error message.
        source: what the run is (a file, ``ir_datasets X scoreddocs``), for the error message.

    Raises:
        InputError: the cut would fall among candidates that all share one score.
    """
    order = ranked(docs)
    if depth < len(order) and order[0][1] == order[-1][1]:
        raise InputError(
            f"{source}: query {qid!r} has {len(order)} candidates that all score {order[0][1]:g}, so a top "
            f"{depth} of them would be arbitrary (MS MARCO's official top-1000 lists carry no scores and are in "
            f"random order); give a scored first stage (relevance-lens bm25), or a depth of at least "
            f"{len(order)} to rerank them all"
        )
    return order[:depth]


def with_tail(
    head: Mapping[str, Mapping[str, float]], first_stage: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """Each query's reranked ``head``, then the first stage's other passages (its tail).

    The tail keeps its first-stage order and relative scores, shifted to sit below every head
    score (as reranking pipelines do), so a measure that reaches past the head (R@100 of a
    top-20 rerank) sees the same passages as the first stage's own row does.
    """
    out: dict[str, dict[str, float]] = {}
    for qid, docs in first_stage.items():
        scored = dict(head.get(qid, {}))
        tail = [(d, s) for d, s in ranked(docs) if d not in scored]
        if tail and scored:
            # A shift keeps the tail's order and ties; the gap of 1 keeps it strictly below the head.
            shift = min(scored.values()) - tail[0][1] - 1.0
            tail = [(d, s + shift) for d, s in tail]
        scored.update(tail)
        out[qid] = scored
    for qid in head.keys() - out.keys():
        out[qid] = dict(head[qid])
    return out
