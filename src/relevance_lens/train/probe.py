"""Linear probing before fine-tuning (LP-FT): fit the score head on the frozen model's features first.

A random head reads the final state through a random direction, which at the appended EOS is
dominated by a few massive-activation coordinates that vary between passages without tracking
relevance: the first steps then go to "every passage scores the same" (loss ln G) and LoRA gets
its gradient through a direction that means nothing. Fitting the head first (Kumar et al. 2022,
"Fine-Tuning can Distort Pretrained Features") starts fine-tuning from the frozen model's best
linear reading of relevance instead, so LoRA's first gradients already point somewhere useful.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from relevance_lens.model.reranker import Reranker, pool_last


@torch.no_grad()
def probe_features(reranker: Reranker, dataset: Dataset, collator, n_groups: int, batch: int = 4) -> torch.Tensor:
    """Pooled final states (n_groups, G, hidden) of the first ``n_groups`` training groups, in fp32."""
    was_training = reranker.training
    reranker.eval()
    chunks = []
    for start in range(0, min(n_groups, len(dataset)), batch):
        items = [dataset[i] for i in range(start, min(start + batch, n_groups, len(dataset)))]
        inputs = collator(items)
        group_size = int(inputs.pop("group_size"))
        inputs = {k: v.to(reranker.device) for k, v in inputs.items()}
        out = reranker.hidden_states(**inputs)
        pooled = pool_last(out.last_hidden_state, inputs["attention_mask"]).float().cpu()
        chunks.append(pooled.view(-1, group_size, pooled.shape[-1]))
    reranker.train(was_training)
    return torch.cat(chunks)


def fit_group_probe(features: torch.Tensor, l2: float) -> torch.Tensor:
    """Head weights minimising the listwise loss (positive at column 0) + ``l2``·|w|² on standardised features.

    Standardising first keeps the penalty from favouring the massive coordinates; the weights are
    mapped back to raw features (the mean's shift is the same for every passage of a group, so the
    listwise loss and the ranking do not see it, and no bias is needed).
    """
    flat = features.reshape(-1, features.shape[-1])
    scale = flat.std(0).clamp_min(1e-6)
    z = (features - flat.mean(0)) / scale
    w = torch.zeros(features.shape[-1], dtype=torch.float64, requires_grad=True)
    z = z.double()
    target = torch.zeros(z.shape[0], dtype=torch.long)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w, target) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return (w.detach() / scale.double()).float()


def init_head_by_probe(reranker: Reranker, dataset: Dataset, collator, n_groups: int, l2: float) -> dict:
    """Set the score head to the fitted probe; returns what was fitted, for the run record."""
    features = probe_features(reranker, dataset, collator, n_groups)
    weights = fit_group_probe(features, l2)
    with torch.no_grad():
        reranker.score.weight.copy_(weights.view_as(reranker.score.weight))
        scores = features @ weights
        loss = torch.nn.functional.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long)).item()
    return {"groups": int(features.shape[0]), "l2": l2, "train_loss": round(loss, 4)}
