"""Training throughput: relevance-lens ``train`` vs sentence-transformers' ``CrossEncoderTrainer``.

    python benchmarks/bench_training.py                      # SmolLM2-135M, FAQ train groups
    python benchmarks/bench_training.py --steps 10 --group-size 16

Same model, LoRA (rank, alpha, all seven roles, dropout 0), group size, queries per step, max
length, precision (frozen weights bf16, LoRA and head fp32, bf16 autocast) and groups — the
first ``steps`` groups of relevance-lens's own seeded :class:`~relevance_lens.train.trainer.GroupDataset`
— and a listwise cross-entropy with the positive as target (ours: ``group_loss``; theirs:
``ListNetLoss`` with labels 0 for the positive and -1e4 for the negatives, whose softmax is
exactly one-hot, all pairs of a step in one forward). Before timing, both must give the same loss
on the first step's groups (LoRA B starts at zero, so the models are equal there); the benchmark
stops otherwise. Step times come from one Trainer callback (``on_step_begin`` to
``on_step_end``: forward, backward, optimizer); the first ``--warmup`` steps are left out. Ours
runs through :func:`relevance_lens.train.trainer.train` itself. Peak memory: each system again in a
child process of its own.

Fraction of the hardware limit: each step's matmul FLOPs (:mod:`flops`: the forward, the backward
through the frozen weights — input gradients only — LoRA's forward and backward, attention and
the score head; real tokens only) over its time, divided by the bf16 (or fp32) 2048² matmul rate
measured in the same process. Both systems train on the same token ids, so on the same work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import flops  # noqa: E402
import peers  # noqa: E402
import relevance_lens.train.trainer as rl_train  # noqa: E402
from relevance_lens.model.backbone import bf16_supported  # noqa: E402
from relevance_lens.model.reranker import Reranker  # noqa: E402
from relevance_lens.train.config import load_config  # noqa: E402
from relevance_lens.train.groups import GroupCollator, GroupDataset, group_loss, load_groups  # noqa: E402

TARGET = 1.5
TARGET_FRACTION = 0.45  # of the bf16 matmul rate, for relevance-lens's step (issue 11)
OURS = "relevance-lens"  # compile=on: what compile=auto picks for the default recipe (50 steps)
EAGER = "relevance-lens, eager blocks (compile=off)"
SYSTEMS = (OURS, "CrossEncoderTrainer", EAGER)
NEGATIVE_LABEL = -1e4  # softmax([0, -1e4, ...]) is one-hot in fp32: ListNet's target = the positive


def _timer_callback(times: list[float]):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (forward, backward, optimizer; no logging or saving)."""

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    return StepTimer()


@contextmanager
def timed_train(times: list[float]):
    """Run :func:`relevance_lens.train.trainer.train` with a step timer beside its checkpoint schedule."""
    original = rl_train._schedule_callback

    def with_timer(config):
        schedule = original(config)
        timer = _timer_callback(times)

        class Both(type(schedule)):
            def on_step_begin(self, *a, **k):
                timer.on_step_begin(*a, **k)

            def on_step_end(self, *a, **k):
                control = super().on_step_end(*a, **k)
                timer.on_step_end(*a, **k)
                return control

        both = Both()
        both.__dict__.update(schedule.__dict__)
        return both

    rl_train._schedule_callback = with_timer
    try:
        yield
    finally:
        rl_train._schedule_callback = original


def train_config(args, output: Path, compile: str = "off"):
    return load_config(
        None,
        model=args.model,
        output=str(output),
        group_size=args.group_size,
        queries_per_device=args.queries,
        max_steps=args.steps,
        max_length=args.max_length,
        rank=args.rank,
        alpha=args.alpha,
        lora_dropout=args.lora_dropout,
        targets="all",
        precision=args.precision,
        save_steps=[],
        eval_split="none",
        logging_steps=10_000,
        warmup_steps=0,
        compile=compile,
        # The peers split a pair as (query part, the rest): RankLLaMA's query-first order, the same
        # tokens as the default's query-last one, so the same work.
        template="query: {query} document: {title} {text}",
    )


def groups_for(config, steps: int) -> list[dict]:
    """The groups relevance-lens's own dataset yields for the first ``steps`` steps, in order."""
    groups = load_groups(config)
    groups.check(config.group_size, config.short_groups)
    world = config.queries_per_device * config.grad_accum
    epochs = max(1, -(-steps * world // len(groups.queries)))
    dataset = GroupDataset(groups, config.group_size, epochs, config.seed)
    return [dataset[i] for i in range(steps * config.queries_per_device)]


# ---------------------------------------------------------------- the two systems


def run_ours(args, times: list[float], compile: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp, timed_train(times):
        config = train_config(args, Path(tmp) / "run", compile)
        start = time.perf_counter()
        rl_train.train(config, progress=False)
        return {"wall_seconds": time.perf_counter() - start}


def cross_encoder_model(args, reranker: Reranker, work: Path):
    """CrossEncoder on the seq-cls copy of the same model and head; LoRA added like ours, bf16 frozen weights."""
    from peft import LoraConfig, inject_adapter_in_model
    from sentence_transformers.cross_encoder import CrossEncoder

    from relevance_lens.model.lora import modules_for
    from relevance_lens.model.roles import architecture_of, num_layers, resolve_roles

    model_dir, _ = peers.seqcls_folder(reranker, None, work / "training")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    ce = CrossEncoder(
        str(model_dir), num_labels=1, max_length=args.max_length, device="cpu", model_kwargs={"dtype": dtype}
    )
    arch = architecture_of(reranker.base_config)
    n = num_layers(reranker.base_config)
    targets = sorted(modules_for(arch, resolve_roles("all", arch), list(range(n))))
    torch.manual_seed(args.seed)
    # CrossEncoder.add_adapter goes through transformers, which wants peft >= 0.22; PEFT's own
    # injection is what it calls and works with the installed peft.
    inject_adapter_in_model(
        LoraConfig(
            r=args.rank, lora_alpha=args.alpha, lora_dropout=args.lora_dropout, target_modules=targets, bias="none"
        ),
        ce.model,
    )
    for name, p in ce.model.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith("score."))
        if p.requires_grad:
            p.data = p.data.float()  # as ours: trainable weights in fp32, frozen ones in bf16
    return ce


def ce_dataset(reranker: Reranker, items: list[dict]):
    from datasets import Dataset

    queries, docs, labels = [], [], []
    for item in items:
        split = [peers.split_pair(reranker.settings, item["query"], p) for p in item["passages"]]
        queries.append(split[0][0])
        docs.append([b for _, b in split])
        labels.append([0.0] + [NEGATIVE_LABEL] * (len(split) - 1))
    return Dataset.from_dict({"query": queries, "docs": docs, "labels": labels})


def run_cross_encoder(args, items: list[dict], work: Path, times: list[float]) -> dict:
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    start = time.perf_counter()
    reranker = Reranker.from_pretrained(args.model)
    ce = cross_encoder_model(args, reranker, work)
    with tempfile.TemporaryDirectory() as tmp:
        targs = CrossEncoderTrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.queries,
            max_steps=args.steps,
            learning_rate=3e-4,
            warmup_steps=0,
            lr_scheduler_type="linear",
            bf16=args.precision == "bf16",
            seed=args.seed,
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            max_grad_norm=1.0,
            disable_tqdm=True,
        )
        trainer = CrossEncoderTrainer(
            model=ce,
            args=targs,
            train_dataset=ce_dataset(reranker, items),
            loss=ListNetLoss(ce, mini_batch_size=-1),
            callbacks=[_timer_callback(times)],
        )
        # The dataset is already in relevance-lens's seeded order: read it in that order.
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
        trainer.train()
    return {"wall_seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- equality before timing


def step_work(reranker: Reranker, items: list[dict], queries: int) -> list[dict]:
    """Matmul FLOPs of each step (:func:`flops.step_flops`) over the token ids its groups become."""
    out = []
    for start in range(0, len(items), queries):
        pairs = [(it["query"], p) for it in items[start : start + queries] for p in it["passages"]]
        out.append(flops.step_flops(reranker, [len(ids) for ids in reranker.encode(pairs)]))
    return out


def first_step_losses(args, items: list[dict], work: Path, ours: Reranker) -> dict:
    """Loss of both systems on the first step's groups, with LoRA B = 0 (the models are equal).

    ``ours``: relevance-lens's model as ``train`` builds it, untrained.
    """
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    ours = ours.eval()
    batch = GroupCollator(ours)(items[: args.queries])
    size = int(batch.pop("group_size"))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    with torch.no_grad(), autocast:
        our_loss = float(group_loss(ours(**batch), size))
    ce = cross_encoder_model(args, ours, work).eval()
    with torch.no_grad():
        ce.model.score.weight.copy_(ours.score.weight)  # both heads start from ours
    data = ce_dataset(ours, items[: args.queries])
    loss = ListNetLoss(ce, mini_batch_size=-1)
    with torch.no_grad(), autocast:
        their_loss = float(loss([data["query"], data["docs"]], [torch.tensor(x) for x in data["labels"]]))
    tolerance = 2e-2 if args.precision == "bf16" else 1e-4
    record = {"relevance_lens": our_loss, "crossencoder": their_loss, "tolerance": tolerance}
    if abs(our_loss - their_loss) > tolerance:
        raise common.BenchmarkError(
            f"first-step losses differ: relevance-lens {our_loss:.5f}, CrossEncoderTrainer "
            f"{their_loss:.5f} (tolerance {tolerance}): the two do not train the same thing"
        )
    return record


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps per system.")
    parser.add_argument("--warmup", type=int, default=1, help="First steps left out of the rate.")
    parser.add_argument("--queries", type=int, default=4, help="Query groups per step.")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=64.0)
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout of both systems.")
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        default="bf16" if bf16_supported("cpu") else "fp32",
        help="Both systems' precision; default: train()'s auto (bf16 where the CPU has bf16 kernels).",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=2, help="Run every system this many times; keep the faster.")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--eager",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also time train() with compile=off (eager decoder blocks).",
    )
    parser.add_argument(
        "--compile",
        choices=["on", "off"],
        default="on",
        help="How relevance-lens's own row trains: on (what compile=auto picks for the default recipe) or off "
        "(the smoke test: a cold compile of the tiny model would be most of its time, and test_train holds "
        "compiled blocks to eager ones).",
    )
    parser.add_argument("--probe", choices=[*SYSTEMS], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    work = common.work_folder(args)
    items = groups_for(train_config(args, work / "unused"), args.steps)

    runners = {
        OURS: lambda t: run_ours(args, t, args.compile),
        "CrossEncoderTrainer": lambda t: run_cross_encoder(args, items, work, t),
        EAGER: lambda t: run_ours(args, t, "off"),
    }
    if args.probe:
        times: list[float] = []
        runners[args.probe](times)
        common.report_peak_rss(steps=len(times))
        return {}

    info = common.machine(measure=True)
    model = rl_train.build_model(train_config(args, work / "unused"))
    work_per_step = step_work(model, items, args.queries)
    check = first_step_losses(args, items, work, model)
    del model
    print(f"first-step losses agree: {check}", flush=True)
    # Rounds: every system once per round, the faster round kept. On a shared machine one
    # system can land in a busy spell that another escapes; a second round evens that out.
    best: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for name in [s for s in SYSTEMS if args.eager or s != EAGER]:
            times: list[float] = []
            load_start = common.load_average()
            kind = torch.bfloat16 if args.precision == "bf16" else torch.float32
            rate_before = common.sustained_rate(kind)
            extra = runners[name](times)
            # The host's rate can halve within a minute: each row is set against the rate around it.
            alongside = (rate_before + common.sustained_rate(kind)) / 2
            if len(times) != args.steps:
                raise common.BenchmarkError(f"{name}: timed {len(times)} steps, expected {args.steps}")
            steady = times[args.warmup :]
            step = statistics.mean(steady)
            row = {
                "system": name,
                "step_seconds": steady,
                "mean_step_seconds": step,
                "groups_per_s": args.queries / step,
                **rate_of(work_per_step[args.warmup :], steady, info, args.precision, alongside),
                "first_step_seconds": times[0],
                "round": round_,
                "load_average": [load_start, common.load_average()],
                **extra,
            }
            print(
                f"round {round_}: {name:44s} {step:6.2f} s/step  {args.queries / step:5.2f} groups/s  "
                f"{100 * row['fraction_of_matmul_rate']:4.1f}% of the {args.precision} matmul rate",
                flush=True,
            )
            if name not in best or step < best[name]["mean_step_seconds"]:
                row["all_rounds_mean_step_seconds"] = best.get(name, {}).get("all_rounds_mean_step_seconds", []) + [
                    step
                ]
                best[name] = row
            else:
                best[name]["all_rounds_mean_step_seconds"].append(step)
    rows = list(best.values())
    if args.memory:
        names = ("model", "queries", "group_size", "max_length", "rank", "alpha", "lora_dropout", "precision")
        names += ("compile",)
        same = common.flags(args, names, steps=2, warmup=1, work=work)
        for row in rows:
            row["peak_rss_bytes"], _ = common.run_probe(Path(__file__), row["system"], *same)
    by = {r["system"]: r for r in rows}
    theirs = by["CrossEncoderTrainer"]["mean_step_seconds"]
    record = {
        "benchmark": "training",
        "machine": info,
        "config": {
            k: getattr(args, k)
            for k in (
                "model",
                "steps",
                "warmup",
                "queries",
                "group_size",
                "max_length",
                "rank",
                "alpha",
                "precision",
                "seed",
                "lora_dropout",
                "compile",
            )
        }
        | {"sequences_per_step": args.queries * args.group_size, "load_average_end": common.load_average()},
        "check": check,
        "flops": summarise_work(work_per_step[args.warmup :]),
        "systems": rows,
        "ratios": {
            name: {"speedup": theirs / by[name]["mean_step_seconds"], "target": TARGET}
            for name in (OURS, EAGER)
            if name in by
        },
        "fraction_of_matmul": {
            "system": OURS,
            "value": by[OURS]["fraction_of_matmul_rate"],
            "alongside": by[OURS]["fraction_of_rate_alongside"],
            "target": TARGET_FRACTION,
            "precision": args.precision,
        },
    }
    return common.publish("training", record, render(record), args.results)


def rate_of(work: list[dict], seconds: list[float], info: dict, precision: str, alongside: float) -> dict:
    """Achieved matmul rate of timed steps (real-token FLOPs over their time) and its fraction of the
    measured rate: the start's peak, and the rate sustained around the row (``alongside``, GFLOP/s)."""
    done = sum(w["real"]["total"] for w in work) / sum(seconds)
    return {
        "mean_step_flops": statistics.mean(w["real"]["total"] for w in work),
        "achieved_tflops": done / 1e12,
        "fraction_of_matmul_rate": done / (info["matmul_gflops"][precision] * 1e9),
        "rate_alongside_gflops": alongside,
        "fraction_of_rate_alongside": done / (alongside * 1e9),
    }


def summarise_work(work: list[dict]) -> dict:
    """Mean FLOPs of the timed steps, by part, real tokens and padded; the 6N rule beside them."""
    return {
        count: {part: statistics.mean(w[count][part] for w in work) for part in work[0][count]}
        for count in ("real", "padded")
    } | {
        "six_n": statistics.mean(w["six_n"] for w in work),
        "matmul_params": work[0]["matmul_params"],
        "per_step_real_total": [w["real"]["total"] for w in work],
    }


def render(record: dict) -> str:
    cfg = record["config"]
    rows = [
        [
            r["system"],
            r["mean_step_seconds"],
            r["groups_per_s"],
            r["achieved_tflops"],
            f"{100 * r['fraction_of_matmul_rate']:.1f}%",
            f"{100 * r['fraction_of_rate_alongside']:.1f}% of {r['rate_alongside_gflops']:,.0f}",
            r["first_step_seconds"],
            f"{r['peak_rss_bytes'] / 2**20:,.0f}" if r.get("peak_rss_bytes") else "",
        ]
        for r in record["systems"]
    ]
    ratios = []
    for who, r in record["ratios"].items():
        met = "met" if r["speedup"] >= r["target"] else f"missed: {r['speedup'] / r['target']:.2f} of the target"
        ratios.append(f"- {who}: {r['speedup']:.2f}× CrossEncoderTrainer (target ≥ {r['target']:g}×: {met})")
    frac = record["fraction_of_matmul"]
    gap = frac["value"] - frac["target"]
    ratios.append(
        f"- {frac['system']}: step at {100 * frac['value']:.1f}% of the measured {frac['precision']} matmul rate "
        f"(target ≥ {100 * frac['target']:.0f}%: {'met' if gap >= 0 else f'missed by {-100 * gap:.1f} points'})"
    )
    if "alongside" in frac:  # results from before 2026-12-03 have the start's peak only
        gap = frac["alongside"] - frac["target"]
        ratios.append(
            f"- {frac['system']}: step at {100 * frac['alongside']:.1f}% of the {frac['precision']} rate sustained "
            f"alongside it (target ≥ {100 * frac['target']:.0f}%: "
            f"{'met' if gap >= 0 else f'missed by {-100 * gap:.1f} points'})"
        )
    work, real = record["flops"], record["flops"]["real"]
    return "\n".join(
        [
            f"**Training** — {common.machine_line(record['machine'])}",
            "",
            f"{cfg['model']}, LoRA r{cfg['rank']} α{cfg['alpha']:g} on all roles, {cfg['queries']} groups × "
            f"{cfg['group_size']} passages per step ({cfg['sequences_per_step']} sequences), max length "
            f"{cfg['max_length']}, {cfg['precision']}; mean of steps {cfg['warmup'] + 1}-{cfg['steps']}. "
            f"First-step loss: ours {record['check']['relevance_lens']:.4f}, CrossEncoderTrainer "
            f"{record['check']['crossencoder']:.4f}. Load average at end: {cfg['load_average_end']:.2f}.",
            "",
            f"Matmul work a step ({real['tokens']:,.0f} real tokens; `benchmarks/flops.py`): "
            f"{real['total'] / 1e12:.3f} TFLOP = forward {real['dense_forward'] / 1e12:.3f} + backward through the "
            f"frozen weights {real['dense_backward'] / 1e12:.3f} + LoRA {real['lora'] / 1e12:.3f} + attention "
            f"{real['attention'] / 1e12:.3f} + head {real['head'] / 1e12:.5f}; padded "
            f"({work['padded']['tokens']:,.0f} positions, full attention square) {work['padded']['total'] / 1e12:.3f}; "
            f"full fine-tuning's 6N rule would be {work['six_n'] / 1e12:.3f}.",
            "",
            common.markdown_table(
                [
                    "system",
                    "s/step",
                    "query groups/s",
                    "TFLOP/s",
                    "of matmul rate",
                    "of rate alongside (GFLOP/s)",
                    "first step s",
                    "peak RSS MiB",
                ],
                rows,
            ),
            "",
            *ratios,
        ]
    )


if __name__ == "__main__":
    main()
