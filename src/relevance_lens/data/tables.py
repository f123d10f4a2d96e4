"""Tables with a header: CSV (pandas) and Parquet (pyarrow), their columns chosen by role.

A role is what a column means to a reader (a query's ``id``, its ``text``); each reader declares
its roles in a small dataclass (:class:`QueryColumns`, :class:`CorpusColumns`,
:class:`PairColumns`) whose fields are the column names the user gave (``None``: guess from the
field's ``guess`` list, matched case-insensitively, first found wins). :func:`table_rows` yields
``(row, {role: value}, {role: column})`` for every data row, rows counted from 1 under the header; the callers in
``formats`` and ``pairs`` check ids and text exactly as for the line-based formats.

Values come back as the file holds them: CSV cells always as strings (``""`` for an empty cell:
no ``NA``/``null`` guessing, a query may be the word "NA"), Parquet cells as Python values
(``None`` for a null). :func:`cell_id`, :func:`cell_text` and :func:`cell_grade` turn them into
what the pipeline uses, refusing nulls, NaNs and wrong types naming the row and column.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from relevance_lens.errors import InputError, at

#: Names (lowercased, ``.gz`` removed) read as tables by the query and corpus readers.
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class QueryColumns:
    """Which columns of a query table hold what (``--query-columns id=COL,text=COL``).

    Args:
        id: the query id column.
        text: the query text column.
    """

    id: str | None = field(
        default=None,
        metadata={"help": "Query id column.", "guess": ("query_id", "qid", "queryid", "query-id", "_id", "id")},
    )
    text: str | None = field(
        default=None,
        metadata={"help": "Query text column.", "guess": ("text", "query", "query_text", "question")},
    )


@dataclass(frozen=True)
class CorpusColumns:
    """Which columns of a corpus table hold what (``--corpus-columns id=COL,title=COL,text=COL``).

    Args:
        id: the passage id column.
        title: the title column (optional: no column, no titles).
        text: the passage text column.
    """

    id: str | None = field(
        default=None,
        metadata={
            "help": "Passage id column.",
            "guess": ("docid", "doc_id", "_id", "id", "pid", "passage_id", "document_id", "corpus-id"),
        },
    )
    title: str | None = field(
        default=None, metadata={"help": "Title column (optional).", "guess": ("title",), "optional": True}
    )
    text: str | None = field(
        default=None,
        metadata={"help": "Passage text column.", "guess": ("text", "contents", "passage", "passage_text", "body")},
    )


@dataclass(frozen=True)
class PairColumns:
    """Which columns of a labelled-pairs table hold what (``--columns query=COL,text=COL,label=COL``).

    Ids are optional: without an id column, ids are derived from the text (see ``pairs``).

    Args:
        query_id: the query id column (optional).
        query: the query text column.
        docid: the passage id column (optional).
        title: the passage title column (optional).
        text: the passage text column.
        label: the relevance grade column (integers; 0 = judged not relevant).
    """

    query_id: str | None = field(
        default=None,
        metadata={
            "help": "Query id column (optional: derived from the query text).",
            "guess": ("query_id", "qid", "queryid", "questionid", "question_id", "query-id"),
            "optional": True,
        },
    )
    query: str | None = field(
        default=None, metadata={"help": "Query text column.", "guess": ("query", "question", "query_text")}
    )
    docid: str | None = field(
        default=None,
        metadata={
            "help": "Passage id column (optional: derived from the passage title and text).",
            "guess": ("docid", "doc_id", "pid", "passage_id", "document_id", "sentenceid", "sentence_id", "corpus-id"),
            "optional": True,
        },
    )
    title: str | None = field(
        default=None,
        metadata={
            "help": "Passage title column (optional).",
            "guess": ("title", "documenttitle", "passage_title", "doc_title"),
            "optional": True,
        },
    )
    text: str | None = field(
        default=None,
        metadata={
            "help": "Passage text column.",
            "guess": ("text", "passage", "passage_text", "sentence", "document", "contents", "answer"),
        },
    )
    label: str | None = field(
        default=None,
        metadata={"help": "Relevance grade column (integers).", "guess": ("label", "relevance", "grade", "rel")},
    )


def is_table(path: str | Path) -> bool:
    """True when the name (ignoring ``.gz``) ends in ``.csv``, ``.parquet`` or ``.pq``."""
    return Path(path).name.lower().removesuffix(".gz").endswith(TABLE_SUFFIXES)


def is_parquet(path: str | Path) -> bool:
    return Path(path).name.lower().removesuffix(".gz").endswith((".parquet", ".pq"))


def parse_columns(cls: type, spec: str | None, flag: str) -> Any:
    """``"id=qid,text=question"`` -> ``cls(id="qid", text="question")``; ``None`` -> ``cls()``."""
    if spec is None:
        return cls()
    roles = [f.name for f in fields(cls)]
    given: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        role, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not role or not column:
            raise InputError(f"{flag} {spec!r}: expected ROLE=COLUMN pairs separated by commas, e.g. {roles[0]}=COL")
        if role not in roles:
            raise InputError(f"{flag} {spec!r}: unknown role {role!r}; expected some of {', '.join(roles)}")
        if role in given:
            raise InputError(f"{flag} {spec!r}: role {role!r} given twice")
        given[role] = column
    return cls(**given)


def table_rows(
    handle: IO[bytes], path: str | Path, columns: Any, flag: str, *, sep: str = ","
) -> Iterator[tuple[int, dict[str, Any], dict[str, str]]]:
    """Yield ``(row, {role: value}, {role: column name})`` for every data row of a CSV (``sep``) or Parquet table.

    Args:
        handle: the file opened for reading bytes (gzip already undone).
        path: its name, for messages and to tell Parquet from CSV.
        columns: a :class:`QueryColumns`, :class:`CorpusColumns` or :class:`PairColumns`.
        flag: the option that names columns, for the hint in errors (``--query-columns``).
        sep: the CSV delimiter (``"\\t"`` for a TSV with a header).

    Raises:
        InputError: unreadable table, or a role whose column is missing (naming the columns present).
    """
    names, data = _read_parquet(handle, path) if is_parquet(path) else _read_csv(handle, path, sep)
    chosen = choose_columns(path, names, columns, flag)
    values = {role: data(column) for role, column in chosen.items()}
    count = len(next(iter(values.values()))) if values else 0
    for index in range(count):
        yield index + 1, {role: column[index] for role, column in values.items()}, chosen


def choose_columns(path: str | Path, names: list[str], columns: Any, flag: str) -> dict[str, str]:
    """Role -> column name among ``names``, given or guessed; a missing required role raises."""
    lowered = {n.lower(): n for n in reversed(names)}  # the first of names differing only in case wins
    chosen = {}
    for f in fields(columns):
        given = getattr(columns, f.name)
        if given is not None:
            if given not in names:
                raise at(
                    path,
                    None,
                    f"no column {given!r} (given as {flag} {f.name}={given}); the table has {_listing(names)}",
                )
            chosen[f.name] = given
            continue
        found = next((lowered[g] for g in f.metadata["guess"] if g in lowered), None)
        if found is not None:
            chosen[f.name] = found
        elif not f.metadata.get("optional"):
            raise at(
                path,
                None,
                f"no {f.name} column: none of {', '.join(f.metadata['guess'])} among its columns "
                f"({_listing(names)}); name it with {flag} {f.name}=COLUMN",
            )
    return chosen


def _listing(names: list[str]) -> str:
    shown = ", ".join(map(repr, names[:20]))
    return shown + (f" and {len(names) - 20} more" if len(names) > 20 else "") if names else "no columns"


def _read_csv(handle: IO[bytes], path: str | Path, sep: str):
    import csv

    import pandas as pd

    try:
        frame = pd.read_csv(
            handle,
            sep=sep,
            dtype=str,
            na_filter=False,  # an empty cell is "", refused as empty by the caller; "NA" is text
            encoding="utf-8-sig",
            quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL,
        )
    except pd.errors.EmptyDataError:
        raise at(path, None, "empty file; expected a header row naming the columns, then one row per record") from None
    except pd.errors.ParserError as error:
        detail = " ".join(str(error).split())
        raise at(
            path,
            None,
            f"not a readable {'TSV' if sep == chr(9) else 'CSV'} table ({detail}; lines count the header); "
            "quote cells that hold the delimiter",
        ) from None
    except UnicodeDecodeError:
        raise at(path, None, "is not valid UTF-8; re-encode the file, e.g. iconv -f latin1 -t utf-8") from None
    names = [str(c) for c in frame.columns]
    return names, lambda column: frame[column].tolist()


def _read_parquet(handle: IO[bytes], path: str | Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(handle)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as error:
        detail = " ".join(str(error).split())
        raise at(path, None, f"not a readable Parquet file ({detail})") from None
    return table.column_names, lambda column: table.column(column).to_pylist()


def cell_id(where: str, kind: str, column: str, value: Any) -> str:
    """An id cell as a string: strings as they are (stripped), integers in decimal; a whole float
    too (``3.0`` is ``"3"``: pandas stores an integer column holding a null as floats)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    raise InputError(f"{where}: {kind} in column {column!r} is {_shown(value)}; expected a string or integer")


def cell_text(where: str, what: str, column: str, value: Any, *, optional: bool = False) -> str:
    """A text cell as a string; a null is ``""`` when ``optional`` (a missing title), else refused."""
    if isinstance(value, str):
        return value
    if value is None and optional:
        return ""
    raise InputError(f"{where}: {what} in column {column!r} is {_shown(value)}; expected text")


def cell_grade(where: str, column: str, value: Any) -> int:
    """A relevance label as an integer grade: ``1``, ``"1"``, ``1.0`` or ``True``; not ``0.5`` or a null."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if math.isfinite(number) and number.is_integer():
                return int(number)
    raise InputError(
        f"{where}: label in column {column!r} is {_shown(value)}; expected an integer grade (0 = not relevant)"
    )


def _shown(value: Any) -> str:
    if value is None:
        return "null (an empty cell)"
    if isinstance(value, float) and math.isnan(value):
        return "NaN (an empty cell)"
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."
