"""Does the frozen embedded model carry a linear reading of relevance at the scored (EOS) position?

Fits the listwise probe of ``relevance_lens.train.probe`` (the ``--head-init probe`` head) on the
frozen SmolLM2-135M's pooled states of the first 64 training groups of the default recipe (seed 42)
and scores held-out groups 128-255 with it, for several L2 penalties. Chance: loss ln 8 = 2.079,
top-1 1/8. Usage: .venv/bin/python scripts/diagnostics/probe_frozen_features.py
"""

import math

import torch
import torch.nn.functional as F

from relevance_lens.train.config import load_config
from relevance_lens.train.groups import GroupCollator, GroupDataset, load_groups
from relevance_lens.train.probe import fit_group_probe, probe_features
from relevance_lens.train.trainer import build_model

config = load_config(None, output="unused")
groups = load_groups(config)
groups.check(config.group_size)
dataset = GroupDataset(groups, config.group_size, 1, config.seed)
reranker = build_model(config)  # LoRA's B is zero: the frozen model
features = probe_features(reranker, dataset, GroupCollator(reranker), 256)
fit, held_out = features[:64], features[128:]
target = torch.zeros(len(held_out), dtype=torch.long)
print(f"chance: loss {math.log(config.group_size):.3f}, top-1 {1 / config.group_size:.3f}")
for l2 in (0.0, 1e-4, 1e-3, 1e-2, 1e-1):
    scores = held_out @ fit_group_probe(fit, l2)
    top1 = (scores.argmax(-1) == 0).float().mean().item()
    print(f"l2 {l2:g}: held-out loss {F.cross_entropy(scores, target).item():.3f}, top-1 {top1:.3f}")
