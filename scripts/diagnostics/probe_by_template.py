"""Which input order gives the frozen embedded model a linear reading of relevance at the scored position?

The listwise probe of ``relevance_lens.train.probe`` (the ``--head-init probe`` head) is fitted on
the frozen SmolLM2-135M's states at the scored (EOS) position, at layers 8, 15, 22 and 30 (the last,
after the final norm), for the first N_FIT training groups of the default recipe's data (seed 42), and
scores the next N_HELD groups, for two templates:

* query first, ``query: {query} document: {title} {text}`` (RankLLaMA's);
* query last, ``document: {title} {text} query: {query}``, a long passage cut inside the passage
  (as ``Reranker.encode`` cuts it) so the query is kept.

Chance: loss ln 8 = 2.079, top-1 1/8. Usage (fp32, one thread: about 8 min a template on a 2-core EPYC):
    OMP_NUM_THREADS=1 .venv/bin/python scripts/diagnostics/probe_by_template.py [N_FIT N_HELD]
"""

import math
import sys
import time

import torch
import torch.nn.functional as F

from relevance_lens.train.config import load_config
from relevance_lens.train.groups import GroupDataset, load_groups
from relevance_lens.train.probe import fit_group_probe
from relevance_lens.train.trainer import build_model

N_FIT, N_HELD = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (64, 64)
TEMPLATES = {
    "query first": "query: {query} document: {title} {text}",
    "query last": "document: {title} {text} query: {query}",
}
LAYERS = (8, 15, 22, 30)

config = load_config(None, output="unused", precision="fp32")
groups = load_groups(config)
groups.check(config.group_size)
dataset = GroupDataset(groups, config.group_size, 1, config.seed)
reranker = build_model(config).eval()  # LoRA's B is zero: the frozen model


def features(first: int, last: int) -> dict[int, torch.Tensor]:
    """Per layer, the scored position's states (groups, G, hidden) of groups ``first``..``last``-1."""
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in LAYERS}
    for start in range(first, last, 4):
        items = [dataset[i] for i in range(start, min(start + 4, last))]
        batch = reranker.collate(reranker.encode([(it["query"], p) for it in items for p in it["passages"]]))
        with torch.inference_mode():
            states = reranker.backbone(**batch, output_hidden_states=True)
        scored = batch["attention_mask"].sum(1) - 1
        rows = torch.arange(len(scored))
        for layer in LAYERS:
            h = states.hidden_states[layer] if layer < len(states.hidden_states) - 1 else states.last_hidden_state
            out[layer].append(h[rows, scored].float().view(len(items), config.group_size, -1))
    return {layer: torch.cat(parts) for layer, parts in out.items()}


print(f"chance: loss {math.log(config.group_size):.3f}, top-1 {1 / config.group_size:.3f}", flush=True)
target = torch.zeros(N_HELD, dtype=torch.long)
for name, template in TEMPLATES.items():
    reranker.settings.template = template
    started = time.time()
    fit, held = features(0, N_FIT), features(N_FIT, N_FIT + N_HELD)
    for layer in LAYERS:
        cells = []
        for l2 in (1e-3, 1e-2, 1e-1):
            scores = held[layer] @ fit_group_probe(fit[layer], l2)
            top1 = (scores.argmax(-1) == 0).float().mean().item()
            cells.append(f"l2 {l2:g}: loss {F.cross_entropy(scores, target).item():.3f} top-1 {top1:.3f}")
        print(f"{name}, layer {layer}: " + " | ".join(cells), flush=True)
    print(f"{name}: {time.time() - started:.0f} s", flush=True)
