"""The one pair encoder: (query, passage) pairs tokenized with the reranker's template, sorted
by length and cut into batches under a padded-token budget, so padding stays small and memory
stays flat however many pairs there are.

Texts are clipped before they are formatted (:func:`clip_pairs`): a field far longer than
``max_length`` tokens is cut to a prefix that still holds more tokens than can be kept, so a
10 MB passage or a 100k-token query costs what a ``max_length`` one costs, with the same token
ids (the tokenizer truncates the pair anyway; it would first encode every token of it, and the
template would copy a long query into every one of its candidates)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch

from relevance_lens.data.candidates import top_candidates
from relevance_lens.data.formats import Passage
from relevance_lens.errors import InputError

Run = dict[str, dict[str, float]]

#: A field is cut only where it still tokenizes to ``max_length`` + this many tokens: a cut
#: changes the tokens just before it (a word split in two, a BPE merge across the cut), and
#: those lie past the ``max_length`` the pair is truncated to. Tokenizers' boundary effects
#: reach a few tokens; 64 leaves a wide margin.
CLIP_MARGIN = 64
#: The first cut tried, in characters per token kept; texts shorter than this are never
#: tokenized twice. English averages ~4 characters per token; each try that falls short
#: (dense text, long tokens) quadruples the cut.
CLIP_CHARS_PER_TOKEN = 8


def candidate_pairs(
    run: Mapping[str, Mapping[str, float]],
    queries: Mapping[str, str],
    corpus: Mapping[str, Passage],
    depth: int,
    source: str = "the first-stage run",
) -> list[tuple[str, str]]:
    """(qid, docid) of each query's top-``depth`` in the run (:func:`top_candidates`: ties keep
    the run's order), validated against the inputs."""
    pairs = []
    for qid in sorted(run):
        if qid not in queries:
            raise InputError(f"run query {qid!r} is not in the queries file: pass the queries the run was made from")
        for docid, _ in top_candidates(run[qid], depth, qid=qid, source=source):
            if docid not in corpus:
                raise InputError(f"run passage {docid!r} (query {qid!r}) is not in the corpus file")
            pairs.append((qid, docid))
    return pairs


def clip_text(tokenizer, text: str, tokens: int) -> str:
    """``text``, or its shortest tried prefix that still holds ``tokens`` + :data:`CLIP_MARGIN` tokens.

    Cuts are tried at ``CLIP_CHARS_PER_TOKEN`` characters per token and then 4x longer each
    time, so the work is bounded by the tokens kept, not by the text's length (a text that
    never reaches the count, e.g. one the normalizer strips or megabytes of whitespace before
    its words, is returned whole).
    """
    need = tokens + CLIP_MARGIN
    cut = need * CLIP_CHARS_PER_TOKEN
    while len(text) > cut:
        piece = text[:cut]
        # Counted without trailing whitespace: the template's strip() drops it from a field at the end.
        if len(tokenizer(piece.rstrip(), add_special_tokens=False, verbose=False)["input_ids"]) >= need:
            return piece
        cut *= 4
    return text


def clip_pairs(reranker, items: Sequence[tuple[str, Passage]]) -> list[tuple[str, Passage]]:
    """(query text, passage) items with long fields clipped (:func:`clip_text`).

    Clipping leaves the token ids ``reranker.encode`` returns unchanged; a text that recurs
    (a query across its candidates, a passage across queries) is clipped once.
    """
    tokens = reranker.settings.max_length
    short = (tokens + CLIP_MARGIN) * CLIP_CHARS_PER_TOKEN
    clipped: dict[str, str] = {}

    def clip(text: str) -> str:
        if len(text) <= short:
            return text
        if text not in clipped:
            clipped[text] = clip_text(reranker.tokenizer, text, tokens)
        return clipped[text]

    out = []
    for query, passage in items:
        if len(passage.title) > short or len(passage.text) > short:
            passage = Passage(passage.docid, clip(passage.title), clip(passage.text))
        out.append((clip(query), passage))
    return out


def pair_texts(reranker, items: Sequence[tuple[str, Passage]]) -> list[str]:
    """The reranker's template filled for each (query text, passage), long fields clipped (:func:`clip_pairs`)."""
    return [reranker.format(query, passage) for query, passage in clip_pairs(reranker, items)]


def encode_texts(reranker, items: Sequence[tuple[str, Passage]]) -> list[list[int]]:
    """Token ids of (query text, passage) items: :func:`clip_pairs`, then ``reranker.encode`` (the cut, EOS)."""
    return reranker.encode(clip_pairs(reranker, items))


def batches(lengths: Sequence[int], order: Sequence[int], batch_tokens: int, max_batch: int) -> Iterator[list[int]]:
    """Indices in ``order`` cut into batches of at most ``batch_tokens`` padded tokens and ``max_batch`` items."""
    batch: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, lengths[i])
        if batch and (new_width * (len(batch) + 1) > batch_tokens or len(batch) >= max_batch):
            yield batch
            batch, new_width = [], lengths[i]
        batch.append(i)
        width = new_width
    if batch:
        yield batch


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


def encode_pairs(
    reranker,
    pairs: Sequence[tuple[str, str]],
    queries: Mapping[str, str],
    corpus: Mapping[str, Passage],
    batch_tokens: int = 8192,
    max_batch: int = 64,
) -> EncodedPairs:
    """Tokenize ``(qid, docid)`` pairs with the reranker's template and batch them by a padded-token budget."""
    pairs = list(pairs)
    ids = encode_texts(reranker, [(queries[q], corpus[d]) for q, d in pairs])
    lengths = [len(x) for x in ids]
    order = sorted(range(len(ids)), key=lambda i: (lengths[i], i))
    return EncodedPairs(pairs, ids, list(batches(lengths, order, batch_tokens, max_batch)))


def require_finite(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` unchanged when every one is a number; a NaN or inf would rank arbitrarily, so refuse it."""
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InputError(
            f"scoring: {bad} of {scores.numel()} scores in a batch are not finite (first: "
            f"{scores[~finite].flatten()[0].item()}); the model or adapter is broken (a diverged checkpoint?) "
            "or overflows in bf16: check the checkpoint, or score with --dtype fp32"
        )
    return scores


def run_from_scores(pairs: Sequence[tuple[str, str]], scores: Sequence[float]) -> Run:
    """``{qid: {docid: score}}`` from parallel pair and score lists."""
    out: Run = {}
    for (qid, docid), value in zip(pairs, scores):
        out.setdefault(qid, {})[docid] = float(value)
    return out
