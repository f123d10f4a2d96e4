"""The fast scoring paths give the plain forward's scores (fp32, tiny models of four families)."""

from __future__ import annotations

import pytest
import torch

from relevance_lens.data.formats import Passage
from relevance_lens.errors import InputError
from relevance_lens.model.lora import LoraSettings, attach_lora
from relevance_lens.model.reranker import Reranker, RerankerConfig
from relevance_lens.score.config import ScoreConfig
from relevance_lens.score.fast import FastScorer, common_prefix, prefix_blocker, prefix_cap
from relevance_lens.score.rerank import rerank
from relevance_lens.score.scorer import PlainScorer
from tiny import CONFIGS, tiny_model, tiny_reranker, tiny_tokenizer

QUERIES = ["what is the capital of france", "how do i sort a list in python", "bananas"]
DOCS = [
    "paris is the capital of france",
    "use sorted or list sort",
    "bananas are yellow fruit",
    "debian package manager apt installs packages",
    "perl regular expressions match text perl regular expressions match text",
]
# Three queries sharing a prefix across five candidates each, and one query with a single candidate.
ITEMS = [(q, Passage(str(i), "t", d)) for q in QUERIES for i, d in enumerate(DOCS)] + [
    ("lonely query", Passage("x", "", "apt installs packages"))
]
FAMILIES = ("llama", "gemma3", "gpt_neox", "gpt2")
TOL = 1e-4


def lora_reranker(family: str, **settings) -> Reranker:
    """A tiny reranker with LoRA on all roles, B and head non-zero (so merging matters)."""
    reranker = tiny_reranker(family, **settings).eval()
    attach_lora(reranker, LoraSettings(rank=4, alpha=8, dropout=0.0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in reranker.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        reranker.score.weight.copy_(torch.randn(reranker.score.weight.shape, generator=gen) * 0.3)
    return reranker


def fp32(**overrides) -> ScoreConfig:
    return ScoreConfig(**{"dtype": "fp32", "device": "cpu", "compile": "off", "batch_tokens": 64, **overrides})


def assert_close(fast: list[float], slow: list[float], tol: float = TOL) -> None:
    gap = max(abs(a - b) for a, b in zip(fast, slow))
    assert gap <= tol, f"fast path differs from the plain forward by {gap:.3g}"


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fast_equals_plain(family, padding_side):
    """LoRA merged + shared prefix vs the plain forward; left padding vs right-padded plain scores."""
    reranker = lora_reranker(family, padding_side=padding_side)
    right = reranker if padding_side == "right" else lora_reranker(family, padding_side="right")
    slow = PlainScorer(right, fp32(fast=False)).score(ITEMS)
    scorer = FastScorer(reranker, fp32())
    assert scorer.plan.merged and scorer.plan.share_prefix and not scorer.plan.compiled
    assert_close(scorer.score(ITEMS), slow)


@pytest.mark.parametrize("paths", [{"merge_lora": False}, {"share_prefix": False}], ids=["prefix-only", "merged-only"])
def test_each_path_alone(paths):
    reranker = lora_reranker("llama")
    scorer = FastScorer(reranker, fp32(**paths))
    assert scorer.plan.merged == paths.get("merge_lora", True)
    assert scorer.plan.share_prefix == paths.get("share_prefix", True)
    assert_close(scorer.score(ITEMS), PlainScorer(reranker, fp32(fast=False)).score(ITEMS))


def _older_keyword(model: torch.nn.Module) -> None:
    """Give ``model`` the forward of transformers releases before the rename (5.17: ``past_key_values``)."""
    from relevance_lens.model.backbone import cache_keyword

    current, inner = model.forward, cache_keyword(model)

    def forward(input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None, **kw):
        assert "cache" not in kw, "the cache was passed under a keyword this transformers ignores"
        kw[inner] = past_key_values
        return current(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache, **kw
        )

    model.forward = forward


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_prefix_cache_reaches_models_of_either_keyword(family):
    """transformers 5.17 takes the cache as ``past_key_values``, 5.24 as ``cache``; an unknown keyword is ignored."""
    from relevance_lens.model.backbone import cache_keyword

    reranker = lora_reranker(family)
    slow = PlainScorer(reranker, fp32(fast=False)).score(ITEMS)
    assert cache_keyword(reranker.base_model) in ("cache", "past_key_values")
    _older_keyword(reranker.base_model)
    assert cache_keyword(reranker.base_model) == "past_key_values"
    scorer = FastScorer(reranker, fp32(merge_lora=False))
    assert scorer.plan.share_prefix
    assert_close(scorer.score(ITEMS), slow)


def test_a_model_without_a_cache_keyword_is_named():
    from relevance_lens.model.backbone import cache_keyword

    class NoCache(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    with pytest.raises(TypeError, match="NoCache.forward takes neither `cache` nor `past_key_values`"):
        cache_keyword(NoCache())


def test_callers_reranker_left_unmerged_and_unchanged():
    reranker = lora_reranker("llama")
    before = {k: v.clone() for k, v in reranker.state_dict().items()}
    slow = PlainScorer(reranker, fp32(fast=False)).score(ITEMS)
    FastScorer(reranker, fp32()).score(ITEMS)
    assert hasattr(reranker.backbone, "peft_config"), "the caller's reranker lost its LoRA wrapper"
    merged = [m.merged for m in reranker.backbone.modules() if hasattr(m, "merged")]
    assert merged and not any(merged), "the caller's LoRA was merged"
    after = reranker.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert PlainScorer(reranker, fp32(fast=False)).score(ITEMS) == slow


def test_rerank_fast_default_equals_plain():
    reranker = lora_reranker("llama")
    queries = {f"q{i}": q for i, q in enumerate(QUERIES)}
    corpus = {str(i): Passage(str(i), "t", d) for i, d in enumerate(DOCS)}
    run = {qid: {str(i): float(-i) for i in range(len(DOCS))} for qid in queries}
    fast = rerank(reranker, queries, corpus, run, ScoreConfig(depth=5, dtype="fp32", device="cpu"), progress=False)
    plain = rerank(
        reranker, queries, corpus, run, ScoreConfig(depth=5, dtype="fp32", device="cpu", fast=False), progress=False
    )
    for qid in queries:
        assert_close([fast[qid][d] for d in corpus], [plain[qid][d] for d in corpus])


def test_sliding_window_prefix_is_capped():
    config = CONFIGS["gemma3"]()
    config.sliding_window = 6
    config.vocab_size = max(config.vocab_size, len(tiny_tokenizer()))
    from transformers import AutoModel

    torch.manual_seed(0)
    reranker = Reranker(AutoModel.from_config(config).eval(), tiny_tokenizer(), RerankerConfig(model="tiny-gemma3-sw"))
    assert prefix_cap(reranker) == 4
    slow = PlainScorer(reranker, fp32(fast=False)).score(ITEMS)
    assert_close(FastScorer(reranker, fp32()).score(ITEMS), slow)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_neox", "gpt2", "qwen2", "mistral"])
def test_prefix_path_applies(family):
    assert prefix_blocker(Reranker(tiny_model(family), tiny_tokenizer(), RerankerConfig(model=family))) is None


@pytest.mark.parametrize(
    "ids, cap, expected",
    [
        ([[1, 2, 3, 4], [1, 2, 3, 5]], None, 3),
        ([[1, 2, 3], [1, 2, 3, 4]], None, 2),  # every sequence keeps at least one token of its own
        ([[1, 2, 3, 4], [1, 2, 3, 4]], None, 3),
        ([[1, 2, 3, 4], [9, 2, 3, 4]], None, 0),
        ([[1, 2, 3, 4], [1, 2, 3, 5]], 2, 2),
        ([[1, 2, 3]], None, 0),  # alone: nothing to share with
    ],
)
def test_common_prefix(ids, cap, expected):
    assert common_prefix(ids, cap) == expected


def test_compile_setting_validated():
    with pytest.raises(InputError, match="--compile"):
        ScoreConfig(compile="always")


def test_auto_compile_skips_small_runs():
    scorer = FastScorer(lora_reranker("llama"), ScoreConfig(dtype="fp32", device="cpu"), expected_tokens=1_000)
    assert not scorer.plan.compiled and any("not compiled" in n for n in scorer.plan.notes)


@pytest.mark.slow
def test_compiled_blocks_equal_plain():
    reranker = lora_reranker("llama")
    slow = PlainScorer(reranker, fp32(fast=False)).score(ITEMS)
    scorer = FastScorer(reranker, fp32(compile="on"))
    assert scorer.plan.compiled and not scorer.plan.share_prefix
    assert_close(scorer.score(ITEMS), slow)
