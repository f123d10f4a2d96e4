"""Checkpoint manifests: a saved adapter folder lists every file's size and sha256.

``manifest.json`` is written last and atomically, so its presence marks a folder written to the
end, and checking it names the first file that was truncated, changed or lost since it was
saved. A folder without one is told apart by its ``reranker.json``
(:func:`relevance_lens.model.reranker.integrity`): saved by this version, it promises a manifest,
so the save was interrupted; saved before manifests existed, it promises nothing and is accepted
unverified (callers keep their older completeness checks for it).

Files that appear after the manifest (another rank's RNG state, notes a user drops in) are not
checked; a listed file that is missing or differs is corruption.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from relevance_lens.data.formats import atomic_write
from relevance_lens.errors import InputError

MANIFEST = "manifest.json"
FORMAT = "relevance-lens checkpoint manifest"
VERSION = 1


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listed_files(folder: Path) -> list[Path]:
    # Hidden files are atomic_write's temporaries (``.name.<hex>.tmp``) or editor droppings.
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def write_manifest(folder: str | Path) -> dict:
    """Hash every file under ``folder`` into ``folder/manifest.json`` (atomically); returns the record."""
    folder = Path(folder)
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_of(path)}
        for path in _listed_files(folder)
    }
    record = {"format": FORMAT, "version": VERSION, "files": files}
    with atomic_write(folder / MANIFEST) as fh:
        json.dump(record, fh, indent=2, sort_keys=True)
    return record


def discard_manifest(folder: str | Path) -> None:
    """Remove a folder's manifest before rewriting its files, so a stale one never vouches for new bytes."""
    (Path(folder) / MANIFEST).unlink(missing_ok=True)


def read_manifest(folder: str | Path) -> dict | None:
    """The parsed manifest of ``folder``; None when it has none. An unreadable one is an InputError."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
        if record.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {record.get('format')!r}")
        for entry in files.values():
            int(entry["size"]), str(entry["sha256"])
        return record
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: unreadable checkpoint manifest ({exc}); the folder is corrupted: delete it or save it again"
        ) from None


def manifest_problem(folder: str | Path) -> str | None:
    """One line naming the first listed file that is missing, truncated or changed; None if all match.

    A folder without a manifest has no problem here: whether it needs one is the caller's call
    (:func:`relevance_lens.model.reranker.integrity`).
    """
    folder = Path(folder)
    try:
        record = read_manifest(folder)
    except InputError as exc:
        return str(exc)
    if record is None:
        return None
    for name, entry in sorted(record["files"].items()):
        path = folder / name
        if not path.is_file():
            return f"{path} is missing though {MANIFEST} lists it; the folder is incomplete or was pruned"
        size = path.stat().st_size
        if size != int(entry["size"]):
            return f"{path}: {size} bytes where {MANIFEST} says {entry['size']}; the file is corrupted or truncated"
        if sha256_of(path) != entry["sha256"]:
            return f"{path}: sha256 differs from {MANIFEST}; the file is corrupted or was changed after saving"
    return None
