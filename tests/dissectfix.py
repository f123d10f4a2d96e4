"""Fixtures for the dissection tests: tiny LoRA rerankers with nonzero updates, a tiny eval set."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, Gemma3TextConfig

from relevance_lens.data.formats import Passage
from relevance_lens.dissect.evalset import EvalSet
from relevance_lens.model.lora import LoraSettings, attach_lora
from relevance_lens.model.reranker import Reranker, RerankerConfig
from tiny import _llama_kw, tiny_reranker, tiny_tokenizer
from trainfix import TOPICS

#: The families the cached path is checked on; gemma3-sliding mixes sliding (window 3) and
#: full-attention layers, so a restart that mapped layer types wrongly would change scores.
DISSECT_FAMILIES = ("llama", "gemma3-sliding", "gpt_neox", "gpt2")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine run far faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bare_reranker(family: str, seed: int = 0) -> Reranker:
    if family == "gemma3-sliding":
        torch.manual_seed(seed)
        config = Gemma3TextConfig(
            **_llama_kw,
            head_dim=8,
            sliding_window=3,
            layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
        )
        model = AutoModel.from_config(config).eval()
        return Reranker(model, tiny_tokenizer(), RerankerConfig(model="tiny-gemma3-sliding"))
    return tiny_reranker(family, seed)


def randomize_lora(reranker: Reranker, targets: str = "all", seed: int = 1, scale: float = 0.3) -> None:
    """Nonzero B (PEFT starts it at zero) and a random head. In a fused q|k|v module the rows
    of roles outside ``targets`` stay zero, as training keeps them."""
    from relevance_lens.model.roles import architecture_of, num_layers, resolve_roles, role_module, role_rows

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in reranker.named_parameters():
            if "lora_B" in name or name.startswith("score"):
                p.copy_(torch.randn(p.shape, generator=gen) * (scale if "lora_B" in name else 1.0))
        config = reranker.base_config
        arch = architecture_of(config)
        chosen = resolve_roles(targets, arch)
        for layer in range(num_layers(config)):
            for role in arch.supported_roles:
                module = role_module(reranker.base_model, arch, layer, role)
                rows = role_rows(config, arch, role)
                if rows is not None and role not in chosen and hasattr(module, "lora_B"):
                    module.lora_B["default"].weight[rows] = 0


def lora_reranker(family: str = "llama", targets: str = "all", rank: int = 2, seed: int = 1) -> Reranker:
    reranker = bare_reranker(family)
    attach_lora(reranker, LoraSettings(rank=rank, targets=targets, dropout=0.0))
    randomize_lora(reranker, targets, seed)
    return reranker.eval()


def tiny_evalset(depth: int = 3, n_distractors: int = 6) -> EvalSet:
    queries = {f"q{i}": q for i, (_, q, _) in enumerate(TOPICS)}
    corpus = {f"d{i}": Passage(f"d{i}", name, text) for i, (name, _, text) in enumerate(TOPICS)}
    for j in range(n_distractors):
        corpus[f"x{j}"] = Passage(f"x{j}", "", f"{TOPICS[j % len(TOPICS)][2]} and other words {j}")
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(TOPICS))}
    # The relevant passage sits in the first-stage top-depth, at a different rank per query.
    run = {}
    for i, qid in enumerate(queries):
        others = [d for d in sorted(corpus) if d != f"d{i}"]
        ranked = others[: i % depth] + [f"d{i}"] + others[i % depth :]
        run[qid] = {d: float(-k) for k, d in enumerate(ranked)}
    return EvalSet("tiny", queries, qrels, corpus, run, depth=depth)
