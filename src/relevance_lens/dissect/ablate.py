"""Switching off parts of a trained LoRA update ΔW = B·A·(alpha/r), and sweeping over them.

A *part* is one (layer, role) of the adapter; a :class:`Variant` is the set of parts that stay
on. The switches that turn parts off live in :mod:`relevance_lens.dissect.switch` (LoRA B rows,
or merged weights).

Concrete sweeps are small functions ``(parts, n_layers) -> [Variant]`` named in the study's
words (:data:`SWEEPS`); one driver, :func:`sweep`, runs any list of variants with any metric
functions, as TransformerLens runs every patching experiment through one
``generic_activation_patch``.

Why sweeps are cheap: per batch, the full adapter and the base model (no adapter) run once
while each block's input is cached (:mod:`relevance_lens.model.hooks`). A variant that agrees with
the full adapter (or with the base) on every layer below L gives exactly the same residual
stream at block L, so it restarts there from the cached tensor; a variant equal to either
reference is not run at all. Dropping one layer at L reruns N-L blocks, not N. Batches are the
outer loop, so the cache holds one batch and memory stays flat.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable, Mapping, Sequence

import torch

from relevance_lens.dissect.evalset import MetricFn, mean
from relevance_lens.dissect.settings import SWEEP_NAMES, SweepConfig
from relevance_lens.dissect.switch import MergedSwitch, Part, lora_parts, merge_blocker, merge_fits, switch_off
from relevance_lens.errors import InputError
from relevance_lens.evaluate.stats import holm, paired_randomization
from relevance_lens.faults import kill_point
from relevance_lens.model.hooks import record_block_inputs, start_at_layer
from relevance_lens.model.roles import MHA_ROLES, MLP_ROLES, ROLES, architecture_of, num_layers
from relevance_lens.score.batching import EncodedPairs, run_from_scores
from relevance_lens.score.scorer import forward_batch

FULL, BASE = "full", "base"


@dataclass(frozen=True)
class PartKind:
    """How a sweep cuts ΔW into parts: which parts an adapter has, and the two switches.

    ``parts(reranker)`` gives the adapter's parts (tuples whose first item is the layer, which
    is all the cached restarts need); ``switch_off(reranker, keep)`` and ``merged(reranker)``
    are the LoRA-row switch and the weight-swap switch for that kind of part. The default,
    :data:`ROLE_PARTS`, is (layer, role); :mod:`relevance_lens.dissect.heads` adds attention heads.
    """

    parts: Callable[..., frozenset]
    switch_off: Callable
    merged: Callable


ROLE_PARTS = PartKind(lora_parts, switch_off, MergedSwitch)


@dataclass(frozen=True)
class Variant:
    """A named set of (layer, role) parts of ΔW that stay on; every other part is off.

    ``layer`` and ``role`` only label the variant for tables and plots (the layer or role it
    is about, when there is one).
    """

    name: str
    keep: frozenset[Part]
    layer: int | None = None
    role: str | None = None


# ---------------------------------------------------------------- variant builders


def _layers_of(parts: frozenset[Part]) -> list[int]:
    return sorted({layer for layer, _ in parts})


def _at(parts: frozenset[Part], layers: Sequence[int] | range) -> frozenset[Part]:
    wanted = set(layers)
    return frozenset(p for p in parts if p[0] in wanted)


def drop_each_layer(parts: frozenset[Part], n_layers: int) -> list[Variant]:
    """Each single layer's update removed, the rest kept: ``-L5``."""
    return [Variant(f"-L{l}", parts - _at(parts, [l]), layer=l) for l in _layers_of(parts)]


def keep_each_layer(parts: frozenset[Part], n_layers: int) -> list[Variant]:
    """One layer's update kept alone: ``L5``."""
    return [Variant(f"L{l}", _at(parts, [l]), layer=l) for l in _layers_of(parts)]


def sliding_windows(parts: frozenset[Part], n_layers: int, width: int = 3, stride: int = 1) -> list[Variant]:
    """Windows of ``width`` consecutive layers kept, everything else off: ``L4-6``.

    ``stride`` > 1 skips start positions (a coarser, cheaper sweep); the top window is always kept.
    """
    if not 1 <= width <= n_layers:
        raise InputError(f"--window {width}: expected a width between 1 and the {n_layers} layers")
    if stride < 1:
        raise InputError(f"--window-stride {stride}: expected a positive integer")
    starts = list(range(0, n_layers - width + 1, stride))
    if starts[-1] != n_layers - width:
        starts.append(n_layers - width)
    return [Variant(f"L{s}-{s + width - 1}", _at(parts, range(s, s + width)), layer=s) for s in starts]


def bottom_up(parts: frozenset[Part], n_layers: int) -> list[Variant]:
    """Layers 0..l kept (cumulative from the bottom): ``L0-l``."""
    return [Variant(f"L0-{l}", _at(parts, range(0, l + 1)), layer=l) for l in range(n_layers)]


def top_down(parts: frozenset[Part], n_layers: int) -> list[Variant]:
    """Layers l..N-1 kept (cumulative from the top): ``Ll-{N-1}``."""
    return [Variant(f"L{l}-{n_layers - 1}", _at(parts, range(l, n_layers)), layer=l) for l in range(n_layers)]


def _with_roles(parts: frozenset[Part], roles: Sequence[str]) -> frozenset[Part]:
    return frozenset(p for p in parts if p[1] in roles)


def _role_groups(parts: frozenset[Part], variants: list[Variant]) -> list[Variant]:
    """MHA only and MLP only (the study's attention-vs-MLP question), unless equal to a variant or to all."""
    groups = []
    for group, members in (("mha", MHA_ROLES), ("mlp", MLP_ROLES)):
        keep = _with_roles(parts, members)
        if keep and all(keep != v.keep for v in variants + groups) and keep != parts:
            groups.append(Variant(group, keep))
    return groups


def _roles_in(parts: frozenset[Part]) -> list[str]:
    return [r for r in ROLES if any(p[1] == r for p in parts)]


def drop_each_role(parts: frozenset[Part], n_layers: int) -> list[Variant]:
    """Each role removed in every layer (``-q``: the study's "which projections can be dropped"); MHA only; MLP only."""
    variants = [Variant(f"-{r}", parts - _with_roles(parts, [r]), role=r) for r in _roles_in(parts)]
    return variants + _role_groups(parts, variants)


def keep_each_role(parts: frozenset[Part], n_layers: int) -> list[Variant]:
    """Each role kept alone in every layer (``q``); MHA only; MLP only."""
    variants = [Variant(r, _with_roles(parts, [r]), role=r) for r in _roles_in(parts)]
    return variants + _role_groups(parts, variants)


def by_role(parts: frozenset[Part], n_layers: int) -> list[Variant]:
    """Each role removed (``-q``) and kept alone (``q``) in every layer; MHA only; MLP only."""
    roles = _roles_in(parts)
    variants = [Variant(f"-{r}", parts - _with_roles(parts, [r]), role=r) for r in roles]
    variants += [Variant(r, _with_roles(parts, [r]), role=r) for r in roles]
    return variants + _role_groups(parts, variants)


def drop_each_layer_role(parts: frozenset[Part], n_layers: int) -> list[Variant]:
    """Each single (layer, role) removed: ``-L5.up``."""
    return [
        Variant(f"-L{l}.{r}", parts - {(l, r)}, l, r) for l, r in sorted(parts, key=lambda p: (p[0], ROLES.index(p[1])))
    ]


def keep_each_layer_role(parts: frozenset[Part], n_layers: int) -> list[Variant]:
    """Each single (layer, role) kept alone: ``L5.up``."""
    return [
        Variant(f"L{l}.{r}", frozenset({(l, r)}), l, r)
        for l, r in sorted(parts, key=lambda p: (p[0], ROLES.index(p[1])))
    ]


Builder = Callable[[frozenset[Part], int], list[Variant]]

#: The named sweeps; each turns the adapter's parts into a list of variants.
SWEEPS: dict[str, Builder] = {
    "drop-layer": drop_each_layer,
    "keep-layer": keep_each_layer,
    "window": partial(sliding_windows, width=3),
    "bottom-up": bottom_up,
    "top-down": top_down,
    "roles": by_role,
    "drop-role": drop_each_role,
    "keep-role": keep_each_role,
    "drop-layer-role": drop_each_layer_role,
    "keep-layer-role": keep_each_layer_role,
}
assert tuple(SWEEPS) == SWEEP_NAMES, "dissect.settings.SWEEP_NAMES names the sweeps for the CLI and study files"


def build_variants(name: str, parts: frozenset[Part], n_layers: int, window: int = 3, stride: int = 1) -> list[Variant]:
    """The variants of a named sweep (``window``/``stride`` shape the ``window`` sweep)."""
    if name not in SWEEPS:
        raise InputError(f"--sweep {name!r}: expected one of {', '.join(SWEEPS)}")
    if not parts:
        raise InputError("the adapter has no LoRA parts to ablate (a head-only run, targets none?)")
    if name == "window":
        return sliding_windows(parts, n_layers, width=window, stride=stride)
    return SWEEPS[name](parts, n_layers)


# ---------------------------------------------------------------- scoring variants


@dataclass
class Work:
    """Forward work in layer-token units (blocks run x padded tokens)."""

    computed: int = 0
    naive: int = 0
    merged: bool = False  # forwards ran on merged weights (dissect.switch), not through LoRA layers

    @property
    def saved(self) -> float:
        return 1.0 - self.computed / self.naive if self.naive else 0.0


def _first_difference(keep: frozenset[Part], reference: frozenset[Part], n_layers: int) -> int:
    """The lowest layer where the two part sets differ (``n_layers`` when they agree)."""
    differ = {p[0] for p in keep ^ reference}
    return min(differ) if differ else n_layers


def restart_plan(keep: frozenset[Part], parts: frozenset[Part], n_layers: int) -> tuple[str, int]:
    """(reference, layer): which cached forward a variant can start from, and at which block."""
    keep = keep & parts
    from_full = _first_difference(keep, parts, n_layers)
    from_base = _first_difference(keep, frozenset(), n_layers)
    return (FULL, from_full) if from_full >= from_base else (BASE, from_base)


def _forward_from(
    reranker, keep: frozenset[Part], tensors, start: int = 0, hidden: torch.Tensor | None = None, switch=None
) -> torch.Tensor:
    """Scores with only ``keep`` switched on, from block ``start`` fed ``hidden`` (0: a full forward)."""
    with (switch or partial(switch_off, reranker))(keep):
        if start == 0:
            return forward_batch(reranker, tensors)
        with start_at_layer(reranker.base_model, architecture_of(reranker.base_config), start, hidden):
            return forward_batch(reranker, tensors)


@torch.inference_mode()
def score_variants(
    reranker,
    variants: Sequence[Variant],
    encoded: EncodedPairs,
    config: SweepConfig | None = None,
    progress=None,
    kind: PartKind = ROLE_PARTS,
) -> tuple[dict[str, list[float]], Work, str | None]:
    """Scores of every pair under the full adapter, the base and each variant.

    Batches are the outer loop; the cache holds one batch's block inputs for the two
    references (2 x layers x batch x length x hidden values), so ``batch_tokens`` bounds it.
    Returns ``({name: scores}, work, fallback)``; ``fallback`` says why the cached path was
    abandoned (None when it was not).
    """
    config = config or SweepConfig()
    with _switch(reranker, config, kind) as switch:
        return _score_variants(reranker, variants, encoded, config, progress, switch, kind)


@contextmanager
def _switch(reranker, config: SweepConfig, kind: PartKind = ROLE_PARTS):
    """The LoRA switch, or the weight swap when ``config.merge`` asks for it and it can run."""
    if config.merge not in ("auto", "on", "off"):
        raise InputError(f"merge {config.merge!r}: expected auto, on or off")
    use = config.merge == "on" or (config.merge == "auto" and merge_blocker(reranker) is None and merge_fits(reranker))
    if not use:
        yield None
        return
    with kind.merged(reranker).active() as switch:
        yield switch


def _score_variants(reranker, variants, encoded, config, progress, switch, kind: PartKind = ROLE_PARTS):
    parts = kind.parts(reranker)
    base_model, arch = reranker.base_model, architecture_of(reranker.base_config)
    n = num_layers(reranker.base_config)
    plans = {v.name: restart_plan(v.keep, parts, n) for v in variants}
    scores = {name: [0.0] * len(encoded.pairs) for name in [FULL, BASE, *plans]}
    work, fallback, cached = Work(merged=switch is not None), None, config.cached
    turn = switch or partial(kind.switch_off, reranker)
    for batch in encoded.batches:
        tensors, tokens = encoded.tensors(reranker, batch), encoded.tokens(batch)
        out: dict[str, torch.Tensor] = {}
        caches: dict[str, dict[int, torch.Tensor]] = {}
        for name, keep in ((FULL, parts), (BASE, frozenset())):
            with turn(keep), record_block_inputs(base_model, arch, keep_final=False) as cache:
                out[name] = forward_batch(reranker, tensors)
            caches[name] = dict(cache) if cached else {}
        restarts = any(0 < layer < n for _, layer in plans.values())
        if cached and restarts and config.verify and fallback is None and work.computed == 0:
            fallback = _verify_restart(reranker, parts, caches[FULL], out[FULL], tensors, n, turn)
            work.computed += (n - n // 2) * tokens
            cached = fallback is None
        work.computed += 2 * n * tokens
        work.naive += (2 + len(variants)) * n * tokens
        for variant in variants:
            source, layer = plans[variant.name]
            start = layer if cached else 0
            if start >= n:  # equal to a reference on every layer: its scores, no forward
                out[variant.name] = out[source]
                continue
            out[variant.name] = _forward_from(reranker, variant.keep, tensors, start, caches[source].get(start), turn)
            work.computed += (n - start) * tokens
            kill_point("ablate.variant")
        for name, values in out.items():
            for i, value in zip(batch, values.tolist()):
                scores[name][i] = value
        if progress is not None:
            progress(len(batch))
    return scores, work, fallback


def _verify_restart(reranker, parts, cache, full_scores, tensors, n: int, switch=None) -> str | None:
    """Restart the full adapter halfway up; it must reproduce the full forward's scores."""
    layer = n // 2
    again = _forward_from(reranker, parts, tensors, layer, cache[layer], switch)
    gap = float((again - full_scores).abs().max())
    tolerance = 1e-3 * (1.0 + float(full_scores.abs().max()))
    if gap <= tolerance:
        return None
    message = (
        f"restarting {reranker.architecture.family} at layer {layer} changed scores by {gap:.3g} "
        "(the model's forward depends on the block list in a way hooks.start_at_layer does not handle); "
        "running every variant in full instead"
    )
    warnings.warn(message, stacklevel=2)
    return message


# ---------------------------------------------------------------- the driver


@dataclass
class VariantResult:
    """One variant's metrics, changes vs the full adapter and the base, and Holm-adjusted p-values."""

    name: str
    layer: int | None
    role: str | None
    n_parts: int
    restart: tuple[str, int]
    metrics: dict[str, float]
    delta_full: dict[str, float]
    delta_base: dict[str, float]
    p_full: dict[str, float]
    p_base: dict[str, float]


@dataclass
class SweepResult:
    """Everything one sweep produced; ``per_query[name][metric]`` holds the raw values."""

    name: str
    full: dict[str, float]
    base: dict[str, float]
    variants: list[VariantResult]
    work: Work
    n_queries: int
    n_parts: int
    fallback: str | None = None
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict, repr=False)
    scores: dict[str, list[float]] = field(default_factory=dict, repr=False)
    shared_with: tuple[str, ...] = ()  # sweeps scored in the same forwards
    pass_work: Work | None = None  # the forwards of that shared pass (``work`` is this sweep's as if run alone)

    def summary(self) -> dict:
        return {
            "sweep": self.name,
            "work": asdict(self.work),
            "saved": self.work.saved,
            "fallback": self.fallback,
            "shared_with": list(self.shared_with),
        }


def sweep(
    reranker,
    variants: Sequence[Variant],
    encoded: EncodedPairs,
    metrics: Mapping[str, MetricFn],
    config: SweepConfig | None = None,
    *,
    name: str = "sweep",
    progress=None,
    kind: PartKind = ROLE_PARTS,
) -> SweepResult:
    """Run any list of variants; score with each metric function; test each against full and base.

    ``kind`` says what a part is (default (layer, role); :data:`relevance_lens.dissect.heads.HEAD_PARTS`).

    The p-values are paired randomization tests over queries (variant vs full adapter, and
    variant vs base), Holm-adjusted across the variants of this sweep, per metric and
    comparison.
    """
    return sweeps(reranker, {name: variants}, encoded, metrics, config, progress=progress, kind=kind)[0]


def sweeps(
    reranker,
    named: Mapping[str, Sequence[Variant]],
    encoded: EncodedPairs,
    metrics: Mapping[str, MetricFn],
    config: SweepConfig | None = None,
    *,
    progress=None,
    kind: PartKind = ROLE_PARTS,
) -> list[SweepResult]:
    """Several sweeps over one set of forwards, one :class:`SweepResult` each, as :func:`sweep` gives.

    The references (full adapter and base) run once for all of them, not once per sweep, and a
    variant two sweeps share (the same parts on) runs once. Each sweep's statistics are its own
    (Holm across its variants only), so a result equals its sweep run alone. So does ``work``:
    what this sweep would have cost alone (a record must not depend on which sweeps happened to
    run together, e.g. when a killed study resumes); ``pass_work`` is what the shared pass cost,
    ``shared_with`` names the other sweeps in it.
    """
    config = config or SweepConfig()
    for name, variants in named.items():
        names = [v.name for v in variants]
        clash = {FULL, BASE} & set(names) or {n for n in names if names.count(n) > 1}
        if clash:
            raise InputError(f"sweep {name}: variant names must be unique and not 'full' or 'base': {sorted(clash)}")
    if not metrics:
        raise InputError("sweep: expected at least one metric function")
    parts = kind.parts(reranker)
    unique: dict[frozenset, str] = {}  # the parts a variant keeps on -> the name it is scored under
    for variants in named.values():
        for v in variants:
            unique.setdefault(v.keep & parts, f"#{len(unique)}")
    was_training = reranker.training
    reranker.eval()  # LoRA dropout off
    try:
        with torch.inference_mode():
            to_score = [Variant(key, keep) for keep, key in unique.items()]
            scored, work, fallback = score_variants(reranker, to_score, encoded, config, progress, kind)
    finally:
        reranker.train(was_training)
    n = num_layers(reranker.base_config)
    tokens = [encoded.tokens(b) for b in encoded.batches]
    work.naive = sum(2 + len(variants) for variants in named.values()) * n * sum(tokens)
    per_query_of = {
        key: {m: fn(run_from_scores(encoded.pairs, scored[key])) for m, fn in metrics.items()} for key in scored
    }
    results = []
    for name, variants in named.items():
        keys = {FULL: FULL, BASE: BASE, **{v.name: unique[v.keep & parts] for v in variants}}
        per_query = {v: per_query_of[key] for v, key in keys.items()}
        scores = {v: scored[key] for v, key in keys.items()}
        alone, own_fallback = work_alone(variants, parts, n, tokens, config, fallback, work.merged)
        results.append(_sweep_result(name, variants, parts, n, per_query, scores, metrics, config, alone, own_fallback))
        results[-1].shared_with = tuple(other for other in named if other != name)
        results[-1].pass_work = work
    return results


def work_alone(variants, parts, n: int, tokens: Sequence[int], config: SweepConfig, fallback, merged: bool):
    """(work, fallback) of :func:`score_variants` run on ``variants`` alone, from a shared pass's outcome.

    The accounting is ``score_variants``'s own, replayed: the two references per batch, the
    restart check on the first batch when a variant restarts mid-model, each variant from its
    restart layer (or from the bottom once the check has failed). The check's outcome is the
    shared pass's: it ran on the same first batch with the same references.
    """
    plans = [restart_plan(v.keep, parts, n)[1] for v in variants]
    restarts = config.cached and any(0 < layer < n for layer in plans)
    checked = restarts and config.verify
    own_fallback = fallback if checked else None
    cached = config.cached and own_fallback is None
    work = Work(merged=merged)
    for i, t in enumerate(tokens):
        if checked and i == 0:
            work.computed += (n - n // 2) * t
        work.computed += (
            2 * n * t + sum(n - (layer if cached else 0) for layer in plans if not (cached and layer >= n)) * t
        )
        work.naive += (2 + len(variants)) * n * t
    return work, own_fallback


def _sweep_result(name, variants, parts, n, per_query, scores, metrics, config, work, fallback) -> SweepResult:
    results = [_variant_result(v, parts, n, per_query, metrics, config) for v in variants]
    _holm_in_place(results, metrics)
    some_metric = next(iter(metrics))
    return SweepResult(
        name=name,
        full={m: mean(per_query[FULL][m]) for m in metrics},
        base={m: mean(per_query[BASE][m]) for m in metrics},
        variants=results,
        work=work,
        n_queries=len(per_query[FULL][some_metric]),
        n_parts=len(parts),
        fallback=fallback,
        per_query=per_query,
        scores=scores,
    )


def _paired(a: Mapping[str, float], b: Mapping[str, float], config: SweepConfig) -> float:
    qids = sorted(a)
    return paired_randomization([a[q] for q in qids], [b[q] for q in qids], config.permutations, config.seed)


def _variant_result(variant, parts, n, per_query, metrics, config) -> VariantResult:
    values = per_query[variant.name]
    aggregate = {m: mean(values[m]) for m in metrics}
    return VariantResult(
        name=variant.name,
        layer=variant.layer,
        role=variant.role,
        n_parts=len(variant.keep & parts),
        restart=restart_plan(variant.keep, parts, n),
        metrics=aggregate,
        delta_full={m: aggregate[m] - mean(per_query[FULL][m]) for m in metrics},
        delta_base={m: aggregate[m] - mean(per_query[BASE][m]) for m in metrics},
        p_full={m: _paired(values[m], per_query[FULL][m], config) for m in metrics},
        p_base={m: _paired(values[m], per_query[BASE][m], config) for m in metrics},
    )


def _holm_in_place(results: list[VariantResult], metrics: Mapping[str, MetricFn]) -> None:
    for attr in ("p_full", "p_base"):
        for m in metrics:
            adjusted = holm([getattr(r, attr)[m] for r in results])
            for r, p in zip(results, adjusted):
                getattr(r, attr)[m] = p
