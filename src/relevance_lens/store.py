"""The results store: one tidy SQLite table every analysis appends to and every report reads.

One row is one number: ``(run, checkpoint, analysis, variant, layer, role, metric) -> value``,
with what the run was (model, rank, targets), how many queries it was measured on, a p-value
where a test was made, and the resolved settings as JSON.

Rerun policy (the study driver relies on it): a row's identity is the key above plus a hash
of its ``config_json`` (eval set, depth, sweep settings...). Appending a row whose identity is
already stored *replaces* it, so a rerun never duplicates, and :meth:`Store.has` answers "is
this analysis of this checkpoint, with these settings, already done?" so drivers can skip it.
Changing a setting (say ``depth``) makes new rows beside the old ones rather than overwriting
them.

Durability: each :meth:`Store.append` is one transaction in SQLite's WAL mode with
``synchronous=FULL``; a process killed mid-append (even SIGKILL) leaves either all of that
append's rows or none. Connections are opened per call, so nothing is held between analyses;
WAL lets readers and one writer work at once, and a busy timeout lets two processes append
to one file. WAL needs the processes sharing a store on one host (not one file over NFS from
several machines: give each shard its own store and merge them, as ``study run --shard`` does).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from rich.console import Console

from relevance_lens.errors import InputError
from relevance_lens.faults import kill_point

COLUMNS = (
    "run",
    "model",
    "rank",
    "targets",
    "checkpoint",
    "analysis",
    "variant",
    "layer",
    "role",
    "metric",
    "value",
    "n_queries",
    "p_value",
    "config_json",
    "config_hash",
    "created",
)
KEY = ("run", "checkpoint", "analysis", "variant", "layer", "role", "metric", "config_hash")
REQUIRED = ("run", "analysis", "metric", "value")

# NULL layer/role/variant/checkpoint are "not applicable"; the unique index maps them to
# sentinels because SQLite treats NULLs as distinct in UNIQUE constraints.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    run TEXT NOT NULL,
    model TEXT,
    rank INTEGER,
    targets TEXT,
    checkpoint TEXT,
    analysis TEXT NOT NULL,
    variant TEXT,
    layer INTEGER,
    role TEXT,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    n_queries INTEGER,
    p_value REAL,
    config_json TEXT NOT NULL DEFAULT '{}',
    config_hash TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS results_key ON results (
    run, IFNULL(checkpoint, ''), analysis, IFNULL(variant, ''), IFNULL(layer, -1), IFNULL(role, ''), metric, config_hash
);
"""


def config_hash(config: Mapping[str, Any] | str | None) -> str:
    """A short stable hash of a settings dict (canonical JSON: sorted keys)."""
    text = config if isinstance(config, str) else canonical_json(config or {})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def canonical_json(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


@dataclass
class Store:
    """A results database at ``path`` (created on first use)."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._session() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(results)")}  # reading it finds corruption
            missing = [c for c in COLUMNS if c not in columns]
            if columns and missing:
                raise InputError(
                    f"results store {self.path}: its results table lacks {', '.join(missing)}; "
                    "not a relevance-lens results store: choose another --store path"
                )
            # WAL: readers (report, status) never block an append, nor an append them; the mode is
            # stored in the file, so setting it once here covers every later connection.
            conn.execute("PRAGMA journal_mode=WAL")
            with conn:
                conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30.0)
        except sqlite3.Error as exc:
            raise InputError(f"results store {self.path}: cannot open ({exc})") from None
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """A connection, closed after use; a corrupted file becomes a one-line error (a lock does not)."""
        try:
            conn = self._connect()
            try:
                yield conn
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, (sqlite3.OperationalError, sqlite3.IntegrityError)):
                raise  # busy, locked, full disk...: not the file's fault
            raise InputError(
                f"results store {self.path}: corrupted or not a relevance-lens results store ({exc}); restore it from "
                "a copy, or move it aside and rerun (done work is recomputed)"
            ) from None

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert rows in one transaction, replacing rows with the same identity; returns the count.

        ``rows`` may be a generator: it is consumed inside the transaction, so a crash while
        producing rows stores none of them.
        """
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        count = 0
        with self._session() as conn, conn:  # `with conn`: commit, or roll back on error
            for row in rows:
                record = _record(row, created)
                conn.execute(
                    f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                    [record[c] for c in COLUMNS],
                )
                count += 1
            kill_point("store.commit")
        return count

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        """All rows matching the given column values (``None`` matches NULL), oldest first."""
        clause, params = _where(where)
        with self._session() as conn:
            cursor = conn.execute(f"SELECT * FROM results{clause} ORDER BY rowid", params)
            return [dict(r) for r in cursor.fetchall()]

    def has(
        self,
        run: str,
        analysis: str,
        *,
        checkpoint: str | None = None,
        variant: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> bool:
        """Whether rows exist for this run and analysis (and checkpoint, variant, settings when given)."""
        where: dict[str, Any] = {"run": run, "analysis": analysis}
        if checkpoint is not None:
            where["checkpoint"] = checkpoint
        if variant is not None:
            where["variant"] = variant
        if config is not None:
            where["config_hash"] = config_hash(config)
        clause, params = _where(where)
        with self._session() as conn:
            return conn.execute(f"SELECT 1 FROM results{clause} LIMIT 1", params).fetchone() is not None


def normalize(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as the store keeps it: every column present, config as canonical JSON plus its hash."""
    return _record(row, datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _record(row: Mapping[str, Any], created: str) -> dict[str, Any]:
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise InputError(
            f"results row has unknown columns {sorted(unknown)}; expected a subset of {', '.join(COLUMNS)}"
        )
    missing = [c for c in REQUIRED if row.get(c) is None]
    if missing:
        raise InputError(f"results row {dict(row)} lacks {', '.join(missing)}")
    record = {c: row.get(c) for c in COLUMNS}
    config = row.get("config_json") or {}
    record["config_json"] = config if isinstance(config, str) else canonical_json(config)
    record["config_hash"] = config_hash(record["config_json"])
    record["value"] = float(record["value"])
    record["created"] = row.get("created") or created
    return record


def _where(where: Mapping[str, Any]) -> tuple[str, list[Any]]:
    unknown = set(where) - set(COLUMNS)
    if unknown:
        raise InputError(f"unknown result columns {sorted(unknown)}; expected some of {', '.join(COLUMNS)}")
    parts, params = [], []
    for column, value in where.items():
        if value is None:
            parts.append(f"{column} IS NULL")
        else:
            parts.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(parts) if parts else ""), params


def read_results(path: str | Path, who: str) -> list[dict[str, Any]]:
    """Every row of a results store, opened read-only, in insertion order.

    ``who`` prefixes the one-line error (``report``, ``study merge``) for a missing file or one
    that is not a results store.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{who}: {path}: no such results store; run relevance-lens study run (or analyze) first")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM results ORDER BY rowid")]
    except sqlite3.Error as exc:
        raise InputError(f"{who}: {path}: not a relevance-lens results store ({exc})") from None


def merge_stores(output: str | Path, inputs: list[str | Path], console: Console | None = None) -> int:
    """Copy every row of the input stores into ``output``; returns the rows now in it.

    The same row (same run, checkpoint, analysis, variant, layer, role, metric, settings) from
    two stores becomes one; if their values differ, the last store's wins and a warning says so.
    """
    if not inputs:
        raise InputError("study merge: name at least one store to merge")
    seen: dict[tuple, float] = {}
    conflicts = 0
    rows = []
    for path in inputs:
        found = read_results(path, "study merge")
        for row in found:
            key = tuple(
                row[k] for k in ("run", "checkpoint", "analysis", "variant", "layer", "role", "metric", "config_hash")
            )
            if key in seen and seen[key] != row["value"]:
                conflicts += 1
            seen[key] = row["value"]
        rows += found
    out = Store(output)
    out.append(rows)
    total = len(out.rows())
    if console is not None:
        console.print(
            f"merged {len(inputs)} store(s), {len(rows)} rows -> {total} rows in {output}"
            + (f"; [yellow]{conflicts} rows had different values in different stores[/]" if conflicts else ""),
            highlight=False,
        )
    return total
