"""Reranking a run file into a run file in bounded memory: a million pairs cost what a chunk costs.

:func:`relevance_lens.score.rerank.rerank` takes and returns whole runs as dicts; for a first
stage's run that is the size of the run three times over (the run read, every candidate pair,
the scores). :func:`rerank_to_file` gives the same file, byte for byte, holding only one chunk
of pairs and one query's results at a time:

* the run is read once into a :class:`~relevance_lens.data.formats.RunSpool` (checked line by
  line as ``read_run`` checks it, kept on disk) and handed back one query at a time;
* candidates are cut to ``depth`` by the same :func:`~relevance_lens.score.batching.candidate_pairs`,
  query by query in the same (sorted) order, and scored ``chunk_pairs`` at a time exactly as
  ``rerank`` cuts its list, so every batch, and so every score, is the one ``rerank`` computes;
* each finished query goes to a :class:`~relevance_lens.data.formats.RunWriter`, which writes
  the file ``write_run`` would, atomically.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from relevance_lens.data.candidates import with_tail
from relevance_lens.data.formats import Passage, RunSpool, RunWriter
from relevance_lens.model.reranker import Reranker
from relevance_lens.score.batching import candidate_pairs
from relevance_lens.score.config import ScoreConfig
from relevance_lens.score.rerank import _progress
from relevance_lens.score.scorer import Scorer, make_scorer
from relevance_lens.threads import fit, share_cores


def score_stream(
    scorer: Scorer,
    queries: Mapping[str, str],
    corpus: Mapping[str, Passage],
    pairs: Iterable[tuple[str, str]],
    chunk_pairs: int,
    bar=None,
    task=None,
) -> Iterator[tuple[tuple[str, str], float]]:
    """``((qid, docid), score)`` for each pair, in order, scored ``chunk_pairs`` at a time.

    The chunks are ``rerank``'s (consecutive runs of ``chunk_pairs`` pairs); only one is held.
    """
    pairs = iter(pairs)
    while chunk := list(islice(pairs, chunk_pairs)):
        fit()  # another process may have started or ended: take this one's share of the cores
        scores = scorer.score([(queries[q], corpus[d]) for q, d in chunk], bar, task)
        yield from zip(chunk, scores)


def spooled_pairs(
    run: RunSpool, queries: Mapping[str, str], corpus: Mapping[str, Passage], depth: int
) -> Iterator[tuple[str, str]]:
    """The candidate pairs ``candidate_pairs(read_run(...), ...)`` lists, one query at a time."""
    for qid in sorted(run):
        yield from candidate_pairs({qid: run.docs(qid)}, queries, corpus, depth)


def rerank_to_file(
    reranker: Reranker,
    queries: Mapping[str, str],
    corpus: Mapping[str, Passage],
    run: RunSpool,
    output: str | Path,
    config: ScoreConfig | None = None,
    *,
    tag: str = "relevance-lens",
    progress: bool = True,
    description: str = "reranking",
) -> int:
    """Write ``write_run(rerank(reranker, queries, corpus, read_run(...), config), output, tag)``
    without holding the run; returns the number of queries written.

    Every candidate is checked before the first is scored, and ``output`` appears whole or not at all.
    """
    config = config or ScoreConfig()
    total = sum(1 for _ in spooled_pairs(run, queries, corpus, config.depth))  # checks every candidate
    scorer = make_scorer(reranker, config, expected_tokens=total * reranker.settings.max_length)
    with share_cores(), RunWriter(output, tag=tag) as writer, _progress(progress) as bar:
        task = bar.add_task(description, total=total)
        current, docs = None, {}

        def finish(qid: str, head: dict[str, float]) -> None:
            # The first stage's tail below the reranked head, as rerank() does (data.candidates.with_tail).
            writer.add(qid, with_tail({qid: head}, {qid: run.docs(qid)})[qid] if config.keep_tail else head)

        pairs = spooled_pairs(run, queries, corpus, config.depth)
        for (qid, docid), value in score_stream(scorer, queries, corpus, pairs, config.chunk_pairs, bar, task):
            if qid != current:  # a query's pairs are consecutive: the previous one is complete
                if current is not None:
                    finish(current, docs)
                current, docs = qid, {}
            docs[docid] = value
        if current is not None:
            finish(current, docs)
        return len(writer)
