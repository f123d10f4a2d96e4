"""Labelled pairs: one table of (query id, query, passage id, passage, label) rows, as WikiQA,
MS MARCO pair dumps and Hugging Face reranking sets ship, split into the pipeline's four files.

:func:`read_pairs` reads CSV, Parquet, TSV with a header row (``.tsv``/``.txt``) or JSONL, its
columns named by :class:`~relevance_lens.data.tables.PairColumns` or guessed from the header.
A missing id column is no obstacle: ids are derived from the text (``q`` or ``p`` and the first
16 hex digits of the sha256 of the query text, or of the passage's title and text), so the same
text gets the same id in every file and every run. :func:`write_pairs` writes the queries, the
corpus, the labels as qrels (every label a grade; 0s kept: judged not relevant) and the
candidates as a TREC run (each query's passages in file order, scores descending), so ``rerank``,
``evaluate`` and ``train --data files`` take them as they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relevance_lens.data.formats import (
    Passage,
    PathLike,
    _check_id,
    _is_jsonl,
    _json_objects,
    _open_binary,
    _require_text,
    write_corpus,
    write_qrels,
    write_queries,
    write_run,
)
from relevance_lens.data.tables import PairColumns, cell_grade, cell_id, cell_text, choose_columns, table_rows
from relevance_lens.errors import at

#: What :func:`write_pairs` writes (the queries go to ``queries.jsonl`` instead when a text holds a tab or newline).
FILES = {"queries": "queries.tsv", "corpus": "corpus.jsonl", "qrels": "qrels.txt", "run": "run.trec"}
_FLAG = "--columns"


@dataclass
class Pairs:
    """A labelled-pairs table, checked and split.

    Args:
        queries: ``{qid: text}`` in first-appearance order.
        corpus: ``{docid: Passage}`` in first-appearance order.
        qrels: ``{qid: {docid: grade}}``, every row's label (0s included).
        run: ``{qid: {docid: score}}``, each query's rows in file order, scores descending from its row count.
        rows: how many rows were read.
        derived: which ids were derived from text (``"query id"``, ``"docid"``).
    """

    queries: dict[str, str] = field(default_factory=dict)
    corpus: dict[str, Passage] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    run: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: int = 0
    derived: list[str] = field(default_factory=list)


def derived_id(prefix: str, *texts: str) -> str:
    """A stable id from text: ``prefix`` + 16 hex digits of the sha256 of the texts (NUL-joined)."""
    return prefix + hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()[:16]


def read_pairs(path: PathLike, columns: PairColumns | None = None) -> Pairs:
    """Read a labelled-pairs table (CSV, Parquet, TSV with a header, or JSONL).

    Raises:
        InputError: unreadable file, missing column, an empty or null cell, a label that is not an
            integer, one query id with two texts or one docid with two passages (naming both rows),
            or a (query, passage) pair on two rows.
    """
    columns = columns or PairColumns()
    pairs = Pairs()
    seen_query: dict[str, tuple[str, str]] = {}  # qid -> (text, where first)
    seen_passage: dict[str, tuple[Passage, str]] = {}
    seen_pair: dict[tuple[str, str], str] = {}
    for where, cells, names in _pair_rows(path, columns):
        pairs.rows += 1
        qid, query, passage, grade = _pair(path, where, cells, names)
        _same(path, where, seen_query, qid, query, f"query id {qid!r}", "query")
        _same(path, where, seen_passage, passage.docid, passage, f"docid {passage.docid!r}", "passage")
        if (qid, passage.docid) in seen_pair:
            raise at(
                path,
                where,
                f"query {qid!r} and passage {passage.docid!r} again (first at {seen_pair[qid, passage.docid]}); "
                "each pair may appear once",
            )
        seen_pair[qid, passage.docid] = where
        pairs.queries.setdefault(qid, query)
        pairs.corpus.setdefault(passage.docid, passage)
        pairs.qrels.setdefault(qid, {})[passage.docid] = grade
        pairs.run.setdefault(qid, {})[passage.docid] = 0.0
    if not pairs.rows:
        raise at(path, None, "no rows; expected one (query, passage, label) row per line under a header")
    for docs in pairs.run.values():  # file order, as scores the run writer ranks by
        for rank, docid in enumerate(docs):
            docs[docid] = float(len(docs) - rank)
    pairs.derived = [kind for kind, role in (("query id", "query_id"), ("docid", "docid")) if role not in names]
    return pairs


def _pair_rows(path: PathLike, columns: PairColumns) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """``(where, {role: value}, {role: column})`` per row; ``where`` is ``"row N"`` or a JSONL line number."""
    if _is_jsonl(path):
        names: dict[str, str] | None = None
        for lineno, record in _json_objects(path):
            if names is None:  # the first object's keys name the columns, as a header would
                names = choose_columns(path, list(record), columns, _FLAG)
            yield str(lineno), {role: record.get(key) for role, key in names.items()}, names
        return
    name = Path(path).name.lower().removesuffix(".gz")
    sep = "\t" if name.endswith((".tsv", ".txt")) else ","
    with _open_binary(Path(path)) as handle:
        for row, cells, names in table_rows(handle, path, columns, _FLAG, sep=sep):
            yield f"row {row}", cells, names


def _pair(path: PathLike, where: str, cells: dict[str, Any], names: dict[str, str]) -> tuple[str, str, Passage, int]:
    """One row's query id and text, passage and grade, each checked."""
    located = f"{path}:{where}"
    query = cell_text(located, "query", names["query"], cells["query"])
    _require_text(path, where, "query", query)
    title = cell_text(located, "title", names.get("title"), cells.get("title"), optional=True)
    text = cell_text(located, "passage text", names["text"], cells["text"])
    _require_text(path, where, "passage (no title and no text)", title + text)
    if "query_id" in names:
        qid = _check_id(path, where, "query id", cell_id(located, "query id", names["query_id"], cells["query_id"]))
    else:
        qid = derived_id("q", query)
    if "docid" in names:
        docid = _check_id(path, where, "docid", cell_id(located, "docid", names["docid"], cells["docid"]))
    else:
        docid = derived_id("p", title, text)
    grade = cell_grade(located, names["label"], cells["label"])
    return qid, query, Passage(docid, title, text), grade


def _same(path: PathLike, where: str, seen: dict, key: str, value: Any, what: str, noun: str) -> None:
    """One id, one text: a second, different value for an id is refused naming both rows."""
    first = seen.setdefault(key, (value, where))
    if first[0] != value:
        raise at(
            path,
            where,
            f"{what} names another {noun} than at {first[1]} ({_short(value)} vs {_short(first[0])}); "
            f"one id must name one {noun}: fix the ids, or drop the id column to derive ids from the text",
        )


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else f"{value.title} {value.text}".strip()
    return repr(text if len(text) <= 40 else text[:40] + "...")


def write_pairs(pairs: Pairs, output: PathLike) -> dict[str, Path]:
    """Write the four files into ``output`` (created); returns ``{role: path}``.

    Everything is checked before this (:func:`read_pairs`), and each file is written atomically.
    """
    output = Path(output)
    paths = {role: output / name for role, name in FILES.items()}
    if any(c in text for text in pairs.queries.values() for c in "\t\n\r"):
        paths["queries"] = output / "queries.jsonl"  # TSV cannot hold the tab or newline
    write_queries(pairs.queries, paths["queries"])
    write_corpus(pairs.corpus, paths["corpus"])
    write_qrels(pairs.qrels, paths["qrels"])
    write_run(pairs.run, paths["run"], tag="pairs")
    return paths


def import_pairs(path: PathLike, output: PathLike, columns: PairColumns | None = None) -> tuple[Pairs, dict[str, Path]]:
    """Read a labelled-pairs table and write its queries, corpus, qrels and run into ``output``."""
    pairs = read_pairs(path, columns)
    return pairs, write_pairs(pairs, output)
