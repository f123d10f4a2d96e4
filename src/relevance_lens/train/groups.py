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

from relevance_lens.data.candidates import top_candidates
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


def _from_run(
    queries, qrels, run, corpus, depth: int, fingerprints: dict[str, str], source: str = "the negatives run"
) -> TrainGroups:
    positives, negatives, kept = {}, {}, {}
    for qid, text in queries.items():
        pos = sorted(d for d, rel in qrels.get(qid, {}).items() if rel > 0)
        if not pos:
            continue  # an unjudged query cannot teach anything
        ranked = top_candidates(run.get(qid, {}), depth, qid=qid, source=source)
        positives[qid] = pos
        # Query and passage ids may share one space (MS MARCO): compare docids with docids only.
        judged = set(pos)
        negatives[qid] = [d for d, _ in ranked if d not in judged]
        kept[qid] = text
    return TrainGroups(kept, positives, negatives, corpus, fingerprints)


def load_groups(config: TrainConfig) -> TrainGroups:
    """Training groups as the config says: embedded FAQ, files, Tevatron JSONL or an ir_datasets id."""
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
    if config.data == "dataset":
        return _from_dataset(config)
    if config.tevatron:
        return _from_tevatron(Path(config.tevatron), config.corpus)
    queries = read_queries(config.queries)
    corpus = read_corpus(config.corpus)
    qrels = read_qrels(config.qrels, queries=queries, corpus=corpus)
    run = read_run(config.negatives_run, queries=queries, corpus=corpus)
    fps = {n: fingerprint(getattr(config, n)) for n in ("queries", "qrels", "corpus", "negatives_run")}
    return _from_run(queries, qrels, run, corpus, config.negatives_depth, fps)


def _from_dataset(config: TrainConfig) -> TrainGroups:
    """Groups from an ir_datasets id: its queries and qrels; negatives from ``negatives_run`` if
    given, else its scoreddocs (top ``negatives_depth``, ties in the dataset's order), else its
    docpairs; then only the passages the groups use are fetched from its docs store."""
    # Imported here: ir_datasets is optional (relevance-lens[datasets]).
    from relevance_lens.data.irds import (
        dataset_docpair_run,
        dataset_passages,
        dataset_qrels,
        dataset_queries,
        dataset_run,
        load_dataset,
    )

    name = config.dataset
    data = load_dataset(name)
    queries = dataset_queries(data)
    qrels = dataset_qrels(data, name, purpose="to train on")
    judged = [q for q in queries if any(rel > 0 for rel in qrels.get(q, {}).values())]
    fps = {"ir_datasets": name}
    if config.negatives_run:
        run, source = read_run(config.negatives_run, queries=queries), f"run {config.negatives_run}"
        fps["negatives_run"] = fingerprint(config.negatives_run)
    elif data.has_scoreddocs():
        run, source = dataset_run(data, name, query_ids=judged), f"ir_datasets {name} scoreddocs"
    elif data.has_docpairs():
        run, source = dataset_docpair_run(data, judged, qrels, config.negatives_depth), f"ir_datasets {name} docpairs"
    else:
        raise InputError(
            f"ir_datasets {name}: has neither scoreddocs nor docpairs to draw training negatives from; "
            "give a first-stage run with --negatives-run"
        )
    fps["negatives"] = source
    groups = _from_run(queries, qrels, run, {}, config.negatives_depth, fps, source=source)
    used = {d for q in groups.queries for d in groups.positives[q] + groups.negatives[q]}
    groups.corpus = dataset_passages(data, name, used)
    return groups


def _from_tevatron(path: Path, corpus_path: str | None = None) -> TrainGroups:
    # Tevatron v2's id schema points into a corpus (--corpus); the passage schema carries its own passages.
    corpus = read_corpus(corpus_path) if corpus_path else None
    fps = {"tevatron": fingerprint(path), **({"corpus": fingerprint(corpus_path)} if corpus_path else {})}
    groups = TrainGroups({}, {}, {}, {}, fps)
    for g in read_tevatron(path, corpus):
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

    def __init__(self, groups: TrainGroups, group_size: int, epochs: int, seed: int, random_negatives: int = 0):
        self.groups, self.size, self.epochs, self.seed = groups, group_size, epochs, seed
        self.random_negatives = random_negatives
        self.qids = sorted(groups.queries)
        self.pool = sorted(groups.corpus) if random_negatives else []
        most_positives = max((len(p) for p in groups.positives.values()), default=0)
        if random_negatives and len(self.pool) < group_size + most_positives:
            raise InputError(
                f"--random-negatives {random_negatives}: the training corpus has {len(self.pool)} passages, too few "
                f"to draw {random_negatives} distinct negatives beside a query's positives and first-stage negatives"
            )
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
        k = self.size - 1 - self.random_negatives
        start = (epoch * k) % len(candidates) if k else 0  # rotate: each epoch sees the next k negatives
        negatives = (candidates[start:] + candidates[:start])[:k]
        negatives += self._random_negatives(epoch, qid, set(negatives) | set(g.positives[qid]))
        return g.queries[qid], [g.corpus[positive]] + [g.corpus[d] for d in negatives]

    def _random_negatives(self, epoch: int, qid: str, taken: set[str]) -> list[str]:
        """Passages drawn uniformly from the whole training corpus, never a positive or a repeat."""
        rng = random.Random(f"{self.seed}:rand:{epoch}:{qid}")
        drawn: list[str] = []
        while len(drawn) < self.random_negatives:
            docid = self.pool[rng.randrange(len(self.pool))]
            if docid not in taken:
                taken.add(docid)
                drawn.append(docid)
        return drawn

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, position = divmod(index, len(self.qids))
        query, passages = self.group(epoch, self._order(epoch)[position])
        return {"query": query, "passages": passages}


class GroupCollator:
    """Groups -> one (queries*G, L) batch; the positive is column 0 of each group."""

    def __init__(self, reranker: Reranker):
        self.reranker = reranker

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [(it["query"], p) for it in items for p in it["passages"]]
        batch = self.reranker.collate(self.reranker.encode(pairs))
        batch["group_size"] = torch.tensor(len(items[0]["passages"]))
        return batch


def group_loss(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Listwise cross-entropy with the positive (column 0) as the target."""
    logits = scores.float().view(-1, group_size)
    return torch.nn.functional.cross_entropy(
        logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    )
