"""The peers, set up to compute exactly what relevance-lens computes.

* :func:`seqcls_folder` writes the base model as ``*ForSequenceClassification`` with our trained
  head as its ``score`` layer, a pad token distinct from EOS (HF's sequence-classification
  models pool the last token that is not ``pad_token_id``; with pad = EOS, the EOS we append
  would be taken for padding) and the adapter with its keys renamed for that model.
* :func:`pair_tokenizer` gives the peers a tokenizer whose pair template reproduces our token
  ids: ``query: {query}`` and `` document: {title} {text}`` as a pair, leading special tokens as
  our tokenizer adds them, EOS appended (by the template for CrossEncoder, by hand for the
  Tevatron loop, as Tevatron's collator does).
* :func:`check_same_inputs` compares the token ids of every pair across the three systems and
  raises when any differs, before anything is timed.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from common import BenchmarkError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from relevance_lens.model.reranker import HEAD_FILE, Reranker  # noqa: E402


def split_pair(settings, query: str, passage) -> tuple[str, str]:
    """(``query: {query}``, the rest of the formatted text), whose concatenation is our input text.

    ``settings``: a :class:`RerankerConfig` (its template), formatted as ``Reranker.format`` does.
    """
    full = settings.template.format(query=query, title=passage.title, text=passage.text).strip()
    head = settings.template.split("{query}")[0] + query
    if not full.startswith(head):
        raise BenchmarkError(f"template {settings.template!r} does not start with its query part")
    return head, full[len(head) :]


def pad_token_id(tokenizer) -> int:
    """A pad id that is not EOS, so HF's pad-based pooling finds our appended EOS."""
    for candidate in (tokenizer.unk_token_id, tokenizer.bos_token_id, *tokenizer.all_special_ids, 0):
        if candidate is not None and candidate != tokenizer.eos_token_id:
            return int(candidate)
    raise BenchmarkError("no token id distinct from EOS to pad with")


def pair_tokenizer(tokenizer, append_eos: bool):
    """A copy of ``tokenizer`` whose single/pair templates are ``[lead] $A [$B] [EOS]``."""
    from tokenizers import processors

    tok = copy.deepcopy(tokenizer)
    lead = tokenizer("", add_special_tokens=True)["input_ids"]
    specials = [(tokenizer.convert_ids_to_tokens(i), i) for i in lead]
    tail = [(tokenizer.eos_token, tokenizer.eos_token_id)] if append_eos else []
    names = [t for t, _ in specials]
    end = [t for t, _ in tail]
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=names + ["$A"] + end,
        pair=names + ["$A", "$B:1"] + end,
        special_tokens=list(dict(specials + tail).items()),
    )
    tok.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id(tokenizer))
    tok.padding_side = "right"
    return tok


def seqcls_folder(reranker: Reranker, adapter: Path | None, folder: Path) -> tuple[Path, Path | None]:
    """(model folder, adapter folder) for ``AutoModelForSequenceClassification`` + PEFT."""
    from transformers import AutoModelForSequenceClassification

    folder = Path(folder)
    model_dir, adapter_dir = folder / "seqcls", (folder / "seqcls-adapter" if adapter else None)
    if not (model_dir / "config.json").is_file():
        pad = pad_token_id(reranker.tokenizer)
        model = AutoModelForSequenceClassification.from_pretrained(
            reranker.source.path, num_labels=1, pad_token_id=pad, dtype=torch.float32
        )
        head = load_file(Path(adapter) / HEAD_FILE) if adapter else {"weight": reranker.score.weight.detach().float()}
        with torch.no_grad():
            model.score.weight.copy_(head["weight"])
        model.config.pad_token_id = pad
        model.save_pretrained(model_dir)
        tok = pair_tokenizer(reranker.tokenizer, append_eos=True)
        # With a chat template, sentence-transformers renders pairs as chat messages: not our input.
        tok.chat_template = None
        tok.save_pretrained(model_dir)
        (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        adapter_dir.mkdir(parents=True, exist_ok=True)
        config = json.loads((Path(adapter) / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(model_dir)
        (adapter_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
        weights = load_file(Path(adapter) / "adapter_model.safetensors")
        prefix = "base_model.model."
        # Our adapter wraps the decoder (keys ``layers.N...``); the seq-cls model nests it as ``model``.
        renamed = {prefix + "model." + k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in weights.items()}
        save_file(renamed, adapter_dir / "adapter_model.safetensors")
    return model_dir, adapter_dir


def lora_b_norm(model) -> float:
    return float(sum(p.detach().float().abs().sum() for n, p in model.named_parameters() if "lora_B" in n))


# ---------------------------------------------------------------- CrossEncoder


def load_cross_encoder(
    model_dir: Path,
    adapter_dir: Path | None,
    max_length: int,
    expect_lora: float | None,
    dtype: torch.dtype = torch.float32,
):
    """sentence-transformers CrossEncoder on the seq-cls folder in ``dtype``, the adapter through its PEFT API.

    ``expect_lora``: the sum of |B| of our adapter; a CrossEncoder that loaded other values (keys
    that did not match, say) is refused. The token ids it feeds are checked separately.
    """
    from sentence_transformers.cross_encoder import CrossEncoder

    ce = CrossEncoder(str(model_dir), num_labels=1, max_length=max_length, device="cpu", model_kwargs={"dtype": dtype})
    if adapter_dir is not None:
        ce.load_adapter(str(adapter_dir))
        got = lora_b_norm(ce.model)
        if expect_lora is not None and abs(got - expect_lora) > 1e-2 * max(1.0, expect_lora):
            raise BenchmarkError(
                f"CrossEncoder's LoRA B weights sum to {got}, ours to {expect_lora}: adapter not loaded"
            )
    return ce


def cross_encoder_ids(ce, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
    out = []
    for start in range(0, len(pairs), 64):
        feats = ce.preprocess(list(pairs[start : start + 64]))
        ids, mask = feats["input_ids"], feats["attention_mask"]
        out += [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    return out


def cross_encoder_scores(ce, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[float]:
    values = ce.predict(list(pairs), batch_size=batch_size, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    return [float(v) for v in values]


# ---------------------------------------------------------------- Tevatron-style loop


def load_tevatron(model_dir: Path, adapter_dir: Path | None, dtype: torch.dtype):
    """Tevatron's ``RerankerModel.load``: seq-cls model in ``dtype``, LoRA merged with PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=dtype)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval()


def tevatron_batches(
    tokenizer, pairs: Sequence[tuple[str, str]], max_length: int, batch_size: int = 64, pad_to_multiple_of: int = 16
):
    """Tevatron's inference collator: run order, pairs truncated to max_length-1, EOS appended, padded to 16s."""
    eos = tokenizer.eos_token_id
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        enc = tokenizer(
            [a for a, _ in chunk],
            [b for _, b in chunk],
            padding=False,
            truncation=True,
            max_length=max_length - 1,
            return_attention_mask=False,
            return_token_type_ids=False,
            add_special_tokens=True,
        )
        ids = [x + [eos] for x in enc["input_ids"]]
        yield tokenizer.pad(
            {"input_ids": ids},
            padding=True,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=True,
            return_tensors="pt",
        )


def tevatron_ids(tokenizer, pairs, max_length: int) -> list[list[int]]:
    out = []
    for batch in tevatron_batches(tokenizer, pairs, max_length):
        out += [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])]
    return out


@torch.inference_mode()
def tevatron_scores(model, tokenizer, pairs, max_length: int) -> list[float]:
    scores: list[float] = []
    for batch in tevatron_batches(tokenizer, pairs, max_length):
        scores += model(**batch).logits.float().view(-1).tolist()
    return scores


def check_same_inputs(ours: list[list[int]], others: dict[str, list[list[int]]]) -> None:
    for name, ids in others.items():
        bad = [i for i, (a, b) in enumerate(zip(ours, ids)) if a != b]
        if bad or len(ids) != len(ours):
            i = bad[0] if bad else 0
            raise BenchmarkError(
                f"{name} feeds the model other token ids than relevance-lens for {len(bad)} of {len(ours)} pairs "
                f"(first: pair {i}: ours {ours[i][:12]}...{ours[i][-4:]}, {name} {ids[i][:12]}...{ids[i][-4:]})"
            )
