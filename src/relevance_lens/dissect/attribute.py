"""Token attributions: how much each token of a query-passage pair contributes to its score.

Integrated gradients (Sundararajan, Taly and Yan, 2017) on the input embeddings, the output of
the model's own input-embedding module (so Gemma's embedding scale and GPT-2's position
embeddings stay inside the model): with input embeddings ``x`` and a baseline ``x'``,

    attribution_t = sum_d (x - x')_td * ∫_0^1 ∂F(x' + α (x - x')) / ∂x_td dα,

the integral by composite Gauss-Legendre quadrature, adaptive (:func:`integrated_gradients`): it
starts with ``steps`` nodes and halves the sub-intervals whose own completeness check fails.
Completeness says the attributions sum to ``F(x) - F(x')``; every pair's gap and the gradient
steps it took are measured and stored, and a gap still above the tolerance when ``max_steps`` are
spent is reported. Baselines, stated in every row's config:

* ``pad``: every position holds the pad token's embedding (the tokenizer's pad, else EOS):
  "no text", the same length;
* ``zero``: every embedding zero.

The fine-tuned reranker (``adapter``) is compared with the same trained head on the frozen
base model (``head-base``: every LoRA part switched off), as the lens's ``--adapter-off`` does.
Gradients need fp32 for completeness to hold at the stated tolerance, so the analysis scores
in fp32 whatever the scoring dtype.
"""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from relevance_lens.dissect.analyses import _print, describe_adapter, load_reranker
from relevance_lens.dissect.evalset import EvalSet
from relevance_lens.dissect.switch import lora_parts, switch_off
from relevance_lens.errors import InputError
from relevance_lens.model.reranker import pool_last
from relevance_lens.score.config import ScoreConfig
from relevance_lens.store import Store, config_hash, normalize

BASELINES = ("pad", "zero")


@dataclass
class Attribution:
    """One pair's token attributions and the numbers completeness is checked with."""

    tokens: list[str]
    values: list[float]
    score: float  # F(x)
    baseline_score: float  # F(x')
    steps: int = 0  # gradient evaluations the path integral took (quadrature nodes, all intervals)
    intervals: int = 1  # sub-intervals of [0, 1] the nodes were placed on

    @property
    def gap(self) -> float:
        """|sum of attributions - (F(x) - F(x'))|, relative to |F(x) - F(x')|."""
        difference = self.score - self.baseline_score
        return abs(sum(self.values) - difference) / max(abs(difference), 1e-6)


#: Gauss-Legendre nodes per sub-interval of the composite rule (one batch of path points).
NODES = 8


def _score_embeds(reranker, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reranker's score from input embeddings (its forward, entered after the embedding module)."""
    out = reranker.hidden_states(None, mask, inputs_embeds=embeds)
    pooled = pool_last(out.last_hidden_state, mask)
    return reranker.score(pooled.to(reranker.score.weight.dtype)).squeeze(-1)


def integrated_gradients(
    reranker,
    ids: Sequence[int],
    baseline: str = "pad",
    steps: int = 32,
    chunk: int = 8,
    *,
    tolerance: float | None = None,
    max_steps: int | None = None,
) -> Attribution:
    """Integrated gradients of the score of one tokenized pair (``ids`` as :meth:`Reranker.tokenize` gives).

    The path integral is a composite Gauss-Legendre rule: ``steps`` nodes on equal sub-intervals of
    [0, 1] (up to :data:`NODES` nodes each). With ``tolerance`` it is adaptive: every sub-interval
    [a, b] is checked against its own completeness, its attributions' sum against F(b) - F(a) (two
    forward passes, exact), and the sub-intervals that miss most (as many as carry the excess) are
    halved until the summed misses are within ``tolerance`` of |F(x) - F(x')|, or ``max_steps`` gradient
    evaluations are spent. Why: on a trained model the score along the straight path is not
    smooth at the scale of a few nodes; it rises and falls steeply over 1% of the path (measured on
    the demo's SmolLM2-135M adapter: |dF/dα| up to ~340 where F(x) - F(x') is ~11, in fp32), which
    a fixed rule of 32 or even 64 nodes does not resolve (gaps of 150-400%), while most of the
    path needs few nodes.
    """
    if baseline not in BASELINES:
        raise InputError(f"baseline {baseline!r}: expected one of {', '.join(BASELINES)}")
    if steps < 1 or chunk < 1:
        raise InputError(f"steps {steps} / chunk {chunk}: expected positive integers")
    if max_steps is not None and max_steps < steps:
        raise InputError(f"max_steps {max_steps} < steps {steps}: expected a budget of at least the initial steps")
    batch = {k: v.to(reranker.device) for k, v in reranker.collate([list(ids)]).items()}
    embed = reranker.backbone.get_input_embeddings()
    with torch.no_grad():
        x = embed(batch["input_ids"])
        reference = (
            torch.zeros_like(x) if baseline == "zero" else embed(torch.full_like(batch["input_ids"], reranker.pad_id))
        )
    count = max(1, steps // NODES)
    per = steps // count
    path = _Path(reranker, x, reference, batch["attention_mask"], per, chunk)
    edges = [i / count for i in range(count + 1)]
    ends = path.scores(edges)
    at = dict(zip(edges, ends))
    parts = {(a, b): v for (a, b), v in zip(zip(edges, edges[1:]), path.integrals(list(zip(edges, edges[1:]))))}
    used = count * per
    difference = abs(ends[-1] - ends[0])
    while tolerance is not None:
        misses = {ab: abs(float(v.sum()) - (at[ab[1]] - at[ab[0]])) for ab, v in parts.items()}
        allowed = tolerance * max(difference, 1e-6)
        if sum(misses.values()) <= allowed:
            break
        room = ((max_steps if max_steps is not None else used) - used) // (2 * per)
        # The worst sub-intervals first, only as many as carry the excess: the budget goes to the
        # steep stretches of the path, not to every sub-interval a little over its share.
        split, excess = [], sum(misses.values()) - allowed
        for ab in sorted(parts, key=lambda ab: -misses[ab])[:room]:
            if excess <= 0:
                break
            split.append(ab)
            excess -= misses[ab]
        if not split:
            break
        middles = [(a + b) / 2 for a, b in split]
        at.update(zip(middles, path.scores(middles)))
        halves = [h for (a, b), m in zip(split, middles) for h in ((a, m), (m, b))]
        for ab in split:
            del parts[ab]
        parts.update(zip(halves, path.integrals(halves)))
        used += len(halves) * per
    values = torch.stack(list(parts.values())).sum(0)
    tokens = [reranker.tokenizer.decode([i]) for i in ids]
    return Attribution(tokens, values.tolist(), ends[-1], ends[0], used, len(parts))


@dataclass
class _Path:
    """The straight path from the baseline to the input embeddings, and its integrals."""

    reranker: Any
    x: torch.Tensor
    reference: torch.Tensor
    mask: torch.Tensor
    nodes: int  # Gauss-Legendre nodes per sub-interval
    chunk: int  # path points per backward pass

    def points(self, alphas: torch.Tensor) -> torch.Tensor:
        return self.reference + alphas.view(-1, 1, 1) * (self.x - self.reference)

    def scores(self, alphas: Sequence[float]) -> list[float]:
        """F at points of the path (forward passes only)."""
        out = []
        with torch.no_grad():
            for start in range(0, len(alphas), self.chunk):
                a = torch.tensor(alphas[start : start + self.chunk], dtype=self.x.dtype, device=self.x.device)
                out += _score_embeds(self.reranker, self.points(a), self.mask.expand(len(a), -1)).tolist()
        return out

    def integrals(self, intervals: Sequence[tuple[float, float]]) -> list[torch.Tensor]:
        """Per sub-interval [a, b], each token's (x - x') · ∫_a^b ∂F/∂x dα by Gauss-Legendre."""
        unit, weights = np.polynomial.legendre.leggauss(self.nodes)  # on [-1, 1]
        alphas = [a + (b - a) * (u + 1) / 2 for a, b in intervals for u in unit]
        scale = [(b - a) / 2 * w for a, b in intervals for w in weights]
        delta = (self.x - self.reference)[0]
        per_node = []
        for start in range(0, len(alphas), self.chunk):
            a = torch.tensor(alphas[start : start + self.chunk], dtype=self.x.dtype, device=self.x.device)
            w = torch.tensor(scale[start : start + self.chunk], dtype=self.x.dtype, device=self.x.device)
            point = self.points(a).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(
                _score_embeds(self.reranker, point, self.mask.expand(len(a), -1)).sum(), point
            )
            per_node.append(w.view(-1, 1) * (grad * delta).sum(-1))
        found = torch.cat(per_node).view(len(intervals), self.nodes, -1).sum(1)
        return list(found.detach())


def chosen_pairs(evalset: EvalSet, query_ids: Sequence[str], n: int) -> list[tuple[str, str]]:
    """Per query (``query_ids``, else the first ``n`` scored queries): its first relevant passage
    in the first stage's top-``depth`` and the first non-relevant one there."""
    known = evalset.query_ids
    missing = [q for q in query_ids if q not in known]
    if missing:
        raise InputError(
            f"--query-id {', '.join(missing)}: not a scored query of {evalset.name} (judged, in the run, within "
            f"--max-queries); e.g. {', '.join(known[:3])}"
        )
    pairs = []
    for qid in list(query_ids) or known[:n]:
        ranked = evalset.first_stage()[qid]
        judged = evalset.qrels.get(qid, {})
        relevant = [d for d in ranked if judged.get(d, 0) > 0][:1]
        other = [d for d in ranked if judged.get(d, 0) <= 0][:1]
        pairs += [(qid, d) for d in relevant + other]
    return pairs


def analyze_attribute(
    adapter_dir: str | Path,
    evalset: EvalSet,
    *,
    settings,
    store: Store | None = None,
    score: ScoreConfig | None = None,
    force: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Token attributions of chosen pairs under the fine-tuned reranker and the base + head.

    Rows: analysis ``attribute``, variant ``<adapter|head-base> <qid>/<docid>``; per token
    ``layer`` = its position, ``role`` = its text, metric ``attribution``; per pair (no layer)
    ``score``, ``baseline_score``, ``completeness_gap`` (relative) and ``relevant`` (its qrel).
    """
    score = dataclasses.replace(score or ScoreConfig(depth=evalset.depth), dtype="fp32")
    info = describe_adapter(adapter_dir)
    config = {
        **evalset.describe(),
        "dtype": "fp32",
        "baseline": settings.baseline,
        "steps": settings.steps,
        "max_steps": settings.max_steps,
        "tolerance": settings.tolerance,
        "pairs": settings.pairs,
        "query_ids": sorted(settings.query_ids) or None,
        "method": "integrated gradients on input embeddings (adaptive composite Gauss-Legendre)",
    }
    if store is not None and not force and store.has(info.run, "attribute", checkpoint=info.checkpoint, config=config):
        rows = [
            r
            for r in store.rows(run=info.run, checkpoint=info.checkpoint, analysis="attribute")
            if r["config_hash"] == config_hash(config)
        ]
        _print(console, _attribute_table(rows, settings.tolerance))
        return rows
    pairs = chosen_pairs(evalset, settings.query_ids, settings.pairs)
    reranker = load_reranker(adapter_dir, None, score)
    has_lora = bool(lora_parts(reranker))
    rows = []
    for variant, switch in (("adapter", nullcontext()), ("head-base", switch_off(reranker, frozenset()))):
        if variant == "head-base" and not has_lora:  # a head-only run: its base + head is the adapter
            continue
        with switch:
            for qid, docid in pairs:
                ids = reranker.encode([(evalset.queries[qid], evalset.corpus[docid])])[0]
                found = integrated_gradients(
                    reranker,
                    ids,
                    settings.baseline,
                    settings.steps,
                    tolerance=settings.tolerance,
                    max_steps=settings.max_steps,
                )
                rows += _attribution_rows(info, f"{variant} {qid}/{docid}", found, evalset, qid, docid, config)
                if found.gap > settings.tolerance:
                    warnings.warn(
                        f"attribute {variant} {qid}/{docid}: attributions miss the score difference by "
                        f"{found.gap:.1%} (> {settings.tolerance:.0%}) after {found.steps} gradient steps; raise "
                        f"--max-steps (now {settings.max_steps})",
                        stacklevel=2,
                    )
    rows = [normalize(r) for r in rows]
    if store is not None:
        store.append(rows)
    _print(console, _attribute_table(rows, settings.tolerance))
    return rows


def _attribution_rows(info, variant: str, found: Attribution, evalset, qid, docid, config) -> list[dict[str, Any]]:
    row = lambda **kw: info.row(analysis="attribute", variant=variant, n_queries=1, config_json=config, **kw)  # noqa: E731
    rows = [
        row(layer=t, role=text, metric="attribution", value=v)
        for t, (text, v) in enumerate(zip(found.tokens, found.values))
    ]
    rows += [
        row(metric="score", value=found.score),
        row(metric="baseline_score", value=found.baseline_score),
        row(metric="completeness_gap", value=found.gap),
        row(metric="steps", value=float(found.steps)),
        row(metric="relevant", value=float(evalset.qrels.get(qid, {}).get(docid, 0))),
    ]
    return rows


def _attribute_table(rows, tolerance: float) -> Table:
    table = Table(title="attribute: integrated gradients (sum of attributions vs score difference)")
    for column in ("pair", "relevant", "score", "baseline", "Σ attributions", "gap", "steps", "top tokens"):
        table.add_column(column, justify="left" if column in ("pair", "top tokens") else "right")
    by: dict[str, dict] = {}
    for r in rows:
        entry = by.setdefault(r["variant"], {"tokens": []})
        if r["metric"] == "attribution":
            entry["tokens"].append((r["value"], r["role"]))
        else:
            entry[r["metric"]] = r["value"]
    for variant, e in by.items():
        top = sorted(e["tokens"], key=lambda t: -abs(t[0]))[:4]
        gap = e.get("completeness_gap", float("nan"))
        table.add_row(
            variant,
            f"{e.get('relevant', 0):g}",
            f"{e.get('score', float('nan')):.3f}",
            f"{e.get('baseline_score', float('nan')):.3f}",
            f"{sum(v for v, _ in e['tokens']):.3f}",
            f"{gap:.1%}{'' if gap <= tolerance else ' (!)'}",
            f"{e.get('steps', float('nan')):.0f}",
            " ".join(f"{t!r}:{v:+.2f}" for v, t in top),
        )
    return table


def attribute_runner(inputs, settings, ctx) -> list[dict[str, Any]]:
    """The registry's runner for ``attribute``."""
    return analyze_attribute(
        inputs.target,
        inputs.evalset,
        settings=settings,
        store=ctx.store,
        score=ctx.score,
        force=ctx.force,
        console=ctx.console,
    )
