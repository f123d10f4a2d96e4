"""LoRA settings in the study's words (rank, targets by role, layers), resolved through the
role table into PEFT's ``LoraConfig``.

A role that shares a fused matrix with other roles (Pythia's q|k|v in ``query_key_value``,
GPT-2's ``c_attn``) gets LoRA on the fused matrix with the rows of the other roles held at
zero: B starts at zero and a gradient hook zeroes those rows' gradients, so ΔW = B·A only ever
touches the chosen role's output rows. "q only" on Pythia thus means exactly what it means on
Llama: only the query projection is updated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from relevance_lens.errors import InputError
from relevance_lens.model.roles import (
    Architecture,
    architecture_of,
    num_layers,
    resolve_roles,
    role_module_name,
    role_rows,
)


@dataclass
class LoraSettings:
    """What LoRA updates. ``targets``: preset (mha, mlp, all, none) or roles like ``q,k``."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r (the study: 1, 2, 8, 32)."})
    alpha: float = field(default=64.0, metadata={"help": "LoRA alpha; ΔW is scaled by alpha/r."})
    dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    targets: str = field(default="all", metadata={"help": "mha | mlp | all | none | comma-separated roles."})
    layers: list[int] | None = field(default=None, metadata={"help": "Only these layers (default: all)."})

    def validate(self, arch: Architecture, n_layers: int) -> tuple[str, ...]:
        """Check the settings against a model; returns the resolved roles."""
        roles = resolve_roles(self.targets, arch)
        if roles and self.rank < 1:
            raise InputError(f"--rank {self.rank}: expected a positive integer (the study uses 1, 2, 8, 32)")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"--lora-dropout {self.dropout}: expected a value in [0, 1)")
        if self.alpha <= 0:
            raise InputError(f"--alpha {self.alpha}: expected a positive number")
        for layer in self.layers or []:
            if not 0 <= layer < n_layers:
                raise InputError(f"--layers {layer}: out of range; this model has layers 0..{n_layers - 1}")
        return roles


def modules_for(arch: Architecture, roles: tuple[str, ...], layers: list[int]) -> dict[str, list[str]]:
    """Module path (relative to the decoder) -> the chosen roles it holds."""
    modules: dict[str, list[str]] = {}
    for layer in layers:
        for role in roles:
            modules.setdefault(role_module_name(arch, layer, role), []).append(role)
    return modules


def attach_lora(reranker, settings: LoraSettings, *, seed: int = 0):
    """Wrap the reranker's backbone with PEFT LoRA as ``settings`` says; returns the roles.

    ``targets="none"`` attaches nothing: only the score head trains (the linear probe of the
    frozen model, the study's "before" point).
    """
    from peft import LoraConfig, get_peft_model

    config = reranker.base_config
    arch = architecture_of(config)
    n = num_layers(config)
    roles = settings.validate(arch, n)
    if not roles:
        return roles
    layers = settings.layers if settings.layers is not None else list(range(n))
    modules = modules_for(arch, roles, layers)
    lora = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=sorted(modules),
        fan_in_fan_out=arch.conv1d,
        bias="none",
    )
    torch.manual_seed(seed)  # LoRA A init draws from the global RNG
    reranker.backbone = get_peft_model(reranker.backbone, lora)
    _restrict_fused_rows(reranker, arch, modules)
    return roles


def _restrict_fused_rows(reranker, arch: Architecture, modules: dict[str, list[str]]) -> None:
    config = reranker.base_config
    base = reranker.base_model
    for name, roles in modules.items():
        rows_per_role = [role_rows(config, arch, r) for r in roles]
        if any(r is None for r in rows_per_role):
            continue
        module = base.get_submodule(name)
        allowed = torch.cat(rows_per_role)
        for lora_b in module.lora_B.values():
            mask = torch.zeros(lora_b.weight.shape[0], 1, dtype=lora_b.weight.dtype)
            mask[allowed] = 1
            if mask.all():
                continue
            lora_b.weight.register_hook(lambda grad, m=mask: grad * m.to(grad.device, grad.dtype))


def lora_summary(settings: LoraSettings) -> dict:
    return asdict(settings)
