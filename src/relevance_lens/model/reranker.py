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
import string
import warnings
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
from relevance_lens.model.manifest import (
    BASE_SCHEME,
    MANIFEST,
    base_identity,
    base_mismatch,
    config_fingerprint,
    discard_manifest,
    manifest_problem,
    write_manifest,
)
from relevance_lens.model.roles import Architecture, architecture_of

HEAD_FILE = "score_head.safetensors"
CONFIG_FILE = "reranker.json"
#: The key of ``reranker.json`` that promises a manifest in the same folder (absent before manifests existed).
MANIFEST_KEY = "manifest"
#: The key of ``reranker.json`` recording the base model the adapter was trained on (absent in older folders).
BASE_KEY = "base"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Where PEFT saves a sequence-classification model's head (its ``modules_to_save``) and LoRA tensors.
_PEFT_ROOT = "base_model.model."
_SEQ_CLS_HEAD = _PEFT_ROOT + "score."
#: Tevatron's RankLLaMA input (``tevatron.reranker.dataset.format_pair`` with ``--query_prefix "query: "
#: --passage_prefix "document: "`` as in its RankLLaMA example; no EOS; ``--rerank_max_len 196``). Its folder
#: does not record the prefixes or length a run used, so these are assumed and said so.
TEVATRON_RANKLLAMA = dict(
    template="query:  {query} document:  {title} {text}", append_eos=False, max_length=196, tevatron_titles=True
)


class AdapterWarning(UserWarning):
    """An adapter loads, but may not score as it did when it was trained (unchecked base, other template)."""


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
    tevatron_titles: bool = field(
        default=False,
        metadata={"help": "Titles as Tevatron's format_pair writes them: '-' read as a space, then stripped."},
    )

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
        # Taken now, before LoRA is attached or the model sharded: what every saved adapter records.
        self.base_identity = base_identity(config.model, source.path if source else None, backbone)

    @property
    def _no_split_modules(self) -> list[str]:
        """The backbone's decoder block classes (read through PEFT's wrappers).

        accelerate's FSDP ``TRANSFORMER_BASED_WRAP`` reads this from the model it wraps: without it
        the Reranker named no block class, and every block stayed in one FSDP unit, gathered whole.
        """
        for module in self.backbone.modules():
            names = getattr(module, "_no_split_modules", None)
            if names:
                return list(names)
        return []

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
        allow_other_base: bool = False,
    ) -> Reranker:
        """Load a base model by name and, optionally, a saved adapter + head folder.

        The adapter folder is ours (``relevance-lens train``) or Tevatron's (a PEFT adapter of a
        sequence-classification model, its ``score`` head saved with it). An adapter trained on
        another base than ``model`` is refused unless ``allow_other_base``.
        """
        saved = read_saved_config(adapter) if adapter is not None else None
        if saved is None and adapter is not None and is_tevatron_adapter(adapter):
            saved = tevatron_settings(adapter, model)
        if config is None:
            config = saved if saved is not None else RerankerConfig(model=model or "smollm2-135m")
        if model is not None:
            config.model = model
        source = resolve_model(config.model)
        backbone, tokenizer = load_backbone(source, dtype=dtype, trust_remote_code=trust_remote_code)
        reranker = cls(backbone, tokenizer, config, source)
        if adapter is not None:
            reranker.load_adapter(adapter, allow_other_base=allow_other_base)
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
        return self.format_spans(query, passage)[0]

    def format_spans(self, query: str, passage: Passage) -> tuple[str, tuple[int, int]]:
        """The text :meth:`format` gives and the character span ``[start, end)`` of its passage fields
        (from the first ``{title}`` or ``{text}`` to the end of the last; empty at the end of the query
        part when the template has neither)."""
        title = passage.title.replace("-", " ").strip() if self.settings.tevatron_titles else passage.title
        # Fields lose trailing whitespace, as the whole text does: a field in the middle of the
        # template ends as it would at the end (the exported pair tokenizer can only strip each part).
        values = {"query": query.rstrip(), "title": title.rstrip(), "text": passage.text.rstrip()}
        formatter = string.Formatter()
        text, start, end = "", None, None
        for literal, name, spec, conversion in formatter.parse(self.settings.template):
            text += literal
            if name is None:
                continue
            text_start = len(text)
            value = formatter.get_field(name, (), values)[0]  # as str.format reads it ({query[0]} too)
            text += formatter.format_field(formatter.convert_field(value, conversion), spec or "")
            if not name.startswith("query"):
                start = text_start if start is None else start
                end = len(text)
        if start is None:
            start = end = len(text)
        lead = len(text) - len(text.lstrip())
        stripped = text.strip()
        clamp = lambda i: min(max(i - lead, 0), len(stripped))  # noqa: E731
        return stripped, (clamp(start), clamp(end))

    def encode(self, items: Sequence[tuple[str, Passage]]) -> list[list[int]]:
        """Token ids of (query, passage) pairs: the template filled, BOS as the tokenizer adds it,
        cut to ``max_length`` inside the passage (:meth:`tokenize`), EOS appended."""
        formatted = [self.format_spans(query, passage) for query, passage in items]
        return self.tokenize([text for text, _ in formatted], spans=[span for _, span in formatted])

    def tokenize(self, texts: Sequence[str], spans: Sequence[tuple[int, int]] | None = None) -> list[list[int]]:
        """Token ids per text: BOS as the tokenizer adds it, truncated, EOS appended.

        Without ``spans`` a long text loses its end. With each text's passage span (characters,
        as :meth:`format_spans` gives it), a long text loses the passage's last tokens instead, so
        a template with text after the passage (the query last, a question to the model) keeps it:
        the tokens before the passage, its first tokens and every token after it. Where those
        around it alone overflow, the text's end is cut as without spans. A template whose passage
        comes last cuts the same tokens either way.
        """
        room = self._room()
        if spans is None:
            ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=room)["input_ids"]
        else:
            ids = [self._cut_passage(text, span, room)[0] for text, span in zip(texts, spans, strict=True)]
        return self._with_eos(ids)

    def token_spans(self, query: str, passage: Passage) -> tuple[list[int], int, int]:
        """Token ids as :meth:`encode` gives them, and the token range ``[start, end)`` of the passage
        fields: before it the template's prefix and the query (BOS included) where the query comes
        first, after it the template's suffix (the query where it comes last) and EOS. A token that
        straddles the boundary (a space joined to the passage's first word) counts as passage. Needs a
        fast tokenizer's offsets."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise InputError(
                f"model {self.settings.model}: its tokenizer gives no token offsets (not a fast tokenizer); "
                "token positions need one"
            )
        text, span = self.format_spans(query, passage)
        ids, start, end = self._cut_passage(text, span, self._room())
        return self._with_eos([ids])[0], start, end

    def _room(self) -> int:
        return self.settings.max_length - (1 if self.settings.append_eos else 0)

    def _cut_passage(self, text: str, span: tuple[int, int], room: int) -> tuple[list[int], int, int]:
        """``text``'s ids, at most ``room``, the cut inside the passage span (see :meth:`tokenize`),
        with the passage's token range in them."""
        if not getattr(self.tokenizer, "is_fast", False):
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            if len(ids) > room and span[1] < len(text.rstrip()):
                raise InputError(
                    f"model {self.settings.model}: template {self.settings.template!r} has text after the passage "
                    "and its tokenizer gives no offsets (not a fast tokenizer) to cut the passage by; put the "
                    "passage last or use a fast tokenizer"
                )
            return ids[:room], 0, 0  # no offsets: no passage range (token_spans refuses this tokenizer)
        enc = self.tokenizer(
            text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True
        )
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        first, last = span
        # A token that straddles the span's start (a space joined to the passage's first word) is passage.
        inside = [
            i
            for i, ((s, e), special) in enumerate(zip(offsets, enc["special_tokens_mask"]))
            if not special and e > first and s < last
        ]
        if not inside:
            start = next((i for i, (_, e) in enumerate(offsets) if e > first), len(ids))
            return ids[:room], min(start, room), min(start, room)
        start, end = inside[0], inside[-1] + 1
        if len(ids) <= room:
            return ids, start, end
        keep = room - start - (len(ids) - end)
        if keep < 0:  # the text around the passage alone overflows: the end cut
            return ids[:room], min(start, room), min(end, room)
        return ids[: start + keep] + ids[end:], start, start + keep

    def _with_eos(self, ids: list[list[int]]) -> list[list[int]]:
        if not self.settings.append_eos:
            return ids
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise InputError(f"model {self.settings.model}: tokenizer has no EOS token; set append_eos false")
        return [seq + [eos] for seq in ids]

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
    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, causal_only: bool = False, **kwargs
    ):
        """Run the backbone; position ids follow the mask so padding side does not matter.

        ``causal_only``: when the batch is right-padded, give the backbone no padding mask, only
        its causal one. Every real token precedes the pads of its row, so causal attention alone
        keeps it from seeing them: the real tokens' states (and the pooled score) are the masked
        forward's, while attention takes its mask-free causal kernel (SDPA ``is_causal``: no mask
        tensor, masked blocks skipped, one compiled graph for every batch). The pads' own states
        are then not meaningful, so only callers that read real positions alone may ask for it.
        A left-padded batch keeps its mask.
        """
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        mask = None if causal_only and right_padded(attention_mask) else attention_mask
        return self.backbone(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **kwargs
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, causal_only: bool = False
    ) -> torch.Tensor:
        """Relevance scores of a batch, one per row (``causal_only``: see :meth:`hidden_states`)."""
        out = self.hidden_states(input_ids, attention_mask, causal_only=causal_only)
        pooled = pool_last(out.last_hidden_state, attention_mask)
        return self.score(pooled.to(self.score.weight.dtype)).squeeze(-1)

    @torch.inference_mode()
    def score_pairs(self, query: str, passages: Sequence[Passage]) -> list[float]:
        """Scores for one query's passages (small inputs; use :mod:`score` for whole runs)."""
        batch = self.collate(self.encode([(query, p) for p in passages]))
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self(**batch).float().tolist()

    # ---------------------------------------------------------------- save / load
    def save(
        self,
        directory: str | Path,
        extra: dict | None = None,
        *,
        manifest: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write a PEFT adapter folder (when LoRA is attached) + the score head + config, then its manifest.

        ``reranker.json`` comes first and promises a ``manifest.json``, which comes last (see
        :mod:`relevance_lens.model.manifest`), so a save cut short anywhere is seen as incomplete.
        ``manifest=False`` leaves the manifest to a caller that adds files of its own (the
        Trainer's checkpoints: optimizer, RNG and trainer state). ``state_dict``: this module's
        full, unsharded state dict (its own keys) to write instead of its parameters, which under
        FSDP hold one process's shard each (the Trainer gathers it on every process).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        discard_manifest(directory)  # rewriting a folder: its old manifest must not vouch for the new bytes
        record = {
            "reranker": asdict(self.settings),
            **(extra or {}),
            BASE_KEY: self.base_identity,
            MANIFEST_KEY: MANIFEST,
        }
        with atomic_write(directory / CONFIG_FILE) as fh:
            json.dump(record, fh, indent=2, sort_keys=True)
        if hasattr(self.backbone, "peft_config"):
            self.backbone.save_pretrained(directory, state_dict=_submodule(state_dict, "backbone"))
            follow_umask(*directory.rglob("*.safetensors"))  # PEFT writes through safetensors: 0600
        head = self.score.state_dict() if state_dict is None else _submodule(state_dict, "score")
        head = {k: v.detach().to("cpu").contiguous() for k, v in head.items()}
        with atomic_write(directory / HEAD_FILE, "wb") as fh:
            fh.write(safetensors_bytes(head, metadata={"format": "pt", "role": "relevance score head"}))
        if manifest:
            write_manifest(directory)

    def load_adapter(self, directory: str | Path, *, allow_other_base: bool = False) -> None:
        """Attach a saved LoRA adapter (if any) and the trained head. Refuses a missing head.

        Refuses an adapter trained on another base model (by the fingerprints its folder
        records) unless ``allow_other_base``; warns when the folder records none. A Tevatron
        folder (:func:`is_tevatron_adapter`) is read with its own head and a warning naming
        the input format assumed.
        """
        directory = Path(directory)
        head_path = directory / HEAD_FILE
        if not directory.is_dir():
            raise InputError(f"--adapter {directory}: no such folder")
        if is_tevatron_adapter(directory):
            self._load_tevatron(directory, allow_other_base)
            return
        if integrity(directory) == "incomplete":
            raise InputError(
                f"--adapter {directory}: {MANIFEST} is missing though {CONFIG_FILE} promises one; the save was "
                "interrupted. Use an intact checkpoint or save the adapter again"
            )
        # A folder saved before manifests existed ("legacy") loads unverified; the checks below still hold it.
        _refuse_pickle(directory)
        if not head_path.is_file():
            raise InputError(
                f"--adapter {directory}: {HEAD_FILE} is missing; a reranker without its trained head "
                "would score with a random head. Point --adapter at a folder written by relevance-lens train."
            )
        self._check_base(directory, allow_other_base)
        try:
            head = load_file(head_path)
        except Exception as exc:  # safetensors raises several types for truncated files
            raise InputError(
                f"{head_path}: unreadable score head ({exc}); the checkpoint is corrupted or truncated"
            ) from None
        self._set_head(head, head_path)
        if (directory / ADAPTER_CONFIG).is_file():
            from peft import PeftModel

            try:
                self.backbone = PeftModel.from_pretrained(self.backbone, directory, is_trainable=False)
            except Exception as exc:
                raise InputError(f"{directory}: could not load the LoRA adapter ({exc})") from None

    def _set_head(self, head: dict[str, torch.Tensor], path: Path) -> None:
        expected = {k: tuple(v.shape) for k, v in self.score.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in head.items()}
        if expected != got:
            raise InputError(f"{path}: head tensors {got} do not fit this model, expected {expected}")
        self.score.load_state_dict({k: v.to(self.score.weight.dtype) for k, v in head.items()})

    def _check_base(self, directory: Path, allow_other_base: bool) -> None:
        """Refuse (or, allowed, warn about) an adapter whose recorded base is not the loaded model."""
        saved = _saved_base(directory)
        if saved is None or saved.get("scheme") != BASE_SCHEME:
            why = (
                "records no base model identity (saved before bases were recorded)"
                if saved is None
                else (f"records its base with another fingerprint scheme ({saved.get('scheme')!r})")
            )
            warnings.warn(
                f"--adapter {directory}: {CONFIG_FILE} {why}; not checked that it was trained on "
                f"{self.settings.model!r}",
                AdapterWarning,
                stacklevel=4,
            )
            return
        problem = base_mismatch(saved, self.base_identity)
        if problem is not None:
            _refuse_or_warn(directory, problem, allow_other_base)

    # ---------------------------------------------------------------- Tevatron's format
    def _load_tevatron(self, directory: Path, allow_other_base: bool) -> None:
        """A Tevatron/RankLLaMA adapter: PEFT LoRA of ``*ForSequenceClassification`` + its ``score`` head.

        The LoRA tensors sit under the task model's decoder (``base_model.model.model.layers...``
        for LLaMA: the decoder's ``base_model_prefix``); they are renamed onto our decoder, which
        is the same module, and the head comes from the saved ``score`` module.
        """
        from peft import LoraConfig, PeftModel
        from peft.utils import set_peft_model_state_dict

        record = _adapter_json(directory)
        self._check_tevatron_base(directory, record, allow_other_base)
        _refuse_pickle(directory)
        weights = directory / ADAPTER_WEIGHTS
        tensors = _load_tensors(weights)
        head = {k.removeprefix(_SEQ_CLS_HEAD): v for k, v in tensors.items() if k.startswith(_SEQ_CLS_HEAD)}
        if not head:
            raise InputError(
                f"{weights}: no saved 'score' head among {len(tensors)} tensors; a Tevatron SEQ_CLS adapter keeps it "
                "through modules_to_save. Without it the reranker would score with a random head"
            )
        self._set_head(head, weights)
        decoder = _PEFT_ROOT + type(self.base_model).base_model_prefix + "."
        lora = {}
        for key, value in tensors.items():
            if key.startswith(_SEQ_CLS_HEAD):
                continue
            if not key.startswith(decoder):
                raise InputError(
                    f"{weights}: tensor {key!r} is not under {decoder!r}; expected a sequence-classification "
                    f"adapter of a {type(self.base_model).__name__}"
                )
            lora[_PEFT_ROOT + key[len(decoder) :]] = value
        known = set(LoraConfig.__dataclass_fields__)
        settings = {k: v for k, v in record.items() if k in known and k not in ("task_type", "modules_to_save")}
        settings["inference_mode"] = True
        try:
            config = LoraConfig(**settings)
            model = PeftModel(self.backbone, config)
            result = set_peft_model_state_dict(model, lora)
        except Exception as exc:  # PEFT and torch raise many types (bad settings, shapes that do not fit)
            raise InputError(f"{directory}: could not load the Tevatron LoRA adapter ({exc})") from None
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise InputError(
                f"{weights}: the adapter does not fit this model (missing {missing[:2]}, unexpected "
                f"{list(result.unexpected_keys)[:2]})"
            )
        self.backbone = model.eval()
        warnings.warn(tevatron_warning(directory, self.settings), AdapterWarning, stacklevel=4)

    def _check_tevatron_base(self, directory: Path, record: dict, allow_other_base: bool) -> None:
        """Tevatron records only the base's name: equal names pass; else compare configs where at hand."""
        named = record.get("base_model_name_or_path")
        loaded = self.settings.model
        if isinstance(named, str) and named and (named == loaded or _same_path(named, loaded)):
            return
        config = _local_config(named)
        if config is not None and config_fingerprint(config) != self.base_identity["config_sha256"]:
            problem = f"its adapter_config.json names base {named!r}, whose config differs from {loaded!r}'s"
            _refuse_or_warn(directory, problem, allow_other_base)
            return
        checked = "same config; its weights cannot be checked" if config is not None else "not checked"
        warnings.warn(
            f"--adapter {directory}: trained on {named!r} (adapter_config.json), loaded on {loaded!r}: {checked} "
            "(Tevatron folders record no fingerprint)",
            AdapterWarning,
            stacklevel=5,
        )


def is_tevatron_adapter(directory: str | Path) -> bool:
    """A Tevatron-format folder: a PEFT adapter whose task type is SEQ_CLS, and not one of ours.

    That is how Tevatron saves its LoRA rerankers (RankLLaMA): ``LoraConfig(task_type=SEQ_CLS)``
    on ``AutoModelForSequenceClassification``, so PEFT keeps the ``score`` head among the
    adapter's tensors (``modules_to_save``).
    """
    directory = Path(directory)
    if (directory / CONFIG_FILE).exists():
        return False
    try:
        record = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # absent or unreadable: not this format (the loader names it)
        return False
    return isinstance(record, dict) and record.get("task_type") == "SEQ_CLS"


def tevatron_settings(directory: str | Path, model: str | None = None) -> RerankerConfig:
    """The settings a Tevatron adapter is scored with: its base (or ``model``) and RankLLaMA's input."""
    directory = Path(directory)
    named = _adapter_json(directory).get("base_model_name_or_path")
    base = model or named
    if not isinstance(base, str) or not base:
        raise InputError(
            f"{directory / ADAPTER_CONFIG}: base_model_name_or_path is {named!r}; pass --model, the base the "
            "adapter was trained on"
        )
    with_bias = _SEQ_CLS_HEAD + "bias" in _tensor_names(directory / ADAPTER_WEIGHTS)
    return RerankerConfig(model=base, head_bias=with_bias, **TEVATRON_RANKLLAMA)


def tevatron_warning(directory: Path, settings: RerankerConfig) -> str:
    """One line saying how a Tevatron adapter is scored and how that differs from our own adapters."""
    ours = RerankerConfig()
    return (
        f"--adapter {directory}: a Tevatron-format adapter (PEFT SEQ_CLS, head from its saved 'score' module), "
        f"scored as Tevatron's RankLLaMA recipe: input {settings.template!r} (titles with '-' as spaces), "
        f"{'EOS appended' if settings.append_eos else 'no EOS'}, at most {settings.max_length} tokens, the last "
        f"real token's state pooled; our own adapters use {ours.template!r} with EOS appended. Its folder does "
        "not record the prefixes or length it was trained with: if they were not RankLLaMA's, its scores are off"
    )


def _adapter_json(directory: Path) -> dict:
    path = directory / ADAPTER_CONFIG
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: unreadable adapter config ({exc})") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(record).__name__}")
    return record


def _submodule(state_dict: dict[str, torch.Tensor] | None, name: str) -> dict[str, torch.Tensor] | None:
    """The entries of submodule ``name`` in a module's state dict, keyed as that submodule's own."""
    if state_dict is None:
        return None
    return {k[len(name) + 1 :]: v for k, v in state_dict.items() if k.startswith(name + ".")}


def _refuse_pickle(directory: Path) -> None:
    if not (directory / ADAPTER_WEIGHTS).is_file() and any(
        (directory / f).exists() for f in (ADAPTER_CONFIG, "adapter_model.bin")
    ):
        raise InputError(
            f"--adapter {directory}: {ADAPTER_WEIGHTS} is missing; a pickled adapter_model.bin is never "
            "loaded (unpickling can run code): re-save the adapter with safe_serialization=True"
        )


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises several types for truncated files
        raise InputError(f"{path}: unreadable adapter weights ({exc}); the file is corrupted or truncated") from None


def _tensor_names(path: Path) -> set[str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as fh:
            return set(fh.keys())
    except Exception:  # missing or corrupted: the loader names it
        return set()


def _saved_base(directory: Path) -> dict | None:
    """The base identity ``reranker.json`` records; None when it records none (or is unreadable: load names it)."""
    try:
        record = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    base = record.get(BASE_KEY) if isinstance(record, dict) else None
    return base if isinstance(base, dict) else None


def _refuse_or_warn(directory: Path, problem: str, allow_other_base: bool) -> None:
    if not allow_other_base:
        raise InputError(
            f"--adapter {directory}: {problem}. Load it on its own base (omit --model), or pass --allow-other-base "
            "to score it on this one anyway"
        )
    warnings.warn(f"--adapter {directory}: {problem}; loaded anyway (--allow-other-base)", AdapterWarning, stacklevel=5)


def _same_path(first: str, second: str) -> bool:
    try:
        return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def _local_config(name: object):
    """The transformers config of a local model folder ``name``; None for anything else (never downloads)."""
    if not isinstance(name, str) or not name or not (Path(name).expanduser() / "config.json").is_file():
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(Path(name).expanduser())
    except (OSError, ValueError):
        return None


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


def right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row of ``attention_mask`` is its real tokens first, then only pads."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


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
