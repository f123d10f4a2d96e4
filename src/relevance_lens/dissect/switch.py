"""Switching parts of a trained LoRA update ΔW = B·A·(alpha/r) off: the two switches.

A *part* is one (layer, role) of the adapter. Both switches take the set of parts that stay on.

* :func:`switch_off` zeroes exactly the LoRA B rows of the parts switched off, whole B for an
  unfused module and only the role's output rows for a fused q|k|v
  (:func:`relevance_lens.model.roles.role_rows`), and restores them in ``finally``.
* :class:`MergedSwitch` merges once instead (below).

Merged weights: the LoRA switch runs every variant through PEFT's LoRA layers: two extra small
matmuls and a few element-wise passes per adapted module, which on a CPU cost about half as
much again as the base model's own forward (``benchmarks/README.md``). A sweep runs dozens of
variants, so :class:`MergedSwitch` holds, per LoRA-wrapped module, the base weight ``W`` and the
merged ``W + ΔW`` (PEFT's own ``get_delta_weight``, so fused q|k|v layouts and GPT-2's
transposed Conv1D are handled by the library that defines them), bypasses the LoRA layers, and
points each module's weight at whichever of the two a variant's parts ask for. A fused module
with only some of its roles kept gets ``W`` plus those roles' rows of ΔW, built when asked.
Swapping is a pointer change, not a copy; the cost is one more copy of the adapted weights in
memory, which :func:`merge_fits` checks before ``merge="auto"`` turns it on.

Numerics: in fp32 the same scores as the LoRA path up to summation order. In bf16 the merged
weight is rounded to bf16 once, where the LoRA path rounds the sum of two outputs instead; both
are bf16 approximations of the fp32 scores with errors of the same size, and every variant of
one sweep, the full adapter and the base included, is computed the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from relevance_lens.errors import InputError
from relevance_lens.model.roles import architecture_of, num_layers, role_module, role_rows

Part = tuple[int, str]

# ---------------------------------------------------------------- which parts exist


def lora_modules(reranker) -> dict[str, tuple[torch.nn.Module, int, list[str]]]:
    """Module path -> (LoRA module, layer, roles it holds) for every LoRA-wrapped role module."""
    base, config = reranker.base_model, reranker.base_config
    arch = architecture_of(config)
    found: dict[str, tuple[torch.nn.Module, int, list[str]]] = {}
    for layer in range(num_layers(config)):
        for role in arch.supported_roles:
            module = role_module(base, arch, layer, role)
            if not hasattr(module, "lora_B"):
                continue
            key = f"{layer}.{arch.roles[role].module}"
            found.setdefault(key, (module, layer, []))[2].append(role)
    return found


def active_b(module) -> list[torch.Tensor]:
    return [module.lora_B[name].weight for name in module.active_adapters if name in module.lora_B]


def lora_parts(reranker) -> frozenset[Part]:
    """The (layer, role) parts the adapter has.

    A fused q|k|v module counts a role only when that role's B rows are not all zero: a
    "q only" adapter on Pythia holds k and v rows at zero, and those are not parts of it.
    """
    config = reranker.base_config
    arch = architecture_of(config)
    parts = set()
    for module, layer, roles in lora_modules(reranker).values():
        for role in roles:
            rows = role_rows(config, arch, role)
            if rows is None or any(bool(w[rows.to(w.device)].any()) for w in active_b(module)):
                parts.add((layer, role))
    return frozenset(parts)


@contextmanager
def switch_off(reranker, keep: frozenset[Part]) -> Iterator[None]:
    """Zero the LoRA B rows of every part not in ``keep``; restore them on exit.

    Unfused module: its whole B. Fused q|k|v: only the switched-off roles' output rows.
    ``keep=frozenset()`` gives the base model exactly (B = 0 makes the LoRA term 0).
    """
    config = reranker.base_config
    arch = architecture_of(config)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for module, layer, roles in lora_modules(reranker).values():
                off = [r for r in roles if (layer, r) not in keep]
                if not off:
                    continue
                rows = [role_rows(config, arch, r) for r in off]
                for weight in active_b(module):
                    saved.append((weight, weight.detach().clone()))
                    if any(r is None for r in rows):
                        weight.zero_()
                    else:
                        weight[torch.cat(rows).to(weight.device)] = 0
        yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


# ---------------------------------------------------------------- merged weights


@dataclass
class _Slot:
    """One LoRA-wrapped module: its base weight parameter and the two tensors it can point at."""

    module: torch.nn.Module
    weight: torch.nn.Parameter
    layer: int
    roles: list[str]
    base: torch.Tensor
    merged: torch.Tensor


def merge_blocker(reranker) -> str | None:
    """None when every adapted module is plain LoRA PEFT can merge; otherwise why not."""
    for key, (module, _, _) in lora_modules(reranker).items():
        for name in module.active_adapters:
            if getattr(module, "use_dora", {}).get(name):
                return f"{key} uses DoRA (its update depends on the input's norm, not a fixed ΔW)"
        if not hasattr(module, "get_delta_weight"):
            return f"{key} ({type(module).__name__}) has no get_delta_weight"
    return None


def adapted_bytes(reranker) -> int:
    """Bytes of one copy of every LoRA-wrapped module's base weight."""
    total = 0
    for module, _, _ in lora_modules(reranker).values():
        weight = module.get_base_layer().weight
        total += weight.numel() * weight.element_size()
    return total


def free_bytes(device: torch.device) -> int:
    """Memory free for a new tensor on ``device`` (CUDA: the allocator's view; CPU: the system's)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def merge_fits(reranker, headroom: float = 0.5) -> bool:
    """Whether one more copy of the adapted weights takes at most ``headroom`` of free memory."""
    return adapted_bytes(reranker) <= headroom * free_bytes(reranker.device)


def _delta(module) -> torch.Tensor:
    return sum(module.get_delta_weight(name) for name in module.active_adapters if name in module.lora_B)


def merged_weight(module) -> torch.Tensor:
    """``W + ΔW`` of one LoRA-wrapped module: summed in fp32, rounded once to ``W``'s dtype."""
    base = module.get_base_layer().weight.data
    return (base.float() + _delta(module).float()).to(base.dtype)


class MergedSwitch:
    """Switch parts of ΔW on and off by pointing each adapted module at ``W`` or ``W + ΔW``.

    Use ``with switch.active():`` around the forwards (LoRA layers bypassed, weights and flags
    restored on exit) and ``with switch(keep):`` per variant, like
    :func:`relevance_lens.dissect.ablate.switch_off`.
    """

    def __init__(self, reranker):
        blocker = merge_blocker(reranker)
        if blocker:
            raise InputError(f"merge=on: cannot merge this adapter ({blocker}); use merge=off")
        self.reranker = reranker
        self.slots: list[_Slot] = []
        # Normal (non-inference) tensors: they become a Parameter's data inside inference mode.
        with torch.inference_mode(False), torch.no_grad():
            for module, layer, roles in lora_modules(reranker).values():
                weight = module.get_base_layer().weight
                self.slots.append(_Slot(module, weight, layer, roles, weight.data, merged_weight(module)))

    @contextmanager
    def active(self) -> Iterator[MergedSwitch]:
        """Bypass the LoRA layers for the forwards inside; restore base weights and flags after."""
        # PEFT's public enable_adapters(True) also sets requires_grad on the LoRA weights; the
        # flag alone bypasses them and leaves the caller's model as it was.
        before = [slot.module._disable_adapters for slot in self.slots]
        try:
            for slot in self.slots:
                slot.module._disable_adapters = True
            yield self
        finally:
            for slot, flag in zip(self.slots, before):
                slot.weight.data = slot.base
                slot.module._disable_adapters = flag

    @contextmanager
    def __call__(self, keep: frozenset) -> Iterator[None]:
        """Point every module at the weight that holds exactly the parts in ``keep``."""
        for slot in self.slots:
            kept = [r for r in slot.roles if (slot.layer, r) in keep]
            if not kept:
                slot.weight.data = slot.base
            elif len(kept) == len(slot.roles):
                slot.weight.data = slot.merged
            else:
                slot.weight.data = self._partial(slot, frozenset(keep))
        yield

    def _partial(self, slot: _Slot, keep: frozenset) -> torch.Tensor:
        """``W`` plus the kept roles' rows of a fused module's ΔW (the LoRA switch picks the rows)."""
        with torch.inference_mode(False), torch.no_grad(), switch_off(self.reranker, keep):
            return (slot.base.float() + _delta(slot.module).float()).to(slot.base.dtype)
