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


# ---------------------------------------------------------------- base identity

#: How the base fingerprint is computed; a record with another scheme is not compared.
BASE_SCHEME = "config-sha256 + weights-sha256(names, shapes, 1024 evenly spaced values per tensor as bf16) v1"
_SAMPLES = 1024
#: Config keys that say how a model was loaded or run, not what it is (dtype, attention kernel, caching).
_LOAD_TIME_KEYS = frozenset(
    {
        "_name_or_path",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "attn_implementation",
        "architectures",
        "dtype",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "pad_token_id",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)


def config_fingerprint(config) -> str:
    """sha256 of a transformers config's JSON, without the keys that only say how it was loaded."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _LOAD_TIME_KEYS}
        return value

    text = json.dumps(strip(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_fingerprint(model) -> str | None:
    """sha256 over every base parameter's name, shape and 1024 evenly spaced values rounded to bf16.

    Cheap for 7B models (a few hundred small gathers, no pass over the weights) and the same
    whichever dtype the model was loaded in (rounding to bf16 is exact for bf16 weights and
    deterministic for fp32 ones), while any fine-tune or another model of the same shape moves
    the sampled values. LoRA layers PEFT has wrapped around the base are skipped (names as in the
    plain model). None when weights are not materialised here (meta device, sharded away).
    """
    import torch

    digest = hashlib.sha256()
    for name, param in sorted(_base_parameters(model)):
        if param.is_meta or param.numel() == 0:
            return None
        flat = param.detach().reshape(-1)
        count = min(_SAMPLES, flat.numel())
        # Integer spacing: a float32 linspace rounds past the last index above 2**24 elements.
        picks = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)
        values = flat[picks].to(torch.bfloat16).float().cpu().numpy()
        digest.update(f"{name}:{tuple(param.shape)}\n".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def _base_parameters(model) -> list:
    """(name, parameter) of the base model, PEFT's LoRA layers left out and its renaming undone."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    out = []
    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        out.append((name.replace(".base_layer.", "."), param))
    return out


def base_identity(name: str, path: str | None, model) -> dict:
    """What an adapter is trained on: the base's name and path, and fingerprints of its config and weights."""
    return {
        "model": name,
        "path": path,
        "scheme": BASE_SCHEME,
        "config_sha256": config_fingerprint(model.config),
        "weights_sha256": weights_fingerprint(model),
    }


def base_mismatch(saved: dict, current: dict) -> str | None:
    """Why an adapter saved on base ``saved`` does not belong on ``current``; None when it does.

    Names are not compared (one model has many: a short name, a path, a hub id); the
    fingerprints are. Weights are compared only when both sides could be fingerprinted.
    """
    if saved.get("scheme") != current.get("scheme"):
        return None  # another fingerprint scheme: nothing comparable (callers warn)
    was, now = _describe(saved), _describe(current)
    if saved.get("config_sha256") != current.get("config_sha256"):
        return f"it was trained on {was} but the base model loaded is {now}, whose config differs"
    old, new = saved.get("weights_sha256"), current.get("weights_sha256")
    if old and new and old != new:
        return (
            f"it was trained on {was} but the base model loaded is {now}: same config, different weights "
            "(another fine-tune or revision of the same architecture)"
        )
    return None


def _describe(identity: dict) -> str:
    path = identity.get("path")
    name = identity.get("model")
    shown = repr(name) if not path or path == name else f"{name!r} ({path})"
    config, weights = (str(identity.get(k))[:12] for k in ("config_sha256", "weights_sha256"))
    return f"{shown} [config {config}, weights {weights}]"
