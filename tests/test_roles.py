"""The architecture role table, checked against tiny random models of every family."""

import pytest
import torch

from relevance_lens.errors import InputError
from relevance_lens.model.roles import (
    ARCHITECTURES,
    ROLES,
    architecture_of,
    num_layers,
    resolve_roles,
    role_module,
    role_module_name,
    role_of_module,
    role_rows,
)
from tiny import FAMILIES, tiny_model

EXPECTED_ROLES = {
    "llama": ROLES,
    "mistral": ROLES,
    "qwen2": ROLES,
    "gemma": ROLES,
    "gemma2": ROLES,
    "gemma3": ROLES,
    "gpt_neox": ("q", "k", "v", "o", "up", "down"),
    "gpt2": ("q", "k", "v", "o", "up", "down"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_role_resolves_to_a_real_module(family):
    model = tiny_model(family)
    arch = architecture_of(model.config)
    assert arch.supported_roles == EXPECTED_ROLES[family]
    for layer in range(num_layers(model.config)):
        for role in arch.supported_roles:
            module = role_module(model, arch, layer, role)
            weight = module.weight
            assert weight.ndim == 2
            assert (
                role_of_module(arch, "base_model.model." + role_module_name(arch, layer, role) + ".lora_A")[0] == layer
            )
            assert role in role_of_module(arch, role_module_name(arch, layer, role))[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_final_norm_exists(family):
    model = tiny_model(family)
    assert isinstance(model.get_submodule(architecture_of(model.config).final_norm), torch.nn.Module)


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_fused_rows_partition_the_output(family):
    model = tiny_model(family)
    arch = architecture_of(model.config)
    module = role_module(model, arch, 0, "q")
    out_dim = module.weight.shape[1] if arch.conv1d else module.weight.shape[0]
    rows = torch.cat([role_rows(model.config, arch, r) for r in "qkv"])
    assert sorted(rows.tolist()) == list(range(out_dim))


def _reference_qkv(family, model, x):
    """q, k, v exactly as the HF attention code splits the fused projection."""
    cfg = model.config
    if family == "gpt_neox":
        qkv = model.layers[0].attention.query_key_value(x)
        qkv = qkv.view(*x.shape[:-1], cfg.num_attention_heads, 3 * (cfg.hidden_size // cfg.num_attention_heads))
        return [t.reshape(*x.shape[:-1], -1) for t in qkv.chunk(3, dim=-1)]
    return list(model.h[0].attn.c_attn(x).split(cfg.n_embd, dim=-1))


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_fused_rows_match_how_the_model_splits_qkv(family):
    model = tiny_model(family)
    arch = architecture_of(model.config)
    x = torch.randn(2, 5, model.config.hidden_size)
    fused = role_module(model, arch, 0, "q")(x)
    reference = _reference_qkv(family, model, x)
    for role, ref in zip("qkv", reference):
        assert torch.allclose(fused[..., role_rows(model.config, arch, role)], ref)


@pytest.mark.parametrize(
    "spec,family,expected",
    [
        ("mha", "llama", ("q", "k", "v", "o")),
        ("mlp", "llama", ("gate", "up", "down")),
        ("mlp", "gpt_neox", ("up", "down")),
        ("all", "gpt2", ("q", "k", "v", "o", "up", "down")),
        ("none", "llama", ()),
        ("k,q", "llama", ("q", "k")),
        ("up, gate", "gemma3", ("gate", "up")),
        (["down", "q"], "mistral", ("q", "down")),
    ],
)
def test_resolve_roles(spec, family, expected):
    assert resolve_roles(spec, architecture_of(tiny_model(family).config)) == expected


@pytest.mark.parametrize(
    "spec,family,message",
    [("gate", "gpt_neox", "does not exist in gpt_neox"), ("qq", "llama", "unknown role or preset 'qq'")],
)
def test_resolve_roles_refuses(spec, family, message):
    with pytest.raises(InputError, match=message):
        resolve_roles(spec, architecture_of(tiny_model(family).config))


def test_unknown_architecture_names_what_is_missing():
    class Config:
        model_type = "bert"

    with pytest.raises(InputError, match="model_type 'bert' has no role table.*roles.py"):
        architecture_of(Config())


def test_table_covers_the_families_the_issue_names():
    for name in ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3", "gpt_neox", "gpt2"):
        assert name in ARCHITECTURES
