"""Scoring whole runs: rerank the top-k of a first stage with a :class:`Reranker`.

Pairs are tokenized in chunks, sorted by length inside a chunk and cut into batches under a
token budget, so padding stays small and memory stays flat however large the run is.
"""

from __future__ import annotations

from typing import Mapping

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from relevance_lens.data.candidates import with_tail
from relevance_lens.data.formats import Passage
from relevance_lens.model.reranker import Reranker
from relevance_lens.score.batching import Run, candidate_pairs
from relevance_lens.score.config import ScoreConfig
from relevance_lens.score.scorer import make_scorer
from relevance_lens.threads import fit, share_cores


def rerank(
    reranker: Reranker,
    queries: Mapping[str, str],
    corpus: Mapping[str, Passage],
    run: Mapping[str, Mapping[str, float]],
    config: ScoreConfig | None = None,
    *,
    progress: bool = True,
    description: str = "reranking",
    plans: list | None = None,
) -> Run:
    """Score each query's top-``depth`` passages; returns a run of reranker scores, followed by the
    first stage's tail (:func:`relevance_lens.data.candidates.with_tail`) unless ``config.keep_tail`` is off.

    With ``config.fast`` (the default) the scores come from a
    :class:`relevance_lens.score.fast.FastScorer` built once for the run; ``reranker`` itself is
    left as it was (LoRA unmerged, not compiled). ``plans``, when given, receives the scorer's
    :class:`relevance_lens.score.fast.FastPlan` (which paths ran, and why the others did not).
    """
    config = config or ScoreConfig()
    pairs = candidate_pairs(run, queries, corpus, config.depth)
    out: Run = {qid: {} for qid in run}
    scorer = make_scorer(reranker, config, expected_tokens=len(pairs) * reranker.settings.max_length)
    if plans is not None and hasattr(scorer, "plan"):
        plans.append(scorer.plan)
    with share_cores(), _progress(progress) as bar:
        task = bar.add_task(description, total=len(pairs))
        for start in range(0, len(pairs), config.chunk_pairs):
            fit()  # another process may have started or ended: take this one's share of the cores
            chunk = pairs[start : start + config.chunk_pairs]
            items = [(queries[q], corpus[d]) for q, d in chunk]
            scores = scorer.score(items, bar, task)
            for (qid, docid), value in zip(chunk, scores):
                out[qid][docid] = value
    return with_tail(out, run) if config.keep_tail else out


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
