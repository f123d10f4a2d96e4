"""What a training step sees: query groups of 1 positive + (G-1) hard negatives, and the listwise loss.

The dataset takes epoch and seed explicitly (it never reads the trainer's state), so a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from relevance_lens.data.formats import (
    Passage,
    fingerprint,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
    read_tevatron,
)
from relevance_lens.errors import InputError
from relevance_lens.model.reranker import Reranker
from relevance_lens.train.config import TrainConfig


@dataclass
class TrainGroups:
    """Query groups to train on: positives and candidate negatives, by id into ``corpus``."""

    queries: dict[str, str]
    positives: dict[str, list[str]]
    negatives: dict[str, list[str]]
    corpus: dict[str, Passage]
    fingerprints: dict[str, str] = field(default_factory=dict)

    def check(self, group_size: int, short_groups: str = "skip") -> list[str]:
        """Refuse (or, with ``skip``, drop) queries that cannot fill a group without repeats.

        Returns the dropped query ids; raises when nothing would be left.
        """
        short = sorted(q for q in self.queries if len(self.negatives[q]) < group_size - 1)
        if short and (short_groups == "error" or len(short) == len(self.queries)):
            raise InputError(
                f"{len(short)} of {len(self.queries)} training queries have fewer than {group_size - 1} distinct "
                f"negatives (e.g. {short[0]!r} has {len(self.negatives[short[0]])}); lower --group-size or "
                "give a deeper negatives run (--negatives-depth)"
            )
        for qid in short:
            del self.queries[qid], self.positives[qid], self.negatives[qid]
        return short


def _from_run(queries, qrels, run, corpus, depth: int, fingerprints: dict[str, str]) -> TrainGroups:
    positives, negatives, kept = {}, {}, {}
    for qid, text in queries.items():
        pos = sorted(d for d, rel in qrels.get(qid, {}).items() if rel > 0)
        if not pos:
            continue  # an unjudged query cannot teach anything
        ranked = sorted(run.get(qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
        positives[qid] = pos
        # Query and passage ids may share one space (MS MARCO): compare docids with docids only.
        judged = set(pos)
        negatives[qid] = [d for d, _ in ranked if d not in judged]
        kept[qid] = text
    return TrainGroups(kept, positives, negatives, corpus, fingerprints)


def load_groups(config: TrainConfig) -> TrainGroups:
    """Training groups as the config says: embedded FAQ, files, or Tevatron JSONL."""
    if config.data in ("faq", "faq+weak"):
        # Imported here: the FAQ loader pulls in ir_measures, which a GPU image need not have.
        from relevance_lens.data.faq import load_faq

        splits = ["train"] + (["train-weak"] if config.data == "faq+weak" else [])
        merged = TrainGroups({}, {}, {}, {})
        for name in splits:
            part = load_faq(name)
            fps = {f"{name}:{role}": fingerprint(p) for role, p in part.paths.items()}
            g = _from_run(part.queries, part.qrels, part.run, part.corpus, config.negatives_depth, fps)
            for attr in ("queries", "positives", "negatives", "corpus", "fingerprints"):
                getattr(merged, attr).update(getattr(g, attr))
        return merged
    if config.tevatron:
        return _from_tevatron(Path(config.tevatron))
    queries = read_queries(config.queries)
    corpus = read_corpus(config.corpus)
    qrels = read_qrels(config.qrels, queries=queries, corpus=corpus)
    run = read_run(config.negatives_run, queries=queries, corpus=corpus)
    fps = {n: fingerprint(getattr(config, n)) for n in ("queries", "qrels", "corpus", "negatives_run")}
    return _from_run(queries, qrels, run, corpus, config.negatives_depth, fps)


def _from_tevatron(path: Path) -> TrainGroups:
    groups = TrainGroups({}, {}, {}, {}, {"tevatron": fingerprint(path)})
    for g in read_tevatron(path):
        groups.queries[g.query_id] = g.query
        for p in g.positives + g.negatives:
            groups.corpus.setdefault(p.docid, p)
        groups.positives[g.query_id] = [p.docid for p in g.positives]
        pos = set(groups.positives[g.query_id])
        groups.negatives[g.query_id] = [p.docid for p in g.negatives if p.docid not in pos]
    return groups


class GroupDataset(Dataset):
    """Item i = (epoch, query) in a seeded order; negatives rotate across epochs.

    Epoch and seed are explicit inputs, so item i is the same group in every process and in
    a resumed run: nothing depends on how many items were drawn before.

    An epoch's query order is shuffled once and kept (the latest epoch's only), so an item costs
    O(its group), not a reshuffle of every query (≈0.3 s an item at MS MARCO's 400k queries); the
    order is the same seeded shuffle as before, so the same seed samples the same groups.
    """

    def __init__(self, groups: TrainGroups, group_size: int, epochs: int, seed: int):
        self.groups, self.size, self.epochs, self.seed = groups, group_size, epochs, seed
        self.qids = sorted(groups.queries)
        self._orders: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return len(self.qids) * self.epochs

    def _order(self, epoch: int) -> list[str]:
        order = self._orders.get(epoch)
        if order is None:
            order = list(self.qids)
            random.Random(f"{self.seed}:order:{epoch}").shuffle(order)
            self._orders = {epoch: order}  # items come epoch by epoch: one order held at a time
        return order

    def group(self, epoch: int, qid: str) -> tuple[str, list[Passage]]:
        g = self.groups
        rng = random.Random(f"{self.seed}:pos:{epoch}:{qid}")
        positive = rng.choice(g.positives[qid])
        candidates = list(g.negatives[qid])
        random.Random(f"{self.seed}:neg:{qid}").shuffle(candidates)
        k = self.size - 1
        start = (epoch * k) % len(candidates)  # rotate: each epoch sees the next k negatives
        negatives = (candidates[start:] + candidates[:start])[:k]
        return g.queries[qid], [g.corpus[positive]] + [g.corpus[d] for d in negatives]

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, position = divmod(index, len(self.qids))
        query, passages = self.group(epoch, self._order(epoch)[position])
        return {"query": query, "passages": passages}


class GroupCollator:
    """Groups -> one (queries*G, L) batch; the positive is column 0 of each group."""

    def __init__(self, reranker: Reranker):
        self.reranker = reranker

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [self.reranker.format(it["query"], p) for it in items for p in it["passages"]]
        batch = self.reranker.collate(self.reranker.tokenize(texts))
        batch["group_size"] = torch.tensor(len(items[0]["passages"]))
        return batch


def group_loss(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Listwise cross-entropy with the positive (column 0) as the target."""
    logits = scores.float().view(-1, group_size)
    return torch.nn.functional.cross_entropy(
        logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    )
