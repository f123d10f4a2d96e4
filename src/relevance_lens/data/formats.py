"""Readers and writers for the IR file formats the pipeline meets.

Formats: query TSV (or JSONL), corpus TSV/JSONL, TREC runs, TREC qrels and Tevatron
training JSONL. Every reader takes plain or gzipped files (detected from the bytes, so
MS MARCO's ``.gz`` downloads work as they are) and raises :class:`InputError` located at
``file:line`` for anything it cannot use. Every writer goes through :func:`atomic_write`,
so an interrupted write never leaves a half-written file behind.

Ids are always strings, and query ids and passage ids are separate spaces: MS MARCO's
query ``5`` and passage ``5`` are different things, so they are never looked up in the
same table.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import re
import secrets
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Union

from relevance_lens.data.candidates import ranked
from relevance_lens.data.tables import CorpusColumns, QueryColumns, cell_id, cell_text, is_table, table_rows
from relevance_lens.errors import InputError, at

PathLike = Union[str, "os.PathLike[str]"]

_GZIP_MAGIC = b"\x1f\x8b"
_DOCID_KEYS = ("docid", "_id", "id", "doc_id")
_QID_KEYS = ("query_id", "qid", "_id", "id")
_WHITESPACE = re.compile(r"\s")
_PREVIEW_CHARS = 80

#: Longest line, in characters, of a file of ids and numbers (runs, qrels): a TREC line is a few
#: dozen characters, so anything near this is a wrong file (a corpus, a binary, a file without
#: newlines). Reading stops there, so such a file costs this much memory, not its size.
MAX_ID_LINE = 1 << 16
#: Longest line of a text file (queries, corpus, Tevatron groups). Long documents are data: a
#: 10 MB passage is read and the reranker keeps its first ``max_length`` tokens. Past this, the
#: "line" is a whole collection without newlines (a JSON array, a file from another OS tool).
MAX_TEXT_LINE = 1 << 26


@dataclass(frozen=True)
class Passage:
    """One retrievable unit of text.

    Args:
        docid: the passage id, always a string (never compared with query ids).
        title: the title, ``""`` when the collection has none (MS MARCO passage).
        text: the passage body.
    """

    docid: str
    title: str
    text: str


@dataclass
class TrainGroup:
    """One training query with its judged passages (a line of Tevatron JSONL).

    Args:
        query_id: the query id, a string.
        query: the query text.
        positives: passages judged relevant (at least one).
        negatives: passages to contrast them with (hard negatives; may be empty).
    """

    query_id: str
    query: str
    positives: list[Passage] = field(default_factory=list)
    negatives: list[Passage] = field(default_factory=list)


# ---------------------------------------------------------------- writing


@contextmanager
def atomic_write(path: PathLike, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears complete or not at all.

    Writes go to a hidden temporary file in the same directory (so the final
    ``os.replace`` is atomic on one filesystem), which is fsynced and renamed over
    ``path`` when the block exits cleanly. If the block raises, the temporary file is
    removed and any existing ``path`` is left untouched. Parent directories are created.
    A path ending in ``.gz`` is gzip-compressed (with a fixed mtime, so equal content
    gives equal bytes).

    Args:
        path: the file to produce.
        mode: ``"w"`` for text or ``"wb"`` for bytes.
        encoding: text encoding, used only with ``mode="w"``.
    """
    if mode not in ("w", "wb"):
        raise InputError(f"atomic_write mode={mode!r}: expected 'w' (text) or 'wb' (bytes)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 lets the umask decide permissions, as a plain open() would;
    # tempfile.mkstemp would leave every output readable by its owner only.
    raw = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
    stream: IO[Any] = raw
    try:
        stream = _layer_streams(raw, path, mode, encoding)
        yield stream
        _finish_streams(stream, raw)
        os.replace(tmp, path)
    except BaseException:
        _abandon_streams(stream, raw)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def current_umask() -> int:
    """The process's umask, read from ``/proc`` where it can be (setting it to read it races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(*paths: PathLike) -> None:
    """Give files the mode a plain ``open()`` would: 0o666 less the umask.

    For files written by libraries that create them privately: safetensors writes a ``0600``
    temporary file and renames it, so adapters, heads and the model cache would otherwise be
    readable by their owner only while the JSON beside them follows the umask.
    """
    mode = 0o666 & ~current_umask()
    for path in paths:
        os.chmod(path, mode)


def _layer_streams(raw: IO[bytes], path: Path, mode: str, encoding: str) -> IO[Any]:
    """Wrap the raw temp file in gzip and/or text layers as ``path`` and ``mode`` ask."""
    stream: IO[Any] = raw
    if path.name.endswith(".gz"):
        stream = gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0)
    if mode == "w":
        stream = io.TextIOWrapper(stream, encoding=encoding, newline="")
    return stream


def _finish_streams(stream: IO[Any], raw: IO[bytes]) -> None:
    """Flush every layer down to disk without closing ``raw`` before its fsync."""
    if isinstance(stream, io.TextIOWrapper):
        stream.flush()
        stream = stream.detach()
    if isinstance(stream, gzip.GzipFile):
        stream.close()  # writes the gzip trailer; leaves the fileobj open
    raw.flush()
    os.fsync(raw.fileno())
    raw.close()


def _abandon_streams(stream: IO[Any], raw: IO[bytes]) -> None:
    """Close every layer after a failure; their content is being thrown away."""
    try:
        stream.close()
    except Exception:  # noqa: BLE001 - the original exception is the one that matters
        pass
    raw.close()


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself; best effort, as some filesystems refuse it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- low-level reading


def _open_binary(path: Path) -> IO[bytes]:
    """Open ``path`` for reading bytes, decompressing gzip when the magic bytes say so."""
    try:
        with open(path, "rb") as probe:
            magic = probe.read(2)
    except FileNotFoundError:
        raise at(path, None, "no such file; check the path") from None
    except IsADirectoryError:
        raise at(path, None, "is a directory; expected a file") from None
    except OSError as error:
        raise at(path, None, f"cannot be read ({error.strerror})") from None
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")
    return open(path, "rb")


def _lines(path: PathLike, limit: int | None = None, expected: str = "one record") -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line without newline)`` for every non-blank line.

    A line longer than ``limit`` characters (default :data:`MAX_TEXT_LINE`) raises, naming the
    line, before more of it is read (``expected`` says what a line should hold), so memory stays
    bounded by ``limit``.
    """
    path = Path(path)
    limit = MAX_TEXT_LINE if limit is None else limit
    lineno = 0
    # Decoding in the text layer is several times faster than line by line; on the
    # rare bad byte the file is rescanned in binary to name its line and offset.
    # newline="\n" splits on \n only, so a stray \r inside a field never cuts a line.
    with io.TextIOWrapper(_open_binary(path), encoding="utf-8", newline="\n") as handle:
        try:
            # readline(limit + 1) never holds more than the limit, however long the line is.
            for lineno, line in enumerate(iter(partial(handle.readline, limit + 1), ""), 1):
                if len(line) > limit and not line.endswith("\n"):
                    raise at(
                        path,
                        lineno,
                        f"line longer than {limit:,} characters; expected {expected} per line "
                        "(is this the right file, with one record per line?)",
                    )
                if lineno == 1:
                    line = line.removeprefix("\ufeff")  # a BOM is not part of the first id
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
        except UnicodeDecodeError:
            raise _locate_decode_error(path) from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise at(path, lineno + 1, f"corrupt gzip data ({error}); re-download or re-compress the file") from None


def _locate_decode_error(path: Path) -> InputError:
    """Find the first byte that is not UTF-8 and say where it is."""
    offset = lineno = 0
    with _open_binary(path) as handle:
        try:
            for lineno, raw in enumerate(handle, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    return at(
                        path,
                        lineno,
                        f"invalid UTF-8 byte 0x{raw[error.start]:02x} at byte offset {offset + error.start} "
                        f"(column {error.start + 1}); expected UTF-8 text: re-encode the file, "
                        "e.g. iconv -f latin1 -t utf-8",
                    )
                offset += len(raw)
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:  # the bad byte's line runs into the damage
            return at(path, lineno + 1, f"corrupt gzip data ({error}); re-download or re-compress the file")
    return at(path, None, "is not valid UTF-8; expected UTF-8 text")


def _json_objects(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for every non-blank line of a JSONL file."""
    for lineno, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise at(
                path, lineno, f"invalid JSON ({error.msg} at column {error.colno}); expected one JSON object per line"
            ) from None
        except (ValueError, RecursionError):  # a number of over 4300 digits, or nesting past the recursion limit
            raise at(
                path, lineno, "JSON nested too deeply or with an over-long number; expected one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise at(path, lineno, f"expected a JSON object per line, found {type(record).__name__}")
        yield lineno, record


def _is_jsonl(path: PathLike) -> bool:
    """True when the name (ignoring ``.gz``) ends in ``.jsonl`` or ``.json``."""
    name = Path(path).name.lower().removesuffix(".gz")
    return name.endswith((".jsonl", ".json"))


def _none_found(path: PathLike, what: str, expected: str) -> InputError:
    """An empty file (or blank lines only): one line, not an empty result that looks like data.

    An empty run would be reranked into an empty run and an empty query file scored as no
    queries; either reads as "found nothing" downstream instead of "wrong file".
    """
    return at(path, None, f"no {what} (empty file, or blank lines only); expected {expected}")


def _preview(line: str) -> str:
    """A short, quoted rendering of a line for error messages."""
    shown = line if len(line) <= _PREVIEW_CHARS else line[:_PREVIEW_CHARS] + "..."
    return repr(shown)


def _check_id(path: PathLike, lineno: int | str, kind: str, value: str) -> str:
    """Return ``value`` if it can be an id in TREC files; raise otherwise."""
    if not value:
        raise at(path, lineno, f"empty {kind}; every record needs one")
    if _WHITESPACE.search(value):
        raise at(path, lineno, f"{kind} {value!r} contains whitespace, which TREC run and qrels files cannot hold")
    if "\ufeff" in value:  # written first in a file, it would read back as a byte-order mark and vanish
        raise at(path, lineno, f"{kind} {value!r} contains a byte-order mark (U+FEFF); remove it")
    return value


def _json_id(path: PathLike, lineno: int, record: Mapping[str, Any], keys: tuple[str, ...], kind: str) -> str:
    """Read an id from the first of ``keys`` present; JSON numbers become strings."""
    for key in keys:
        if key in record:
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise at(path, lineno, f"{kind} field {key!r} is {value!r}; expected a string or integer")
            return _check_id(path, lineno, kind, str(value).strip())
    raise at(path, lineno, f"no {kind}: expected one of the fields {', '.join(map(repr, keys))}")


def _json_str(
    path: PathLike, lineno: int, record: Mapping[str, Any], keys: tuple[str, ...], default: str | None
) -> str:
    """Read a text field from the first of ``keys`` present (``null`` counts as absent)."""
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise at(path, lineno, f"field {key!r} is {type(value).__name__}; expected a string")
        return value
    if default is None:
        raise at(path, lineno, f"missing field {keys[0]!r}")
    return default


def _require_text(path: PathLike, lineno: int | str, what: str, text: str) -> str:
    """Reject empty or whitespace-only text: there is nothing to rank it by."""
    if not text.strip():
        raise at(path, lineno, f"empty {what}; expected non-blank text")
    return text


def _parse_number(path: PathLike, lineno: int, column: str, value: str, kind: type) -> Any:
    """Parse an int or float column, rejecting junk and non-finite floats."""
    try:
        number = kind(value)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise at(path, lineno, f"{column} {value!r} is not {expected}") from None
    if kind is float and not math.isfinite(number):
        raise at(path, lineno, f"{column} {value!r} is not a finite number")
    return number


# ---------------------------------------------------------------- queries


def read_queries(path: PathLike, columns: QueryColumns | None = None) -> dict[str, str]:
    """Read queries: TSV ``qid<TAB>text`` lines, JSONL (``.jsonl``/``.json``) objects
    with an id (``_id``, ``id``, ``qid`` or ``query_id``) and ``text`` (or ``query``), or a
    CSV/Parquet table (``.csv``, ``.csv.gz``, ``.parquet``) with a header.

    Args:
        path: the file; its name's suffix says the format.
        columns: a table's id and text columns (default: guessed from the header, see
            :class:`~relevance_lens.data.tables.QueryColumns`); only for tables.

    Raises:
        InputError: malformed line or row, missing column, empty query text, duplicate query id,
            or no query at all.
    """
    records = _query_records(path, columns)
    queries: dict[str, str] = {}
    first: dict[str, int] = {}
    for lineno, qid, text in records:
        if qid in queries:
            also = f" (also {_place(path)} {first[qid]})" if is_table(path) else ""
            raise at(path, _located(path, lineno), f"duplicate query id {qid!r}{also}; query ids must be unique")
        first[qid] = lineno
        queries[qid] = _require_text(path, _located(path, lineno), f"text for query {qid!r}", text)
    if not queries:
        raise _none_found(path, "queries", "one query a line (qid<TAB>text, or a JSON object) or table row")
    return queries


def _query_records(path: PathLike, columns: QueryColumns | None) -> Iterator[tuple[int, str, str]]:
    if is_table(path):
        return _query_table(path, columns or QueryColumns())
    if columns is not None and columns != QueryColumns():
        raise at(path, None, "query columns apply to CSV and Parquet tables (.csv, .parquet); this is TSV/JSONL")
    return _query_json(path) if _is_jsonl(path) else _query_tsv(path)


def _place(path: PathLike) -> str:
    return "row" if is_table(path) else "line"


def _located(path: PathLike, number: int) -> str | int:
    """A table's records are rows (1 = the first under the header), not lines: say which."""
    return f"row {number}" if is_table(path) else number


def _table_rows(path: PathLike, columns: Any, flag: str) -> Iterator[tuple[int, dict[str, Any], dict[str, str]]]:
    with _open_binary(Path(path)) as handle:
        yield from table_rows(handle, path, columns, flag)


def _query_table(path: PathLike, columns: QueryColumns) -> Iterator[tuple[int, str, str]]:
    for row, cells, names in _table_rows(path, columns, "--query-columns"):
        where = f"{path}:row {row}"
        qid = _check_id(path, f"row {row}", "query id", cell_id(where, "query id", names["id"], cells["id"]))
        yield row, qid, cell_text(where, f"text of query {qid!r}", names["text"], cells["text"])


def _query_tsv(path: PathLike) -> Iterator[tuple[int, str, str]]:
    for lineno, line in _lines(path):
        columns = line.split("\t")
        if len(columns) != 2:
            raise at(
                path, lineno, f"expected 2 tab-separated columns (qid, text), found {len(columns)}: {_preview(line)}"
            )
        yield lineno, _check_id(path, lineno, "query id", columns[0].strip()), columns[1]


def _query_json(path: PathLike) -> Iterator[tuple[int, str, str]]:
    for lineno, record in _json_objects(path):
        qid = _json_id(path, lineno, record, _QID_KEYS, "query id")
        yield lineno, qid, _json_str(path, lineno, record, ("text", "query"), None)


def write_queries(queries: Mapping[str, str], path: PathLike) -> None:
    """Write queries as TSV ``qid<TAB>text``, or JSONL ``{"_id", "text"}`` for ``.jsonl``."""
    as_json = _is_jsonl(path)
    with atomic_write(path) as handle:
        for qid, text in queries.items():
            _check_writable_id(path, "query id", qid)
            if as_json:
                handle.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
            else:
                _check_tsv_field(path, f"text of query {qid!r}", text)
                handle.write(f"{qid}\t{text}\n")


def _check_tsv_field(path: PathLike, what: str, value: str) -> None:
    """A tab or newline inside a field would silently shift columns on re-reading."""
    if "\t" in value or "\n" in value or "\r" in value:
        raise InputError(f"cannot write {path}: the {what} contains a tab or newline; write JSONL (.jsonl) instead")


# ---------------------------------------------------------------- corpus


def read_corpus(path: PathLike, columns: CorpusColumns | None = None) -> dict[str, Passage]:
    """Read passages: TSV ``docid<TAB>text`` or ``docid<TAB>title<TAB>text`` lines, JSONL
    (``.jsonl``/``.json``) objects with an id (``docid``, ``_id``, ``id`` or ``doc_id``),
    an optional ``title`` and ``text`` (or Pyserini's ``contents``), or a CSV/Parquet table
    (``.csv``, ``.csv.gz``, ``.parquet``) with a header.

    Args:
        path: the file; its name's suffix says the format.
        columns: a table's id, title and text columns (default: guessed from the header, see
            :class:`~relevance_lens.data.tables.CorpusColumns`); only for tables.

    Raises:
        InputError: malformed line or row, missing column, passage with neither title nor text,
            duplicate docid, or no passage at all.
    """
    if is_table(path):
        records = _passage_table(path, columns or CorpusColumns())
    elif columns is not None and columns != CorpusColumns():
        raise at(path, None, "corpus columns apply to CSV and Parquet tables (.csv, .parquet); this is TSV/JSONL")
    else:
        records = _passage_json(path) if _is_jsonl(path) else _passage_tsv(path)
    corpus: dict[str, Passage] = {}
    first: dict[str, int] = {}
    for lineno, passage in records:
        if passage.docid in corpus:
            also = f" (also {_place(path)} {first[passage.docid]})" if is_table(path) else ""
            raise at(
                path, _located(path, lineno), f"duplicate docid {passage.docid!r}{also}; passage ids must be unique"
            )
        first[passage.docid] = lineno
        corpus[passage.docid] = passage
    if not corpus:
        raise _none_found(path, "passages", "one passage a line (docid<TAB>text, or a JSON object) or table row")
    return corpus


def _passage_table(path: PathLike, columns: CorpusColumns) -> Iterator[tuple[int, Passage]]:
    for row, cells, names in _table_rows(path, columns, "--corpus-columns"):
        where = f"{path}:row {row}"
        docid = _check_id(path, f"row {row}", "docid", cell_id(where, "docid", names["id"], cells["id"]))
        title = cell_text(where, f"title of passage {docid!r}", names.get("title"), cells.get("title"), optional=True)
        text = cell_text(where, f"text of passage {docid!r}", names["text"], cells["text"])
        yield row, _make_passage(path, f"row {row}", docid, title, text)


def _passage_tsv(path: PathLike) -> Iterator[tuple[int, Passage]]:
    for lineno, line in _lines(path):
        columns = line.split("\t")
        if len(columns) not in (2, 3):
            hint = "; this looks like JSON: name the file .jsonl" if line.lstrip().startswith("{") else ""
            raise at(
                path,
                lineno,
                f"expected 2 or 3 tab-separated columns (docid, [title,] text), found {len(columns)}: "
                f"{_preview(line)}{hint}",
            )
        docid = _check_id(path, lineno, "docid", columns[0].strip())
        title, text = ("", columns[1]) if len(columns) == 2 else (columns[1], columns[2])
        yield lineno, _make_passage(path, lineno, docid, title, text)


def _passage_json(path: PathLike) -> Iterator[tuple[int, Passage]]:
    for lineno, record in _json_objects(path):
        yield lineno, _passage_from_record(path, lineno, record)


def _passage_from_record(path: PathLike, lineno: int, record: Mapping[str, Any]) -> Passage:
    docid = _json_id(path, lineno, record, _DOCID_KEYS, "docid")
    title = _json_str(path, lineno, record, ("title",), "")
    text = _json_str(path, lineno, record, ("text", "contents"), None)
    return _make_passage(path, lineno, docid, title, text)


def _make_passage(path: PathLike, lineno: int | str, docid: str, title: str, text: str) -> Passage:
    # A title alone is still something to rank (BEIR corpora have title-only documents),
    # so only a passage with neither is rejected.
    _require_text(path, lineno, f"passage {docid!r} (no title and no text)", title + text)
    return Passage(docid=docid, title=title, text=text)


def write_corpus(corpus: Mapping[str, Passage], path: PathLike) -> None:
    """Write passages as JSONL ``{"docid", "title", "text"}`` when ``path`` ends in
    ``.jsonl``/``.json`` (optionally ``.gz``), else as TSV ``docid<TAB>title<TAB>text``."""
    as_json = _is_jsonl(path)
    with atomic_write(path) as handle:
        for passage in corpus.values():
            _check_writable_id(path, "docid", passage.docid)
            if as_json:
                handle.write(json.dumps(_passage_dict(passage), ensure_ascii=False) + "\n")
            else:
                _check_tsv_field(path, f"title of passage {passage.docid!r}", passage.title)
                _check_tsv_field(path, f"text of passage {passage.docid!r}", passage.text)
                handle.write(f"{passage.docid}\t{passage.title}\t{passage.text}\n")


def _passage_dict(passage: Passage) -> dict[str, str]:
    return {"docid": passage.docid, "title": passage.title, "text": passage.text}


# ---------------------------------------------------------------- runs and qrels


def read_run(
    path: PathLike,
    *,
    queries: Mapping[str, Any] | None = None,
    corpus: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Read a TREC run (``qid Q0 docid rank score tag``) as ``{qid: {docid: score}}``.

    The score column orders results; the rank column is checked to be an integer but
    otherwise ignored, as trec_eval does. For runs too large to hold, :class:`RunSpool`
    gives the same queries one at a time.

    Args:
        path: the run file.
        queries: when given, every qid must be one of its keys.
        corpus: when given, every docid must be one of its keys.

    Raises:
        InputError: malformed line, duplicate (qid, docid), an unknown id, or no result at all.
    """
    run: dict[str, dict[str, float]] = {}
    for lineno, qid, docid, value in _run_entries(path, queries, corpus):
        docs = run.setdefault(qid, {})
        if docid in docs:
            raise _duplicate_run_entry(path, lineno, qid, docid)
        docs[docid] = value
    if not run:
        raise _none_found(path, "results", _RUN_LINE)
    return run


def _run_entries(
    path: PathLike, queries: Mapping[str, Any] | None, corpus: Mapping[str, Any] | None
) -> Iterator[tuple[int, str, str, float]]:
    """``(line number, qid, docid, score)`` of every line of a run, each checked."""
    for lineno, line in _lines(path, MAX_ID_LINE, "one 'qid Q0 docid rank score tag' result"):
        columns = line.split()
        if len(columns) != 6:
            raise at(
                path,
                lineno,
                f"expected 6 columns (qid Q0 docid rank score tag), found {len(columns)}: {_preview(line)}",
            )
        qid, _, docid, rank, score, _ = columns
        try:
            int(rank)
            value = float(score)
        except ValueError:
            # Re-parse through the checked path, which raises naming the bad column.
            _parse_number(path, lineno, "rank", rank, int)
            value = _parse_number(path, lineno, "score", score, float)
        if not math.isfinite(value):
            raise at(path, lineno, f"score {score!r} is not a finite number")
        _check_known(path, lineno, qid, docid, queries, corpus)
        yield lineno, qid, docid, value


_RUN_LINE = "one 'qid Q0 docid rank score tag' line per result"


def _duplicate_run_entry(path: PathLike, lineno: int, qid: str, docid: str) -> InputError:
    return at(path, lineno, f"duplicate entry for query {qid!r} and docid {docid!r}; each pair may appear once")


class RunSpool:
    """A TREC run read once and kept on disk, handed back one query at a time.

    What :func:`read_run` returns, without holding it: every line is checked as ``read_run``
    checks it (same errors, same order) and copied to a temporary file; memory holds where
    each query's lines are (a few numbers per query, or per stretch of a query when the file is
    not grouped by query) and, in :meth:`docs`, one query's results. Use as a context manager;
    the temporary file goes when it exits.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        queries: Mapping[str, Any] | None = None,
        corpus: Mapping[str, Any] | None = None,
    ):
        self.path = path
        self._spool: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n")
        #: qid -> [(offset, lines)] stretches of the spool, in file order
        self._where: dict[str, list[tuple[int, int]]] = {}
        try:
            self._fill(queries, corpus)
        except BaseException:
            self.close()
            raise

    def _fill(self, queries: Mapping[str, Any] | None, corpus: Mapping[str, Any] | None) -> None:
        current, seen = None, set()  # duplicates within a stretch are found here, in file order
        for lineno, qid, docid, value in _run_entries(self.path, queries, corpus):
            if qid != current:
                current, seen = qid, set()
                self._where.setdefault(qid, []).append((self._spool.tell(), 0))
            if docid in seen:
                raise _duplicate_run_entry(self.path, lineno, qid, docid)
            seen.add(docid)
            offset, count = self._where[qid][-1]
            self._where[qid][-1] = (offset, count + 1)
            # repr round-trips a float exactly.
            self._spool.write(f"{docid}\t{value!r}\t{lineno}\n")
        if not self._where:
            raise _none_found(self.path, "results", _RUN_LINE)
        self._spool.flush()

    def __iter__(self) -> Iterator[str]:
        """The query ids, in the order ``read_run``'s dict holds them (first appearance)."""
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, qid: object) -> bool:
        return qid in self._where

    def count(self, qid: str) -> int:
        """How many results ``qid`` has."""
        return sum(n for _, n in self._where[qid])

    def docs(self, qid: str) -> dict[str, float]:
        """``{docid: score}`` of one query, as ``read_run(...)[qid]`` holds it."""
        docs: dict[str, float] = {}
        for offset, n in self._where[qid]:
            self._spool.seek(offset)
            for _ in range(n):
                docid, value, lineno = self._spool.readline().rstrip("\n").split("\t")
                if docid in docs:  # the query's lines came in more than one stretch
                    raise _duplicate_run_entry(self.path, int(lineno), qid, docid)
                docs[docid] = float(value)
        return docs

    def close(self) -> None:
        self._spool.close()

    def __enter__(self) -> RunSpool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_qrels(
    path: PathLike,
    *,
    queries: Mapping[str, Any] | None = None,
    corpus: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, int]]:
    """Read TREC qrels (``qid iteration docid relevance``) as ``{qid: {docid: relevance}}``.

    Args:
        path: the qrels file (spaces or tabs).
        queries: when given, every qid must be one of its keys.
        corpus: when given, every docid must be one of its keys.

    Raises:
        InputError: malformed line, duplicate (qid, docid), an unknown id, or no judgement at all.
    """
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in _lines(path, MAX_ID_LINE, "one 'qid iteration docid relevance' judgement"):
        columns = line.split()
        if len(columns) != 4:
            hint = (
                "; BEIR's 3-column qrels need an iteration column, e.g. 0, after the qid" if len(columns) == 3 else ""
            )
            raise at(
                path,
                lineno,
                f"expected 4 columns (qid iteration docid relevance), found {len(columns)}: {_preview(line)}{hint}",
            )
        qid, _, docid, relevance = columns
        value = _parse_number(path, lineno, "relevance", relevance, int)
        _check_known(path, lineno, qid, docid, queries, corpus)
        docs = qrels.setdefault(qid, {})
        if docid in docs:
            raise at(
                path, lineno, f"duplicate judgement for query {qid!r} and docid {docid!r}; each pair may appear once"
            )
        docs[docid] = value
    if not qrels:
        raise _none_found(path, "judgements", "one 'qid iteration docid relevance' line per judgement")
    return qrels


def _check_known(
    path: PathLike,
    lineno: int,
    qid: str,
    docid: str,
    queries: Mapping[str, Any] | None,
    corpus: Mapping[str, Any] | None,
) -> None:
    """Look qids up in the queries only and docids in the corpus only: separate id spaces."""
    # Ids the writers could not write back (a U+FEFF inside one, found by tests/test_fuzz.py) are refused here.
    _check_id(path, lineno, "query id", qid)
    _check_id(path, lineno, "docid", docid)
    if queries is not None and qid not in queries:
        raise at(
            path,
            lineno,
            f"unknown query id {qid!r}: not among the {len(queries)} queries given; check the queries file",
        )
    if corpus is not None and docid not in corpus:
        raise at(path, lineno, f"unknown docid {docid!r}: not among the {len(corpus)} passages of the corpus given")


def write_run(
    run: Mapping[str, Mapping[str, float]],
    path: PathLike,
    tag: str = "relevance-lens",
    depth: int | None = None,
) -> None:
    """Write a TREC run, ranked by score (highest first); tied passages keep the run's order.

    Queries are written in id order (numeric ids numerically), ranks count from 1.

    Args:
        run: ``{qid: {docid: score}}``.
        path: the output file.
        tag: the run tag, the last column; no whitespace.
        depth: keep at most this many passages per query (all when None).
    """
    _check_writable_id(path, "run tag", tag)
    if depth is not None and depth < 1:
        raise InputError(f"depth={depth}: expected a positive integer, or None to keep every passage")
    with atomic_write(path) as handle:
        for qid in sorted(run, key=_id_order):
            handle.write(_run_block(path, qid, run[qid], tag, depth))


class RunWriter:
    """A TREC run written one query at a time, to the bytes :func:`write_run` writes for the whole.

    Queries may come in any order; each one's lines go to a temporary file at once, and on a
    clean exit of the ``with`` block they are copied to ``path`` in id order through
    :func:`atomic_write` (on an exception nothing is written). Memory holds one query's results
    and a few numbers per query, however large the run.
    """

    def __init__(self, path: PathLike, tag: str = "relevance-lens", depth: int | None = None):
        _check_writable_id(path, "run tag", tag)
        if depth is not None and depth < 1:
            raise InputError(f"depth={depth}: expected a positive integer, or None to keep every passage")
        self.path, self.tag, self.depth = path, tag, depth
        self._spool: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")
        self._where: dict[str, tuple[int, int]] = {}  # qid -> (offset, characters)

    def add(self, qid: str, docs: Mapping[str, float]) -> None:
        """Rank and keep one query's ``{docid: score}``; each query once."""
        if qid in self._where:
            raise InputError(f"cannot write {self.path}: query {qid!r} given twice")
        block = _run_block(self.path, qid, docs, self.tag, self.depth)
        self._where[qid] = (self._spool.tell(), len(block))
        self._spool.write(block)

    def __len__(self) -> int:
        return len(self._where)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, kind, *exc) -> None:
        try:
            if kind is None:
                with atomic_write(self.path) as handle:
                    for qid in sorted(self._where, key=_id_order):
                        offset, size = self._where[qid]
                        self._spool.seek(offset)
                        handle.write(self._spool.read(size))
        finally:
            self._spool.close()


def _run_block(path: PathLike, qid: str, docs: Mapping[str, float], tag: str, depth: int | None) -> str:
    """All lines of one query, joined: one write per query keeps large runs fast."""
    _check_writable_id(path, "query id", qid)
    # One regex over all docids joined is far faster than one per docid.
    if "" in docs or _WHITESPACE.search("".join(docs)):
        _check_writable_id(path, "docid", next(d for d in docs if not d or _WHITESPACE.search(d)))
    scores = list(map(float, docs.values()))
    if not all(map(math.isfinite, scores)):
        docid, bad = next((d, v) for d, v in zip(docs, scores) if not math.isfinite(v))
        raise InputError(
            f"cannot write {path}: score {bad} for query {qid!r}, docid {docid!r}; expected a finite number"
        )
    # Ties keep the run's order, as everywhere (candidates.ranked): read back, the file ranks the same.
    order = ranked(dict(zip(docs, scores)))
    return "".join(f"{qid} Q0 {docid} {rank} {score!r} {tag}\n" for rank, (docid, score) in enumerate(order[:depth], 1))


def _check_writable_id(path: PathLike, kind: str, value: str) -> None:
    if not value or _WHITESPACE.search(value) or "\ufeff" in value:
        raise InputError(f"cannot write {path}: {kind} {value!r} is empty or contains whitespace or U+FEFF")


def _id_order(value: str) -> tuple[int, int, str]:
    """Sort key: numeric ids by value (2 before 10), then other ids as strings."""
    return (0, int(value), value) if value.isdigit() else (1, 0, value)


def write_qrels(qrels: Mapping[str, Mapping[str, int]], path: PathLike) -> None:
    """Write TREC qrels ``qid 0 docid relevance``, queries and docids in id order."""
    with atomic_write(path) as handle:
        for qid in sorted(qrels, key=_id_order):
            _check_writable_id(path, "query id", qid)
            for docid in sorted(qrels[qid], key=_id_order):
                _check_writable_id(path, "docid", docid)
                handle.write(f"{qid} 0 {docid} {int(qrels[qid][docid])}\n")


# ---------------------------------------------------------------- Tevatron training data


def read_tevatron(path: PathLike, corpus: Mapping[str, Passage] | None = None) -> list[TrainGroup]:
    """Read Tevatron training JSONL in either of Tevatron's schemas, line by line.

    * the passage schema (Tevatron v1, and v2's "legacy" one): ``query_id`` (or ``id``/``_id``),
      ``query``, ``positive_passages`` and ``negative_passages``, lists of passage objects
      (``docid``, ``title``, ``text``);
    * the v2 id schema: ``query_id``, ``query_text``, ``positive_document_ids`` and
      ``negative_document_ids``, ids into a separate ``corpus`` (``docid``, ``text``), as
      ``tevatron.retriever.dataset.TrainDataset`` reads with ``--corpus_name``/``--corpus_path``.

    Tevatron trains on each line as its own group; here a query is one group, so a query id
    on two lines is refused (naming both) rather than one silently overwriting the other, as
    is one docid given two different texts.

    Raises:
        InputError: invalid JSON, missing fields, empty text, a group without positives, a v2
            line without a corpus or with an id the corpus lacks, media queries, duplicates, or
            no group at all.
    """
    groups: list[TrainGroup] = []
    seen_queries: dict[str, int] = {}
    seen_passages: dict[str, tuple[Passage, int]] = {}
    for lineno, record in _json_objects(path):
        query_id = _json_id(path, lineno, record, ("query_id", "id", "_id"), "query id")
        if query_id in seen_queries:
            raise at(
                path,
                lineno,
                f"duplicate query id {query_id!r} (also on line {seen_queries[query_id]}); a query is one training "
                "group here: merge the two lines or give them distinct ids",
            )
        seen_queries[query_id] = lineno
        if "positive_passages" not in record and "positive_document_ids" in record:
            group = _tevatron_v2_group(path, lineno, record, query_id, corpus)
        else:
            query = _require_text(path, lineno, "query", _json_str(path, lineno, record, ("query",), None))
            positives = _passage_list(path, lineno, record, "positive_passages")
            negatives = _passage_list(path, lineno, record, "negative_passages")
            group = TrainGroup(query_id, query, positives, negatives)
            _check_same_passages(path, lineno, group.positives + group.negatives, seen_passages)
        if not group.positives:
            raise at(path, lineno, f"query {query_id!r} has no positive passages; a training group needs at least one")
        groups.append(group)
    if not groups:
        raise _none_found(path, "training groups", "one JSON object a line: a query and its positive passages")
    return groups


_TEVATRON_MEDIA = ("query_image", "query_video", "query_audio")


def _tevatron_v2_group(
    path: PathLike, lineno: int, record: Mapping[str, Any], query_id: str, corpus: Mapping[str, Passage] | None
) -> TrainGroup:
    """One line of Tevatron v2's id schema, its document ids looked up in ``corpus``."""
    if corpus is None:
        raise at(
            path,
            lineno,
            "uses Tevatron v2's positive_document_ids, which point into a corpus: pass the corpus JSONL too "
            "(--corpus, docid/text per line)",
        )
    media = [k for k in _TEVATRON_MEDIA if record.get(k) is not None]
    if media:
        raise at(path, lineno, f"query {query_id!r} has {media[0]}; only text queries can be trained on here")
    query = _require_text(path, lineno, "query_text", _json_str(path, lineno, record, ("query_text",), None))
    positives = _document_ids(path, lineno, record, "positive_document_ids", corpus)
    negatives = _document_ids(path, lineno, record, "negative_document_ids", corpus)
    return TrainGroup(query_id, query, positives, negatives)


def _document_ids(
    path: PathLike, lineno: int, record: Mapping[str, Any], key: str, corpus: Mapping[str, Passage]
) -> list[Passage]:
    ids = record.get(key, [])
    if not isinstance(ids, list):
        raise at(path, lineno, f"field {key!r} is {type(ids).__name__}; expected a list of document ids")
    passages = []
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise at(path, lineno, f"an entry of {key!r} is {value!r}; expected a document id (string or integer)")
        docid = _check_id(path, lineno, "document id", str(value).strip())
        if docid not in corpus:
            raise at(path, lineno, f"document id {docid!r} of {key!r} is not in the corpus given with it")
        passages.append(corpus[docid])
    return passages


def _check_same_passages(
    path: PathLike, lineno: int, passages: list[Passage], seen: dict[str, tuple[Passage, int]]
) -> None:
    """One docid, one text: a passage repeated across lines must not change (training keeps one copy)."""
    for passage in passages:
        first = seen.setdefault(passage.docid, (passage, lineno))
        if first[0] != passage:
            raise at(
                path,
                lineno,
                f"passage {passage.docid!r} differs from its copy on line {first[1]} (title or text); one docid "
                "must name one passage",
            )


def _passage_list(path: PathLike, lineno: int, record: Mapping[str, Any], key: str) -> list[Passage]:
    items = record.get(key, [])
    if not isinstance(items, list):
        raise at(path, lineno, f"field {key!r} is {type(items).__name__}; expected a list of passage objects")
    passages = []
    for item in items:
        if not isinstance(item, dict):
            raise at(
                path, lineno, f"an entry of {key!r} is {type(item).__name__}; expected an object with docid and text"
            )
        passages.append(_passage_from_record(path, lineno, item))
    return passages


def write_tevatron(groups: Iterable[TrainGroup], path: PathLike) -> None:
    """Write training groups as Tevatron JSONL (the format :func:`read_tevatron` reads)."""
    with atomic_write(path) as handle:
        for group in groups:
            record = {
                "query_id": group.query_id,
                "query": group.query,
                "positive_passages": [_passage_dict(p) for p in group.positives],
                "negative_passages": [_passage_dict(p) for p in group.negatives],
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- provenance


def fingerprint(path: PathLike) -> str:
    """Return the sha256 (hex) of the file's bytes as stored, to record data provenance."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise at(path, None, "no such file; check the path") from None
    except IsADirectoryError:
        raise at(path, None, "is a directory; expected a file") from None
    return digest.hexdigest()
