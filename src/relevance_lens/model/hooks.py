"""Forward hooks on the real transformers model, only ever through context managers.

Two operations used by the ablation sweeps and the logit lens:

* :func:`record_block_inputs` caches each decoder block's input hidden state (the residual
  stream after the blocks below it) and the input of the final norm (the output of the last
  block) during an ordinary forward pass.
* :func:`start_at_layer` makes the next forward pass begin at block ``layer`` from a cached
  hidden state: the blocks below are taken out of the model's ModuleList for the duration, and
  a pre-hook hands the cached tensor to the first remaining block. Embeddings, rotary tables
  and attention masks are still computed by the model itself, so nothing of its forward is
  reimplemented here.

For activation patching, :func:`record_outputs` caches modules' outputs in one run and
:func:`patch_outputs` writes them into another's at chosen positions of chosen batch rows.

Naming: ``layer`` ``l`` in ``0..N`` is the residual stream *entering* block ``l``; ``l = N`` is
the output of the last block, before the final norm. Every hook is removed, and every
temporarily changed attribute restored, in ``finally``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Hashable, Iterator, Mapping

import torch
from torch import nn

from relevance_lens.model.roles import Architecture, blocks


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden state a block receives: first positional argument in every supported family."""
    if args:
        return args[0]
    return kwargs["hidden_states"]


def final_norm(base_model: nn.Module, arch: Architecture) -> nn.Module:
    """The norm applied after the last block (``arch.final_norm``)."""
    return base_model.get_submodule(arch.final_norm)


@contextmanager
def record_block_inputs(
    base_model: nn.Module, arch: Architecture, keep_final: bool = True
) -> Iterator[dict[int, torch.Tensor]]:
    """Cache ``{layer: hidden state entering that block}`` during the forward passes inside.

    With ``keep_final`` the output of the last block (the final norm's input) is stored under
    ``N``. Tensors are detached; a second forward inside the block overwrites the first.
    """
    cache: dict[int, torch.Tensor] = {}
    handles = []

    def saver(index: int):
        def hook(module, args, kwargs):
            cache[index] = _first_tensor(args, kwargs).detach()

        return hook

    layers = blocks(base_model, arch)
    try:
        for index, block in enumerate(layers):
            handles.append(block.register_forward_pre_hook(saver(index), with_kwargs=True))
        if keep_final:
            handles.append(final_norm(base_model, arch).register_forward_pre_hook(saver(len(layers)), with_kwargs=True))
        yield cache
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def start_at_layer(base_model: nn.Module, arch: Architecture, layer: int, hidden: torch.Tensor) -> Iterator[None]:
    """Run forwards inside from block ``layer`` on, with ``hidden`` as that block's input.

    The blocks below ``layer`` are sliced out of the ModuleList. Families that pick a mask
    per layer by loop position (``config.layer_types[i]`` in Gemma 2/3, Qwen2/3 in
    transformers 5.x) see ``layer_types`` sliced the same way, so each remaining block keeps
    its own attention type (sliding or full). ``layer == 0`` changes nothing but the block-0
    input. Callers that cannot vouch for a family should compare one restarted forward with a
    full one first, as :func:`relevance_lens.dissect.ablate.score_variants` does.
    """
    parent_path, _, attr = arch.layers.rpartition(".")
    parent = base_model.get_submodule(parent_path) if parent_path else base_model
    full = getattr(parent, attr)
    if not 0 <= layer < len(full):
        raise ValueError(f"start_at_layer: layer {layer} outside 0..{len(full) - 1}")
    config = base_model.config
    layer_types = getattr(config, "layer_types", None)
    slice_types = isinstance(layer_types, (list, tuple)) and len(layer_types) == len(full)

    def substitute(module, args, kwargs):
        if args:
            return (hidden,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = full[layer].register_forward_pre_hook(substitute, with_kwargs=True)
    try:
        if layer > 0:
            setattr(parent, attr, full[layer:])
            if slice_types:
                config.layer_types = list(layer_types)[layer:]
        yield
    finally:
        setattr(parent, attr, full)
        if slice_types:
            config.layer_types = layer_types
        handle.remove()


def _output_tensor(output) -> torch.Tensor:
    """A module's output hidden state: the output itself, or the first item of a block's tuple."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record_outputs(modules: Mapping[Hashable, nn.Module]) -> Iterator[dict[Hashable, torch.Tensor]]:
    """Cache ``{key: output}`` of each module during the forwards inside (detached; a later forward
    overwrites an earlier one)."""
    cache: dict[Hashable, torch.Tensor] = {}
    handles = []

    def saver(key: Hashable):
        def hook(module, args, output):
            cache[key] = _output_tensor(output).detach()

        return hook

    try:
        for key, module in modules.items():
            handles.append(module.register_forward_hook(saver(key)))
        yield cache
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def patch_outputs(
    modules: Mapping[Hashable, nn.Module],
    sources: Mapping[Hashable, torch.Tensor],
    masks: Mapping[Hashable, torch.Tensor],
) -> Iterator[None]:
    """During the forwards inside, each module's output takes ``sources[key]`` (``(1 or batch, seq,
    hidden)``) wherever ``masks[key]`` (``(batch, seq)``, bool) is true, and keeps its own elsewhere."""
    handles = []

    def patcher(key: Hashable):
        def hook(module, args, output):
            own = _output_tensor(output)
            mask = masks[key].to(own.device).unsqueeze(-1)
            patched = torch.where(mask, sources[key].to(device=own.device, dtype=own.dtype), own)
            return (patched,) + tuple(output[1:]) if isinstance(output, tuple) else patched

        return hook

    try:
        for key, module in modules.items():
            if key in masks:
                handles.append(module.register_forward_hook(patcher(key)))
        yield
    finally:
        for handle in handles:
            handle.remove()
