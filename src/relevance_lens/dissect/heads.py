"""Head-level ablation of ΔW: which attention heads carry the update.

A *head part* is ``(layer, role, head)``: one head's slice of an attention role's update, cut
where the role table says (:func:`relevance_lens.model.roles.head_rows`): output rows of q, k
and v (GPT-NeoX's per-head fused q|k|v and GPT-2's contiguous one included), input columns of o.
For k and v, ``head`` counts key/value heads: under grouped-query attention (GQA) several query
heads read one key/value head. MLP roles stay whole parts, ``(layer, role, None)``.

The sweeps remove (or keep alone) one *unit* at a time:

* a query head ``L5.h3``: its q rows and o columns, plus the k and v rows of its key/value head
  when no other head reads them (multi-head attention);
* under GQA, a shared key/value head ``L5.kv1``: its k and v rows, read by a group of heads.

Both run through the one sweep driver (:func:`relevance_lens.dissect.ablate.sweep`) with
:data:`HEAD_PARTS`: the same cached restarts (a head of layer L restarts at block L), merged
weights, and paired randomization tests Holm-adjusted across the sweep. The switches zero the
LoRA B rows (q, k, v) or LoRA A columns (o) of the heads switched off, so ΔW = B·A·α/r loses
exactly those rows or columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console

from relevance_lens.dissect.ablate import PartKind, Variant, sweep
from relevance_lens.dissect.analyses import _ablate_rows, _ablate_table, _print, describe_adapter, load_reranker
from relevance_lens.dissect.evalset import EvalSet, encode_evalset, ir_metrics
from relevance_lens.dissect.settings import DEFAULT_METRICS, HEAD_SWEEP_NAMES, SweepConfig
from relevance_lens.dissect.switch import MergedSwitch, _delta, lora_modules, lora_parts
from relevance_lens.errors import InputError
from relevance_lens.model.roles import HEAD_ROLES, architecture_of, head_count, head_rows, kv_head_of, num_layers
from relevance_lens.score.config import ScoreConfig
from relevance_lens.store import Store, config_hash, normalize

HeadPart = tuple[int, str, int | None]

# ---------------------------------------------------------------- which head parts exist


def head_parts(reranker) -> frozenset[HeadPart]:
    """The adapter's parts cut by head: every head of every (layer, attention role) it adapts,
    and its MLP roles whole (head ``None``)."""
    config = reranker.base_config
    return frozenset(
        (layer, role, h)
        for layer, role in lora_parts(reranker)
        for h in (range(head_count(config, role)) if role in HEAD_ROLES else [None])
    )


def _off_indices(config, arch, layer: int, role: str, keep: frozenset) -> torch.Tensor | None:
    """Rows (q, k, v) or columns (o) of ``role`` in ``layer`` switched off; None when all of it is off."""
    if role not in HEAD_ROLES:
        return None if (layer, role, None) not in keep else torch.empty(0, dtype=torch.long)
    off = [h for h in range(head_count(config, role)) if (layer, role, h) not in keep]
    return torch.cat([head_rows(config, arch, role, h) for h in off]) if off else torch.empty(0, dtype=torch.long)


@contextmanager
def head_switch_off(reranker, keep: frozenset) -> Iterator[None]:
    """Zero the LoRA rows of every head part not in ``keep``; restore them on exit.

    q, k, v heads: their output rows of B (in a fused q|k|v, the role table's rows); o heads:
    their input columns of A; an MLP role: its whole B. ``keep=frozenset()`` is the base model.
    """
    config = reranker.base_config
    arch = architecture_of(config)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for module, layer, roles in lora_modules(reranker).values():
                for role in roles:
                    off = _off_indices(config, arch, layer, role, keep)
                    if off is not None and not len(off):
                        continue
                    table = module.lora_A if role == "o" else module.lora_B
                    for name in module.active_adapters:
                        if name not in table:
                            continue
                        weight = table[name].weight
                        saved.append((weight, weight.detach().clone()))
                        if off is None:
                            weight.zero_()
                        elif role == "o":
                            weight[:, off.to(weight.device)] = 0
                        else:
                            weight[off.to(weight.device)] = 0
        yield
    finally:
        with torch.no_grad():
            for weight, original in reversed(saved):  # a fused module saved once per role: oldest copy last
                weight.copy_(original)


class MergedHeadSwitch(MergedSwitch):
    """:class:`relevance_lens.dissect.switch.MergedSwitch` for head parts: each module points at
    ``W``, ``W + ΔW``, or ``W`` plus the kept heads' rows or columns of ΔW (built when asked)."""

    def __init__(self, reranker):
        super().__init__(reranker)
        parts = head_parts(reranker)
        config = reranker.base_config
        self.units = [
            frozenset(
                p
                for role in slot.roles
                for p in (
                    (slot.layer, role, h) for h in (range(head_count(config, role)) if role in HEAD_ROLES else [None])
                )
                if p in parts
            )
            for slot in self.slots
        ]

    @contextmanager
    def __call__(self, keep: frozenset) -> Iterator[None]:
        for slot, units in zip(self.slots, self.units):
            kept = units & keep
            if not kept:
                slot.weight.data = slot.base
            elif kept == units:
                slot.weight.data = slot.merged
            else:
                slot.weight.data = self._partial(slot, frozenset(keep))
        yield

    def _partial(self, slot, keep: frozenset) -> torch.Tensor:
        with torch.inference_mode(False), torch.no_grad(), head_switch_off(self.reranker, keep):
            return (slot.base.float() + _delta(slot.module).float()).to(slot.base.dtype)


#: Head parts for the sweep driver (:class:`relevance_lens.dissect.ablate.PartKind`).
HEAD_PARTS = PartKind(head_parts, head_switch_off, MergedHeadSwitch)

# ---------------------------------------------------------------- units and sweeps


def head_units(parts: frozenset[HeadPart], config) -> list[tuple[str, int, frozenset[HeadPart]]]:
    """``(label, layer, parts)`` per unit: each query head (``h3``: q rows, o columns, and its
    key/value head's k and v rows when it reads them alone) and each shared key/value head
    (``kv1``, GQA only). Units with no part in the adapter are left out."""
    heads, kv_heads = head_count(config, "q"), head_count(config, "k")
    shared = kv_heads < heads
    units = []
    for layer in sorted({p[0] for p in parts}):
        for h in range(heads):
            own = {(layer, "q", h), (layer, "o", h)}
            if not shared:
                own |= {(layer, "k", kv_head_of(config, h)), (layer, "v", kv_head_of(config, h))}
            units.append((f"h{h}", layer, frozenset(own) & parts))
        if shared:
            units += [(f"kv{g}", layer, frozenset({(layer, "k", g), (layer, "v", g)}) & parts) for g in range(kv_heads)]
    return [u for u in units if u[2]]


def drop_each_head(parts: frozenset[HeadPart], n_layers: int, config) -> list[Variant]:
    """Each head's share of ΔW removed, the rest kept: ``-L5.h3``, ``-L5.kv1``."""
    return [Variant(f"-L{layer}.{label}", parts - own, layer, label) for label, layer, own in head_units(parts, config)]


def keep_each_head(parts: frozenset[HeadPart], n_layers: int, config) -> list[Variant]:
    """Each head's share of ΔW kept alone: ``L5.h3``, ``L5.kv1``."""
    return [Variant(f"L{layer}.{label}", own, layer, label) for label, layer, own in head_units(parts, config)]


#: The named head sweeps.
HEAD_SWEEPS = {"drop-head": drop_each_head, "keep-head": keep_each_head}
assert tuple(HEAD_SWEEPS) == HEAD_SWEEP_NAMES, "dissect.settings.HEAD_SWEEP_NAMES names the head sweeps"


def build_head_variants(name: str, parts: frozenset[HeadPart], config, layers: Sequence[int] = ()) -> list[Variant]:
    """The variants of a named head sweep, optionally only for the heads of ``layers``."""
    if name not in HEAD_SWEEPS:
        raise InputError(f"--sweep {name!r}: expected one of {', '.join(HEAD_SWEEPS)}")
    n = num_layers(config)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise InputError(f"--layer {bad}: expected layers 0..{n - 1} of this model")
    if not any(p[1] in HEAD_ROLES for p in parts):
        raise InputError(
            "the adapter has no attention (q, k, v, o) LoRA parts to cut into heads (targets mlp or none?)"
        )
    variants = HEAD_SWEEPS[name](parts, n, config)
    return [v for v in variants if not layers or v.layer in set(layers)]


# ---------------------------------------------------------------- the analysis


def analyze_heads(
    adapter_dir: str | Path,
    evalset: EvalSet,
    sweeps: Sequence[str] = ("drop-head",),
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    layers: Sequence[int] = (),
    sweep_config: SweepConfig | None = None,
    store: Store | None = None,
    score: ScoreConfig | None = None,
    force: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Head sweeps on one adapter. Rows: analysis ``heads``, variant ``-L5.h3`` (drop) or
    ``L5.h3`` (keep), ``layer`` 5, ``role`` the unit (``h3``, or ``kv1`` for a shared key/value
    head); per metric the value, ``<metric> Δfull`` and ``<metric> Δbase`` with Holm-adjusted
    p-values, as :func:`relevance_lens.dissect.analyses.analyze_ablate` writes them."""
    score = score or ScoreConfig(depth=evalset.depth)
    sweep_config = sweep_config or SweepConfig()
    info = describe_adapter(adapter_dir)
    fns = ir_metrics(evalset, metrics)
    reranker = encoded = None
    rows: list[dict[str, Any]] = []
    for name in sweeps:
        config = {
            **evalset.describe(),
            "dtype": score.dtype,
            "sweep": name,
            "layers": sorted(layers) or None,
            "permutations": sweep_config.permutations,
            "seed": sweep_config.seed,
        }
        done = store is not None and not force
        if done and store.has(info.run, "heads", checkpoint=info.checkpoint, config=config):
            rows += [
                r
                for r in store.rows(run=info.run, checkpoint=info.checkpoint, analysis="heads")
                if r["config_hash"] == config_hash(config)
            ]
            continue
        if reranker is None:
            reranker = load_reranker(adapter_dir, None, score)
            encoded = encode_evalset(reranker, evalset, score.batch_tokens, score.max_batch)
        variants = build_head_variants(name, head_parts(reranker), reranker.base_config, layers)
        result = sweep(reranker, variants, encoded, fns, sweep_config, name=name, kind=HEAD_PARTS)
        new = [normalize(r) for r in _ablate_rows(info, "heads", result, config)]
        if store is not None:
            store.append(new)
        rows += new
        _print(console, _ablate_table(result, list(metrics)))
    return rows


def heads_runner(inputs, settings, ctx) -> list[dict[str, Any]]:
    """The registry's runner for ``heads``."""
    return analyze_heads(
        inputs.target,
        inputs.evalset,
        settings.sweeps,
        inputs.metrics,
        layers=settings.layers,
        sweep_config=settings.sweep_config(),
        store=ctx.store,
        score=ctx.score,
        force=ctx.force,
        console=ctx.console,
    )
