"""Fast scoring: the scores of :class:`relevance_lens.score.scorer.PlainScorer`, in less time.

Each path is optional and tested against the plain forward (``tests/test_fastscore.py``):

* **LoRA merged** (``merge_lora``): ΔW = B·A·(alpha/r) is added into the base weights, so a
  forward costs what the base model costs. A reranker loaded for one scoring run
  (:func:`relevance_lens.score.config.load_for_scoring`, marked ``scoring_only``) is merged in
  place: no second copy of a 7B backbone. Any other reranker is merged into a *copy*, so the
  caller keeps its separate, switchable LoRA (the ablation sweeps need it); unmerging in place
  instead would not give the caller its weights back, since W + ΔW - ΔW rounds in bf16.
* **bf16 weights**: the scoring model keeps the dtype :func:`relevance_lens.score.config.prepare` chose (bf16
  where the hardware has fast bf16 matmuls), not autocast, which re-casts every weight per call.
* **Length-bucketed batches**: pairs are sorted by the length that is actually computed and cut
  under a padded-token budget, so padding stays near zero.
* **SDPA attention**: the scoring model is switched to ``torch.nn.functional.scaled_dot_product_attention``.
* **No padding mask** (``Reranker.forward(causal_only=True)``): batches are right-padded, so
  causal attention alone keeps each real token from its row's pads; the backbone gets no padding
  mask and SDPA runs its mask-free causal kernel (bit-identical scores on SmolLM2 at 512 tokens,
  ~18% less forward time there; one compiled graph instead of one with and one without a mask).
  Batches that reuse a shared prefix keep their mask: their prefix is left-padded.
* **Shared query prefix** (``share_prefix``): the candidates of one query share the tokens of
  ``query: {query} document:``. Their longest common prefix *of the token ids the plain path
  feeds the model* is run once per query; its key/value cache is reused by every candidate,
  which then computes only its own suffix. Taking the prefix from the full tokenization (not by
  tokenizing the query part alone) makes it exact by construction: BPE merges across the
  boundary, BOS and truncation are whatever the plain path produced. Causal attention makes the
  prefix's states independent of what follows; suffix positions continue from the prefix
  length, so rotary and learned position embeddings see the same positions as in a full
  forward.
* **Compiled decoder blocks** (``compile``): ``torch.compile`` of each block (dynamic shapes),
  which fuses the element-wise work (RMSNorm, rotary, SiLU·up) that dominates a small model's
  CPU forward. Compiling takes seconds to tens of seconds, so ``auto`` compiles only when the
  job's tokens pay it back at the rates this machine measured (:mod:`relevance_lens.score.paths`;
  ``benchmarks/bench_scoring.py`` measures both paths).

Everything works on token-id tensors; there is no Python loop over tokens.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from relevance_lens.model.backbone import cache_keyword, set_attention
from relevance_lens.model.compile import can_compile, compile_blocks
from relevance_lens.model.reranker import Reranker, pool_last
from relevance_lens.score.batching import batches, encode_texts, require_finite
from relevance_lens.score.config import SCORING_ONLY, ScoreConfig
from relevance_lens.score.paths import BatchTimer, calibration_key, choose_compile, lookup, record

#: A compiled run records its rate and compile cost only from this many batches on: with fewer,
#: the compile's stall is most of the batches and no steady rate can be told from it.
MIN_TIMED_BATCHES = 4


@dataclass
class FastPlan:
    """What a :class:`FastScorer` decided, with the reasons for each path it did not take."""

    merged: bool = False
    in_place: bool = False
    share_prefix: bool = False
    compiled: bool = False
    attention: str = ""
    dtype: str = ""
    notes: list[str] = field(default_factory=list)
    #: compile="auto": the figures the choice was made from (score.paths.choose_compile).
    compile_reason: str = ""


# ---------------------------------------------------------------- the scoring copy


def scoring_copy(reranker: Reranker, *, merge: bool = True) -> Reranker:
    """A separate :class:`Reranker` for inference: LoRA merged (when ``merge``), eval mode.

    The caller's reranker is not touched: its LoRA stays unmerged and switchable.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecated properties, read by deepcopy
        backbone = copy.deepcopy(reranker.backbone)
    if merge and hasattr(backbone, "merge_and_unload"):
        backbone = backbone.merge_and_unload()
    fast = Reranker(backbone, reranker.tokenizer, reranker.settings, reranker.source)
    fast.score.to(device=reranker.score.weight.device, dtype=reranker.score.weight.dtype)
    fast.score.load_state_dict(reranker.score.state_dict())
    return fast.eval().requires_grad_(False)


def merged_in_place(reranker: Reranker, *, merge: bool = True) -> Reranker:
    """``reranker`` itself made ready for inference: LoRA merged into its base weights, eval mode.

    The same arithmetic as :func:`scoring_copy` (PEFT's ``merge_and_unload``) without the copy;
    the reranker's LoRA is gone afterwards, so only a reranker that is not reused may come here.
    """
    if merge and hasattr(reranker.backbone, "merge_and_unload"):
        reranker.backbone = reranker.backbone.merge_and_unload()
    return reranker.eval().requires_grad_(False)


def use_sdpa(reranker: Reranker) -> str:
    """Switch the backbone's attention to SDPA where transformers supports it; returns the one in use."""
    return set_attention(reranker, "sdpa")


# ---------------------------------------------------------------- shared prefixes


def common_prefix(ids: Sequence[Sequence[int]], cap: int | None = None) -> int:
    """Length of the longest common prefix of ``ids``, leaving at least one token per sequence.

    One sequence alone shares nothing (0): there is nothing to reuse its prefix for.
    """
    if len(ids) < 2:
        return 0
    shortest = min(len(x) for x in ids) - 1
    if cap is not None:
        shortest = min(shortest, cap)
    if shortest <= 0:
        return 0
    block = np.array([x[:shortest] for x in ids], dtype=np.int64)
    differs = (block != block[0]).any(axis=0)
    return int(differs.argmax()) if differs.any() else shortest


def prefix_cap(reranker: Reranker) -> int | None:
    """The longest prefix the KV cache holds whole: sliding-window layers keep ``window - 1`` tokens."""
    window = getattr(reranker.base_config, "sliding_window", None)
    types = getattr(reranker.base_config, "layer_types", None) or []
    if window and (not types or any("sliding" in str(t) for t in types)):
        return max(int(window) - 2, 0)
    return None


def prefix_blocker(reranker: Reranker) -> str | None:
    """None when the shared-prefix path applies to this model; otherwise why not."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    try:
        cache = DynamicCache(config=reranker.base_config)
    except Exception as exc:  # a model family transformers builds no dynamic cache for
        return f"no dynamic KV cache for {type(reranker.base_model).__name__} ({exc})"
    kinds = {type(layer) for layer in getattr(cache, "layers", [])}
    if not kinds <= {DynamicLayer, DynamicSlidingWindowLayer}:
        return f"cache layers {sorted(k.__name__ for k in kinds)} are not plain key/value layers"
    return None


@dataclass
class PrefixStates:
    """Per-layer key/value states of each group's prefix, left-padded to one width."""

    keys: list[torch.Tensor]  # layer -> (groups, kv_heads, width, head_dim)
    values: list[torch.Tensor]
    mask: torch.Tensor  # (groups, width), 1 on real prefix tokens (right-aligned)
    lengths: torch.Tensor  # (groups,)
    keyword: str = "cache"  # the decoder's cache keyword (model.backbone.cache_keyword), read once per job

    def rows(self, groups: torch.Tensor, width: int):
        """States for a batch whose rows belong to ``groups``, cut to the last ``width`` columns."""
        keys = [k[groups, :, k.shape[2] - width :] for k in self.keys]
        values = [v[groups, :, v.shape[2] - width :] for v in self.values]
        return keys, values, self.mask[groups, self.mask.shape[1] - width :]


def _left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        if seq:
            out[row, width - len(seq) :] = torch.as_tensor(seq)
            mask[row, width - len(seq) :] = 1
    return out, mask


def _right_pad(ids: Sequence[Sequence[int]], pad_id: int, min_width: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(min_width, max(len(x) for x in ids))
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        out[row, : len(seq)] = torch.as_tensor(seq)
        mask[row, : len(seq)] = 1
    return out, mask


def _new_cache(reranker: Reranker, data=None):
    from transformers.cache_utils import DynamicCache

    return DynamicCache(data, config=reranker.base_config)


def prefix_states(reranker: Reranker, prefixes: Sequence[Sequence[int]], batch_tokens: int) -> PrefixStates:
    """Run each prefix once (left-padded, positions from the mask) and keep its key/value cache.

    Group ``g`` of the result is ``prefixes[g - 1]``; group 0 is the empty prefix (all zeros, all
    masked) of rows that share nothing. Key/value states at padding positions are zeroed: a padded
    prefix row is fully masked there, and a model may leave NaN in it, which a zero attention weight
    would not cancel.
    """
    device = reranker.device
    width = max(len(p) for p in prefixes)
    n = len(prefixes) + 1
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    mask_all = torch.zeros((n, width), dtype=torch.long)
    keyword = cache_keyword(reranker.base_model)
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
    step = max(1, batch_tokens // width)
    for start in range(0, len(order), step):
        rows = order[start : start + step]
        ids, mask = _left_pad([prefixes[i] for i in rows], reranker.pad_id)
        cache = _new_cache(reranker)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        reranker.backbone(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids.to(device),
            use_cache=True,
            **{keyword: cache},
        )
        w = ids.shape[1]
        keep = mask.to(device)[:, None, :, None].bool()
        index = torch.as_tensor(rows, device=device) + 1
        for layer_index, layer in enumerate(cache.layers):
            k = layer.keys.masked_fill(~keep, 0)
            v = layer.values.masked_fill(~keep, 0)
            if len(keys) <= layer_index:
                keys.append(k.new_zeros((n, k.shape[1], width, k.shape[3])))
                values.append(v.new_zeros((n, v.shape[1], width, v.shape[3])))
            keys[layer_index][index, :, width - w :] = k
            values[layer_index][index, :, width - w :] = v
        mask_all[torch.as_tensor(rows) + 1, width - w :] = mask
    lengths = torch.as_tensor([0] + [len(p) for p in prefixes])
    return PrefixStates(keys, values, mask_all.to(device), lengths.to(device), keyword)


# ---------------------------------------------------------------- the scorer


class FastScorer:
    """Scores (query, passage) items like :class:`relevance_lens.score.scorer.PlainScorer`, faster.

    Build it once per run (:func:`relevance_lens.score.rerank` does); ``plan`` records which
    paths are on and why any is off. ``expected_tokens`` lets ``compile="auto"`` decide. A
    reranker marked ``scoring_only`` is merged (and compiled) in place: it keeps scoring the same,
    but its LoRA is no longer separate; any other reranker is left as it was.
    """

    def __init__(self, reranker: Reranker, config: ScoreConfig, expected_tokens: int | None = None):
        self.config = config
        self.plan = FastPlan(dtype=str(reranker.score.weight.dtype).replace("torch.", ""))
        has_lora = hasattr(reranker.backbone, "peft_config")
        self.key = calibration_key(reranker, reranker.device, reranker.score.weight.dtype)
        self._calls = 0  # score() calls so far: only the first pays (and can measure) the compile
        want_compile = self._want_compile(reranker.device, expected_tokens)
        if (config.merge_lora and has_lora) or want_compile:
            if getattr(reranker, SCORING_ONLY, False):
                # Loaded for this run only (load_for_scoring): change it in place, no second backbone.
                self.model = merged_in_place(reranker, merge=config.merge_lora)
                self.plan.in_place = True
            else:
                # A copy: merging or compiling the caller's model would change it under its feet.
                self.model = scoring_copy(reranker, merge=config.merge_lora)
            self.plan.merged = config.merge_lora and has_lora
        else:
            self.model = reranker  # as given: the plain path does not change its mode either
            if has_lora:
                self.plan.notes.append("LoRA not merged (merge_lora off): each LoRA layer adds two small matmuls")
        changeable = self.model is not reranker or self.plan.in_place
        self.plan.attention = use_sdpa(self.model) if changeable else self._attention()
        self.cap = prefix_cap(self.model)
        if not config.share_prefix:
            blocker = "share_prefix off"
        elif want_compile:
            # transformers' cache.update indexes by the block's layer_idx: traced inside a compiled
            # block it becomes a guard and each block recompiles. Moving update out of the graph
            # (a graph break) stops that but ran slower than compiled blocks without a prefix on
            # FAQ pairs at 128 tokens (measured: 22.7 s vs 19.0 s for 160 pairs), so compile wins.
            blocker = "compiled blocks and a shared KV prefix do not combine profitably (compile wins)"
        else:
            blocker = prefix_blocker(self.model)
        self.plan.share_prefix = blocker is None
        if blocker:
            self.plan.notes.append(f"shared prefix off: {blocker}")
        if want_compile:
            compile_blocks(self.model)
            self.plan.compiled = True

    def _attention(self) -> str:
        return str(getattr(self.model.base_config, "_attn_implementation", ""))

    def _want_compile(self, device: torch.device, expected_tokens: int | None) -> bool:
        mode = self.config.compile
        if mode == "off":
            return False
        blocker = can_compile(device)
        if blocker:
            if mode == "on":
                warnings.warn(f"compile=on ignored: {blocker}", stacklevel=3)
            self.plan.notes.append(f"not compiled: {blocker}")
            return False
        if mode == "auto":
            choice = choose_compile(lookup(self.key), expected_tokens or 0)
            self.plan.compile_reason = choice.reason
            if not choice.compile:
                self.plan.notes.append(f"not compiled (compile=auto): {choice.reason}")
            return choice.compile
        return True

    # ------------------------------------------------------------ scoring
    @torch.inference_mode()
    def score(self, items: Sequence[tuple[str, object]], bar=None, task=None) -> list[float]:
        """Scores for (query text, passage) items, in the order given."""
        model = self.model
        ids = encode_texts(model, items)
        prefix_len = [0] * len(ids)
        group_of = [0] * len(ids)
        prefixes: list[list[int]] = []
        if self.plan.share_prefix:
            members: dict[str, list[int]] = {}
            for i, (query, _) in enumerate(items):
                members.setdefault(query, []).append(i)
            for rows in members.values():
                p = common_prefix([ids[i] for i in rows], self.cap)
                if p == 0:
                    continue
                prefixes.append(ids[rows[0]][:p])
                for i in rows:
                    prefix_len[i], group_of[i] = p, len(prefixes)  # group 0: no prefix
        timer = BatchTimer()
        start = time.perf_counter()
        states = prefix_states(model, prefixes, self.config.batch_tokens) if prefixes else None
        timer.add(0, time.perf_counter() - start)  # the prefixes' forward: part of the job's time
        suffix = [ids[i][prefix_len[i] :] for i in range(len(ids))]
        lengths = [len(s) for s in suffix]
        order = sorted(range(len(ids)), key=lambda i: (lengths[i], group_of[i], i))
        scores = [0.0] * len(ids)
        for batch in batches(lengths, order, self.config.batch_tokens, self.config.max_batch):
            start = time.perf_counter()
            values = self._forward(batch, suffix, group_of, states)
            timer.add(sum(len(ids[i]) for i in batch), time.perf_counter() - start)
            for i, value in zip(batch, values):
                scores[i] = value
            if bar is not None:
                bar.advance(task, len(batch))
        self._record(timer)
        return scores

    def _record(self, timer: BatchTimer) -> None:
        """Fold this run's timings into the machine's calibration (score.paths), for the next choice.

        Only paths ``compile="auto"`` chooses between are recorded: merged (or LoRA-free) weights,
        eager or compiled. Tokens are the pairs' own (the prefix's included), so a rate is per token
        of the job whichever way it ran.
        """
        self._calls += 1
        if not timer.batches or (hasattr(self.model.backbone, "peft_config") and not self.plan.merged):
            return
        if self.plan.compiled:
            if len(timer.batches) >= MIN_TIMED_BATCHES:
                # Later calls (rerank's next chunk) run already-compiled blocks: their stall is not a compile's.
                stall = timer.stall_s() if self._calls == 1 else None
                record(self.key, compiled_s_per_token=timer.steady_s_per_token(), compile_s=stall)
        else:
            tokens = sum(t for t, _ in timer.batches)
            record(self.key, eager_s_per_token=sum(s for _, s in timer.batches) / tokens)

    def _forward(self, batch: list[int], suffix, group_of, states: PrefixStates | None) -> list[float]:
        model, device = self.model, self.model.device
        rows = list(batch)
        if self.plan.compiled and len(rows) == 1:
            rows = rows * 2  # a batch of 1 would specialise the compiled graph and recompile it
        ids, mask = _right_pad([suffix[i] for i in rows], model.pad_id, 2 if self.plan.compiled else 1)
        ids, mask = ids.to(device), mask.to(device)
        groups = torch.as_tensor([group_of[i] for i in rows], device=device)
        if states is None or not bool(groups.any()):
            scores = model(ids, mask, causal_only=True)  # right-padded: causal attention alone hides the pads
        else:
            width = int(states.lengths[groups].max())
            keys, values, prefix_mask = states.rows(groups, width)
            cache = _new_cache(model, list(zip(keys, values)))
            position_ids = states.lengths[groups][:, None] + (mask.cumsum(-1) - 1).clamp(min=0)
            out = model.backbone(
                input_ids=ids,
                attention_mask=torch.cat([prefix_mask, mask], dim=1),
                position_ids=position_ids,
                use_cache=True,
                **{states.keyword: cache},
            )
            pooled = pool_last(out.last_hidden_state, mask)
            scores = model.score(pooled.to(model.score.weight.dtype)).squeeze(-1)
        return require_finite(scores.float().cpu()).tolist()[: len(batch)]
