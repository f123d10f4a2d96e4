"""Tiny random models of each supported family, built from configs (no download).

Also a tiny tokenizer trained in-process, with BOS/EOS and deliberately no pad token,
the case that trips LLaMA-3 rerankers.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

HIDDEN, LAYERS, HEADS, KV_HEADS, INTER = 32, 4, 4, 2, 64
VOCAB = 256

_llama_kw = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=KV_HEADS,
    intermediate_size=INTER,
    vocab_size=VOCAB,
    max_position_embeddings=512,
)

CONFIGS = {
    "llama": lambda: LlamaConfig(**_llama_kw),
    "mistral": lambda: MistralConfig(**_llama_kw),
    "qwen2": lambda: Qwen2Config(**_llama_kw),
    "gemma": lambda: GemmaConfig(**_llama_kw, head_dim=HIDDEN // HEADS),
    "gemma2": lambda: Gemma2Config(**_llama_kw, head_dim=HIDDEN // HEADS),
    "gemma3": lambda: Gemma3TextConfig(**_llama_kw, head_dim=HIDDEN // HEADS),
    "gpt_neox": lambda: GPTNeoXConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        vocab_size=VOCAB,
        max_position_embeddings=512,
    ),
    "gpt2": lambda: GPT2Config(
        n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=512, bos_token_id=1, eos_token_id=2
    ),
}
FAMILIES = tuple(CONFIGS)

TEXT = (
    "query document what is the capital of france paris is the capital of france "
    "bananas are yellow fruit how do i sort a list in python use sorted or list sort "
    "debian package manager apt installs packages perl regular expressions match text"
)


@cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT] * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    # No pad token on purpose.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    config.vocab_size = max(config.vocab_size, len(tiny_tokenizer()))
    return AutoModel.from_config(config).eval()


def save_tiny(family: str, folder: Path, seed: int = 0) -> Path:
    """A model folder that ``Reranker.from_pretrained(str(folder))`` loads."""
    model = tiny_model(family, seed)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_reranker(family: str = "llama", seed: int = 0, **config):
    from relevance_lens.model.reranker import Reranker, RerankerConfig

    return Reranker(tiny_model(family, seed), tiny_tokenizer(), RerankerConfig(model=f"tiny-{family}", **config))
