"""FLOPs of one LoRA training step of a reranker, counted as ``bench_scoring.forward_flops`` counts the forward.

Matmul FLOPs only (2 per multiply-add); norms, rotary, activations, softmax, the loss and the
optimizer are element-wise work and count nothing, the embedding lookup is free. Per token,
for every projection of the blocks (fan-in ``i``, fan-out ``o``, LoRA rank ``r`` or none):

* forward: ``2·i·o``, and with LoRA ``2·r·(i + o)`` (x·Aᵀ, then ·Bᵀ);
* backward through the frozen weight: the input gradient ``2·i·o`` only (no weight gradient for
  a frozen weight), and only where something trainable lies upstream of the projection's input;
* backward through LoRA: the gradients of B (``2·r·o``), of x·Aᵀ (``2·r·o``), of A (``2·r·i``)
  and, as above, of x (``2·r·i``): twice its forward.

Attention per layer and sequence of ``L`` tokens: QKᵀ and AV, ``2·2·heads·head_dim·L²`` over the
full square, its backward (dQ, dK, dP, dV) twice that. A flash kernel's backward also
recomputes QKᵀ; that is not useful work and is not counted. The score head: ``2·hidden`` per
sequence (the pooled last token only), its weight gradient as much, its input gradient as much
when LoRA trains below it.

Which projections need an input gradient: none in the blocks before the first one with LoRA
(nothing there trains, so the backward stops there); in that first block, a projection needs one
only when a LoRA'd projection feeds its input (:data:`FEEDS`: in Llama's block q, k and v feed o,
which feeds gate and up, which feed down; GPT-NeoX's parallel block has two chains); in every
later block, all do.

Two counts of the same step:

* ``real``: real tokens only, attention over the causal half of each sequence's own length
  (``2·heads·head_dim·L²`` forward per layer): the work the step needs, and the convention of
  the scoring benchmark. The reported fraction of the matmul rate uses it.
* ``padded``: every position of the padded batch (sequences × the longest), attention over the
  full square: what the kernels execute (padding, and the masked upper triangle). It is what
  ``torch.utils.flop_counter.FlopCounterMode`` counts over a real forward and backward with eager
  attention (its registry lacks SDPA's CPU kernels), which ``tests/test_benchmarks.py`` checks.

Against the rule of thumb for full fine-tuning, ``6·N`` per token (forward 2N, input gradients
2N, weight gradients 2N): a LoRA step with every layer adapted costs about ``4·N`` per token
(no weight gradients of the frozen N) plus LoRA's ``6·r·(i + o)`` per projection, a few percent
of N at r 8. ``six_n`` is recorded beside the count for that comparison.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from relevance_lens.model.roles import architecture_of, blocks, module_roles  # noqa: E402

_ATTN = ("q", "k", "v")
#: Roles whose outputs feed each role's input within a sequential block (attention, then MLP).
FEEDS = {"o": _ATTN, "gate": (*_ATTN, "o"), "up": (*_ATTN, "o"), "down": (*_ATTN, "o", "gate", "up")}
#: The same for a parallel block (GPT-NeoX's ``use_parallel_residual``: attention and MLP read the block input).
FEEDS_PARALLEL = {"o": _ATTN, "down": ("gate", "up")}


@dataclass(frozen=True)
class Projection:
    """One matmul of a block: its shape, its LoRA rank (0 for none) and whether its input needs a gradient."""

    layer: int
    roles: tuple[str, ...]
    fan_in: int
    fan_out: int
    rank: int
    input_grad: bool


def _shape(module: torch.nn.Module, conv1d: bool) -> tuple[int, int, int]:
    """(fan_in, fan_out, LoRA rank) of a projection, under a PEFT LoRA wrapper or not."""
    rank = 0
    if hasattr(module, "lora_A") and hasattr(module, "get_base_layer"):
        rank = sum(int(module.r[name]) for name in module.lora_A)  # peft's LoraLayer: rank per adapter
        module = module.get_base_layer()
    rows, cols = module.weight.shape
    return (rows, cols, rank) if conv1d else (cols, rows, rank)


def projections(reranker) -> list[Projection]:
    """The projections of every block, in order, with what their backward needs."""
    base = reranker.base_model
    arch = architecture_of(base.config)
    feeds = FEEDS_PARALLEL if getattr(base.config, "use_parallel_residual", False) else FEEDS
    out: list[Projection] = []
    upstream = False  # a trainable parameter lies before this block's input
    for layer, block in enumerate(blocks(base, arch)):
        shapes = {roles: _shape(block.get_submodule(path), arch.conv1d) for path, roles in module_roles(arch).items()}
        trained = {role for roles, (_, _, rank) in shapes.items() if rank for role in roles}
        for roles, (fan_in, fan_out, rank) in shapes.items():
            needs = upstream or any(f in trained for role in roles for f in feeds.get(role, ()))
            out.append(Projection(layer, roles, fan_in, fan_out, rank, needs))
        upstream = upstream or bool(trained)
    return out


def _attention_backward_layers(items: list[Projection]) -> int:
    """Layers whose attention needs a backward: q, k or v trains there or gets an input gradient."""
    return len({p.layer for p in items if set(p.roles) & set(_ATTN) and (p.rank or p.input_grad)})


def step_flops(reranker, lengths: Sequence[int], width: int | None = None) -> dict:
    """Matmul FLOPs of one forward + backward over sequences of ``lengths`` (padded to ``width``).

    ``width`` defaults to the longest length (dynamic padding, as the collators do). Returns the
    ``real`` and ``padded`` counts (see the module doc), each split into parts, and ``six_n``.
    """
    items = projections(reranker)
    cfg = reranker.base_config
    hidden = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
    heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    layers = len({p.layer for p in items})
    width = max(lengths) if width is None else width
    n = len(lengths)
    any_lora = any(p.rank for p in items)
    # Per token.
    dense_fwd = sum(2 * p.fan_in * p.fan_out for p in items)
    dense_bwd = sum(2 * p.fan_in * p.fan_out for p in items if p.input_grad)
    # LoRA: forward 2r(i+o); backward dB 2ro, d(xAᵀ) 2ro, dA 2ri, and dx 2ri where needed.
    lora = sum(2 * p.rank * (p.fan_in + 3 * p.fan_out + p.fan_in * (1 + p.input_grad)) for p in items)
    # Per unit of L² (full square), forward over all layers; backward where needed.
    attn_fwd = 4 * heads * head_dim * layers
    attn_bwd = 2 * 4 * heads * head_dim * _attention_backward_layers(items)
    head = 2 * hidden * (2 + any_lora)  # forward, weight gradient, input gradient
    params = sum(p.fan_in * p.fan_out for p in items)

    def count(tokens: int, square: float) -> dict:
        parts = {
            "dense_forward": dense_fwd * tokens,
            "dense_backward": dense_bwd * tokens,
            "lora": lora * tokens,
            "attention": (attn_fwd + attn_bwd) * square,
            "head": head * n,
        }
        return {**parts, "total": sum(parts.values()), "tokens": tokens}

    real = count(sum(lengths), sum(length * length for length in lengths) / 2)
    padded = count(n * width, n * width * width)
    return {
        "matmul_params": params,
        "sequences": n,
        "width": width,
        "real": real,
        "padded": padded,
        "six_n": 6 * params * real["tokens"],
    }
