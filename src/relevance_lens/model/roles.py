"""Architecture roles: the one table that says where q, k, v, o, gate, up and down live.

The study speaks of roles (the attention projections q, k, v, o; the MLP projections gate,
up, down). Model families name and pack those matrices differently: Pythia (GPT-NeoX) fuses
q|k|v into one ``query_key_value`` matrix interleaved per head, GPT-2 fuses them into a
``Conv1D`` ``c_attn``, and neither has a gate. Everything that needs to know where a role is
(LoRA targets, ablation masks, weight statistics) asks :func:`architecture_of` and
:func:`role_module`; nothing else in the package checks ``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from relevance_lens.errors import InputError

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
MHA_ROLES: tuple[str, ...] = ("q", "k", "v", "o")
MLP_ROLES: tuple[str, ...] = ("gate", "up", "down")
GROUPS: dict[str, tuple[str, ...]] = {"mha": MHA_ROLES, "mlp": MLP_ROLES, "all": ROLES, "none": ()}

FusedLayout = Literal["contiguous", "per_head"]


@dataclass(frozen=True)
class RoleSpec:
    """Where one role lives inside a transformer block.

    ``module`` is the path relative to the block. ``fused`` is set when the module's output
    rows hold several roles (q|k|v): ``contiguous`` means [q rows, k rows, v rows];
    ``per_head`` means GPT-NeoX's [head0: q k v, head1: q k v, ...].
    """

    module: str
    fused: FusedLayout | None = None


@dataclass(frozen=True)
class Architecture:
    """How one model family lays out its blocks; see :data:`ARCHITECTURES`."""

    family: str
    layers: str  # path from the base (decoder) model to the ModuleList of blocks
    roles: dict[str, RoleSpec]
    final_norm: str  # path from the base model to the norm applied after the last block
    conv1d: bool = False  # weights stored (in, out) as in GPT-2's Conv1D
    notes: str = field(default="")

    @property
    def supported_roles(self) -> tuple[str, ...]:
        return tuple(r for r in ROLES if r in self.roles)


def _llama_like(family: str) -> Architecture:
    return Architecture(
        family=family,
        layers="layers",
        final_norm="norm",
        roles={
            "q": RoleSpec("self_attn.q_proj"),
            "k": RoleSpec("self_attn.k_proj"),
            "v": RoleSpec("self_attn.v_proj"),
            "o": RoleSpec("self_attn.o_proj"),
            "gate": RoleSpec("mlp.gate_proj"),
            "up": RoleSpec("mlp.up_proj"),
            "down": RoleSpec("mlp.down_proj"),
        },
    )


_GPT_NEOX = Architecture(
    family="gpt_neox",
    layers="layers",
    final_norm="final_layer_norm",
    roles={
        "q": RoleSpec("attention.query_key_value", fused="per_head"),
        "k": RoleSpec("attention.query_key_value", fused="per_head"),
        "v": RoleSpec("attention.query_key_value", fused="per_head"),
        "o": RoleSpec("attention.dense"),
        "up": RoleSpec("mlp.dense_h_to_4h"),
        "down": RoleSpec("mlp.dense_4h_to_h"),
    },
    notes="Pythia: q|k|v fused per head in query_key_value; no gate (GELU MLP).",
)

_GPT2 = Architecture(
    family="gpt2",
    layers="h",
    final_norm="ln_f",
    conv1d=True,
    roles={
        "q": RoleSpec("attn.c_attn", fused="contiguous"),
        "k": RoleSpec("attn.c_attn", fused="contiguous"),
        "v": RoleSpec("attn.c_attn", fused="contiguous"),
        "o": RoleSpec("attn.c_proj"),
        "up": RoleSpec("mlp.c_fc"),
        "down": RoleSpec("mlp.c_proj"),
    },
    notes="GPT-2: q|k|v fused contiguously in the Conv1D c_attn; no gate.",
)

#: model_type (config.model_type) -> architecture. The only place that names model types.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _llama_like("llama"),
    "mistral": _llama_like("mistral"),
    "qwen2": _llama_like("qwen2"),
    "qwen3": _llama_like("qwen3"),
    "gemma": _llama_like("gemma"),
    "gemma2": _llama_like("gemma2"),
    "gemma3": _llama_like("gemma3"),
    "gemma3_text": _llama_like("gemma3"),
    "gpt_neox": _GPT_NEOX,
    "gpt2": _GPT2,
}


def architecture_of(config) -> Architecture:
    """Return the role table for a transformers config (or anything with ``model_type``)."""
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise InputError(
            f"model_type {model_type!r} has no role table: expected one of "
            f"{', '.join(sorted(ARCHITECTURES))}. Add an Architecture entry to "
            "relevance_lens/roles.py mapping q,k,v,o,gate,up,down to its module paths."
        )
    return arch


def resolve_roles(spec: str | list[str] | tuple[str, ...], arch: Architecture | None = None) -> tuple[str, ...]:
    """Turn ``"mha"``, ``"mlp"``, ``"all"``, ``"none"`` or ``"q,k"`` into canonical roles.

    With ``arch``, roles the family lacks (gate on Pythia) are dropped from group presets
    and refused when named explicitly.
    """
    if isinstance(spec, str):
        parts = [p.strip().lower() for p in spec.split(",") if p.strip()]
    else:
        parts = [str(p).strip().lower() for p in spec]
    roles: list[str] = []
    for part in parts:
        if part in GROUPS:
            group = GROUPS[part]
            roles.extend(r for r in group if arch is None or r in arch.roles)
        elif part in ROLES:
            if arch is not None and part not in arch.roles:
                raise InputError(
                    f"role {part!r} does not exist in {arch.family} ({arch.notes}); "
                    f"its roles are {', '.join(arch.supported_roles)}"
                )
            roles.append(part)
        else:
            raise InputError(
                f"unknown role or preset {part!r}: expected a preset (mha, mlp, all, none) "
                f"or roles from {', '.join(ROLES)}, comma-separated (e.g. q,k or up,gate)"
            )
    return tuple(r for r in ROLES if r in set(roles))


def blocks(base_model: nn.Module, arch: Architecture) -> nn.ModuleList:
    """The ModuleList of transformer blocks of a base (decoder) model."""
    return base_model.get_submodule(arch.layers)


#: The sublayer outputs activation patching reads, by the role whose module writes them: the
#: attention output is o's output, the MLP output down's (before any post-norm, which acts per
#: position, so patching either is the same).
SUBLAYER_ROLES: dict[str, str] = {"attn": "o", "mlp": "down"}


def component_module(base_model: nn.Module, arch: Architecture, layer: int, component: str) -> nn.Module:
    """The module whose output is ``component`` of ``layer``: ``resid`` the block itself (its output,
    the residual stream after it), ``attn`` and ``mlp`` the modules of :data:`SUBLAYER_ROLES`."""
    if component == "resid":
        return blocks(base_model, arch)[layer]
    if component not in SUBLAYER_ROLES:
        raise InputError(f"component {component!r}: expected resid or one of {', '.join(SUBLAYER_ROLES)}")
    return role_module(base_model, arch, layer, SUBLAYER_ROLES[component])


def num_layers(config) -> int:
    return int(getattr(config, "num_hidden_layers", None) or config.n_layer)


def role_module_name(arch: Architecture, layer: int, role: str) -> str:
    """Dotted path, relative to the base model, of the module holding ``role`` in ``layer``."""
    return f"{arch.layers}.{layer}.{arch.roles[role].module}"


def role_module(base_model: nn.Module, arch: Architecture, layer: int, role: str) -> nn.Module:
    return base_model.get_submodule(role_module_name(arch, layer, role))


def _head_dims(config) -> tuple[int, int, int]:
    heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    hidden = int(getattr(config, "hidden_size", None) or config.n_embd)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    return heads, kv_heads, head_dim


def role_rows(config, arch: Architecture, role: str) -> torch.Tensor | None:
    """Output rows of the role's module that belong to ``role``; None if it owns them all.

    For fused q|k|v these index the module's output dimension (the Linear's weight rows,
    the Conv1D's weight columns), so ΔW restricted to them is exactly that role's update.
    """
    spec = arch.roles[role]
    if spec.fused is None:
        return None
    heads, kv_heads, head_dim = _head_dims(config)
    which = "qkv".index(role)
    if spec.fused == "contiguous":
        sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
        start = sum(sizes[:which])
        return torch.arange(start, start + sizes[which])
    # per_head (GPT-NeoX): view as (heads, 3, head_dim); role `which` is the middle index.
    idx = torch.arange(heads * 3 * head_dim).view(heads, 3, head_dim)
    return idx[:, which, :].reshape(-1)


#: The attention roles a head owns part of: q, k, v by output rows, o by input columns.
HEAD_ROLES: tuple[str, ...] = MHA_ROLES


def head_count(config, role: str) -> int:
    """How many heads ``role`` is cut into: query heads for q and o, key/value heads for k and v (GQA)."""
    heads, kv_heads, _ = _head_dims(config)
    return kv_heads if role in ("k", "v") else heads


def kv_head_of(config, head: int) -> int:
    """The key/value head a query head reads (transformers' ``repeat_kv``: consecutive groups)."""
    heads, kv_heads, _ = _head_dims(config)
    return head // (heads // kv_heads)


def head_rows(config, arch: Architecture, role: str, head: int) -> torch.Tensor:
    """Indices of ``head``'s slice of a role's module: output rows for q, k, v; input columns for o.

    For k and v, ``head`` counts key/value heads (fewer than query heads under GQA). Output rows
    index the module's whole output, so a fused q|k|v is sliced by its layout (GPT-NeoX per
    head, GPT-2 contiguous) through :func:`role_rows`; o's input is the heads' outputs
    concatenated in head order in every family.
    """
    if role not in HEAD_ROLES:
        raise InputError(f"role {role!r} has no heads: expected one of {', '.join(HEAD_ROLES)}")
    if not 0 <= head < head_count(config, role):
        raise InputError(f"head {head} of {role}: expected 0..{head_count(config, role) - 1}")
    _, _, head_dim = _head_dims(config)
    own = torch.arange(head * head_dim, (head + 1) * head_dim)
    rows = role_rows(config, arch, role) if role != "o" else None
    return own if rows is None else rows[own]


def module_roles(arch: Architecture) -> dict[str, tuple[str, ...]]:
    """Block-relative module path -> the roles it holds (several for a fused q|k|v)."""
    out: dict[str, list[str]] = {}
    for role in arch.supported_roles:
        out.setdefault(arch.roles[role].module, []).append(role)
    return {m: tuple(r) for m, r in out.items()}


def role_of_module(arch: Architecture, module_name: str) -> tuple[int, tuple[str, ...]] | None:
    """Inverse lookup: ``layers.3.self_attn.q_proj`` -> ``(3, ("q",))``; None if no role.

    Accepts names with any prefix (PEFT adds ``base_model.model.``) and LoRA suffixes.
    """
    marker = f"{arch.layers}."
    pos = module_name.find(marker)
    if pos < 0:
        return None
    rest = module_name[pos + len(marker) :]
    layer_str, _, inner = rest.partition(".")
    if not layer_str.isdigit():
        return None
    for module, roles in module_roles(arch).items():
        if inner == module or inner.startswith(module + "."):
            return int(layer_str), roles
    return None
