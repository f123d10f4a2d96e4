"""Where a training step's time goes: matmuls, attention, element-wise work, optimizer.

    python benchmarks/profile_training.py                        # SmolLM2-135M, the training benchmark's step
    python benchmarks/profile_training.py --random-init --steps 3   # same shapes, random weights (no trained model)
    python benchmarks/profile_training.py --compile off --optim fused

The step is ``train``'s: the model from :func:`relevance_lens.train.trainer.build_model` (frozen
bf16 weights, fp32 LoRA and head), the attention ``train`` picks (``--attention``), decoder blocks
compiled as ``compile=on`` does, bf16 autocast,
the group loss, gradient clipping at 1.0 and fused AdamW (the Trainer's ``adamw_torch_fused``)
on the training benchmark's groups in order. First ``--warmup`` steps (compilation), then
``--steps`` steps timed by phase (forward, backward, optimizer) without the profiler, then
``--profiled`` steps under ``torch.profiler`` whose self times are sorted into matmul (mm, bmm,
linear), attention (SDPA kernels), element-wise (every other op, inductor's fused kernels
included) and optimizer (clipping, AdamW, zero_grad). The shares are of the profiled steps' wall
time; what no op claims is Python and dispatch overhead. Matmul FLOPs come from :mod:`flops`
(real tokens, as the training benchmark reports); the matmul kernels' own rate divides the padded
matmul FLOPs (what ran) by the time spent in them.

Prints a JSON record (and writes it to ``--out`` when given). Not a benchmark table: shares
under load are indicative only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import flops  # noqa: E402
import relevance_lens.train.trainer as rl_train  # noqa: E402
from bench_training import groups_for, train_config  # noqa: E402
from common import load_average, machine  # noqa: E402
from relevance_lens.model.backbone import set_attention  # noqa: E402
from relevance_lens.model.compile import compile_blocks  # noqa: E402
from relevance_lens.train.groups import GroupCollator, group_loss  # noqa: E402

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn", "linear_pointwise", "onednn")
ATTENTION = ("scaled_dot_product", "flash_attention")
PHASES = ("forward", "backward", "optimizer")


def random_model_folder(name: str, work: Path) -> Path:
    """A folder with ``name``'s config and tokenizer and random weights (same shapes, same FLOPs)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from relevance_lens.model.backbone import resolve_model

    source = resolve_model(name)
    folder = work / f"random-{Path(str(source.path)).name}"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        AutoModel.from_config(AutoConfig.from_pretrained(source.path)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(source.path).save_pretrained(folder)
    return folder


def category(name: str) -> str:
    if any(k in name for k in ATTENTION):
        return "attention"
    if any(k in name for k in MATMUL):
        return "matmul"
    return "elementwise"


def step(model, optimizer, params, batch: dict, size: int, autocast, times: dict | None = None) -> float:
    """One training step as the Trainer runs it; ``times`` gets each phase's wall seconds."""
    marks = [time.perf_counter()]
    with torch.profiler.record_function("forward"), autocast:
        loss = group_loss(model(**batch), size)
    marks.append(time.perf_counter())
    with torch.profiler.record_function("backward"):
        loss.backward()
    marks.append(time.perf_counter())
    with torch.profiler.record_function("optimizer"):
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    marks.append(time.perf_counter())
    if times is not None:
        for phase, a, b in zip(PHASES, marks, marks[1:]):
            times.setdefault(phase, []).append(b - a)
    print(f"step: {marks[-1] - marks[0]:.2f} s, loss {float(loss.detach()):.4f}", file=sys.stderr, flush=True)
    return float(loss.detach())


def shares(prof, wall: float) -> dict:
    """Self CPU time of the profiled ops by category, as fractions of ``wall``."""
    totals = dict.fromkeys(("matmul", "attention", "elementwise", "optimizer"), 0.0)
    for event in prof.events():
        if event.name in PHASES or event.name.startswith("ProfilerStep"):
            continue
        parent, under = event.cpu_parent, None
        while parent is not None:
            under = parent.name if parent.name in PHASES else under
            parent = parent.cpu_parent
        key = "optimizer" if under == "optimizer" else category(event.name)
        totals[key] += event.self_cpu_time_total / 1e6
    out = {k: v / wall for k, v in totals.items()}
    out["python_dispatch_other"] = max(0.0, 1 - sum(out.values()))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random-init", action="store_true", help="Random weights with the model's config.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="Steps timed by phase, no profiler.")
    parser.add_argument("--profiled", type=int, default=2, help="Steps under torch.profiler.")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=64.0)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--compile", choices=["on", "off"], default="on")
    parser.add_argument(
        "--attention",
        choices=["auto", "sdpa", "eager"],
        default="auto",
        help="Training attention (train --attention): auto is what train picks for this device and length.",
    )
    parser.add_argument(
        "--optim",
        choices=["default", "foreach", "fused"],
        default="fused",
        help="AdamW variant (fused: the Trainer's default, adamw_torch_fused, with torch >= 2.8).",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "results" / "_work")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.steps_total = args.warmup + args.steps + args.profiled
    args.work.mkdir(parents=True, exist_ok=True)
    if args.random_init:
        args.model = str(random_model_folder(args.model, args.work))
    info = machine(measure=True)
    config = train_config(argparse.Namespace(**{**vars(args), "steps": args.steps_total}), args.work / "unused")
    torch.manual_seed(args.seed)
    model = rl_train.build_model(config).train()
    config.attention = args.attention
    args.attention_used = set_attention(model, rl_train.attention_decision(config, model)[0])
    if args.compile == "on":
        compile_blocks(model)
    params = [p for p in model.parameters() if p.requires_grad]
    kind = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.optim]
    optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0, **kind)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    items = groups_for(config, args.steps_total)
    collate = GroupCollator(model)
    batches = [collate(items[i : i + args.queries]) for i in range(0, len(items), args.queries)]
    sizes = [int(b.pop("group_size")) for b in batches]
    work = [flops.step_flops(model, b["attention_mask"].sum(-1).tolist()) for b in batches]
    load_start = load_average()

    losses, times = [], {}
    for i in range(args.warmup):
        losses.append(step(model, optimizer, params, batches[i], sizes[i], autocast))
    for i in range(args.warmup, args.warmup + args.steps):
        losses.append(step(model, optimizer, params, batches[i], sizes[i], autocast, times))
    timed = work[args.warmup : args.warmup + args.steps]
    step_seconds = [sum(t) for t in zip(*times.values())]
    rate = info["matmul_gflops"][args.precision] * 1e9
    real = sum(w["real"]["total"] for w in timed)

    profiled = range(args.warmup + args.steps, args.steps_total)
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in profiled:
            losses.append(step(model, optimizer, params, batches[i], sizes[i], autocast))
    wall = time.perf_counter() - start
    split = shares(prof, wall)
    padded = sum(work[i]["padded"]["total"] - work[i]["padded"]["attention"] for i in profiled)
    record = {
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_average": [load_start, load_average()],
        "losses": losses,
        "step_seconds": step_seconds,
        "phase_seconds": {k: statistics.mean(v) for k, v in times.items()},
        "step_tflop_real": statistics.mean(w["real"]["total"] for w in timed) / 1e12,
        "flops_real_parts": {k: statistics.mean(w["real"][k] for w in timed) for k in timed[0]["real"]},
        "fraction_of_matmul_rate": real / sum(step_seconds) / rate,
        "profiled_wall_seconds": wall,
        "shares": split,
        # The matmul kernels' own rate (projections and LoRA, padded: what ran) against the 2048² rate.
        "matmul_kernels_fraction_of_rate": padded / (split["matmul"] * wall) / rate if split["matmul"] else None,
        "top_ops": [
            {"name": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count}
            for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:25]
        ],
    }
    text = json.dumps(record, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    print(text)
    return record


if __name__ == "__main__":
    main()
