"""Contrastive LoRA fine-tuning of a reranker, the Tevatron RankLLaMA way, on the HF Trainer.

Per query: 1 positive + (G-1) hard negatives from a first-stage run (minus the judged
positives), scores reshaped to (queries, G), cross-entropy with the positive as target.

The Trainer brings gradient accumulation, bf16, gradient checkpointing, TensorBoard logs and
multi-process runs (``torchrun`` / ``accelerate launch``; FSDP and DeepSpeed configs in
``configs/``). What we add: the group dataset (epoch and seed passed in explicitly, so a
resumed run sees exactly the batches an uninterrupted one would), a checkpoint schedule with
explicit early steps, checkpoints that are adapter folders ``rerank --adapter`` loads, and
resume from the latest *complete* checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import Dataset, SequentialSampler

from .adapters import LoraSettings, attach_lora
from .data import Passage, atomic_write, fingerprint, read_corpus, read_qrels, read_queries, read_run, read_tevatron
from .errors import InputError
from .provenance import versions
from .reranker import HEAD_FILE, Reranker, RerankerConfig

RUN_FILE = "run.json"
#: ``compile="auto"`` compiles the decoder blocks when a run's forward and backward work
#: (6 x block parameters x tokens) reaches this. Measured on the 2-core AMX CPU of
#: benchmarks/README.md with SmolLM2-135M: compiling costs ~3 s (warm inductor cache) to ~30 s
#: (cold) and saves ~2 s of a 6.6 s step, so it pays back after ~15 steps of 32 x 96 tokens
#: (~3e13 FLOPs); a tiny test model never reaches it.
COMPILE_MIN_FLOPS = 3e13
TRAINER_STATE = "trainer_state.json"  # written last by the Trainer: its presence marks a complete checkpoint


@dataclass
class TrainConfig:
    """Everything a training run depends on. Saved, resolved, as ``RUNDIR/run.json``."""

    model: str = field(default="smollm2-135m", metadata={"help": "Base model: short name, GGUF, folder or hub id."})
    output: str = field(default="runs/train", metadata={"help": "Run folder (checkpoint-<step>/ and final/ go here)."})
    # data
    data: str = field(default="faq+weak", metadata={"help": "'faq' (embedded), 'faq+weak' (with man-page pairs), or 'files'."})
    queries: str | None = field(default=None, metadata={"help": "Queries TSV (data=files)."})
    qrels: str | None = field(default=None, metadata={"help": "Qrels (data=files)."})
    corpus: str | None = field(default=None, metadata={"help": "Corpus TSV/JSONL (data=files)."})
    negatives_run: str | None = field(default=None, metadata={"help": "First-stage run to draw hard negatives from (data=files)."})
    tevatron: str | None = field(default=None, metadata={"help": "Tevatron train JSONL with given negatives (instead of the above)."})
    negatives_depth: int = field(default=100, metadata={"help": "Draw negatives from the run's top-k."})
    group_size: int = field(default=8, metadata={"help": "G: 1 positive + G-1 negatives per query (the study: 16)."})
    short_groups: str = field(default="skip", metadata={"help": "Queries with fewer than G-1 negatives: skip (recorded in run.json) or error."})
    # LoRA
    rank: int = field(default=8, metadata={"help": "LoRA rank (the study: 1, 2, 8, 32)."})
    alpha: float = field(default=64.0, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "LoRA dropout (the study: 0.1; off by default: its masks cost ~25% of a CPU step)."},
    )
    targets: str = field(default="all", metadata={"help": "mha | mlp | all | none | roles such as q,k or up,gate."})
    layers: list[int] | None = field(default=None, metadata={"help": "Train LoRA on these layers only."})
    # optimisation
    queries_per_device: int = field(default=4, metadata={"help": "Query groups per device per micro-batch."})
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    lr: float = field(default=5e-4, metadata={"help": "Peak learning rate (the study: 1e-4 at global batch 128)."})
    warmup_steps: int = field(default=5, metadata={"help": "Linear warm-up steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_steps: int = field(default=50, metadata={"help": "Optimizer steps."})
    max_length: int = field(default=96, metadata={"help": "Tokens per query-passage pair."})
    template: str = field(default="query: {query} document: {title} {text}", metadata={"help": "Input template."})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 | fp32. bf16 keeps frozen weights in bf16."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory (7B models)."})
    compile: str = field(
        default="auto",
        metadata={"help": "torch.compile each decoder block: auto (when the run's work pays the compile back), on or off."},
    )
    seed: int = field(default=42, metadata={"help": "Seed for init, negatives, order and dropout."})
    # checkpoints
    save_steps: list[int] = field(default_factory=lambda: [5, 10, 25, 50], metadata={"help": "Explicit checkpoint steps."})
    save_every: int = field(default=0, metadata={"help": "Also checkpoint every N steps (0: off)."})
    eval_split: str | None = field(default="dev", metadata={"help": "FAQ split to evaluate the final model on (none to skip)."})
    eval_depth: int = field(default=20, metadata={"help": "Rerank BM25's top-k in the final evaluation."})
    logging_steps: int = field(default=5, metadata={"help": "Log loss every N steps (TensorBoard in RUNDIR/logs)."})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed config JSON (GPU clusters)."})
    fsdp: str | None = field(default=None, metadata={"help": "FSDP options string passed to the Trainer (GPU clusters)."})

    def lora(self) -> LoraSettings:
        return LoraSettings(rank=self.rank, alpha=self.alpha, dropout=self.lora_dropout, targets=self.targets, layers=self.layers)

    def reranker(self) -> RerankerConfig:
        return RerankerConfig(model=self.model, template=self.template, max_length=self.max_length)

    def validate(self) -> None:
        """Checks that need no model: fail before anything loads."""
        if self.group_size < 2:
            raise InputError(f"--group-size {self.group_size}: expected >= 2 (one positive and at least one negative)")
        for name in ("queries_per_device", "grad_accum", "max_steps", "max_length"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected a positive integer")
        if self.lr <= 0:
            raise InputError(f"--lr {self.lr}: expected a positive learning rate")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"--precision {self.precision}: expected auto, bf16 or fp32")
        if any(s < 1 for s in self.save_steps) or self.save_every < 0:
            raise InputError(f"--save-steps {self.save_steps}: expected positive step numbers")
        if self.compile not in ("auto", "on", "off"):
            raise InputError(f"--compile {self.compile}: expected auto, on or off")
        if self.short_groups not in ("skip", "error"):
            raise InputError(f"short_groups {self.short_groups!r}: expected skip or error")
        if self.data not in ("faq", "faq+weak", "files"):
            raise InputError(f"data {self.data!r}: expected faq, faq+weak or files")
        if self.data == "files" and not self.tevatron:
            missing = [n for n in ("queries", "qrels", "corpus", "negatives_run") if not getattr(self, n)]
            if missing:
                raise InputError(
                    "data=files needs --" + ", --".join(m.replace("_", "-") for m in missing) + " (or --tevatron FILE)"
                )
        self.reranker()  # validates the template and length


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults <- TOML file <- overrides (flags). Unknown keys are refused."""
    values: dict[str, Any] = {}
    if path is not None:
        import tomllib

        path = Path(path)
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise InputError(f"--config {path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path}: invalid TOML ({exc})") from None
        values = values.get("train", values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown training setting(s) {', '.join(unknown)}: expected some of {', '.join(sorted(known))}")
    if str(values.get("eval_split", "")).lower() == "none":
        values["eval_split"] = None
    config = TrainConfig(**values)
    config.validate()
    return config


# ---------------------------------------------------------------------------- data


@dataclass
class TrainGroups:
    """Query groups to train on: positives and candidate negatives, by id into ``corpus``."""

    queries: dict[str, str]
    positives: dict[str, list[str]]
    negatives: dict[str, list[str]]
    corpus: dict[str, Passage]
    fingerprints: dict[str, str] = field(default_factory=dict)

    def check(self, group_size: int, short_groups: str = "skip") -> list[str]:
        """Refuse (or, with ``skip``, drop) queries that cannot fill a group without repeats.

        Returns the dropped query ids; raises when nothing would be left.
        """
        short = sorted(q for q in self.queries if len(self.negatives[q]) < group_size - 1)
        if short and (short_groups == "error" or len(short) == len(self.queries)):
            raise InputError(
                f"{len(short)} of {len(self.queries)} training queries have fewer than {group_size - 1} distinct "
                f"negatives (e.g. {short[0]!r} has {len(self.negatives[short[0]])}); lower --group-size or "
                "give a deeper negatives run (--negatives-depth)"
            )
        for qid in short:
            del self.queries[qid], self.positives[qid], self.negatives[qid]
        return short


def _from_run(queries, qrels, run, corpus, depth: int, fingerprints: dict[str, str]) -> TrainGroups:
    positives, negatives, kept = {}, {}, {}
    for qid, text in queries.items():
        pos = sorted(d for d, rel in qrels.get(qid, {}).items() if rel > 0)
        if not pos:
            continue  # an unjudged query cannot teach anything
        ranked = sorted(run.get(qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
        positives[qid] = pos
        # Query and passage ids may share one space (MS MARCO): compare docids with docids only.
        negatives[qid] = [d for d, _ in ranked if d not in set(pos)]
        kept[qid] = text
    return TrainGroups(kept, positives, negatives, corpus, fingerprints)


def load_groups(config: TrainConfig) -> TrainGroups:
    """Training groups as the config says: embedded FAQ, files, or Tevatron JSONL."""
    if config.data in ("faq", "faq+weak"):
        from .faq import load_faq

        splits = ["train"] + (["train-weak"] if config.data == "faq+weak" else [])
        merged = TrainGroups({}, {}, {}, {})
        for name in splits:
            part = load_faq(name)
            fps = {f"{name}:{role}": fingerprint(p) for role, p in part.paths.items()}
            g = _from_run(part.queries, part.qrels, part.run, part.corpus, config.negatives_depth, fps)
            for attr in ("queries", "positives", "negatives", "corpus", "fingerprints"):
                getattr(merged, attr).update(getattr(g, attr))
        return merged
    if config.tevatron:
        return _from_tevatron(Path(config.tevatron))
    queries = read_queries(config.queries)
    corpus = read_corpus(config.corpus)
    qrels = read_qrels(config.qrels, queries=queries, corpus=corpus)
    run = read_run(config.negatives_run, queries=queries, corpus=corpus)
    fps = {n: fingerprint(getattr(config, n)) for n in ("queries", "qrels", "corpus", "negatives_run")}
    return _from_run(queries, qrels, run, corpus, config.negatives_depth, fps)


def _from_tevatron(path: Path) -> TrainGroups:
    groups = TrainGroups({}, {}, {}, {}, {"tevatron": fingerprint(path)})
    for g in read_tevatron(path):
        groups.queries[g.query_id] = g.query
        for p in g.positives + g.negatives:
            groups.corpus.setdefault(p.docid, p)
        groups.positives[g.query_id] = [p.docid for p in g.positives]
        pos = set(groups.positives[g.query_id])
        groups.negatives[g.query_id] = [p.docid for p in g.negatives if p.docid not in pos]
    return groups


class GroupDataset(Dataset):
    """Item i = (epoch, query) in a seeded order; negatives rotate across epochs.

    Epoch and seed are explicit inputs, so item i is the same group in every process and in
    a resumed run: nothing depends on how many items were drawn before.
    """

    def __init__(self, groups: TrainGroups, group_size: int, epochs: int, seed: int):
        self.groups, self.size, self.epochs, self.seed = groups, group_size, epochs, seed
        self.qids = sorted(groups.queries)

    def __len__(self) -> int:
        return len(self.qids) * self.epochs

    def _order(self, epoch: int) -> list[str]:
        order = list(self.qids)
        random.Random(f"{self.seed}:order:{epoch}").shuffle(order)
        return order

    def group(self, epoch: int, qid: str) -> tuple[str, list[Passage]]:
        g = self.groups
        rng = random.Random(f"{self.seed}:pos:{epoch}:{qid}")
        positive = rng.choice(g.positives[qid])
        candidates = list(g.negatives[qid])
        random.Random(f"{self.seed}:neg:{qid}").shuffle(candidates)
        k = self.size - 1
        start = (epoch * k) % len(candidates)  # rotate: each epoch sees the next k negatives
        negatives = (candidates[start:] + candidates[:start])[:k]
        return g.queries[qid], [g.corpus[positive]] + [g.corpus[d] for d in negatives]

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, position = divmod(index, len(self.qids))
        query, passages = self.group(epoch, self._order(epoch)[position])
        return {"query": query, "passages": passages}


class GroupCollator:
    """Groups -> one (queries*G, L) batch; the positive is column 0 of each group."""

    def __init__(self, reranker: Reranker):
        self.reranker = reranker

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [self.reranker.format(it["query"], p) for it in items for p in it["passages"]]
        batch = self.reranker.collate(self.reranker.tokenize(texts))
        batch["group_size"] = torch.tensor(len(items[0]["passages"]))
        return batch


def group_loss(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Listwise cross-entropy with the positive (column 0) as the target."""
    logits = scores.float().view(-1, group_size)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


# ---------------------------------------------------------------------------- trainer


def _make_trainer_class():
    from transformers import Trainer

    class RerankTrainer(Trainer):
        """HF Trainer with the group loss, ordered sampling and adapter-folder checkpoints."""

        run_record: dict = {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            group_size = int(inputs.pop("group_size"))
            scores = model(**inputs)
            loss = group_loss(scores, group_size)
            return (loss, scores) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            # The dataset already holds the seeded order; shuffling again would break resume parity.
            return SequentialSampler(train_dataset or self.train_dataset)

        def _save(self, output_dir=None, state_dict=None):
            if not self.args.should_save:
                return
            reranker = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            reranker.save(output_dir, extra={"run": self.run_record, "step": self.state.global_step})

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            load_trainable(self.accelerator.unwrap_model(model or self.model), Path(resume_from_checkpoint))

    return RerankTrainer


def load_trainable(reranker: Reranker, directory: Path) -> None:
    """Restore LoRA weights and head from a checkpoint into an already LoRA-wrapped reranker."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        head = load_file(directory / HEAD_FILE)
        reranker.score.load_state_dict({k: v.to(reranker.score.weight.dtype) for k, v in head.items()})
        adapter = directory / "adapter_model.safetensors"
        if adapter.is_file():
            set_peft_model_state_dict(reranker.backbone, load_file(adapter))
    except Exception as exc:
        raise InputError(f"{directory}: unreadable checkpoint ({exc}); delete it to resume from an earlier one") from None


def _schedule_callback(config: TrainConfig):
    from transformers import TrainerCallback

    steps = set(config.save_steps) | {config.max_steps}

    class CheckpointSchedule(TrainerCallback):
        """Save at the explicit steps of the schedule and every ``save_every`` steps."""

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if step in steps or (config.save_every and step % config.save_every == 0):
                control.should_save = True
            return control

    return CheckpointSchedule()


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``checkpoint-<step>`` folders that were written to the end, by step."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        step = path.name.split("-", 1)[1]
        if step.isdigit() and (path / TRAINER_STATE).is_file() and (path / HEAD_FILE).is_file():
            found.append((int(step), path))
    return sorted(found)


def _precision(config: TrainConfig) -> str:
    from .models import bf16_supported

    if config.precision == "auto":
        return "bf16" if bf16_supported("cuda" if torch.cuda.is_available() else "cpu") else "fp32"
    return config.precision


def build_model(config: TrainConfig) -> Reranker:
    """Base model (frozen, bf16 when training in bf16), LoRA (fp32) and head (fp32)."""
    dtype = torch.bfloat16 if _precision(config) == "bf16" else torch.float32
    reranker = Reranker.from_pretrained(config.model, config=config.reranker(), dtype=dtype)
    for p in reranker.backbone.parameters():
        p.requires_grad_(False)
    attach_lora(reranker, config.lora(), seed=config.seed)
    # Trainable parameters in fp32: the frozen bf16 weights need no fp32 master copy.
    for p in reranker.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    reranker.score.float().requires_grad_(True)
    if config.gradient_checkpointing:
        reranker.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        reranker.base_model.enable_input_require_grads()
    return reranker


def compile_decision(config: TrainConfig, reranker: Reranker) -> tuple[bool, str]:
    """Whether to ``torch.compile`` the decoder blocks for training, and why.

    Compiled blocks fuse the element-wise work (norms, rotary, SiLU, LoRA scaling) of the
    forward and the backward; the math is the same, only float rounding moves
    (``tests/test_train.py`` holds the two paths to each other).
    """
    from .fastscore import can_compile
    from .roles import blocks

    if config.compile == "off":
        return False, "compile=off"
    blocker = can_compile(reranker.device)
    if blocker is None and (config.deepspeed or config.fsdp or config.gradient_checkpointing):
        blocker = "sharded or checkpointed training wraps the blocks itself"
    if blocker:
        if config.compile == "on":
            raise InputError(f"--compile on: cannot compile here ({blocker}); use --compile auto or off")
        return False, blocker
    params = sum(p.numel() for block in blocks(reranker.base_model, reranker.architecture) for p in block.parameters())
    tokens = config.max_steps * config.grad_accum * config.queries_per_device * config.group_size * config.max_length
    work = 6.0 * params * tokens
    if config.compile == "auto" and work < COMPILE_MIN_FLOPS:
        return False, f"compile=auto: {work:.2g} FLOPs of training < {COMPILE_MIN_FLOPS:.0e}, compiling would not pay back"
    return True, f"compile={config.compile}: {work:.2g} FLOPs of training"


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a reranker as ``config`` says; returns the run folder. See the module doc."""
    from transformers import TrainingArguments, set_seed

    config.validate()
    run_dir = Path(config.output)
    groups = load_groups(config)
    if not groups.queries:
        raise InputError("no training query has a judged positive passage; check the qrels against the queries")
    dropped = groups.check(config.group_size, config.short_groups)
    existing = complete_checkpoints(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise InputError(f"--output {run_dir}: folder exists and is not empty; pass --resume to continue it or choose a new folder")
    _check_same_run(run_dir, config) if resume else None

    set_seed(config.seed)
    reranker = build_model(config)
    compiled, why = compile_decision(config, reranker)
    if compiled:
        from .fastscore import compile_blocks

        compile_blocks(reranker)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    global_batch = config.queries_per_device * config.grad_accum * world
    epochs = max(1, math.ceil(config.max_steps * global_batch / len(groups.queries)))
    dataset = GroupDataset(groups, config.group_size, epochs, config.seed)
    record = _run_record(config, groups, world, global_batch, epochs)
    record["resolved"]["skipped_short_queries"] = dropped
    record["resolved"]["compiled_blocks"] = {"on": compiled, "why": why}
    if int(os.environ.get("RANK", "0")) == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(run_dir / RUN_FILE) as fh:
            json.dump(record, fh, indent=2, sort_keys=True)

    args = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=config.queries_per_device,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_steps=config.max_steps,
        lr_scheduler_type="linear",
        bf16=_precision(config) == "bf16",
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        report_to=["tensorboard"],
        save_strategy="no",  # the schedule callback decides
        save_only_model=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,
        deepspeed=config.deepspeed,
        fsdp=config.fsdp or "",
        max_grad_norm=1.0,
    )
    latest = existing[-1][1] if (resume and existing) else None
    started = time.perf_counter()
    with _tensorboard_dir(run_dir / "logs"):
        trainer = _make_trainer_class()(
            model=reranker, args=args, train_dataset=dataset, data_collator=GroupCollator(reranker),
            callbacks=[_schedule_callback(config)],
        )
        trainer.run_record = record
        trainer.train(resume_from_checkpoint=str(latest) if latest else None)
    if trainer.args.should_save:
        _finish(trainer, reranker, run_dir, record, time.perf_counter() - started, config)
    return run_dir


@contextmanager
def _tensorboard_dir(path: Path):
    # transformers 5 takes the TensorBoard folder from this variable only.
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = before


def _finish(trainer, reranker: Reranker, run_dir: Path, record: dict, seconds: float, config: TrainConfig) -> None:
    final = run_dir / "final"
    tmp = run_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    reranker.save(tmp, extra={"run": record, "step": trainer.state.global_step})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    summary = {"train_seconds": seconds, "steps": trainer.state.global_step, "log": trainer.state.log_history}
    if torch.cuda.is_available():
        summary["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    with atomic_write(run_dir / "train_summary.json") as fh:
        json.dump(summary, fh, indent=2)


def _run_record(config: TrainConfig, groups: TrainGroups, world: int, global_batch: int, epochs: int) -> dict:
    return {
        "config": asdict(config),
        "resolved": {"precision": _precision(config), "world_size": world, "global_batch_queries": global_batch,
                     "epochs_covered": epochs, "train_queries": len(groups.queries)},
        "data_fingerprints": groups.fingerprints,
        "versions": versions(),
    }


def _check_same_run(run_dir: Path, config: TrainConfig) -> None:
    """Resuming with different settings would silently mix two runs: refuse it."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return
    before = json.loads(path.read_text())["config"]
    now = asdict(config)
    # Compiling changes how blocks run, not what they compute: a resumed run may switch it.
    changed = sorted(k for k in now if k not in ("output", "compile") and before.get(k) != now[k])
    if changed:
        raise InputError(
            f"--resume {run_dir}: settings differ from the saved run ({', '.join(changed)}); "
            "use the same settings or a new --output"
        )


def evaluate_final(run_dir: Path, split: str = "dev", depth: int = 20, *, progress: bool = True) -> dict:
    """Rerank BM25's top-``depth`` of a FAQ split with ``RUNDIR/final``; saves and returns metrics."""
    from .evaluate import evaluate
    from .faq import load_faq
    from .score import ScoreConfig, prepare, rerank

    data = load_faq(split)
    config = ScoreConfig(depth=depth)
    reranker = prepare(Reranker.from_pretrained(adapter=Path(run_dir) / "final"), config)
    scored = rerank(reranker, data.queries, data.corpus, data.run, config, progress=progress, description=f"evaluating on {split}")
    qids = list(data.queries)
    result = {
        "split": split, "depth": depth, "n_queries": len(qids),
        "bm25": evaluate(data.qrels, data.run, query_ids=qids).aggregate,
        "reranker": evaluate(data.qrels, scored, query_ids=qids).aggregate,
    }
    with atomic_write(Path(run_dir) / f"eval.{split}.json") as fh:
        json.dump(result, fh, indent=2)
    return result
