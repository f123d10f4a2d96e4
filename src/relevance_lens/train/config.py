"""The typed settings of a training run (:class:`TrainConfig`), from defaults, a TOML file and flags."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from relevance_lens.errors import InputError
from relevance_lens.model.lora import LoraSettings
from relevance_lens.model.reranker import RerankerConfig

#: Our schedule names -> the HF Trainer's ``lr_scheduler_type`` (all after ``warmup_steps`` of linear warm-up).
SCHEDULES = {"linear": "linear", "constant": "constant_with_warmup", "cosine": "cosine"}


@dataclass
class TrainConfig:
    """Everything a training run depends on. Saved, resolved, as ``RUNDIR/run.json``."""

    model: str = field(default="smollm2-135m", metadata={"help": "Base model: short name, GGUF, folder or hub id."})
    output: str = field(default="runs/train", metadata={"help": "Run folder (checkpoint-<step>/ and final/ go here)."})
    # data
    data: str = field(
        default="faq",
        metadata={
            "help": "'faq' (the embedded FAQ train split), 'faq+weak' (with 2,751 weak man-page pairs), 'files', or "
            "'dataset' (an ir_datasets id; implied by dataset = ID when data is not given). faq was chosen on FAQ "
            "dev over faq+weak, for two seeds (README: the default recipe, measured)."
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "ir_datasets id to train from (data=dataset), e.g. msmarco-passage/train/judged: its queries, "
            "qrels, negatives from its scoreddocs (else docpairs, or --negatives-run), and only the passages used."
        },
    )
    queries: str | None = field(default=None, metadata={"help": "Queries TSV, JSONL, CSV or Parquet (data=files)."})
    qrels: str | None = field(default=None, metadata={"help": "Qrels (data=files)."})
    corpus: str | None = field(default=None, metadata={"help": "Corpus TSV, JSONL, CSV or Parquet (data=files)."})
    negatives_run: str | None = field(
        default=None,
        metadata={
            "help": "First-stage run to draw hard negatives from (data=files; with data=dataset, instead of "
            "the dataset's scoreddocs)."
        },
    )
    tevatron: str | None = field(
        default=None,
        metadata={
            "help": "Tevatron train JSONL with given negatives (instead of the above); its v2 schema "
            "(positive_document_ids) also needs --corpus."
        },
    )
    negatives_depth: int = field(default=100, metadata={"help": "Draw negatives from the run's top-k."})
    group_size: int = field(default=8, metadata={"help": "G: 1 positive + G-1 negatives per query (the study: 16)."})
    random_negatives: int = field(
        default=0,
        metadata={
            "help": "How many of the G-1 negatives are drawn at random from the training corpus instead of the "
            "first stage's top-k (easy negatives: a relevance signal from step 1)."
        },
    )
    short_groups: str = field(
        default="skip",
        metadata={"help": "Queries with fewer than G-1 negatives: skip (recorded in run.json) or error."},
    )
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
    lr: float = field(
        default=2e-3,
        metadata={
            "help": "Peak learning rate (the study: 1e-4 at global batch 128). 2e-3 was chosen on FAQ dev among 5e-4, "
            "2e-3 and 3e-3 (README: the default recipe, measured)."
        },
    )
    head_lr: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the score head (default: lr). On the embedded default, 1e-2 with LoRA at "
            "2e-3 did worse on dev than one rate (README)."
        },
    )
    head_init: str = field(
        default="random",
        metadata={
            "help": "Score head at step 0: random (normal, the model's initializer_range), zero, or probe (fitted "
            "on the frozen model's features of the first probe_groups training groups: linear probing, then "
            "fine-tuning)."
        },
    )
    probe_groups: int = field(default=64, metadata={"help": "head_init=probe: training groups the probe is fitted on."})
    probe_l2: float = field(
        default=1e-3, metadata={"help": "head_init=probe: L2 penalty on the probe's weights (standardised features)."}
    )
    schedule: str = field(
        default="linear",
        metadata={"help": "LR schedule after the warm-up: linear (to 0), constant or cosine."},
    )
    warmup_steps: int = field(default=5, metadata={"help": "Linear warm-up steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_steps: int = field(default=50, metadata={"help": "Optimizer steps."})
    max_length: int = field(default=96, metadata={"help": "Tokens per query-passage pair."})
    template: str = field(
        default="document: {title} {text} query: {query}",
        metadata={
            "help": "Input template; fields {query}, {title}, {text}. The query last: then the frozen model's scored "
            "state already reads relevance (a linear probe on it ranks held-out FAQ groups at top-1 0.47 against "
            "0.16 with the query first) and the loss leaves ln G within 10 steps (README: the default recipe). "
            "RankLLaMA's order is 'query: {query} document: {title} {text}'."
        },
    )
    append_eos: bool = field(
        default=True, metadata={"help": "Append EOS and score its state (Tevatron); false: score the last text token."}
    )
    precision: str = field(default="auto", metadata={"help": "auto | bf16 | fp32. bf16 keeps frozen weights in bf16."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory (7B models)."})
    compile: str = field(
        default="auto",
        metadata={
            "help": "torch.compile each decoder block: auto (when the run's work pays the compile back), on or off."
        },
    )
    attention: str = field(
        default="auto",
        metadata={
            "help": "Attention kernel for training: auto, sdpa or eager (matmul + softmax). auto: eager on a CPU "
            "while the saved attention probabilities stay small (max_length <= 256), where SDPA's CPU flash "
            "backward took 40% of a step (benchmarks/README.md), else sdpa."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed for init, negatives, order and dropout."})
    # checkpoints
    save_steps: list[int] = field(
        default_factory=lambda: [5, 10, 25, 50], metadata={"help": "Explicit checkpoint steps."}
    )
    save_every: int = field(default=0, metadata={"help": "Also checkpoint every N steps (0: off)."})
    eval_split: str | None = field(
        default="dev", metadata={"help": "FAQ split to evaluate the final model on (none to skip)."}
    )
    eval_depth: int = field(default=20, metadata={"help": "Rerank BM25's top-k in the final evaluation."})
    logging_steps: int = field(default=5, metadata={"help": "Log loss every N steps (TensorBoard in RUNDIR/logs)."})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed config JSON (GPU clusters)."})
    fsdp: str | None = field(
        default=None,
        metadata={
            "help": "FSDP options string passed to the Trainer (GPU clusters, under torchrun or accelerate launch; "
            "refused elsewhere: accelerate would train without sharding on CPU processes)."
        },
    )

    def _check_dataset(self) -> None:
        """data=dataset takes queries, qrels and passages from the id: refuse the files it replaces."""
        if self.data == "dataset" and not self.dataset:
            raise InputError("data=dataset needs --dataset ID (an ir_datasets id, e.g. msmarco-passage/train/judged)")
        if self.dataset and self.data != "dataset":
            raise InputError(
                f"--dataset {self.dataset} with data {self.data!r}: training from an ir_datasets id is data = "
                '"dataset"; leave data out (it is then implied) or drop --dataset'
            )
        given = [n for n in ("queries", "qrels", "corpus", "tevatron") if self.dataset and getattr(self, n)]
        if given:
            raise InputError(
                f"--dataset {self.dataset}: replaces --{', --'.join(given)}; give one or the other "
                "(--negatives-run may replace its scoreddocs)"
            )

    def lora(self) -> LoraSettings:
        return LoraSettings(
            rank=self.rank, alpha=self.alpha, dropout=self.lora_dropout, targets=self.targets, layers=self.layers
        )

    def reranker(self) -> RerankerConfig:
        return RerankerConfig(
            model=self.model, template=self.template, max_length=self.max_length, append_eos=self.append_eos
        )

    def validate(self) -> None:
        """Checks that need no model: fail before anything loads."""
        if self.group_size < 2:
            raise InputError(f"--group-size {self.group_size}: expected >= 2 (one positive and at least one negative)")
        for name in ("queries_per_device", "grad_accum", "max_steps", "max_length"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected a positive integer")
        if not 0 <= self.random_negatives <= self.group_size - 1:
            raise InputError(
                f"--random-negatives {self.random_negatives}: expected 0 to G-1 = {self.group_size - 1} "
                "(the rest of the G-1 negatives come from the first stage)"
            )
        if self.lr <= 0:
            raise InputError(f"--lr {self.lr}: expected a positive learning rate")
        if self.head_lr is not None and self.head_lr <= 0:
            raise InputError(f"--head-lr {self.head_lr}: expected a positive learning rate (or leave it unset: lr)")
        if self.head_init not in ("random", "zero", "probe"):
            raise InputError(f"--head-init {self.head_init}: expected random, zero or probe")
        if self.probe_groups < 1 or self.probe_l2 < 0:
            raise InputError(
                f"probe_groups {self.probe_groups}, probe_l2 {self.probe_l2}: expected at least 1 group and l2 >= 0"
            )
        if self.schedule not in SCHEDULES:
            raise InputError(f"--schedule {self.schedule}: expected one of {', '.join(SCHEDULES)}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"--precision {self.precision}: expected auto, bf16 or fp32")
        if any(s < 1 for s in self.save_steps) or self.save_every < 0:
            raise InputError(f"--save-steps {self.save_steps}: expected positive step numbers")
        if self.compile not in ("auto", "on", "off"):
            raise InputError(f"--compile {self.compile}: expected auto, on or off")
        if self.attention not in ("auto", "sdpa", "eager"):
            raise InputError(f"--attention {self.attention}: expected auto, sdpa or eager")
        if self.short_groups not in ("skip", "error"):
            raise InputError(f"short_groups {self.short_groups!r}: expected skip or error")
        if self.data not in ("faq", "faq+weak", "files", "dataset"):
            raise InputError(f"data {self.data!r}: expected faq, faq+weak, files or dataset")
        self._check_dataset()
        if self.data == "files" and not self.tevatron:
            missing = [n for n in ("queries", "qrels", "corpus", "negatives_run") if not getattr(self, n)]
            if missing:
                raise InputError(
                    "data=files needs --" + ", --".join(m.replace("_", "-") for m in missing) + " (or --tevatron FILE)"
                )
        self.reranker()  # validates the template and length


def fits_type(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a dataclass field's type (bools are not numbers; ints are floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits_type(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return (
            isinstance(value, list) and all(fits_type(v, args[0]) for v in value) if args else isinstance(value, list)
        )
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def type_name(hint: Any) -> str:
    """How an error names what a field takes: "an integer", "a list of strings", "one of 'a', 'b'"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None)) + " (or leave it out)"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(args[0], type_name(args[0]))}" if args else "a list"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults <- TOML file <- overrides (flags). Unknown keys are refused."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise InputError(f"--config {path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"--config {path}: is a directory; expected a TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path}: invalid TOML ({exc})") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text (byte offset {exc.start}); TOML files are UTF-8") from None
        if not values:  # an empty --config is a wrong file, not a wish for every default
            raise InputError(
                f"{path}: no settings (empty file, or comments only); expected lines such as rank = 8 "
                "(or a [train] table); leave out --config for the defaults"
            )
        values = values.get("train", values)
        if not isinstance(values, dict):
            raise InputError(f"{path}: train = {values!r}: expected a [train] table of settings")
        hints = typing.get_type_hints(TrainConfig)  # flags arrive typed; a file's values are checked here
        for key, value in values.items():
            if key in hints and not fits_type(value, hints[key]):
                raise InputError(f"{path}: {key} = {value!r}: expected {type_name(hints[key])}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    imply_data(values)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(
            f"unknown training setting(s) {', '.join(unknown)}: expected some of {', '.join(sorted(known))}"
        )
    if str(values.get("eval_split", "")).lower() == "none":
        values["eval_split"] = None
    config = TrainConfig(**values)
    config.validate()
    return config


def imply_data(values: dict[str, Any]) -> dict[str, Any]:
    """``dataset = ID`` without ``data`` means ``data = "dataset"`` (in a file, flags or a study's [train])."""
    if values.get("dataset") and "data" not in values:
        values["data"] = "dataset"
    return values
