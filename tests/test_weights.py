"""ΔW statistics from saved adapter folders, against hand-built updates of known rank and norm."""

import json
import math

import pytest
import torch

from dissectfix import one_thread, randomize_lora  # noqa: F401
from relevance_lens.dissect.weights import (
    compare,
    effective_rank,
    grassmann,
    load_adapter_weights,
    numerical_rank,
    role_stats,
    similarity_grid,
    spectrum,
)
from relevance_lens.errors import InputError
from relevance_lens.model.lora import LoraSettings, attach_lora
from relevance_lens.model.reranker import Reranker
from relevance_lens.model.roles import role_module, role_rows
from tiny import save_tiny

RANK, ALPHA = 4, 8.0  # scaling alpha / r = 2


def _saved_adapter(tmp_path, family="llama", targets="all", rank=RANK, name="adapter", setter=None):
    base = tmp_path / f"base-{family}"
    if not base.exists():
        save_tiny(family, base)
    reranker = Reranker.from_pretrained(str(base))
    attach_lora(reranker, LoraSettings(rank=rank, alpha=ALPHA, targets=targets, dropout=0.0))
    if setter is None:
        randomize_lora(reranker, targets)
    else:
        setter(reranker)
    reranker.save(tmp_path / name)
    return reranker, tmp_path / name


def _known_update(reranker):
    """Layer 1 q: ΔW = 2 · (4 e0 f0ᵀ + 3 e1 f1ᵀ): singular values 8 and 6, norm 10, rank 2. Rest zero."""
    with torch.no_grad():
        for name, p in reranker.named_parameters():
            if "lora_" in name:
                p.zero_()
        module = role_module(reranker.base_model, reranker.architecture, 1, "q")
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        a[0, 0], a[1, 1] = 1.0, 1.0
        b[0, 0], b[1, 1] = 4.0, 3.0


def test_hand_built_update_of_known_rank_and_norm(tmp_path):
    _, folder = _saved_adapter(tmp_path, setter=_known_update)
    weights = load_adapter_weights(folder)
    stats = {(s.layer, s.role): s for s in role_stats(weights)}
    q = stats[1, "q"]
    assert q.frobenius == pytest.approx(10.0)
    assert q.singular_values == pytest.approx([8.0, 6.0, 0.0, 0.0], abs=1e-9)
    assert q.numerical_rank == 2
    p = torch.tensor([8 / 14, 6 / 14])
    assert q.effective_rank == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert stats[0, "q"].frobenius == 0.0 and stats[0, "q"].numerical_rank == 0 and stats[0, "q"].effective_rank == 0.0
    assert q.metrics()["sv1"] == pytest.approx(8.0)


@pytest.mark.parametrize(
    "family,targets", [("llama", "all"), ("gpt2", "all"), ("gpt_neox", "all"), ("gpt_neox", "q,v"), ("gpt2", "k")]
)
def test_statistics_match_pefts_own_delta_weight(tmp_path, family, targets):
    reranker, folder = _saved_adapter(tmp_path, family, targets)
    weights = load_adapter_weights(folder)
    stats = role_stats(weights)
    arch, config = reranker.architecture, reranker.base_config
    expected_roles = {"all": set(arch.supported_roles), "q,v": {"q", "v"}, "k": {"k"}}[targets]
    assert {s.role for s in stats} == expected_roles and {s.layer for s in stats} == {0, 1, 2, 3}
    for s in stats:
        delta = role_module(reranker.base_model, arch, s.layer, s.role).get_delta_weight("default").detach()
        if arch.conv1d:
            delta = delta.T  # Conv1D keeps (in, out); statistics are of the (out, in) map
        rows = role_rows(config, arch, s.role)
        if rows is not None:
            delta = delta[rows]
        assert s.shape == tuple(delta.shape)
        assert s.frobenius == pytest.approx(torch.linalg.norm(delta).item(), rel=1e-5)
        assert s.singular_values[:RANK] == pytest.approx(
            torch.linalg.svdvals(delta.double()).tolist()[:RANK], rel=1e-5, abs=1e-6
        )


def test_spectrum_never_forms_delta_but_equals_its_svd():
    gen = torch.Generator().manual_seed(0)
    b, a = torch.randn(40, 3, generator=gen), torch.randn(3, 25, generator=gen)
    spec = spectrum(b, a, 0.5)
    delta = 0.5 * b.double() @ a.double()
    assert spec.values.tolist() == pytest.approx(torch.linalg.svdvals(delta)[:3].tolist())
    rebuilt = spec.left @ torch.diag(spec.values) @ spec.right.T
    assert torch.allclose(rebuilt, delta, atol=1e-10)


@pytest.mark.parametrize("values,expected", [([1.0, 1.0, 1.0, 1.0], 4.0), ([5.0, 0.0, 0.0], 1.0), ([0.0, 0.0], 0.0)])
def test_effective_rank(values, expected):
    assert effective_rank(torch.tensor(values, dtype=torch.float64)) == pytest.approx(expected)


def test_numerical_rank_ignores_rounding_noise():
    assert numerical_rank(torch.tensor([3.0, 1.0, 1e-12], dtype=torch.float64), (64, 64)) == 2


def _basis(*columns, dim=6):
    return torch.eye(dim, dtype=torch.float64)[:, list(columns)]


@pytest.mark.parametrize(
    "u1,u2,i,j,expected",
    [
        (_basis(0, 1), _basis(0, 1), 2, 2, 1.0),
        (_basis(0, 1), _basis(2, 3), 2, 2, 0.0),
        (_basis(0, 1), _basis(0, 2), 2, 2, 0.5),
        (_basis(0, 1), _basis(0, 2), 1, 1, 1.0),
        (_basis(1, 0), _basis(0, 2, 1), 1, 3, 1.0),  # top-1 of the first lies in the top-3 of the second
        (_basis(1, 0), _basis(0, 2, 1), 2, 2, 0.5),
    ],
)
def test_grassmann_similarity(u1, u2, i, j, expected):
    assert grassmann(u1, u2, i, j) == pytest.approx(expected)
    assert similarity_grid(u1, u2)[i - 1, j - 1].item() == pytest.approx(expected)


def test_subspace_similarity_of_two_adapters(tmp_path):
    """A rank-2 adapter whose directions are the top two of a rank-4 one: phi(2, 2) = 1."""

    def set_update(reranker, rank):
        with torch.no_grad():
            for name, p in reranker.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.eye(*p.shape))
                elif "lora_B" in name:
                    scales = torch.tensor([4.0, 3.0, 0.2, 0.1][:rank])
                    p.copy_(torch.eye(p.shape[0], rank) * scales)

    _, small = _saved_adapter(tmp_path, rank=2, name="r2", setter=lambda r: set_update(r, 2))
    _, large = _saved_adapter(tmp_path, rank=4, name="r4", setter=lambda r: set_update(r, 4))
    sims = compare(load_adapter_weights(small), load_adapter_weights(large))
    assert len(sims) == 28
    for s in sims:
        assert s.grid.shape == (2, 4)
        assert s.metrics()["phi@2,2"] == pytest.approx(1.0)
        assert s.grid[1, 3].item() == pytest.approx(1.0)  # phi(2, 4): the 2 directions lie in the 4


def test_base_config_from_reranker_json_and_clear_errors(tmp_path):
    _, folder = _saved_adapter(tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/nowhere"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert load_adapter_weights(folder).n_layers == 4  # fell back to reranker.json's model folder
    with pytest.raises(InputError, match="adapter_config.json not found"):
        load_adapter_weights(tmp_path / "base-llama")
    with pytest.raises(InputError, match="expected 1 <= i <= 2"):
        grassmann(_basis(0, 1), _basis(0, 1), 3, 1)
