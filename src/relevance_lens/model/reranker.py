"""The pointwise LLM reranker of the RankLLaMA recipe.

Input ``query: {query} document: {title} {text}`` (tokenizer's BOS, EOS appended), the final
hidden state of the last real token, a linear head -> one relevance score.

The scored position comes from the attention mask, never from ``pad_token_id``: tokenizers
without a pad token (LLaMA-3, SmolLM2) pad with EOS, and the appended EOS would then be
mistaken for padding. Position ids are derived from the mask too, so left and right padding
give the same scores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, Sequence

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from relevance_lens.data.formats import Passage, atomic_write, follow_umask
from relevance_lens.errors import InputError
from relevance_lens.model.backbone import ModelSource, load_backbone, resolve_model
from relevance_lens.model.manifest import MANIFEST, discard_manifest, manifest_problem, write_manifest
from relevance_lens.model.roles import Architecture, architecture_of

HEAD_FILE = "score_head.safetensors"
CONFIG_FILE = "reranker.json"
#: The key of ``reranker.json`` that promises a manifest in the same folder (absent before manifests existed).
MANIFEST_KEY = "manifest"


@dataclass
class RerankerConfig:
    """How text becomes a score. Saved with every adapter so scoring repeats training."""

    model: str = field(
        default="smollm2-135m", metadata={"help": "Base model: short name, GGUF path, folder or hub id."}
    )
    template: str = field(
        default="query: {query} document: {title} {text}",
        metadata={"help": "Input template; fields {query}, {title}, {text}."},
    )
    max_length: int = field(default=256, metadata={"help": "Tokens per query-passage pair, EOS included."})
    append_eos: bool = field(
        default=True, metadata={"help": "Append EOS (Tevatron: the scored position is stable only with it)."}
    )
    padding_side: Literal["right", "left"] = field(default="right", metadata={"help": "Padding side when batching."})
    head_bias: bool = field(default=False, metadata={"help": "Bias in the score head (RankLLaMA's has none)."})

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise InputError(f"max_length {self.max_length}: expected at least 8 tokens")
        if self.padding_side not in ("right", "left"):
            raise InputError(f"padding_side {self.padding_side!r}: expected 'right' or 'left'")
        try:
            self.template.format(query="q", title="t", text="x")
        except (ValueError, AttributeError, TypeError) as exc:  # "{", "{query.x}", "{query:z}"
            raise InputError(
                f"template {self.template!r} is not a format string ({exc}); escape braces as {{{{ }}}}"
            ) from None
        except (KeyError, IndexError) as exc:
            raise InputError(
                f"template {self.template!r} uses unknown field {exc}: allowed fields are {{query}}, "
                f"{{title}}, {{text}}"
            ) from None


class Reranker(nn.Module):
    """Backbone decoder (optionally LoRA-wrapped by PEFT) + linear score head."""

    def __init__(self, backbone: nn.Module, tokenizer, config: RerankerConfig, source: ModelSource | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        # `settings`, not `config`: HF tools read `model.config` expecting the backbone's.
        self.config = backbone.config
        self.settings = config
        self.source = source
        hidden = backbone.config.hidden_size
        self.score = nn.Linear(hidden, 1, bias=config.head_bias)
        # Deterministic init of the untrained head, independent of the global RNG state.
        gen = torch.Generator().manual_seed(0)
        std = float(getattr(backbone.config, "initializer_range", 0.02))
        with torch.no_grad():
            self.score.weight.copy_(torch.randn(self.score.weight.shape, generator=gen) * std)
            if self.score.bias is not None:
                self.score.bias.zero_()
        self.score.to(next(backbone.parameters()).dtype)
        self.pad_id = _pad_id(tokenizer)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        adapter: str | Path | None = None,
        *,
        config: RerankerConfig | None = None,
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
    ) -> Reranker:
        """Load a base model by name and, optionally, a saved adapter + head folder."""
        saved = read_saved_config(adapter) if adapter is not None else None
        if config is None:
            config = saved if saved is not None else RerankerConfig(model=model or "smollm2-135m")
        if model is not None:
            config.model = model
        source = resolve_model(config.model)
        backbone, tokenizer = load_backbone(source, dtype=dtype, trust_remote_code=trust_remote_code)
        reranker = cls(backbone, tokenizer, config, source)
        if adapter is not None:
            reranker.load_adapter(adapter)
        return reranker

    @property
    def architecture(self) -> Architecture:
        return architecture_of(self.base_config)

    @property
    def base_config(self):
        return self.base_model.config

    @property
    def base_model(self) -> nn.Module:
        """The plain transformers decoder, under any PEFT wrapper."""
        model = self.backbone
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        return model

    @property
    def device(self) -> torch.device:
        return self.score.weight.device

    # ---------------------------------------------------------------- text -> tensors
    def format(self, query: str, passage: Passage) -> str:
        return self.settings.template.format(query=query, title=passage.title, text=passage.text).strip()

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text: BOS as the tokenizer adds it, truncated, EOS appended."""
        room = self.settings.max_length - (1 if self.settings.append_eos else 0)
        enc = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=room)
        ids = enc["input_ids"]
        if self.settings.append_eos:
            eos = self.tokenizer.eos_token_id
            if eos is None:
                raise InputError(f"model {self.settings.model}: tokenizer has no EOS token; set append_eos false")
            ids = [seq + [eos] for seq in ids]
        return ids

    def collate(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad to the longest sequence on the configured side."""
        width = max(len(seq) for seq in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            if self.settings.padding_side == "right":
                input_ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            else:
                input_ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    # ---------------------------------------------------------------- forward
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
        """Run the backbone; position ids follow the mask so padding side does not matter."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.hidden_states(input_ids, attention_mask)
        pooled = pool_last(out.last_hidden_state, attention_mask)
        return self.score(pooled.to(self.score.weight.dtype)).squeeze(-1)

    @torch.inference_mode()
    def score_pairs(self, query: str, passages: Sequence[Passage]) -> list[float]:
        """Scores for one query's passages (small inputs; use :mod:`score` for whole runs)."""
        batch = self.collate(self.tokenize([self.format(query, p) for p in passages]))
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self(**batch).float().tolist()

    # ---------------------------------------------------------------- save / load
    def save(self, directory: str | Path, extra: dict | None = None, *, manifest: bool = True) -> None:
        """Write a PEFT adapter folder (when LoRA is attached) + the score head + config, then its manifest.

        ``reranker.json`` comes first and promises a ``manifest.json``, which comes last (see
        :mod:`relevance_lens.model.manifest`), so a save cut short anywhere is seen as incomplete.
        ``manifest=False`` leaves the manifest to a caller that adds files of its own (the
        Trainer's checkpoints: optimizer, RNG and trainer state).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        discard_manifest(directory)  # rewriting a folder: its old manifest must not vouch for the new bytes
        record = {"reranker": asdict(self.settings), **(extra or {}), MANIFEST_KEY: MANIFEST}
        with atomic_write(directory / CONFIG_FILE) as fh:
            json.dump(record, fh, indent=2, sort_keys=True)
        if hasattr(self.backbone, "peft_config"):
            self.backbone.save_pretrained(directory)
            follow_umask(*directory.rglob("*.safetensors"))  # PEFT writes through safetensors: 0600
        head = {k: v.detach().to("cpu").contiguous() for k, v in self.score.state_dict().items()}
        with atomic_write(directory / HEAD_FILE, "wb") as fh:
            fh.write(safetensors_bytes(head, metadata={"format": "pt", "role": "relevance score head"}))
        if manifest:
            write_manifest(directory)

    def load_adapter(self, directory: str | Path) -> None:
        """Attach a saved LoRA adapter (if any) and the trained head. Refuses a missing head."""
        directory = Path(directory)
        head_path = directory / HEAD_FILE
        if not directory.is_dir():
            raise InputError(f"--adapter {directory}: no such folder")
        if integrity(directory) == "incomplete":
            raise InputError(
                f"--adapter {directory}: {MANIFEST} is missing though {CONFIG_FILE} promises one; the save was "
                "interrupted. Use an intact checkpoint or save the adapter again"
            )
        # A folder saved before manifests existed ("legacy") loads unverified; the checks below still hold it.
        if not (directory / "adapter_model.safetensors").is_file() and any(
            (directory / f).exists() for f in ("adapter_config.json", "adapter_model.bin")
        ):
            raise InputError(
                f"--adapter {directory}: adapter_model.safetensors is missing; a pickled adapter_model.bin is never "
                "loaded (unpickling can run code): re-save the adapter with safe_serialization=True"
            )
        if not head_path.is_file():
            raise InputError(
                f"--adapter {directory}: {HEAD_FILE} is missing; a reranker without its trained head "
                "would score with a random head. Point --adapter at a folder written by relevance-lens train."
            )
        try:
            head = load_file(head_path)
        except Exception as exc:  # safetensors raises several types for truncated files
            raise InputError(
                f"{head_path}: unreadable score head ({exc}); the checkpoint is corrupted or truncated"
            ) from None
        expected = {k: tuple(v.shape) for k, v in self.score.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in head.items()}
        if expected != got:
            raise InputError(f"{head_path}: head tensors {got} do not fit this model, expected {expected}")
        self.score.load_state_dict({k: v.to(self.score.weight.dtype) for k, v in head.items()})
        if (directory / "adapter_config.json").is_file():
            from peft import PeftModel

            try:
                self.backbone = PeftModel.from_pretrained(self.backbone, directory, is_trainable=False)
            except Exception as exc:
                raise InputError(f"{directory}: could not load the LoRA adapter ({exc})") from None


def integrity(directory: str | Path) -> str:
    """How far a saved adapter folder can be trusted, by its manifest.

    ``verified``: every file its manifest lists matches it. ``legacy``: saved before manifests
    existed, so nothing to verify (callers keep their older file checks). ``incomplete``: its
    ``reranker.json`` promises a manifest that never came, so the save was interrupted. A listed
    file that is missing, truncated or changed raises an :class:`InputError` naming it.
    """
    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        problem = manifest_problem(directory)
        if problem:
            raise InputError(problem)
        return "verified"
    return "incomplete" if _promises_manifest(directory) else "legacy"


def _promises_manifest(directory: Path) -> bool:
    try:
        return bool(json.loads((directory / CONFIG_FILE).read_text()).get(MANIFEST_KEY))
    except (OSError, ValueError, AttributeError):  # no config (legacy) or an unreadable one (load names it)
        return False


def read_saved_config(directory: str | Path) -> RerankerConfig | None:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return RerankerConfig(**_typed(record["reranker"]))
    # ValueError: bad UTF-8 or JSON, or a value RerankerConfig refuses; RecursionError: absurd nesting
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InputError(f"{path}: unreadable reranker config ({exc})") from None


def _typed(settings: object) -> dict:
    """The saved settings, each of its field's type (JSON could hold anything)."""
    if not isinstance(settings, dict):
        raise TypeError(f"'reranker' is {type(settings).__name__}, expected an object")
    for f in fields(RerankerConfig):
        if f.name in settings and type(settings[f.name]) is not type(f.default):
            raise TypeError(f"{f.name} = {settings[f.name]!r}, expected {type(f.default).__name__}")
    return settings


def pool_last(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last position whose mask is 1 (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    last = (attention_mask * positions).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _pad_id(tokenizer) -> int:
    # The pad id only fills masked positions; any valid id will do when there is no pad token.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0
