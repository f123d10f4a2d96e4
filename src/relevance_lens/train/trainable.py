"""A loaded reranker made ready to train: frozen base, LoRA, fp32 head.

Apart from :mod:`relevance_lens.train.trainer` so that code without training data (the GPU check
of ``benchmarks/gpu_check.py``) sets models up the same way without importing the evaluation
stack (ir_measures).
"""

from __future__ import annotations

import torch

from relevance_lens.model.lora import attach_lora
from relevance_lens.model.reranker import Reranker
from relevance_lens.train.config import TrainConfig


def make_trainable(reranker: Reranker, config: TrainConfig) -> Reranker:
    """Freeze the base, attach LoRA and set up the head as :func:`build_model` does, on a loaded reranker.

    ``benchmarks/gpu_check.py`` calls it on models built from configs (no weights to load).
    Head only (``targets = "none"``): nothing in the base trains, so nothing may make the backward
    enter it: no gradient checkpointing (it would re-run the frozen forward to backpropagate into
    it) and no gradient-requiring embeddings; the base's features then carry no autograd graph.
    """
    for p in reranker.backbone.parameters():
        p.requires_grad_(False)
    roles = attach_lora(reranker, config.lora(), seed=config.seed)
    # Trainable parameters in fp32: the frozen bf16 weights need no fp32 master copy.
    for p in reranker.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    reranker.score.float().requires_grad_(True)
    if config.head_init == "zero":
        with torch.no_grad():
            reranker.score.weight.zero_()
    if config.gradient_checkpointing and roles:
        reranker.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        reranker.base_model.enable_input_require_grads()
    return reranker
