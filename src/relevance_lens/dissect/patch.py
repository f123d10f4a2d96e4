"""Activation patching: where in the network the score difference between a relevant and a
non-relevant passage is carried.

Per query, a pair of first-stage candidates: the top-ranked relevant passage (the *source*, or
clean run) and the top-ranked non-relevant one (the *target*, or corrupt run). The source run's
activations are cached; the target run is repeated with one activation replaced by the source's,
at one layer and one class of token positions, and

    moved = (s_patched - s_target) / (s_source - s_target)

says how much of the score difference that activation carries: 1 the whole difference, 0 none.
What is patched (``components``):

* ``resid``: the residual stream after a decoder block (the block's output hidden state);
* ``attn``: the attention sublayer's output, ``mlp``: the MLP sublayer's output, each the output
  of the module the role table names for o and down
  (:data:`relevance_lens.model.roles.SUBLAYER_ROLES`), LoRA update included.

Positions (``positions``), from the tokens' character offsets
(:meth:`relevance_lens.model.reranker.Reranker.token_spans`): ``passage`` (the passage's tokens),
``last`` (the scored token: EOS when it is appended), ``query`` (every other one: BOS, the query
and the template's own text, before the passage or after it), and ``all``. Patching ``resid``
at all positions of any one layer makes the rest of the target run the source run, so it moves
exactly 1 (the tests hold every family to it). With a query-first template a causal model's
states at the query positions are the same in both runs (same tokens, nothing later is seen),
so patching ``query`` alone moves nothing; what the query contributes reaches the score through
the passage positions' attention. With the query after the passage (``document: ... query: ...``)
the query's positions read the passage, and patching them can move the score.

Alignment: positions must line up, so both passages are cut to the same number of passage
tokens (the shorter one's), keeping the template's prefix and suffix and EOS; the scores
``s_source`` and ``s_target`` are those of the cut inputs, built from the reranker's own
encoding (so the scored position is the one scoring uses). A pair whose prefix or suffix tokens
differ (a tokenizer merging across the boundary) is left out and counted (``unaligned pairs``);
a pair whose two scores differ by less than ``min_gap`` under a model is left out of that
model's means and counted (``skipped pairs``).

Models, side by side: the fine-tuned reranker (``adapter``), the same trained head on the frozen
base (``head-base``: every LoRA part switched off, as the lens's ``--adapter-off``), and
optionally ΔW-ablated models (``drop-mha``: the attention roles' update switched off;
``drop-mlp``: the MLP roles'), switched as the ablation sweeps switch parts
(:func:`relevance_lens.dissect.switch.switch_off`). A model equal to one already run (``drop-mlp``
of an attention-only adapter) is not run again.

Cost: per model and pair, one source and one target forward, then one batched forward of the
target per (component, position) whose rows are the layers (row ``l`` patches layer ``l``): so
``models x pairs x (2 + components x positions x layers)`` sequence forwards. In fp32, as
``attribute``, so that a full transfer is 1 up to float rounding.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Collection, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console
from rich.table import Table

from relevance_lens.dissect.analyses import _print, describe_adapter, load_reranker
from relevance_lens.dissect.evalset import EvalSet
from relevance_lens.dissect.settings import PATCH_ABLATIONS, PATCH_COMPONENTS, PATCH_POSITIONS
from relevance_lens.dissect.switch import lora_parts, switch_off
from relevance_lens.errors import InputError
from relevance_lens.model.hooks import patch_outputs, record_outputs
from relevance_lens.model.roles import MHA_ROLES, MLP_ROLES, architecture_of, component_module, num_layers
from relevance_lens.score.config import ScoreConfig
from relevance_lens.store import Store, config_hash, normalize

#: What each ablated model switches off (its roles' LoRA parts, in every layer).
ABLATED_ROLES = {"drop-mha": MHA_ROLES, "drop-mlp": MLP_ROLES}
assert tuple(ABLATED_ROLES) == PATCH_ABLATIONS, "dissect.settings.PATCH_ABLATIONS names the ablated models"
ALIGNMENT = (
    "both passages cut to the shorter one's passage tokens; template prefix, query, template suffix and EOS kept"
)

# ---------------------------------------------------------------- pairs and positions


@dataclass(frozen=True)
class PatchPair:
    """One query's source (relevant) and target (non-relevant) passage."""

    qid: str
    source: str
    target: str


def chosen_pairs(evalset: EvalSet, n: int) -> list[PatchPair]:
    """The first ``n`` scored queries (in the eval set's order) with a relevant and a non-relevant
    passage in the first stage's top-``depth``: the top-ranked of each."""
    pairs = []
    for qid in evalset.query_ids:
        ranked = evalset.first_stage()[qid]
        judged = evalset.qrels.get(qid, {})
        relevant = [d for d in ranked if judged.get(d, 0) > 0]
        other = [d for d in ranked if judged.get(d, 0) <= 0]
        if relevant and other:
            pairs.append(PatchPair(qid, relevant[0], other[0]))
        if len(pairs) == n:
            break
    if not pairs:
        raise InputError(
            f"eval set {evalset.name}: no scored query has both a relevant and a non-relevant passage in the "
            f"first stage's top {evalset.depth}; raise --depth"
        )
    return pairs


@dataclass
class AlignedPair:
    """Token ids of a pair cut to one length, and a (length,) bool mask per position class."""

    pair: PatchPair
    source_ids: list[int]
    target_ids: list[int]
    masks: dict[str, torch.Tensor]
    passage_tokens: int


def position_masks(length: int, passage_start: int, passage_end: int | None = None) -> dict[str, torch.Tensor]:
    """Bool masks over ``length`` positions: ``passage`` from ``passage_start`` to ``passage_end``
    (default: to the last position), ``last`` (the scored position), ``query`` every other one (the
    query and the template's own text, before or after the passage), and ``all``."""
    index = torch.arange(length)
    last = index == length - 1
    end = length - 1 if passage_end is None else passage_end
    passage = (index >= passage_start) & (index < end) & ~last
    return {
        "query": ~passage & ~last,
        "passage": passage,
        "last": last,
        "all": torch.ones(length, dtype=torch.bool),
    }


def align_pair(reranker, evalset: EvalSet, pair: PatchPair) -> AlignedPair | None:
    """Both passages tokenized as scoring does, cut to the shorter passage; None when the two
    inputs' prefix or suffix tokens differ, so no cut lines their positions up."""
    query = evalset.queries[pair.qid]
    (src, s0, s1), (tgt, t0, t1) = (reranker.token_spans(query, evalset.corpus[d]) for d in (pair.source, pair.target))
    if src[:s0] != tgt[:t0] or src[s1:] != tgt[t1:]:
        return None
    n = min(s1 - s0, t1 - t0)
    source_ids = src[: s0 + n] + src[s1:]
    target_ids = tgt[: t0 + n] + tgt[t1:]
    return AlignedPair(pair, source_ids, target_ids, position_masks(len(source_ids), s0, s0 + n), n)


# ---------------------------------------------------------------- the patching driver


def component_modules(reranker, component: str) -> dict[int, torch.nn.Module]:
    """``{layer: module}`` whose output is ``component`` (:func:`relevance_lens.model.roles.component_module`)."""
    base = reranker.base_model
    arch = architecture_of(reranker.base_config)
    return {layer: component_module(base, arch, layer, component) for layer in range(num_layers(reranker.base_config))}


def _batch(reranker, ids: list[int], rows: int) -> dict[str, torch.Tensor]:
    return {k: v.to(reranker.device) for k, v in reranker.collate([ids] * rows).items()}


@torch.inference_mode()
def run_and_cache(reranker, ids: list[int], components: Sequence[str]) -> tuple[float, dict[str, dict]]:
    """The score of ``ids`` and, per component, ``{layer: output (1, seq, hidden)}`` of that run."""
    modules = {(c, layer): m for c in components for layer, m in component_modules(reranker, c).items()}
    with record_outputs(modules) as cache:
        score = float(reranker(**_batch(reranker, ids, 1))[0])
    found: dict[str, dict] = {c: {} for c in components}
    for (c, layer), tensor in cache.items():
        found[c][layer] = tensor
    return score, found


@torch.inference_mode()
def patched_scores(
    reranker,
    target_ids: list[int],
    sources: dict[int, torch.Tensor],
    component: str,
    rows: Sequence[tuple[Collection[int], torch.Tensor]],
    batch_tokens: int = 8192,
) -> list[float]:
    """Scores of the target input with, per row, the ``component`` outputs of the row's layers
    replaced by ``sources`` (``{layer: (1, seq, hidden)}``) where the row's mask (``(seq,)`` bool) is
    true. Rows run batched, ``batch_tokens`` padded tokens at a time."""
    modules = component_modules(reranker, component)
    length = len(target_ids)
    per_batch = max(1, batch_tokens // max(1, length))
    scores: list[float] = []
    for start in range(0, len(rows), per_batch):
        chunk = rows[start : start + per_batch]
        off = torch.zeros(length, dtype=torch.bool)
        masks = {
            layer: torch.stack([mask if layer in layers else off for layers, mask in chunk])
            for layer in sorted({layer for layers, _ in chunk for layer in layers})
        }
        unknown = set(masks) - set(modules)
        if unknown:
            raise InputError(f"patch layers {sorted(unknown)}: expected layers 0..{len(modules) - 1} of this model")
        with patch_outputs(modules, sources, masks):
            scores += reranker(**_batch(reranker, target_ids, len(chunk))).float().tolist()
    return scores


@dataclass
class PairResult:
    """One aligned pair under one model: its two scores and the patched scores per layer."""

    pair: PatchPair
    source_score: float
    target_score: float
    patched: dict[tuple[str, str], list[float]]  # (component, position) -> score per layer

    @property
    def gap(self) -> float:
        return self.source_score - self.target_score

    def moved(self, component: str, position: str) -> list[float]:
        return [(s - self.target_score) / self.gap for s in self.patched[component, position]]


def patch_pair(
    reranker, aligned: AlignedPair, components: Sequence[str], positions: Sequence[str], batch_tokens: int = 8192
) -> PairResult:
    """Every layer patched, one at a time, per (component, position class)."""
    source_score, cache = run_and_cache(reranker, aligned.source_ids, components)
    target_score, _ = run_and_cache(reranker, aligned.target_ids, ())
    n = num_layers(reranker.base_config)
    patched = {}
    for component in components:
        for position in positions:
            rows = [({layer}, aligned.masks[position]) for layer in range(n)]
            patched[component, position] = patched_scores(
                reranker, aligned.target_ids, cache[component], component, rows, batch_tokens
            )
    return PairResult(aligned.pair, source_score, target_score, patched)


# ---------------------------------------------------------------- models


def models(reranker, ablated: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """``(name, switch context)`` per model: the adapter, the base + head and the ablated ones asked
    for, each once (a model whose parts equal an earlier one's is left out)."""
    parts = lora_parts(reranker)
    seen = [parts]
    yield "adapter", nullcontext()
    if not parts:  # a head-only run: its base + head is the adapter
        return
    seen.append(frozenset())
    yield "head-base", switch_off(reranker, frozenset())
    for name in ablated:
        keep = frozenset(p for p in parts if p[1] not in ABLATED_ROLES[name])
        if keep in seen:
            warnings.warn(
                f"patch {name}: the adapter has no such parts to drop, or it equals a model run already; skipped",
                stacklevel=2,
            )
            continue
        seen.append(keep)
        yield name, switch_off(reranker, keep)


# ---------------------------------------------------------------- the analysis


def analyze_patch(
    adapter_dir: str | Path,
    evalset: EvalSet,
    *,
    settings,
    store: Store | None = None,
    score: ScoreConfig | None = None,
    force: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Activation patching from relevant into non-relevant passages under each model.

    Rows: analysis ``patch``; per model and component, variant ``<model> <component>``,
    ``layer``, ``role`` = the position class, metrics ``moved`` (mean over the pairs kept) and
    ``moved sd``; per pair, variant ``<model> <component> <qid>``, metric ``patched score``, and
    variant ``<model> <qid>`` with ``source score``, ``target score``, ``passage tokens``; per
    model, variant ``<model>`` with ``pairs``, ``skipped pairs`` and ``unaligned pairs``.
    """
    score = dataclasses.replace(score or ScoreConfig(depth=evalset.depth), dtype="fp32")
    info = describe_adapter(adapter_dir)
    pairs = chosen_pairs(evalset, settings.pairs)
    components = [c for c in PATCH_COMPONENTS if c in settings.components]
    positions = [p for p in PATCH_POSITIONS if p in settings.positions]
    config = {
        **evalset.describe(),
        "dtype": "fp32",
        "pairs_asked": settings.pairs,
        "components": components,
        "positions": positions,
        "ablated": sorted(set(settings.ablated)),
        "min_gap": settings.min_gap,
        "pairs": [[p.qid, p.source, p.target] for p in pairs],
        "alignment": ALIGNMENT,
        "measure": "moved = (patched - target) / (source - target)",
    }
    if store is not None and not force and store.has(info.run, "patch", checkpoint=info.checkpoint, config=config):
        rows = [
            r
            for r in store.rows(run=info.run, checkpoint=info.checkpoint, analysis="patch")
            if r["config_hash"] == config_hash(config)
        ]
        for table in _patch_tables(rows):
            _print(console, table)
        return rows
    reranker = load_reranker(adapter_dir, None, score)
    aligned = [a for a in (align_pair(reranker, evalset, p) for p in pairs) if a is not None]
    unaligned = len(pairs) - len(aligned)
    rows: list[dict[str, Any]] = []
    for model, switch in models(reranker, sorted(set(settings.ablated), key=PATCH_ABLATIONS.index)):
        with switch:
            results = [patch_pair(reranker, a, components, positions, score.batch_tokens) for a in aligned]
        rows += _model_rows(info, model, results, aligned, unaligned, settings.min_gap, config)
    rows = [normalize(r) for r in rows]
    if store is not None:
        store.append(rows)
    for table in _patch_tables(rows):
        _print(console, table)
    return rows


def _model_rows(info, model: str, results: list[PairResult], aligned, unaligned: int, min_gap: float, config):
    row = lambda n, **kw: info.row(analysis="patch", n_queries=n, config_json=config, **kw)  # noqa: E731
    kept = [r for r in results if abs(r.gap) >= min_gap]
    out = [
        row(len(kept), variant=model, metric="pairs", value=float(len(kept))),
        row(len(kept), variant=model, metric="skipped pairs", value=float(len(results) - len(kept))),
        row(len(kept), variant=model, metric="unaligned pairs", value=float(unaligned)),
    ]
    for result, a in zip(results, aligned):
        qid = result.pair.qid
        out += [
            row(1, variant=f"{model} {qid}", metric="source score", value=result.source_score),
            row(1, variant=f"{model} {qid}", metric="target score", value=result.target_score),
            row(1, variant=f"{model} {qid}", metric="passage tokens", value=float(a.passage_tokens)),
        ]
        for (component, position), scores in result.patched.items():
            out += [
                row(
                    1, variant=f"{model} {component} {qid}", layer=layer, role=position, metric="patched score", value=s
                )
                for layer, s in enumerate(scores)
            ]
    if not kept:
        return out
    for component, position in kept[0].patched:
        per_pair = [r.moved(component, position) for r in kept]
        for layer in range(len(per_pair[0])):
            values = [m[layer] for m in per_pair]
            mean = sum(values) / len(values)
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            common = dict(variant=f"{model} {component}", layer=layer, role=position)
            out += [
                row(len(kept), metric="moved", value=mean, **common),
                row(len(kept), metric="moved sd", value=sd, **common),
            ]
    return out


def _patch_tables(rows) -> list[Table]:
    """Per model and component: moved (mean over pairs) per layer and position class."""
    cells: dict[str, dict[tuple[int, str], float]] = {}
    counts: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["metric"] == "moved":
            cells.setdefault(r["variant"], {})[r["layer"], r["role"]] = r["value"]
        elif r["metric"] in ("pairs", "skipped pairs", "unaligned pairs"):
            counts.setdefault(r["variant"], {})[r["metric"]] = r["value"]
    tables = []
    for variant, grid in cells.items():
        model = variant.split(" ")[0]
        n = counts.get(model, {})
        table = Table(
            title=f"patch {variant}: share of the score difference moved, mean over {n.get('pairs', 0):.0f} pairs "
            f"({n.get('skipped pairs', 0):.0f} skipped below min_gap, {n.get('unaligned pairs', 0):.0f} unaligned)"
        )
        positions = [p for p in PATCH_POSITIONS if any(p == q for _, q in grid)]
        table.add_column("layer", justify="right")
        for p in positions:
            table.add_column(p, justify="right")
        for layer in sorted({layer for layer, _ in grid}):
            table.add_row(str(layer), *[f"{grid[layer, p]:.3f}" if (layer, p) in grid else "-" for p in positions])
        tables.append(table)
    return tables


def patch_runner(inputs, settings, ctx) -> list[dict[str, Any]]:
    """The registry's runner for ``patch``."""
    return analyze_patch(
        inputs.target,
        inputs.evalset,
        settings=settings,
        store=ctx.store,
        score=ctx.score,
        force=ctx.force,
        console=ctx.console,
    )
