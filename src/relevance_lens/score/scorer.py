"""The scorer interface: (query, passage) pairs in, one float score per pair out, in order.

Every path that scores calls it: ``rerank`` (a whole first-stage run), the checkpoint
evaluation, the ablation sweeps and the lens (which score pre-encoded pairs, so that a
checkpoint or variant is tokenized once). Two implementations: :class:`PlainScorer`, the plain
forward of the reranker as given (the reference every fast path is tested against), and
:class:`relevance_lens.score.fast.FastScorer`. :func:`make_scorer` picks one from a
:class:`~relevance_lens.score.config.ScoreConfig`.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from relevance_lens.data.formats import Passage
from relevance_lens.faults import kill_point
from relevance_lens.model.reranker import Reranker
from relevance_lens.score.batching import EncodedPairs, batches, encode_texts, require_finite
from relevance_lens.score.config import ScoreConfig
from relevance_lens.score.fast import FastScorer

Items = Sequence[tuple[str, Passage]]


class Scorer(Protocol):
    """Scores (query text, passage) items; ``bar``/``task``: a rich progress bar advanced per batch."""

    def score(self, items: Items, bar=None, task=None) -> list[float]: ...


def forward_batch(reranker: Reranker, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reranker's scores of one collated batch, float32 on the CPU: the unit every scorer runs."""
    return require_finite(reranker(**tensors).float().cpu())


class PlainScorer:
    """The plain forward of ``reranker`` as given (LoRA layers live, hooks honoured), eval mode."""

    def __init__(self, reranker: Reranker, config: ScoreConfig | None = None):
        self.reranker = reranker
        self.config = config or ScoreConfig()

    @torch.inference_mode()
    def score(self, items: Items, bar=None, task=None) -> list[float]:
        """Scores for (query text, passage) items, batched by length to minimise padding."""
        reranker = self.reranker
        ids = encode_texts(reranker, items)
        lengths = [len(x) for x in ids]
        order = sorted(range(len(ids)), key=lambda i: (lengths[i], i))
        encoded = EncodedPairs(
            [("", "")] * len(ids), ids, list(batches(lengths, order, self.config.batch_tokens, self.config.max_batch))
        )
        return self.score_encoded(encoded, bar, task)

    @torch.inference_mode()
    def score_encoded(self, encoded: EncodedPairs, bar=None, task=None) -> list[float]:
        """Scores of pre-encoded pairs, in ``encoded.pairs`` order (batches as encoded)."""
        reranker = self.reranker
        was_training = reranker.training
        reranker.eval()
        scores = [0.0] * len(encoded.ids)
        try:
            for batch in encoded.batches:
                values = forward_batch(reranker, encoded.tensors(reranker, batch)).tolist()
                for i, value in zip(batch, values):
                    scores[i] = value
                kill_point("score.batch")
                if bar is not None:
                    bar.advance(task, len(batch))
        finally:
            reranker.train(was_training)
        return scores


def make_scorer(reranker: Reranker, config: ScoreConfig, expected_tokens: int | None = None) -> Scorer:
    """The fast scorer when ``config.fast`` (a copy with the fast paths; ``reranker`` untouched), else the plain one."""
    if config.fast:
        return FastScorer(reranker, config, expected_tokens=expected_tokens)
    return PlainScorer(reranker, config)
