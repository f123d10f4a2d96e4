"""The study's 7B-class models as shapes: their real configs (``configs/*.json``), no weights.

The JSON files hold the published ``config.json`` values of Mistral-7B-v0.1, Llama-3.1-8B and
Pythia-6.9B (``_source`` names each). ``tiny`` shrinks a config to a few thousand parameters and
keeps everything else (family, rope scaling, rotary fraction, sliding window), so a smoke run
exercises the same code on a CPU. :func:`placeholder_tokenizer` stands in for the real
tokenizers, which are not needed to measure speed or memory: one token per word ``w0 w1 ...``.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
MODELS = ("mistral-7b-v0.1", "llama-3.1-8b", "pythia-6.9b")

#: A smoke run's sizes: the same families, a few thousand parameters.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 1003,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
WORDS = 1000  # the placeholder tokenizer's vocabulary: w0 .. w999 plus <unk>, <s>, </s>


def config(name: str, *, tiny: bool = False, layers: int | None = None):
    """The transformers config of ``configs/<name>.json`` (``tiny``: shrunk; ``layers``: first N layers only)."""
    from transformers import AutoConfig

    values = json.loads((CONFIGS / f"{name}.json").read_text())
    values.pop("_source", None)
    if tiny:
        values.update(TINY)
        if "num_key_value_heads" in values:
            values["num_key_value_heads"] = 2
        if values.get("sliding_window"):
            values["sliding_window"] = 64
    if layers is not None:
        values["num_hidden_layers"] = layers
    return AutoConfig.for_model(**values)


def placeholder_tokenizer():
    """A word-level tokenizer with BOS, EOS and no pad token: ``"w5 w17"`` -> ``<s> w5 w17``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
