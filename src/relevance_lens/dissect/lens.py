"""Where in the stack relevance becomes readable: a logit lens with the trained score head,
and optional per-layer linear probes.

Lens: the residual stream entering each block (and leaving the last one) is taken at the
scored position (the last real token), passed through the model's final norm
(``arch.final_norm``) and the trained score head, and the eval set is ranked by it. Layer
``l`` in ``0..N`` is the stream entering block ``l``; layer ``N`` is the model's own score.

The states come from pre-hooks on the blocks and on the final norm, not from
``output_hidden_states``: in transformers 5.x the last entry of ``hidden_states`` is the
*normed* ``last_hidden_state`` (``capture_outputs(tie_last_hidden_states=True)``), the other
entries are not, so the hooks give one uniform un-normed stream and the norm is applied
exactly once.

Probe: per layer, a ridge regression or a small L2 logistic regression (torch, no
scikit-learn) on the standardized last-token states, fitted on a train split's pairs
(label = judged relevant) and used to rank the eval split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from relevance_lens.dissect.evalset import MetricFn, mean
from relevance_lens.dissect.settings import LensConfig, ProbeKind
from relevance_lens.errors import InputError
from relevance_lens.model.hooks import final_norm, record_block_inputs
from relevance_lens.model.reranker import pool_last
from relevance_lens.model.roles import architecture_of, num_layers
from relevance_lens.score.batching import EncodedPairs, run_from_scores
from relevance_lens.score.scorer import forward_batch


@dataclass
class LayerStates:
    """Per pair and layer: the lens score, and (when kept) the raw last-token state."""

    scores: torch.Tensor  # (pairs, N + 1), float32
    states: torch.Tensor | None  # (pairs, N + 1, hidden), float32


@torch.inference_mode()
def layer_states(reranker, encoded: EncodedPairs, keep_states: bool = False) -> LayerStates:
    """Lens scores (final norm + score head on every layer's last-token state) for all pairs."""
    base, arch = reranker.base_model, architecture_of(reranker.base_config)
    norm, n = final_norm(base, arch), num_layers(reranker.base_config)
    n_pairs = len(encoded.pairs)
    scores = torch.zeros(n_pairs, n + 1)
    states = torch.zeros(n_pairs, n + 1, reranker.base_config.hidden_size) if keep_states else None
    was_training = reranker.training
    reranker.eval()
    try:
        for batch in encoded.batches:
            tensors = encoded.tensors(reranker, batch)
            with record_block_inputs(base, arch, keep_final=True) as cache:
                forward_batch(reranker, tensors)  # the scorer's forward; the hooks keep each layer's input
            pooled = torch.stack([pool_last(cache[l], tensors["attention_mask"]) for l in range(n + 1)], 1)
            head = reranker.score(norm(pooled).to(reranker.score.weight.dtype)).squeeze(-1)
            index = torch.tensor(batch)
            scores[index] = head.float().cpu()
            if states is not None:
                states[index] = pooled.float().cpu()
    finally:
        reranker.train(was_training)
    return LayerStates(scores, states)


# ---------------------------------------------------------------- probes


@dataclass
class Probe:
    """A fitted linear scorer on standardized features: ``((x - mean) / std) @ w + b``."""

    mean: torch.Tensor
    std: torch.Tensor
    w: torch.Tensor
    b: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std) @ self.w + self.b


def _standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.double()
    mu = x.mean(0)
    sd = x.std(0, unbiased=False)
    sd = torch.where(sd > 1e-12, sd, torch.ones_like(sd))  # constant features stay 0
    return (x - mu) / sd, mu, sd


def fit_ridge(x: torch.Tensor, y: torch.Tensor, l2: float = 1.0) -> Probe:
    """Least squares with an L2 penalty on the weights (not the intercept), closed form."""
    z, mu, sd = _standardize(x)
    y = y.double()
    ybar = y.mean()
    gram = z.T @ z + l2 * torch.eye(z.shape[1], dtype=torch.float64)
    w = torch.linalg.lstsq(gram, z.T @ (y - ybar)).solution  # lstsq: safe when l2 = 0 and X is rank deficient
    return Probe(mu, sd, w, float(ybar))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1.0, steps: int = 100) -> Probe:
    """L2-regularized logistic regression (mean log-loss + l2/n ||w||^2 / 2), full-batch LBFGS."""
    z, mu, sd = _standardize(x)
    y = y.double()
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optim = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optim.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + 0.5 * l2 / len(y) * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optim.step(closure)
    return Probe(mu, sd, w.detach(), float(b.detach()))


def fit_probe(kind: ProbeKind, x: torch.Tensor, y: torch.Tensor, config: LensConfig) -> Probe:
    if y.min() == y.max():
        raise InputError(
            "probe training pairs are all relevant or all non-relevant: use a split with judged positives and negatives"
        )
    if kind == "ridge":
        return fit_ridge(x, y, config.l2)
    return fit_logistic(x, y, config.l2, config.steps)


def labels(encoded: EncodedPairs, qrels: Mapping[str, Mapping[str, int]]) -> torch.Tensor:
    """1.0 for pairs judged relevant (relevance > 0), else 0.0 (unjudged counts as not relevant)."""
    return torch.tensor([1.0 if qrels.get(q, {}).get(d, 0) > 0 else 0.0 for q, d in encoded.pairs])


# ---------------------------------------------------------------- the curve


@dataclass
class LensResult:
    """Per layer (0..N): metric values of the head lens and, if fitted, of the probe."""

    lens: list[dict[str, float]]
    probe: list[dict[str, float]] | None
    probe_kind: str
    n_queries: int
    per_query: dict[str, list[dict[str, dict[str, float]]]] = field(default_factory=dict, repr=False)


def _curve(
    encoded: EncodedPairs, scores: torch.Tensor, metrics: Mapping[str, MetricFn]
) -> list[dict[str, dict[str, float]]]:
    return [
        {m: fn(run_from_scores(encoded.pairs, scores[:, l].tolist())) for m, fn in metrics.items()}
        for l in range(scores.shape[1])
    ]


def lens_curve(
    reranker,
    encoded: EncodedPairs,
    metrics: Mapping[str, MetricFn],
    config: LensConfig | None = None,
    *,
    train: EncodedPairs | None = None,
    train_qrels: Mapping[str, Mapping[str, int]] | None = None,
) -> LensResult:
    """Per-layer metrics of the head lens, and of a probe fitted on ``train`` when asked."""
    config = config or LensConfig()
    if not metrics:
        raise InputError("lens: expected at least one metric function")
    probing = config.probe != "none"
    if probing and (train is None or train_qrels is None):
        raise InputError(f"--probe {config.probe}: needs a train split to fit on (pass --probe-split train)")
    evaluated = layer_states(reranker, encoded, keep_states=probing)
    per_query = {"lens": _curve(encoded, evaluated.scores, metrics)}
    if probing:
        fitted = layer_states(reranker, train, keep_states=True)
        y = labels(train, train_qrels)
        probe_scores = torch.stack(
            [
                fit_probe(config.probe, fitted.states[:, l], y, config)(evaluated.states[:, l]).float()
                for l in range(fitted.states.shape[1])
            ],
            1,
        )
        per_query["probe"] = _curve(encoded, probe_scores, metrics)
    aggregate = {k: [{m: mean(v[m]) for m in metrics} for v in curve] for k, curve in per_query.items()}
    some_metric = next(iter(metrics))
    return LensResult(
        lens=aggregate["lens"],
        probe=aggregate.get("probe"),
        probe_kind=config.probe,
        n_queries=len(per_query["lens"][0][some_metric]),
        per_query=per_query,
    )
