"""The study's 7B-class models on one GPU: training step time, scoring speed, peak memory.

    python benchmarks/gpu_check.py                      # on a GPU: the three 7B shapes, ~5 min on one H200
    python benchmarks/gpu_check.py --results "$OUT"     # on a lent device: results come back from $OUT
    python benchmarks/gpu_check.py --publish results/gpu-check.json   # here: refresh README's table from a copy
    python benchmarks/gpu_check.py --smoke --results /tmp/x         # CPU, tiny shapes: what the test suite runs

Models: random-initialised from the real configs in ``configs/`` (Mistral-7B-v0.1,
Llama-3.1-8B, Pythia-6.9B), built on the GPU in bf16 (no weights, no network: speed and memory
do not depend on what the weights learned). Nothing here imports ir_measures, bm25s or gguf.

* **Training**: the paper's recipe (``studies/paper.toml``): LoRA r8 on every role, frozen base
  bf16, LoRA and head fp32, bf16 autocast, gradient checkpointing, groups of 16 (1 positive + 15
  negatives), 4 queries a micro-step, 196 tokens a pair (every pair full length: the worst case).
  The model is set up by :func:`relevance_lens.train.trainable.make_trainable`, the loss is
  :func:`~relevance_lens.train.groups.group_loss`, AdamW steps. Reported: seconds a micro-step
  (forward, backward, optimizer), tokens/s, peak GPU memory, and the share of the GPU's bf16
  matmul rate: the step's matmul FLOPs as :mod:`flops` counts them (useful work; gradient
  checkpointing's re-run forward is not counted) over its time, over the rate of an 8192² bf16
  matmul measured in the same process.
* **Scoring**: :class:`relevance_lens.score.fast.FastScorer` on the trained model, LoRA merged in
  place (as ``load_for_scoring`` arranges), shared query prefixes, ``batch_tokens`` 65536 (the
  paper study's), compile off (compiling a 7B model costs minutes this check does not have):
  queries of 12 words, 32 candidates each, 100-190 words. Tokens/s over real tokens; share of the
  matmul rate with forward FLOPs = 2 x non-embedding parameters x tokens + causal attention.

A model that runs out of memory or fails is recorded with its error and the others still run;
results are written after each model, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import flops  # noqa: E402
import shapes  # noqa: E402
from common import RESULTS, machine, machine_line, markdown_table, publish, write_result  # noqa: E402
from relevance_lens.data.formats import Passage  # noqa: E402
from relevance_lens.model.reranker import Reranker, RerankerConfig  # noqa: E402
from relevance_lens.score.config import SCORING_ONLY, ScoreConfig  # noqa: E402
from relevance_lens.score.fast import FastScorer  # noqa: E402
from relevance_lens.score.scorer import PlainScorer  # noqa: E402
from relevance_lens.train.config import TrainConfig  # noqa: E402
from relevance_lens.train.groups import group_loss  # noqa: E402
from relevance_lens.train.trainable import make_trainable  # noqa: E402

NAME = "gpu-check"
#: (full run, --smoke) sizes.
SIZES = {
    "full": dict(max_length=196, group_size=16, queries=4, warmup=2, steps=5, score_queries=64, batch_tokens=65536),
    "smoke": dict(max_length=32, group_size=4, queries=2, warmup=1, steps=1, score_queries=3, batch_tokens=256),
}
CANDIDATES = {"full": 32, "smoke": 4}
#: Queries whose scores are also taken by the plain forward (LoRA unmerged, no prefix sharing).
AGREEMENT_QUERIES = 4


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def matmul_rate(device: torch.device, n: int, seconds: float = 2.0) -> float:
    """Measured GFLOP/s of an ``n x n`` bf16 matmul on ``device`` (best of ~``seconds`` of runs)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    with torch.inference_mode():
        for _ in range(3):
            a @ b
        sync(device)
        best, stop = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < stop:
            start = time.perf_counter()
            for _ in range(10):
                a @ b
            sync(device)
            best = min(best, (time.perf_counter() - start) / 10)
    return 2 * n**3 / best / 1e9


def build(name: str, device: torch.device, smoke: bool, max_length: int) -> Reranker:
    """A reranker on ``device`` whose bf16 backbone is random-initialised from the config (on the device)."""
    from transformers import AutoModel

    config = shapes.config(name, tiny=smoke)
    torch.manual_seed(0)
    with torch.device(device):
        backbone = AutoModel.from_config(config, dtype=torch.bfloat16)
    reranker = Reranker(backbone, shapes.placeholder_tokenizer(), RerankerConfig(model=name, max_length=max_length))
    return reranker.to(device)


def train_phase(reranker: Reranker, device: torch.device, size: dict, rate: float) -> dict:
    settings = TrainConfig(
        model=reranker.settings.model, rank=8, targets="all", precision="bf16", gradient_checkpointing=True
    )
    make_trainable(reranker, settings)
    reranker.to(device).train()
    params = [p for p in reranker.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    n, width, group = size["queries"] * size["group_size"], size["max_length"], size["group_size"]
    vocab = reranker.base_config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, min(vocab, shapes.WORDS + 3), (n, width), generator=gen).to(device)
    mask = torch.ones_like(ids)
    reset_peak(device)
    times = []
    for step in range(size["warmup"] + size["steps"]):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = group_loss(reranker(ids, mask), group)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= size["warmup"]:
            times.append(time.perf_counter() - start)
    if not torch.isfinite(loss.detach()).all():
        raise RuntimeError(f"training loss is {loss.item()}")
    seconds = statistics.median(times)
    work = flops.step_flops(reranker, [width] * n)["real"]["total"]
    return {
        "sequences": n,
        "tokens": n * width,
        "step_s": seconds,
        "tokens_per_s": n * width / seconds,
        "step_tflops": work / 1e12,
        "share_of_matmul_rate": work / seconds / (rate * 1e9),
        "peak_gpu_bytes": peak_memory(device),
        "trainable_params": sum(p.numel() for p in params),
        "loss": float(loss.detach()),
    }


def score_items(size: dict, candidates: int) -> list[tuple[str, Passage]]:
    """Queries of 12 words with ``candidates`` passages each, long enough to reach max_length sometimes."""
    rng = random.Random(0)
    longest = size["max_length"] - 6

    def words(k: int) -> str:
        return " ".join(f"w{rng.randrange(shapes.WORDS)}" for _ in range(k))

    items = []
    for q in range(size["score_queries"]):
        query = words(12)
        for d in range(candidates):
            items.append((query, Passage(f"{q}-{d}", "", words(rng.randint(longest // 2, longest)))))
    return items


def forward_flops(reranker: Reranker, lengths: list[int]) -> float:
    """2·N·tokens + causal attention, N the non-embedding parameters (``bench_scoring.forward_flops``'s count)."""
    base = reranker.base_model
    params = sum(p.numel() for p in base.parameters()) - base.get_input_embeddings().weight.numel()
    cfg = reranker.base_config
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    attention = sum(2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * n * n for n in lengths)
    return 2 * params * sum(lengths) + attention


def score_phase(reranker: Reranker, device: torch.device, size: dict, candidates: int, rate: float) -> dict:
    reranker.base_model.gradient_checkpointing_disable()
    items = score_items(size, candidates)
    check = items[: AGREEMENT_QUERIES * candidates]
    vs_plain = {"fp32": paths_agree(reranker.float().eval(), check, device, candidates)}
    reranker.to(torch.bfloat16).eval()  # LoRA and head in bf16 too, as prepare() makes them for scoring
    plain = PlainScorer(reranker, ScoreConfig(dtype="bf16", device=str(device), fast=False, batch_tokens=4096))
    plain_scores = plain.score(check)  # before FastScorer merges the LoRA in place
    setattr(reranker, SCORING_ONLY, True)  # what load_for_scoring sets: merge LoRA in place, no copy
    config = ScoreConfig(dtype="bf16", device=str(device), compile="off", batch_tokens=size["batch_tokens"])
    reset_peak(device)
    scorer = FastScorer(reranker, config)
    scorer.score(items[: len(items) // 4])  # warm-up: kernels, allocator
    sync(device)
    start = time.perf_counter()
    scores = scorer.score(items)
    sync(device)
    seconds = time.perf_counter() - start
    lengths = [len(x) for x in reranker.encode(items)]
    work = forward_flops(scorer.model, lengths)
    return {
        "pairs": len(items),
        "tokens": sum(lengths),
        "seconds": seconds,
        "tokens_per_s": sum(lengths) / seconds,
        "pairs_per_s": len(items) / seconds,
        "share_of_matmul_rate": work / seconds / (rate * 1e9),
        "peak_gpu_bytes": peak_memory(device),
        "plan": {"merged": scorer.plan.merged, "in_place": scorer.plan.in_place, "prefix": scorer.plan.share_prefix},
        "finite": all(s == s and abs(s) != float("inf") for s in scores),
        "vs_plain": {**vs_plain, "bf16": agreement(scores[: len(check)], plain_scores, candidates)},
    }


def paths_agree(reranker: Reranker, items: list, device: torch.device, candidates: int) -> dict:
    """Fast vs plain scores of ``items`` in fp32: the paths' own gap, without bf16's rounding.

    The reranker is not marked scoring-only here, so the fast path merges a copy and leaves it as it was.
    """
    config = ScoreConfig(dtype="fp32", device=str(device), compile="off", batch_tokens=4096)
    plain = PlainScorer(reranker, dataclasses.replace(config, fast=False)).score(items)
    fast = FastScorer(reranker, config).score(items)
    return agreement(fast, plain, candidates)


def agreement(fast: list[float], plain: list[float], candidates: int) -> dict:
    """How far the fast path's scores are from the plain forward's (same dtype and device).

    The gap is set against the spread of the plain scores (their standard deviation), and the
    ranking against each query's: the share of queries whose top candidate is the same.
    """
    gap = max(abs(a - b) for a, b in zip(fast, plain))
    spread = statistics.pstdev(plain) or 1.0
    queries = range(0, len(plain), candidates)
    top = [
        max(range(q, q + candidates), key=fast.__getitem__) == max(range(q, q + candidates), key=plain.__getitem__)
        for q in queries
    ]
    return {
        "pairs": len(plain),
        "max_abs_diff": gap,
        "plain_std": spread,
        "gap_over_std": gap / spread,
        "same_top1": sum(top) / len(top),
    }


def check_model(name: str, device: torch.device, smoke: bool, rate: float) -> dict:
    mode = "smoke" if smoke else "full"
    size = SIZES[mode]
    started = time.perf_counter()
    reset_peak(device)
    reranker = build(name, device, smoke, size["max_length"])
    record: dict = {
        "params": sum(p.numel() for p in reranker.base_model.parameters()),
        "bf16_weight_bytes": sum(p.numel() * p.element_size() for p in reranker.base_model.parameters()),
        "build_s": time.perf_counter() - started,
    }
    record["train"] = train_phase(reranker, device, size, rate)
    record["score"] = score_phase(reranker, device, size, CANDIDATES[mode], rate)
    record["seconds"] = time.perf_counter() - started
    return record


def _gib(n: int | None) -> str:
    return "" if n is None else f"{n / 1024**3:.1f}"


def table(record: dict) -> str:
    rows = []
    for name, r in record["models"].items():
        if "error" in r:
            rows.append([name, f"failed: {r['error'].splitlines()[-1][:80]}", *[""] * 9])
            continue
        t, s = r["train"], r["score"]
        rows.append(
            [
                name,
                f"{r['params'] / 1e9:.2f}B" if r["params"] >= 1e8 else f"{r['params'] / 1e6:.2f}M",
                t["step_s"],
                round(t["tokens_per_s"]),
                f"{t['share_of_matmul_rate']:.0%}",
                _gib(t["peak_gpu_bytes"]),
                round(s["tokens_per_s"]),
                f"{s['share_of_matmul_rate']:.0%}",
                _gib(s["peak_gpu_bytes"]),
                f"{s['vs_plain']['fp32']['gap_over_std']:.1e}",
                f"{s['vs_plain']['bf16']['gap_over_std']:.3f}",
            ]
        )
    size = record["sizes"]
    head = (
        f"{machine_line(record['machine'])}; bf16 matmul {record['matmul_n']}²: "
        f"{record['matmul_gflops']:,.0f} GFLOP/s\n\n"
        f"Training: LoRA r8 all roles, bf16, gradient checkpointing, {size['queries']} queries x "
        f"{size['group_size']} pairs x {size['max_length']} tokens a micro-step; scoring: FastScorer, LoRA merged "
        f"in place, batch_tokens {size['batch_tokens']}, {record['candidates']} candidates a query.\n\n"
    )
    headers = [
        "model",
        "params",
        "train s/step",
        "train tokens/s",
        "train share of matmul rate",
        "train peak GiB",
        "score tokens/s",
        "score share of matmul rate",
        "score peak GiB",
        "fast vs plain, fp32: max gap / score std",
        "the same, bf16",
    ]
    return head + markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes of the three configs, on the CPU.")
    parser.add_argument("--models", nargs="+", default=list(shapes.MODELS), choices=shapes.MODELS)
    parser.add_argument("--results", type=Path, default=None, help="Folder for the JSON and table (default results/).")
    parser.add_argument("--publish", type=Path, default=None, help="Re-publish a gpu-check JSON written elsewhere.")
    args = parser.parse_args(argv)
    if args.publish is not None:
        record = json.loads(args.publish.read_text())
        return publish(NAME, record, table(record))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("no GPU here: run with --smoke for the CPU version on tiny shapes")
    mode = "smoke" if args.smoke else "full"
    results = args.results or RESULTS
    name = f"{NAME}-smoke" if args.smoke else NAME
    n = 512 if args.smoke else 8192
    rate = matmul_rate(device, n, seconds=0.3 if args.smoke else 2.0)
    record = {
        "machine": machine(measure=False),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "matmul_n": n,
        "matmul_gflops": rate,
        "mode": mode,
        "sizes": SIZES[mode],
        "candidates": CANDIDATES[mode],
        "models": {},
    }
    for model in args.models:
        try:
            record["models"][model] = check_model(model, device, args.smoke, rate)
        except Exception as exc:  # one model's failure (e.g. out of memory) must not lose the others
            record["models"][model] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_result(name, record, table(record), results, None)  # after each model: a cut-short run keeps them
    if results == RESULTS:
        publish(name, record, table(record), results)
    else:
        print(table(record))
    if any("error" in r for r in record["models"].values()):
        raise SystemExit(f"gpu_check: a model failed, see {results / (name + '.json')}")
    return record


if __name__ == "__main__":
    main()
