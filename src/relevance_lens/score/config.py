"""Scoring settings: batching, precision and device, and which fast paths may run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from relevance_lens.errors import InputError
from relevance_lens.model.backbone import bf16_supported
from relevance_lens.model.reranker import Reranker, RerankerConfig

#: Attribute set on a reranker that was loaded for one scoring run and is not reused: the fast
#: scorer may then merge LoRA into its weights in place instead of into a copy of the backbone.
SCORING_ONLY = "scoring_only"


@dataclass
class ScoreConfig:
    """Batching and precision for scoring."""

    depth: int = field(default=100, metadata={"help": "Rerank this many top passages per query."})
    keep_tail: bool = field(
        default=True,
        metadata={
            "help": "Keep the first stage's passages below depth, in their first-stage order, under the "
            "reranked ones (as reranking pipelines do), so measures past depth (R@100 of a top-20 rerank) "
            "compare like with like. Off: the run holds only the reranked top-depth."
        },
    )
    batch_tokens: int = field(default=8192, metadata={"help": "Token budget per batch (padded tokens)."})
    max_batch: int = field(default=128, metadata={"help": "At most this many pairs per batch."})
    chunk_pairs: int = field(default=4096, metadata={"help": "Pairs tokenized and length-sorted together."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where fast), bf16, fp32."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N."})
    fast: bool = field(
        default=True,
        metadata={
            "help": "Score with relevance_lens.score.fast (same scores, tested): the paths below. Off: the "
            "plain forward."
        },
    )
    merge_lora: bool = field(
        default=True,
        metadata={
            "help": "fast: merge LoRA into the weights: in place for a model loaded for scoring only "
            "(load_for_scoring), else into a copy (one more model's memory)."
        },
    )
    share_prefix: bool = field(
        default=True, metadata={"help": "fast: run each query's shared prefix once and reuse its KV cache."}
    )
    compile: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata={"help": "fast: torch.compile the decoder blocks; auto = when the run is large enough to pay."},
    )

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise InputError(f"--depth {self.depth}: expected a positive number of passages per query")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise InputError(f"--dtype {self.dtype}: expected auto, bf16 or fp32")
        if self.batch_tokens < 16 or self.max_batch < 1:
            raise InputError("batch_tokens must be >= 16 and max_batch >= 1")
        if self.compile not in ("auto", "on", "off"):
            raise InputError(f"--compile {self.compile}: expected auto, on or off")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "fp32":
        return torch.float32
    if name == "bf16" or bf16_supported(device):
        return torch.bfloat16
    return torch.float32


def prepare(reranker: Reranker, config: ScoreConfig) -> Reranker:
    """Move to the device and dtype scoring should run in; eval mode."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    return reranker.to(device=device, dtype=dtype).eval()


def load_for_scoring(
    model: str | None = None,
    adapter: str | Path | None = None,
    config: ScoreConfig | None = None,
    *,
    reranker_config: RerankerConfig | None = None,
    reused: bool = False,
    allow_other_base: bool = False,
) -> Reranker:
    """A reranker loaded straight in the dtype scoring runs in, on its device, in eval mode.

    The weights are read in the target dtype (bf16 where :func:`resolve_dtype` picks it), never
    as fp32 first and cast after: a 7B model then needs about its bf16 size of host RAM to load
    (``benchmarks/bench_load.py`` measures it), not fp32's twice that plus the cast.
    ``reused=False`` says the caller scores one run with it and drops it, so the fast scorer may
    merge LoRA in place (no copy of the backbone); pass ``reused=True`` to keep LoRA switchable.
    ``allow_other_base`` loads an adapter on a base other than its own (experts; see Reranker).
    """
    config = config or ScoreConfig()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    reranker = Reranker.from_pretrained(
        model, adapter, config=reranker_config, dtype=dtype, allow_other_base=allow_other_base
    )
    # PEFT keeps a loaded adapter in fp32 (autocast_adapter_dtype): the cast below makes it the
    # dtype of the rest, as prepare() always did; the base weights are already there and stay put.
    reranker = prepare(reranker, config)
    setattr(reranker, SCORING_ONLY, not reused)
    return reranker
