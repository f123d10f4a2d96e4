"""What the trained update ΔW = B·A·(alpha/r) looks like, read from saved adapter folders.

Per layer x role: the Frobenius norm of ΔW, its singular values, the effective rank (the
exponential of the entropy of the normalized singular values; Roy & Vetterli 2007) and the
numerical rank; for a fused q|k|v module, ΔW is restricted to the role's output rows. Between
two adapters (r8 vs r32, or a checkpoint vs the final adapter): the normalized subspace
similarity of the LoRA paper (Hu et al. 2021, Sec. 7),
``phi(i, j) = ||U_i^T U_j||_F^2 / min(i, j)`` with ``U_i`` the top-i singular directions.

Only the adapter files and the base model's *config* are read: the role table needs the
model type and head layout, never the base weights. ΔW is never formed: with thin QR
factorizations B = Q_b R_b and A^T = Q_a R_a, ΔW = s Q_b (R_b R_a^T) Q_a^T, so its SVD is that
of an r x r matrix, which is exact and cheap for 7B-sized matrices.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from relevance_lens.errors import InputError
from relevance_lens.model.backbone import resolve_model
from relevance_lens.model.reranker import read_saved_config
from relevance_lens.model.roles import ROLES, Architecture, architecture_of, num_layers, role_module_name, role_rows

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


@dataclass
class AdapterWeights:
    """A saved LoRA adapter: factors per module (float64) and the scaling PEFT applies."""

    folder: Path
    config: dict
    base_config: object
    arch: Architecture
    n_layers: int
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # module path -> (B, A, scaling)

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 0))

    def part(self, layer: int, role: str) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """(B rows of the role, A, scaling), or None when the role has no (nonzero) update."""
        if role not in self.arch.roles:
            return None
        found = self.factors.get(role_module_name(self.arch, layer, role))
        if found is None:
            return None
        b, a, scaling = found
        rows = role_rows(self.base_config, self.arch, role)
        if rows is not None:
            b = b[rows]
            if not b.any():  # a fused role held at zero (e.g. k, v of a "q only" adapter)
                return None
        return b, a, scaling

    def parts(self) -> list[tuple[int, str]]:
        return [(l, r) for l in range(self.n_layers) for r in ROLES if self.part(l, r) is not None]


def read_base_config(folder: str | Path):
    """The base model's transformers config for an adapter folder, without loading weights.

    Tries PEFT's ``base_model_name_or_path`` when it is a local model folder, then the base
    model named in ``reranker.json`` (short names resolve through the model cache).
    """
    from transformers import AutoConfig

    folder = Path(folder)
    adapter = _read_json(folder / ADAPTER_CONFIG)
    local = adapter.get("base_model_name_or_path")
    if isinstance(local, str) and local and (Path(local) / "config.json").is_file():
        return AutoConfig.from_pretrained(local)
    saved = read_saved_config(folder)
    if saved is None:
        raise InputError(
            f"{folder}: cannot tell the base model (no reranker.json, and adapter_config.json's "
            f"base_model_name_or_path {local!r} is not a local folder); pass the base config explicitly"
        )
    return AutoConfig.from_pretrained(resolve_model(saved.model).path)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path} not found: expected a LoRA adapter folder written by relevance-lens train (or PEFT)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, an over-long number, absurd nesting
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(record).__name__}")
    return record


def _check_lora_config(config: dict, path: Path) -> None:
    """The fields the scaling is computed from: finite numbers, a boolean, regex keys (PEFT's meaning)."""
    pattern = _alpha_pattern(config)
    if not isinstance(pattern, dict):  # [], 0, "" or false included: PEFT's alpha_pattern is a mapping
        raise InputError(f"{path}: alpha_pattern {pattern!r}: expected an object mapping module patterns to alphas")
    alphas = [config.get("lora_alpha"), *pattern.values()]
    if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) for a in alphas):
        raise InputError(
            f"{path}: lora_alpha {config.get('lora_alpha')!r} / alpha_pattern {pattern!r}: expected finite numbers"
        )
    if not isinstance(config.get("use_rslora", False), bool):
        raise InputError(f"{path}: use_rslora {config['use_rslora']!r}: expected true or false")
    for key in pattern:
        try:
            re.compile(key)
        except re.error:
            raise InputError(f"{path}: alpha_pattern key {key!r} is not a regular expression") from None


def _alpha_pattern(config: dict) -> object:
    """``alpha_pattern``, with JSON null read as absent (no per-module alphas), as an omitted key is."""
    pattern = config.get("alpha_pattern")
    return {} if pattern is None else pattern


def _decoder_prefix(base_config) -> str:
    """Where a task model (``*ForSequenceClassification``) keeps its decoder: transformers' ``base_model_prefix``."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(base_config)].base_model_prefix + "."
    except KeyError:
        raise InputError(f"model type {base_config.model_type!r}: transformers has no decoder class for it") from None


def load_adapter_weights(folder: str | Path, base_config=None) -> AdapterWeights:
    """Read ``adapter_config.json`` and ``adapter_model.safetensors`` of a LoRA folder."""
    from peft.utils.other import get_pattern_key
    from safetensors.torch import load_file

    folder = Path(folder)
    config = _read_json(folder / ADAPTER_CONFIG)
    _check_lora_config(config, folder / ADAPTER_CONFIG)
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        raise InputError(f"{path} not found: weight analysis reads PEFT's safetensors adapter file")
    base_config = base_config if base_config is not None else read_base_config(folder)
    tensors = load_file(path)
    # A sequence-classification adapter (Tevatron's) wraps the decoder one level down: ``model.layers...``.
    inner = _decoder_prefix(base_config) if config.get("task_type") == "SEQ_CLS" else ""
    factors = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")].removeprefix(_PREFIX).removeprefix(inner)
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise InputError(f"{path}: {key} has no matching lora_B tensor; the file is incomplete")
        rank = a.shape[0]
        pattern = _alpha_pattern(config)  # checked above: a dict
        alpha = pattern.get(get_pattern_key(pattern.keys(), module), config["lora_alpha"])
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        factors[module] = (b.double(), a.double(), float(scaling))
    if not factors:
        raise InputError(f"{path}: no lora_A/lora_B tensors found")
    arch = architecture_of(base_config)
    return AdapterWeights(folder, config, base_config, arch, num_layers(base_config), factors)


# ---------------------------------------------------------------- spectra


@dataclass
class Spectrum:
    """Singular values (descending) and singular directions of ΔW: left (m, k), right (n, k)."""

    values: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor


def spectrum(b: torch.Tensor, a: torch.Tensor, scaling: float = 1.0) -> Spectrum:
    """SVD of ΔW = scaling · B · A through the r x r core (exact, never forms ΔW)."""
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    u, s, vh = torch.linalg.svd(scaling * rb @ ra.T)
    return Spectrum(s, qb @ u, qa @ vh.T)


def effective_rank(values: torch.Tensor) -> float:
    """exp(entropy of s / sum(s)) (Roy & Vetterli 2007); 0 for an all-zero spectrum."""
    total = float(values.sum())
    if total <= 0:
        return 0.0
    p = values[values > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def numerical_rank(
    values: torch.Tensor, shape: tuple[int, int], eps: float = float(torch.finfo(torch.float32).eps)
) -> int:
    """Singular values above ``s_max · max(m, n) · eps`` (numpy's matrix_rank rule, fp32 eps)."""
    if values.numel() == 0 or float(values.max()) == 0.0:
        return 0
    return int((values > values.max() * max(shape) * eps).sum())


@dataclass
class RoleStats:
    """ΔW statistics of one (layer, role)."""

    layer: int
    role: str
    shape: tuple[int, int]
    frobenius: float
    singular_values: list[float]
    effective_rank: float
    numerical_rank: int

    def metrics(self) -> dict[str, float]:
        """Flat metric -> value pairs for the results store."""
        out = {
            "frobenius": self.frobenius,
            "effective_rank": self.effective_rank,
            "numerical_rank": float(self.numerical_rank),
        }
        out.update({f"sv{i + 1}": v for i, v in enumerate(self.singular_values)})
        return out


def role_stats(weights: AdapterWeights) -> list[RoleStats]:
    """Statistics of every (layer, role) part of the adapter, layer-major, roles in canonical order."""
    stats = []
    for layer, role in weights.parts():
        b, a, scaling = weights.part(layer, role)
        spec = spectrum(b, a, scaling)
        shape = (b.shape[0], a.shape[1])
        stats.append(
            RoleStats(
                layer=layer,
                role=role,
                shape=shape,
                frobenius=float(spec.values.square().sum().sqrt()),
                singular_values=[float(v) for v in spec.values],
                effective_rank=effective_rank(spec.values),
                numerical_rank=numerical_rank(spec.values, shape),
            )
        )
    return stats


# ---------------------------------------------------------------- subspace similarity


def similarity_grid(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """``phi[i-1, j-1] = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j)`` for every i, j."""
    overlap = (u1.T.double() @ u2.double()).square()
    cumulative = overlap.cumsum(0).cumsum(1)
    i = torch.arange(1, u1.shape[1] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, u2.shape[1] + 1, dtype=torch.float64)[None, :]
    return cumulative / torch.minimum(i, j)


def grassmann(u1: torch.Tensor, u2: torch.Tensor, i: int, j: int) -> float:
    """Normalized subspace similarity of the top-i and top-j directions (Hu et al. 2021, Sec. 7)."""
    if not (1 <= i <= u1.shape[1] and 1 <= j <= u2.shape[1]):
        raise InputError(f"phi(i={i}, j={j}): expected 1 <= i <= {u1.shape[1]} and 1 <= j <= {u2.shape[1]}")
    return float(similarity_grid(u1[:, :i], u2[:, :j])[i - 1, j - 1])


@dataclass
class Similarity:
    """Subspace similarity of one (layer, role) between two adapters; ``grid[i-1, j-1]`` = phi(i, j)."""

    layer: int
    role: str
    grid: torch.Tensor

    def metrics(self) -> dict[str, float]:
        """phi(1,1), phi(k,k) for k = the smaller rank, and the mean over the whole grid."""
        k = min(self.grid.shape)
        return {
            "phi@1,1": float(self.grid[0, 0]),
            f"phi@{k},{k}": float(self.grid[k - 1, k - 1]),
            "phi_mean": float(self.grid.mean()),
        }


def compare(first: AdapterWeights, second: AdapterWeights, side: Literal["left", "right"] = "left") -> list[Similarity]:
    """phi between two adapters for every (layer, role) both have.

    ``left`` compares the output-space directions of ΔW (the span of B), ``right`` the
    input-space directions (the span of A, what the LoRA paper's Figure 3 compares).
    """
    if side not in ("left", "right"):
        raise InputError(f"side {side!r}: expected 'left' (output space) or 'right' (input space)")
    if first.arch.family != second.arch.family or first.n_layers != second.n_layers:
        raise InputError(
            f"{first.folder} ({first.arch.family}, {first.n_layers} layers) and {second.folder} "
            f"({second.arch.family}, {second.n_layers} layers): adapters of different base models cannot be compared"
        )
    shared = [p for p in first.parts() if second.part(*p) is not None]
    out = []
    for layer, role in shared:
        s1, s2 = spectrum(*first.part(layer, role)), spectrum(*second.part(layer, role))
        k1, k2 = _nonzero(s1.values), _nonzero(s2.values)
        u1 = (s1.left if side == "left" else s1.right)[:, :k1]
        u2 = (s2.left if side == "left" else s2.right)[:, :k2]
        if k1 and k2:
            out.append(Similarity(layer, role, similarity_grid(u1, u2)))
    return out


def _nonzero(values: torch.Tensor) -> int:
    """Directions with a nonzero singular value (a rank-deficient ΔW's extra directions are arbitrary)."""
    return int((values > values.max() * 1e-10).sum()) if values.numel() else 0
