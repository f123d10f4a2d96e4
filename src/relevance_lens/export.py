"""Export: a trained adapter folder -> a standard transformers sequence-classification folder.

The folder loads with ``AutoModelForSequenceClassification.from_pretrained``, sentence-transformers'
``CrossEncoder`` and ``rerankers.Reranker(..., model_type="cross-encoder")``, and scores a
``(query, passage)`` pair as relevance-lens does:

* **Weights.** LoRA is merged into the base (ΔW = B·A·α/r added to W); the trained score head
  becomes the classifier layer of the family's ``*ForSequenceClassification`` (found as the one
  single-output linear layer beside the base model, so no family is named here).
* **Input.** Those libraries hand the tokenizer ``(query, passage)`` *pairs* and append nothing
  themselves, so the exported tokenizer's pair template carries ours: its fixed parts (BOS as the
  tokenizer adds it, ``query:``, `` document:``, the appended EOS) are special pieces holding
  exactly the token ids our tokenization gives them, and a normalizer restores the space that
  precedes the query and the passage inside ``query: {query} document: {title} {text}``. The
  result is checked token for token against :meth:`Reranker.tokenize` on fixed probe pairs, long
  ones included (truncation), and the export is refused where a tokenizer cannot reproduce it.
* **Pooling.** transformers scores the rightmost token that is not the pad token. Our tokenizers
  often pad with EOS, which would hide the appended EOS, so the export pads with a different
  token (the tokenizer's own pad token when it differs from EOS, else UNK, else BOS), on the
  right: real tokens keep positions 0..n-1, as our mask-derived positions give them.
* **Scores.** ``config.json`` tells sentence-transformers to apply no activation (its default for
  one label is a sigmoid), so every library returns the raw head output, as ``rerank`` does.

The folder is written beside its destination and moved in whole; with ``verify`` (the default)
the written folder is loaded back with transformers and its scores compared with the adapter's
first.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from relevance_lens.data.formats import Passage, atomic_write, follow_umask
from relevance_lens.errors import InputError
from relevance_lens.model.manifest import write_manifest
from relevance_lens.model.reranker import CONFIG_FILE, Reranker
from relevance_lens.provenance import versions
from relevance_lens.train.rundir import FINAL, is_run_member

CARD = "README.md"
RECORD = "relevance_lens_export.json"
#: What the passage slot of a template may hold; the passage string a library is given fills it.
PASSAGE_SLOTS = ("{title} {text}", "{text}", "{title}")

#: Pairs whose tokenization and scores the export is checked on: punctuation, digits, an empty
#: title (the slot then starts with a space), a trailing newline (our template strips it),
#: non-ASCII text and a passage long enough to be truncated at any max_length.
PROBES: tuple[tuple[str, Passage], ...] = (
    ("what is the capital of france?", Passage("p1", "France", "Paris is the capital of France.")),
    ("how do i sort a list in python", Passage("p2", "", "Use sorted(xs) or xs.sort(); both are O(n log n).")),
    ("apt-get install 3 packages", Passage("p3", "Debian FAQ: apt", "apt installs packages\n")),
    ("perl regex: match café", Passage("p4", "perlfaq6", "Regular expressions match text, e.g. /caf\u00e9/.")),
    ("sky blue", Passage("p5", "Physics", "Rayleigh scattering of sunlight. " * 120)),
)


@dataclass
class ExportConfig:
    """How an adapter is exported.

    Args:
        dtype: weights stored as ``fp32`` (the same scores as ``rerank --dtype fp32``) or ``bf16``
            (half the size; scores round like ``rerank --dtype bf16``).
        overwrite: replace a non-empty output folder.
        verify: load the written folder with transformers and compare its scores with the
            adapter's on :data:`PROBES` before moving it into place.
    """

    dtype: Literal["fp32", "bf16"] = field(default="fp32", metadata={"help": "Stored weights: fp32 or bf16."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})
    verify: bool = field(
        default=True, metadata={"help": "Load the folder back with transformers and compare scores first."}
    )

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "bf16"):
            raise InputError(f"--dtype {self.dtype}: expected fp32 or bf16")


# ---------------------------------------------------------------- the template as a pair


@dataclass(frozen=True)
class PairTemplate:
    """``template`` cut around its query and passage slots: ``prefix{query}middle{passage}suffix``,
    or with ``query_first`` false ``prefix{passage}middle{query}suffix``."""

    prefix: str
    middle: str
    passage: str
    suffix: str
    query_first: bool = True

    @classmethod
    def parse(cls, template: str) -> PairTemplate:
        slot = next((s for s in PASSAGE_SLOTS if s in template), None)
        if template.count("{query}") != 1 or slot is None or template.count(slot) != 1:
            raise InputError(
                f"template {template!r}: export needs one {{query}} and one passage slot "
                f"({', '.join(PASSAGE_SLOTS)}), since the libraries pass (query, passage) pairs"
            )
        head, tail = template.split(slot)
        query_first = "{query}" in head
        prefix, middle, suffix = (*head.split("{query}"), tail) if query_first else (head, *tail.split("{query}"))
        if any(f in prefix + middle + suffix for f in ("{title}", "{text}")):
            raise InputError(f"template {template!r}: export needs the query, the passage slot and no other field")
        return cls(prefix.lstrip(), middle, slot, suffix.rstrip(), query_first)  # the formatted text is stripped


def passage_text(passage: Passage, template: str) -> str:
    """The string a library is given as the passage of a pair to score ``passage`` as relevance-lens does.

    For the default template it is ``f"{title} {text}"``: an untitled passage is ``" " + text``,
    exactly what ``rerank`` scores for a corpus without titles.
    """
    slot = PairTemplate.parse(template).passage
    return slot.format(title=passage.title, text=passage.text)


# ---------------------------------------------------------------- tokenizer


def _single_specials(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a single text (BOS, as it adds it)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise InputError(f"tokenizer {type(tokenizer).__name__}: cannot tell its special tokens from the text")


def pad_token(tokenizer, vocab_size: int) -> str:
    """A pad token that is not EOS, so transformers' last-non-pad pooling finds the appended EOS.

    It must also have an embedding row (``< vocab_size``): a tokenizer may declare a pad token it
    added after the model was trained.
    """
    eos = tokenizer.eos_token_id
    for token, token_id in (
        (tokenizer.pad_token, tokenizer.pad_token_id),
        (tokenizer.unk_token, tokenizer.unk_token_id),
        (tokenizer.bos_token, tokenizer.bos_token_id),
    ):
        if token is not None and token_id is not None and token_id != eos and token_id < vocab_size:
            return str(token)
    raise InputError(
        f"tokenizer {type(tokenizer).__name__}: no pad, UNK or BOS token other than EOS, within the model's "
        f"{vocab_size} embeddings, to pad with; transformers would take the appended EOS for padding"
    )


def _pair_tokenizer(reranker: Reranker, *, prepend_space: bool):
    """A copy of the reranker's tokenizer whose pair template is the reranker's template."""
    from tokenizers import Tokenizer, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer, settings = reranker.tokenizer, reranker.settings
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"model {settings.model}: export needs a fast (tokenizers) tokenizer")
    parts = PairTemplate.parse(settings.template)
    lead, trail = _single_specials(tokenizer)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # The slots' leading spaces move into the query and passage (the normalizer below puts them back).
    prefix = parts.prefix[:-1] if prepend_space and parts.prefix.endswith(" ") else parts.prefix
    middle = parts.middle[:-1] if prepend_space and parts.middle.endswith(" ") else parts.middle
    end = ids(parts.suffix) + trail + ([tokenizer.eos_token_id] if settings.append_eos else [])
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    steps = [normalizers.Strip(left=False, right=True)] + ([normalizers.Prepend(" ")] if prepend_space else [])
    if backend.normalizer is not None:
        steps.append(backend.normalizer)
    backend.normalizer = normalizers.Sequence(steps)
    specials, pair, single = [], [], []
    # Each fixed piece is named for the slot it precedes: $A is the query, $B the passage.
    first, second = (("query", "$A:0"), ("document", "$B:0"))[:: 1 if parts.query_first else -1]
    for name, piece, slot in (
        ("lead", lead, None),
        (first[0], ids(prefix), first[1]),
        (second[0], ids(middle), second[1]),
        ("end", end, None),
    ):
        if piece:
            token = f"<relevance-lens-{name}>"  # no colon: TemplateProcessing reads "x:1" as a type id
            specials.append({"id": token, "ids": piece, "tokens": tokenizer.convert_ids_to_tokens(piece)})
            pair.append(token)
            single += [token] if name in ("lead", "end") else []
        pair += [slot] if slot else []
    single.insert(1 if lead else 0, "$A:0")
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=specials
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        pad_token=pad_token(tokenizer, reranker.base_config.vocab_size),
        padding_side="right",
        truncation_side="right",
        model_max_length=settings.max_length,
        # GPT-2 would add token-type embeddings for token_type_ids: never hand it any.
        model_input_names=["input_ids", "attention_mask"],
    )


def tokenization_problem(reranker: Reranker, tokenizer, probes: Sequence[tuple[str, Passage]] = PROBES) -> str | None:
    """None when ``tokenizer(query, passage)`` gives our token ids for every probe; else the first difference."""
    template = reranker.settings.template
    for query, passage in probes:
        if not cut_like_ours(tokenizer, query, passage_text(passage, template)):
            continue  # the libraries' longest_first truncation cuts this query: a known, documented difference
        ours = reranker.encode([(query, passage)])[0]
        theirs = tokenizer(query, passage_text(passage, template), truncation=True)["input_ids"]
        if ours != theirs:
            return (
                f"pair ({query!r}, {passage_text(passage, template)[:40]!r}...) gives "
                f"{tokenizer.convert_ids_to_tokens(theirs)[:12]}... where relevance-lens has "
                f"{tokenizer.convert_ids_to_tokens(ours)[:12]}..."
            )
    return None


def cut_like_ours(tokenizer, query: str, passage: str) -> bool:
    """Whether the pair fits, or ``longest_first`` truncation cuts only the passage's end, as we cut it.

    The libraries truncate a pair longest-first: tokens come off the longer of query and passage
    until it fits. That cuts only the passage while the query is under half the room left.
    """
    backend = tokenizer.backend_tokenizer  # not tokenizer(): it warns about texts over model_max_length
    query_len = len(backend.encode(query, add_special_tokens=False).ids)
    passage_len = len(backend.encode(passage, add_special_tokens=False).ids)
    room = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add(pair=True)
    return query_len + passage_len <= room or 2 * query_len < room


def export_tokenizer(reranker: Reranker):
    """The pair tokenizer that reproduces the reranker's tokenization (checked on :data:`PROBES`)."""
    problems = []
    # Byte-level and SentencePiece-style tokenizers mark a word's leading space in its token; those
    # that add one to every sequence themselves (Metaspace) need no extra space.
    for prepend_space in (True, False):
        tokenizer = _pair_tokenizer(reranker, prepend_space=prepend_space)
        problem = tokenization_problem(reranker, tokenizer)
        if problem is None:
            return tokenizer
        problems.append(problem)
    raise InputError(
        f"model {reranker.settings.model}: its tokenizer cannot reproduce the template "
        f"{reranker.settings.template!r} from (query, passage) pairs: {problems[0]}"
    )


# ---------------------------------------------------------------- model


def classifier_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The single-output linear layer a ``*ForSequenceClassification`` model has beside its base model."""
    found = [
        (name, module)
        for name, module in model.named_children()
        if name != model.base_model_prefix and isinstance(module, nn.Linear) and module.out_features == 1
    ]
    if len(found) != 1:
        raise InputError(
            f"{type(model).__name__}: expected one single-output linear classifier beside "
            f"{model.base_model_prefix!r}, found {[n for n, _ in found]}"
        )
    return found[0]


def export_model(reranker: Reranker, pad_token_id: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The family's ``*ForSequenceClassification`` holding the merged backbone and our head.

    Built on the meta device and then given the reranker's own modules, so no second copy of the
    weights is made. The reranker's LoRA is merged in place: do not use it afterwards.
    """
    from transformers import AutoModelForSequenceClassification

    if reranker.settings.head_bias:
        raise InputError(
            f"model {reranker.settings.model}: the adapter's score head has a bias; transformers' "
            "*ForSequenceClassification classifiers have none, so it cannot be exported"
        )
    backbone = reranker.backbone
    if hasattr(backbone, "merge_and_unload"):
        backbone = backbone.merge_and_unload()
    config = copy.deepcopy(backbone.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "relevance"}, {"relevance": 0}
    config.pad_token_id = pad_token_id
    # sentence-transformers' CrossEncoder applies a sigmoid to one-label models unless told otherwise.
    config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
    except ValueError as exc:
        raise InputError(f"model {reranker.settings.model}: transformers has no sequence classifier ({exc})") from None
    base_name = model.base_model_prefix
    if type(getattr(model, base_name)) is not type(backbone):
        raise InputError(
            f"{type(model).__name__}.{base_name} is a {type(getattr(model, base_name)).__name__}, "
            f"not the adapter's {type(backbone).__name__}"
        )
    setattr(model, base_name, backbone)
    name, meta_head = classifier_layer(model)
    head = nn.Linear(meta_head.in_features, 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(reranker.score.weight.detach().float())
    setattr(model, name, head)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise InputError(f"{type(model).__name__}: {left[0]} has no weights from the adapter")
    return model.to(dtype).eval()


# ---------------------------------------------------------------- model card


def _saved_record(adapter: Path) -> dict:
    try:
        return json.loads((adapter / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _eval_numbers(adapter: Path) -> list[dict]:
    """The run's final evaluations (``RUNDIR/eval.<split>.json``) when ``adapter`` is a run's final adapter."""
    if adapter.name != FINAL or not is_run_member(adapter):
        return []
    found = []
    for path in sorted(adapter.parent.glob("eval.*.json")):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return found


def model_card(reranker: Reranker, adapter: Path, config: ExportConfig) -> str:
    """The README.md of an exported folder: base model, usage, template, training, evaluation, licences."""
    settings, source = reranker.settings, reranker.source
    record = _saved_record(adapter)
    run = record.get("run", {})
    parts = PairTemplate.parse(settings.template)
    hub = source.path if source is not None and source.kind == "hub" else None
    front = ["---", "library_name: transformers", "pipeline_tag: text-classification"]
    front += [f"base_model: {hub}"] if hub else []
    front += ["tags:", "- reranker", "- cross-encoder", "- relevance-lens", "---", ""]
    licence = (source.licence if source is not None else None) or "the base model's own licence (see its model card)"
    step = f" (step {record['step']})" if "step" in record else ""
    untitled = " (an untitled passage: `' ' + text`, as rerank scores it)" if "{title} " in parts.passage else ""
    lines = front + [
        f"# {adapter.resolve().parent.name}/{adapter.name}: a relevance-lens reranker",
        "",
        f"A pointwise LLM reranker (RankLLaMA recipe) exported by relevance-lens from the adapter "
        f"folder `{adapter}`{step}: LoRA merged into the base "
        f"model, the trained score head as the `{classifier_name(reranker)}` layer, weights in {config.dtype}.",
        "",
        f"**Base model:** `{settings.model}`"
        + (f" ({source.kind}: `{source.gguf_file or source.path}`)" if source is not None else ""),
        "",
        "## Use",
        "",
        "Pass `(query, passage)` pairs; the score is the raw head output (higher is more relevant).",
        "",
        "```python",
        "from sentence_transformers import CrossEncoder",
        "model = CrossEncoder(FOLDER)",
        'scores = model.predict([(query, f"{title} {text}") for title, text in passages])',
        "",
        "from rerankers import Reranker",
        'texts = [f"{title} {text}" for title, text in passages]',
        'ranked = Reranker(FOLDER, model_type="cross-encoder").rank(query, texts)',
        "",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        "model = AutoModelForSequenceClassification.from_pretrained(FOLDER)",
        "batch = tokenizer([query] * len(texts), texts, padding=True, truncation=True, return_tensors='pt')",
        "scores = model(**batch).logits[:, 0]",
        "```",
        "",
        "## Input template",
        "",
        f"relevance-lens scores the text `{settings.template}` (stripped), tokenized with the tokenizer's "
        f"own special tokens and **an EOS token appended**{'' if settings.append_eos else ' (off for this adapter)'}, "
        f"at most {settings.max_length} tokens (EOS included); the final hidden state of that last token goes "
        "through the linear head. This folder's tokenizer does the same for a pair: its pair template inserts "
        f"`{parts.prefix.strip()}` before the {'query' if parts.query_first else 'passage'} and "
        f"`{parts.middle.strip()}` before the {'passage' if parts.query_first else 'query'} and appends "
        f"EOS, so the passage you pass fills `{parts.passage}`{untitled}.",
        "Padding is on the right with a token other than EOS (transformers scores the last non-pad token). "
        "Tokenizing a single text is not the intended use. Long pairs: relevance-lens cuts the end of the "
        "passage; the libraries truncate `longest_first`, the same cut unless the query is longer than what is "
        "left of the passage.",
        "",
    ]
    lines += _training_section(run)
    lines += _eval_section(_eval_numbers(adapter))
    lines += [
        "## Licences",
        "",
        f"- Weights: derived from the base model, so its terms apply: {licence}.",
        "- relevance-lens, which trained and exported them: Apache-2.0.",
    ]
    data = run.get("config", {}).get("data")
    if data in ("faq", "faq+weak"):
        lines.append(
            "- Training data: the FAQ collection embedded in relevance-lens (Debian packages' documentation; "
            "each source keeps its licence, listed in `relevance_lens/datasets/faq/LICENSES.md`)."
        )
    elif data:
        lines.append(f"- Training data ({data}): under the terms of its own sources.")
    return "\n".join(lines) + "\n"


def classifier_name(reranker: Reranker) -> str:
    """The classifier layer's name in the exported model (``score`` for every family supported today)."""
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        config = copy.deepcopy(reranker.base_config)
        config.num_labels = 1
        return classifier_layer(AutoModelForSequenceClassification.from_config(config))[0]


def _training_section(run: dict) -> list[str]:
    if not run.get("config"):
        return ["## Training", "", "No training record in the adapter folder.", ""]
    resolved = {**run["config"], **{f"resolved.{k}": v for k, v in run.get("resolved", {}).items()}}
    return [
        "## Training",
        "",
        "The run's resolved configuration (`reranker.json` of the adapter):",
        "",
        "```json",
        json.dumps(resolved, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]


def _eval_section(evals: list[dict]) -> list[str]:
    if not evals:
        return ["## Evaluation", "", "No evaluation recorded with the run.", ""]
    lines = ["## Evaluation", ""]
    for result in evals:
        metrics = list(result.get("reranker", {}))
        lines += [
            f"FAQ {result.get('split')}: BM25's top {result.get('depth')} reranked, {result.get('n_queries')} queries.",
            "",
            "| system | " + " | ".join(metrics) + " |",
            "|---" * (len(metrics) + 1) + "|",
        ]
        for system in ("bm25", "reranker"):
            values = result.get(system, {})
            lines.append(f"| {system} | " + " | ".join(f"{values.get(m, float('nan')):.4f}" for m in metrics) + " |")
        lines.append("")
    return lines


# ---------------------------------------------------------------- the export


def export_adapter(
    adapter: str | Path, output: str | Path, *, model: str | None = None, config: ExportConfig | None = None
) -> Path:
    """Write ``adapter`` (a folder written by ``relevance-lens train``) as a transformers folder at ``output``."""
    config = config or ExportConfig()
    adapter, output = Path(adapter), Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not config.overwrite:
        raise InputError(f"--output {output}: exists and is not empty; choose a new folder or pass --overwrite")
    if not adapter.is_dir():  # before loading any model
        raise InputError(f"{adapter}: no such folder; expected an adapter folder written by relevance-lens train")
    reranker = Reranker.from_pretrained(model, adapter, dtype=torch.float32).eval()
    tokenizer = export_tokenizer(reranker)
    expected = _probe_scores(reranker) if config.verify else None
    card = model_card(reranker, adapter, config)
    dtype = torch.bfloat16 if config.dtype == "bf16" else torch.float32
    classifier = export_model(reranker, tokenizer.pad_token_id, dtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.export-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        classifier.save_pretrained(staging)
        follow_umask(*staging.rglob("*.safetensors"))
        tokenizer.save_pretrained(staging)
        with atomic_write(staging / CARD) as fh:
            fh.write(card)
        _write_record(staging, adapter, reranker, config)
        del classifier
        if expected is not None:
            _verify(staging, reranker, tokenizer, expected, config.dtype)
        write_manifest(staging)
        _move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def _write_record(folder: Path, adapter: Path, reranker: Reranker, config: ExportConfig) -> None:
    record = {
        "adapter": str(adapter.resolve()),
        "reranker": asdict(reranker.settings),
        "export": asdict(config),
        "passage_slot": PairTemplate.parse(reranker.settings.template).passage,
        "versions": versions(),
    }
    with atomic_write(folder / RECORD) as fh:
        json.dump(record, fh, indent=2, sort_keys=True)


@torch.inference_mode()
def _probe_scores(reranker: Reranker) -> list[float]:
    return [reranker.score_pairs(query, [passage])[0] for query, passage in PROBES]


@torch.inference_mode()
def _verify(folder: Path, reranker: Reranker, tokenizer, expected: list[float], dtype: str) -> None:
    """Load ``folder`` as a user would and compare its probe scores, batched and padded, with ours."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(folder)  # as users load it: a family's class may rebuild its pipeline
    problem = tokenization_problem(reranker, reloaded)
    if problem is not None:
        raise InputError(
            f"export check: {type(reloaded).__name__}, which transformers loads for this folder, does not keep the "
            f"pair template: {problem}"
        )
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    template = json.loads((folder / RECORD).read_text())["reranker"]["template"]
    pairs = [(q, passage_text(p, template)) for q, p in PROBES]
    kept = [i for i, (q, p) in enumerate(pairs) if cut_like_ours(tokenizer, q, p)]
    batch = reloaded(
        [pairs[i][0] for i in kept], [pairs[i][1] for i in kept], padding=True, truncation=True, return_tensors="pt"
    )
    got = model(**batch).logits[:, 0].float()
    want = torch.tensor([expected[i] for i in kept])
    # fp32: the same arithmetic up to rounding (merged weights sum in another order); bf16: a check for gross
    # errors only (a wrong head, pooling or template), as rounding every weight moves a score by percents.
    tolerance = 1e-3 if dtype == "fp32" else 2e-1
    if not torch.allclose(got, want, rtol=tolerance, atol=tolerance * float(want.abs().max().clamp(min=1))):
        raise InputError(
            f"export check: the exported model scores the probe pairs {got.tolist()} where the adapter scores "
            f"{want.tolist()}; please report this with the model name"
        )


def _move_into_place(staging: Path, output: Path) -> None:
    """Replace ``output`` by ``staging`` so the folder appears complete or not at all."""
    old = output.parent / f".{output.name}.export-old"
    if output.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(output, old)
    os.replace(staging, output)
    shutil.rmtree(old, ignore_errors=True)
