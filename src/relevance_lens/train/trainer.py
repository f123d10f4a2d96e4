"""Contrastive LoRA fine-tuning of a reranker, the Tevatron RankLLaMA way, on the HF Trainer.

Per query: 1 positive + (G-1) hard negatives from a first-stage run (minus the judged
positives), scores reshaped to (queries, G), cross-entropy with the positive as target.

The Trainer brings gradient accumulation, bf16, gradient checkpointing, TensorBoard logs and
multi-process runs (``torchrun`` / ``accelerate launch``; FSDP and DeepSpeed configs in
``configs/``). What we add: the group dataset (:mod:`relevance_lens.train.groups`), a
checkpoint schedule with explicit early steps, checkpoints that are adapter folders
``rerank --adapter`` loads, and resume from the latest *complete* checkpoint
(:mod:`relevance_lens.train.rundir`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import SequentialSampler

from relevance_lens import threads
from relevance_lens.data.faq import load_faq
from relevance_lens.data.formats import atomic_write
from relevance_lens.errors import InputError
from relevance_lens.evaluate.metrics import evaluate
from relevance_lens.faults import kill_point
from relevance_lens.locks import exclusive, lock_file
from relevance_lens.model.backbone import bf16_supported, set_attention
from relevance_lens.model.compile import can_compile, compile_blocks
from relevance_lens.model.manifest import write_manifest
from relevance_lens.model.reranker import HEAD_FILE, Reranker
from relevance_lens.model.roles import blocks
from relevance_lens.provenance import versions
from relevance_lens.quiet import library_warnings_to
from relevance_lens.score.config import ScoreConfig, load_for_scoring
from relevance_lens.score.rerank import rerank
from relevance_lens.threads import fit, share_cores
from relevance_lens.train.config import SCHEDULES, TrainConfig
from relevance_lens.train.groups import GroupCollator, GroupDataset, TrainGroups, group_loss, load_groups
from relevance_lens.train.probe import init_head_by_probe
from relevance_lens.train.progress import quiet_trainer
from relevance_lens.train.rundir import (
    FINAL,
    RUN_FILE,
    SUMMARY,
    TRAINER_STATE,
    checkpoint_name,
    complete_checkpoints,
)
from relevance_lens.train.trainable import make_trainable

#: ``compile="auto"`` compiles the decoder blocks when a run's forward and backward work
#: (6 x block parameters x tokens) reaches this. Measured on the 2-core AMX CPU of
#: benchmarks/README.md with SmolLM2-135M: compiling costs ~3 s (warm inductor cache) to ~30 s
#: (cold) and saves ~2 s of a 6.6 s step, so it pays back after ~15 steps of 32 x 96 tokens
#: (~3e13 FLOPs); a tiny test model never reaches it.
COMPILE_MIN_FLOPS = 3e13


def _make_trainer_class():
    from transformers import Trainer

    class RerankTrainer(Trainer):
        """HF Trainer with the group loss, ordered sampling and adapter-folder checkpoints."""

        run_record: dict = {}
        head_lr: float | None = None

        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            if self.head_lr is not None:
                _give_head_its_lr(optimizer, self.accelerator.unwrap_model(self.model), self.head_lr)
            return optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            group_size = int(inputs.pop("group_size"))
            # Only each row's last real token is scored: right padding needs no mask beyond the causal one.
            scores = model(**inputs, causal_only=True)
            loss = group_loss(scores, group_size)
            _require_finite_loss(loss, self.state.global_step + 1, self.args.output_dir)
            return (loss, scores) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            # The dataset already holds the seeded order; shuffling again would break resume parity.
            return SequentialSampler(train_dataset or self.train_dataset)

        def _save(self, output_dir=None, state_dict=None):
            if not self.args.should_save:
                return
            reranker = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            # Under FSDP the parameters are shards; the Trainer gathered the full state dict on every process.
            full = state_dict if self.is_fsdp_enabled else None
            _require_finite_weights(reranker, self.state.global_step, full)
            # The manifest waits for the Trainer's own files: _save_checkpoint writes it after them.
            extra = {"run": self.run_record, "step": self.state.global_step}
            reranker.save(output_dir, extra=extra, manifest=False, state_dict=full)
            kill_point("train.checkpoint")

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            if self.args.should_save:  # last: its presence marks a complete checkpoint (rundir.complete_checkpoints)
                kill_point("train.manifest")
                write_manifest(Path(self._get_output_dir(trial=trial)) / checkpoint_name(self.state.global_step))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            if self.is_fsdp_enabled and model is not None:
                # The Trainer passes the sharded model (FSDP2: DTensor parameters, which refuse plain tensors): its
                # own FSDP loading puts the full state dict it saved beside ours (pytorch_model_fsdp.bin) into them.
                super()._load_from_checkpoint(resume_from_checkpoint, model)
                return
            load_trainable(self.accelerator.unwrap_model(model or self.model), Path(resume_from_checkpoint))

    return RerankTrainer


def _give_head_its_lr(optimizer: torch.optim.Optimizer, reranker: Reranker, head_lr: float) -> None:
    """Move the score head's parameters into their own param group at ``head_lr``.

    Done before the scheduler exists, so warm-up and decay scale both groups alike.
    """
    head = {id(p) for p in reranker.score.parameters()}
    found = []
    for group in optimizer.param_groups:
        found += [p for p in group["params"] if id(p) in head]
        group["params"] = [p for p in group["params"] if id(p) not in head]
    if len(found) != len(head):
        raise InputError(
            "--head-lr: the score head's parameters are not in the optimizer as themselves "
            "(sharded training flattens them); leave head_lr unset under FSDP/DeepSpeed"
        )
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    optimizer.add_param_group({"params": found, "lr": head_lr, "weight_decay": 0.0})


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
        raise InputError(
            f"{directory}: unreadable checkpoint ({exc}); delete it to resume from an earlier one"
        ) from None


def _require_finite_loss(loss: torch.Tensor, step: int, run_dir: str) -> None:
    """Stop at a NaN/inf loss before its backward: the step's update would poison every weight."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise InputError(
            f"training step {step}: the loss is {loss.detach().float().item()} (not finite); stopped before "
            f"updating, checkpoints already in {run_dir} are kept. Lower --lr, use --precision fp32 or check the "
            "training data, in a new --output"
        )


def _require_finite_weights(reranker: Reranker, step: int, state_dict: dict | None = None) -> None:
    """Refuse to save trained weights holding NaN/inf (a non-finite gradient can cause them with a finite loss).

    ``state_dict``: the full weights to check instead of the parameters (FSDP's are shards).
    """
    for name, param in reranker.named_parameters():
        if not param.requires_grad:
            continue
        value = param if state_dict is None else state_dict[name]
        if not bool(torch.isfinite(value.detach()).all()):
            raise InputError(
                f"training step {step}: trained weight {name} is not finite; stopped without saving it, "
                "earlier checkpoints are kept. Lower --lr or use --precision fp32, in a new --output"
            )


def _schedule_callback(config: TrainConfig):
    from transformers import TrainerCallback

    steps = set(config.save_steps) | {config.max_steps}

    class CheckpointSchedule(TrainerCallback):
        """Save at the explicit steps of the schedule and every ``save_every`` steps."""

        def on_step_end(self, args, state, control, **kwargs):
            kill_point("train.step")
            fit()  # another process may have started or ended: take this one's share of the cores
            step = state.global_step
            if step in steps or (config.save_every and step % config.save_every == 0):
                control.should_save = True
                # A logged loss is the mean since the last log, and a resumed Trainer starts that mean
                # afresh at its checkpoint: a log at every checkpoint keeps each logged mean the same in
                # a resumed run as in an uninterrupted one (a window never straddles a resume point).
                control.should_log = True
            return control

    return CheckpointSchedule()


def _precision(config: TrainConfig) -> str:
    if config.precision == "auto":
        return "bf16" if bf16_supported("cuda" if torch.cuda.is_available() else "cpu") else "fp32"
    return config.precision


def build_model(config: TrainConfig) -> Reranker:
    """Base model (frozen, bf16 when training in bf16, read in that dtype), LoRA (fp32) and head (fp32)."""
    dtype = torch.bfloat16 if _precision(config) == "bf16" else torch.float32
    return make_trainable(Reranker.from_pretrained(config.model, config=config.reranker(), dtype=dtype), config)


#: ``attention="auto"`` trains with eager attention on a CPU up to this ``max_length``. SDPA's CPU
#: kernel is a flash kernel whose backward ran 8x slower than the forward: 40% of the default
#: recipe's compiled step on the 2-core AMX Xeon (benchmarks/README.md, profile_training.py).
#: Eager attention keeps the probabilities for the backward instead (groups x heads x L² per
#: layer: ~30 MB a layer for SmolLM2 at 32 x 128), which grows with L²: above this, sdpa.
EAGER_ATTENTION_MAX_LENGTH = 256


def attention_decision(config: TrainConfig, reranker: Reranker) -> tuple[str, str]:
    """Which attention implementation to train with, and why (``config.attention``)."""
    if config.attention != "auto":
        return config.attention, f"attention={config.attention}"
    if config.targets == "none":
        return "sdpa", "attention=auto: sdpa for a head-only run (no backward through attention)"
    if reranker.device.type != "cpu":
        return "sdpa", "attention=auto: sdpa on an accelerator"
    if config.max_length > EAGER_ATTENTION_MAX_LENGTH:
        return "sdpa", f"attention=auto: max_length {config.max_length} > {EAGER_ATTENTION_MAX_LENGTH} (eager's memory)"
    return "eager", "attention=auto: eager on CPU (SDPA's CPU flash backward is the slow part of a short step)"


def compile_decision(config: TrainConfig, reranker: Reranker) -> tuple[bool, str]:
    """Whether to ``torch.compile`` the decoder blocks for training, and why.

    Compiled blocks fuse the element-wise work (norms, rotary, SiLU, LoRA scaling) of the
    forward and the backward; the math is the same, only float rounding moves
    (``tests/test_train.py`` holds the two paths to each other).
    """
    if config.compile == "off":
        return False, "compile=off"
    blocker = can_compile(reranker.device)
    if blocker is None and (config.deepspeed or config.fsdp or config.gradient_checkpointing):
        blocker = "sharded or checkpointed training wraps the blocks itself"
    if blocker:
        if config.compile == "on":
            raise InputError(f"--compile on: cannot compile here ({blocker}); use --compile auto or off")
        return False, blocker
    block_params = [p for block in blocks(reranker.base_model, reranker.architecture) for p in block.parameters()]
    params = sum(p.numel() for p in block_params)
    tokens = config.max_steps * config.grad_accum * config.queries_per_device * config.group_size * config.max_length
    # Head only: the backward never enters the blocks, so a step is one forward (2N), not 6N; the demo's
    # 20-step head-only run paid a cold compile for work that never paid it back.
    per_token = 6.0 if any(p.requires_grad for p in block_params) else 2.0
    work = per_token * params * tokens
    if config.compile == "auto" and work < COMPILE_MIN_FLOPS:
        return (
            False,
            f"compile=auto: {work:.2g} FLOPs of training < {COMPILE_MIN_FLOPS:.0e}, compiling would not pay back",
        )
    return True, f"compile={config.compile}: {work:.2g} FLOPs of training"


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True, wait: float | None = 0) -> Path:
    """Train a reranker as ``config`` says; returns the run folder. See the module doc.

    The run folder is locked while training (:mod:`relevance_lens.locks`, ``.<name>.lock`` beside
    it): a second process on the same folder fails at once naming the holder, or waits up to
    ``wait`` seconds (None: as long as the holder lives). Under torchrun rank 0 holds it for all.
    """
    config.validate()  # a mistake fails before any lock file is written,
    _require_full_state_dict(config)
    data = _training_data(config)  # and so does a bad, empty or too small data file
    if os.environ.get("RANK", "0") != "0":
        with share_cores():
            return _train(config, data, resume=resume, progress=progress)
    hint = "wait for it to finish (or stop it), or pass --wait SECONDS"
    with exclusive(lock_file(config.output), f"--output {config.output}", wait, hint), share_cores():
        with library_warnings_to(Path(config.output) / "logs" / "libraries.log"):
            return _train(config, data, resume=resume, progress=progress)


def _training_data(config: TrainConfig) -> tuple[TrainGroups, list[str]]:
    """The training groups, checked, and the queries skipped as too short for ``group_size``."""
    groups = load_groups(config)
    if not groups.queries:
        raise InputError("no training query has a judged positive passage; check the qrels against the queries")
    return groups, groups.check(config.group_size - config.random_negatives, config.short_groups)


def _train(config: TrainConfig, data: tuple[TrainGroups, list[str]], *, resume: bool, progress: bool) -> Path:
    from transformers import TrainingArguments, set_seed

    groups, dropped = data
    if config.fsdp and "LOCAL_RANK" not in os.environ:  # the Trainer's own test, which fails with a ValueError
        raise InputError(
            f"fsdp {config.fsdp!r}: FSDP shards across launched processes and this one was not launched by torchrun "
            "or accelerate launch; launch it so on GPUs, or leave fsdp unset"
        )
    run_dir = Path(config.output)
    corrupted: list[str] = []  # resume falls back past these, and says so below
    existing = complete_checkpoints(run_dir, on_corrupt=corrupted.append) if resume else []
    # Rank 0 alone checks: under torchrun the other ranks may start after it has written run.json.
    first_process = os.environ.get("RANK", "0") == "0"
    if first_process and run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise InputError(
            f"--output {run_dir}: folder exists and is not empty; pass --resume to continue it or choose a new folder"
        )
    _check_same_run(run_dir, config) if resume else None
    existed = run_dir.exists()

    set_seed(config.seed)
    reranker = build_model(config)
    attention, attention_why = attention_decision(config, reranker)
    attention = set_attention(reranker, attention)
    compiled, why = compile_decision(config, reranker)
    if compiled:
        compile_blocks(reranker)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    global_batch = config.queries_per_device * config.grad_accum * world
    epochs = max(1, math.ceil(config.max_steps * global_batch / len(groups.queries)))
    dataset = GroupDataset(groups, config.group_size, epochs, config.seed, config.random_negatives)
    record = _run_record(config, groups, world, global_batch, epochs)
    record["resolved"]["skipped_short_queries"] = dropped
    record["resolved"]["compiled_blocks"] = {"on": compiled, "why": why}
    record["resolved"]["attention"] = {"implementation": attention, "why": attention_why}
    record["resolved"]["threads"] = {"at_start": fit(), "cores": threads.cores_available()}
    if config.head_init == "probe" and not (resume and existing):
        record["resolved"]["probe"] = init_head_by_probe(
            reranker, dataset, GroupCollator(reranker), config.probe_groups, config.probe_l2
        )
    args = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=config.queries_per_device,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_steps=config.max_steps,
        lr_scheduler_type=SCHEDULES[config.schedule],
        bf16=_precision(config) == "bf16",
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        report_to=["tensorboard"],
        save_strategy="no",  # the schedule callback decides
        save_only_model=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,  # the rich bar of train/progress.py instead (progress=True)
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,
        deepspeed=config.deepspeed,
        fsdp=config.fsdp or "",
        max_grad_norm=1.0,
    )
    latest = existing[-1][1] if (resume and existing) else None
    for problem in corrupted:
        logging.getLogger(__name__).warning(
            f"--resume: {problem}; skipping it, resuming from {latest.name if latest else 'step 0'}"
        )
    started = time.perf_counter()
    with _tensorboard_dir(run_dir / "logs"):
        trainer = _make_trainer_class()(
            model=reranker,
            args=args,
            train_dataset=dataset,
            data_collator=GroupCollator(reranker),
            callbacks=[_schedule_callback(config)],
        )
        # Refused before anything is written: a run folder holding an fsdp run.json would claim a sharding
        # that never happened. The Trainer has made the (empty) folder already: take it away again.
        try:
            _require_fsdp_engaged(config, trainer)
            if trainer.is_fsdp_enabled:  # whatever set it: the type the Trainer will save with
                plugin = trainer.accelerator.state.fsdp_plugin
                _require_full_state_dict(config, {"FSDP_STATE_DICT_TYPE": plugin.state_dict_type.name})
        except InputError:
            if not existed:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(run_dir / RUN_FILE) as fh:
                json.dump(record, fh, indent=2, sort_keys=True)
        quiet_trainer(trainer, progress)
        trainer.run_record = record
        trainer.head_lr = config.head_lr
        if latest is not None and existing[-1][0] >= config.max_steps:
            _restore(trainer, latest)  # killed after its last checkpoint: nothing left to train
        else:
            trainer.train(resume_from_checkpoint=str(latest) if latest else None)
    # FSDP: the full weights are gathered by every process (a collective), then written by the first.
    full = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if trainer.args.should_save:
        _finish(trainer, reranker, run_dir, record, time.perf_counter() - started, full)
    return run_dir


def _require_fsdp_engaged(config: TrainConfig, trainer) -> None:
    """Refuse ``fsdp`` where accelerate leaves it off: it would train with plain data parallelism instead.

    accelerate enables FSDP only when each process drives an accelerator (``AcceleratorState``
    sets ``DistributedType.FSDP`` for MULTI_GPU/XPU/NPU/... runs, never for MULTI_CPU or a single
    process) and otherwise drops the plugin without a word.
    """
    if config.fsdp and not trainer.is_fsdp_enabled:
        raise InputError(
            f"fsdp {config.fsdp!r}: accelerate did not enable FSDP here (distributed type "
            f"{trainer.accelerator.distributed_type.value}; it needs one GPU per process under torchrun or accelerate "
            f"launch) and would train without sharding; leave fsdp unset, in a new --output (not {config.output})"
        )


#: torch's ``StateDictType`` by number, as accelerate also accepts it in ``FSDP_STATE_DICT_TYPE``.
_STATE_DICT_TYPES = {"1": "FULL_STATE_DICT", "2": "LOCAL_STATE_DICT", "3": "SHARDED_STATE_DICT"}


def _require_full_state_dict(config: TrainConfig, env: dict[str, str] | None = None) -> None:
    """Refuse an FSDP state-dict type under which checkpoints would lack the adapter and the score head.

    The Trainer hands a checkpoint to our ``_save`` (the adapter folder) only with ``FULL_STATE_DICT``;
    with a sharded or local one it writes its own shards alone. ``fsdp`` set here passes the full type
    itself; without it, ``accelerate launch`` with an FSDP config (``ACCELERATE_USE_FSDP``) makes the
    plugin from its environment, where FSDP2 defaults to ``SHARDED_STATE_DICT`` (accelerate 1.16,
    ``FullyShardedDataParallelPlugin.set_state_dict_type``). ``env``: the plugin's own setting, once it exists.
    """
    if env is None:
        if config.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
            return
        env = dict(os.environ)
    given = env.get("FSDP_STATE_DICT_TYPE")
    version = env.get("FSDP_VERSION", "1")
    kind = (
        _STATE_DICT_TYPES.get(given, given.upper())
        if given
        else ("FULL_STATE_DICT" if version == "1" else "SHARDED_STATE_DICT")
    )
    if kind != "FULL_STATE_DICT":
        passed = (
            f"FSDP_STATE_DICT_TYPE={given}"
            if given
            else f"FSDP_STATE_DICT_TYPE unset with FSDP_VERSION={version} (accelerate's default: {kind})"
        )
        raise InputError(
            f"{passed}: expected FULL_STATE_DICT, as with {kind} the Trainer saves only its own shards and "
            "checkpoint-N/ would lack the LoRA adapter and score head; set fsdp_state_dict_type: FULL_STATE_DICT in "
            "the accelerate config (configs/accelerate_fsdp.yaml has it)"
        )


def _restore(trainer, checkpoint: Path) -> None:
    """Load a checkpoint at ``max_steps`` into the trainer without training.

    The Trainer checks ``max_steps`` only after a step, so resuming from the last checkpoint
    (a run killed before ``final/`` was written) would take one step beyond it: one more
    optimizer update (with the learning rate of a constant schedule), step and loss.
    """
    from transformers import TrainerState

    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE))


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


def _finish(trainer, reranker: Reranker, run_dir: Path, record: dict, seconds: float, full: dict | None) -> None:
    final = run_dir / FINAL
    tmp = run_dir / f"{FINAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _require_finite_weights(reranker, trainer.state.global_step, full)
    reranker.save(tmp, extra={"run": record, "step": trainer.state.global_step}, state_dict=full)
    kill_point("train.final")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    kill_point("train.summary")
    summary = {"train_seconds": seconds, "steps": trainer.state.global_step, "log": trainer.state.log_history}
    if torch.cuda.is_available():
        summary["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    with atomic_write(run_dir / SUMMARY) as fh:
        json.dump(summary, fh, indent=2)


def _run_record(config: TrainConfig, groups: TrainGroups, world: int, global_batch: int, epochs: int) -> dict:
    return {
        "config": asdict(config),
        "resolved": {
            "precision": _precision(config),
            "world_size": world,
            "global_batch_queries": global_batch,
            "epochs_covered": epochs,
            "train_queries": len(groups.queries),
        },
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
    # Compiling and the attention kernel change how blocks run, not what they compute: a resumed run may
    # switch them (and a run saved before the attention setting existed resumes).
    changed = sorted(k for k in now if k not in ("output", "compile", "attention") and before.get(k) != now[k])
    if changed:
        raise InputError(
            f"--resume {run_dir}: settings differ from the saved run ({', '.join(changed)}); "
            "use the same settings or a new --output"
        )


def evaluate_final(run_dir: Path, split: str = "dev", depth: int = 20, *, progress: bool = True) -> dict:
    """Rerank BM25's top-``depth`` of a FAQ split with ``RUNDIR/final``, BM25's tail kept below it (so
    both rows rank the same passages); saves and returns metrics."""

    data = load_faq(split)
    config = ScoreConfig(depth=depth)
    reranker = load_for_scoring(adapter=Path(run_dir) / FINAL, config=config)
    scored = rerank(
        reranker, data.queries, data.corpus, data.run, config, progress=progress, description=f"evaluating on {split}"
    )
    qids = list(data.queries)
    result = {
        "split": split,
        "depth": depth,
        "tail": "kept",  # the reranked run holds BM25's passages below depth too, in BM25's order
        "n_queries": len(qids),
        "bm25": evaluate(data.qrels, data.run, query_ids=qids).aggregate,
        "reranker": evaluate(data.qrels, scored, query_ids=qids).aggregate,
    }
    with atomic_write(Path(run_dir) / f"eval.{split}.json") as fh:
        json.dump(result, fh, indent=2)
    return result
