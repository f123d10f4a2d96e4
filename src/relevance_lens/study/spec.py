"""The study file: the TOML format of a study, parsed and checked before anything runs.

A study file has the tables ``[study]`` (the grid: models, ranks, targets, seeds),
``[train]`` and ``[baseline_train]`` (training settings), ``[evals.NAME]`` (eval sets),
``[analyses.NAME]`` (checkpoints, ablate, weights, lens) and ``[scoring]``. Each table is a
dataclass here; :func:`load_study` turns a file into a :class:`Study`, refusing every
mistake with one :class:`~relevance_lens.errors.InputError`. Expanding a study into cells is
:mod:`relevance_lens.study.plan`; running them is :mod:`relevance_lens.study.run`.
"""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import tomllib

from relevance_lens.dissect.registry import ANALYSES
from relevance_lens.errors import InputError
from relevance_lens.evaluate.metrics import parse_metrics
from relevance_lens.score.config import ScoreConfig
from relevance_lens.train.config import TrainConfig

STUDIES_DIR = Path(__file__).parent.parent / "studies"
#: Training settings a study sets through its grid (or its evals), never through [train].
GRID_KEYS = {
    "model": "models",
    "rank": "ranks",
    "targets": "targets",
    "seed": "seeds",
    "output": "--workdir",
    "eval_split": "[evals]",
    "eval_depth": "[evals]",
}


# ---------------------------------------------------------------- the study file


@dataclass
class StudySpec:
    """The ``[study]`` table: what the grid is made of."""

    name: str = field(metadata={"help": "Study name (default work folder: runs/<name>)."})
    models: list[Any] = field(default_factory=list, metadata={"help": "Model names, or tables {name, family, label}."})
    ranks: list[int] = field(default_factory=lambda: [8], metadata={"help": "LoRA ranks (the paper: 1, 2, 8, 32)."})
    targets: list[str] = field(
        default_factory=lambda: ["all"], metadata={"help": "What LoRA updates: mha, mlp, all, or roles like q,k."}
    )
    seeds: list[int] = field(default_factory=lambda: [42], metadata={"help": "Training seeds."})
    baseline: bool = field(default=True, metadata={"help": "Train the head-only 'before' run per model and seed."})
    description: str = field(default="", metadata={"help": "Free text shown in the report."})


@dataclass
class ModelSpec:
    """One base model of the grid."""

    name: str = field(metadata={"help": "Embedded short name, model folder, GGUF file or hub id."})
    family: str | None = field(
        default=None, metadata={"help": "model_type (llama, mistral, gpt_neox...) when the config is not local."}
    )
    label: str | None = field(default=None, metadata={"help": "Short name used in run names (default: from the name)."})

    def short(self) -> str:
        """The name used in run names: the label, else the file or folder name without .gguf."""
        if self.label:
            return self.label
        return Path(self.name.rstrip("/")).name.removesuffix(".gguf") or self.name


@dataclass
class EvalSpec:
    """A named eval set: a FAQ split, four files, or an ir_datasets id (with scoreddocs)."""

    split: str | None = field(default=None, metadata={"help": "Embedded FAQ split (dev, test)."})
    queries: str | None = field(default=None, metadata={"help": "Queries TSV (with qrels, corpus, run)."})
    qrels: str | None = field(default=None, metadata={"help": "TREC qrels."})
    corpus: str | None = field(default=None, metadata={"help": "Corpus TSV/JSONL."})
    run: str | None = field(default=None, metadata={"help": "First-stage TREC run to rerank."})
    ir_datasets: str | None = field(
        default=None, metadata={"help": "ir_datasets id with scoreddocs, e.g. msmarco-passage/trec-dl-2019."}
    )
    depth: int = field(default=10, metadata={"help": "Rerank the first stage's top-k."})
    max_queries: int | None = field(default=None, metadata={"help": "Only the first N judged queries (sorted by id)."})
    metrics: list[str] = field(default_factory=lambda: ["nDCG@10", "RR@10"], metadata={"help": "ir_measures names."})


@dataclass
class AnalysisSpec:
    """``[analyses.NAME]``: the analysis's own settings (from the registry) and the study's wiring."""

    name: str
    settings: Any  # the registered settings dataclass of ``name``
    evals: list[str] = field(default_factory=list, metadata={"help": "Eval sets (default: all)."})
    vs_rank: int | None = field(
        default=None,
        metadata={"help": "weights: also compare each final adapter with this rank's (same model, targets, seed)."},
    )


#: Keys of an ``[analyses.NAME]`` table that wire the study in rather than set the analysis.
WIRING = {"evals": "uses_eval", "vs_rank": "weights"}
TABLES = ("study", "train", "baseline_train", "evals", "analyses", "scoring")
#: Study names and model labels become folder names under the workdir: no separators, no "..".
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}")


@dataclass
class Study:
    """A parsed, validated study file."""

    spec: StudySpec
    models: list[ModelSpec]
    train: dict[str, Any]
    baseline_train: dict[str, Any]
    evals: dict[str, EvalSpec]
    analyses: dict[str, Any]
    scoring: dict[str, Any]
    path: Path


def find_study(name_or_path: str | Path) -> Path:
    """A study file by path, or a packaged study by name (demo, embedded-grid, paper)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = STUDIES_DIR / f"{Path(str(name_or_path)).stem}.toml"
    if path.suffix in ("", ".toml") and packaged.is_file() and len(path.parts) == 1:
        return packaged
    names = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.toml")))
    raise InputError(f"study {name_or_path}: no such file; expected a study TOML file or a packaged study ({names})")


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a dataclass field's type (bools are not numbers; ints are floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return (
            isinstance(value, list) and all(_has_type(v, args[0]) for v in value) if args else isinstance(value, list)
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


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " (or leave it out)"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(args[0], _type_name(args[0]))}" if args else "a list"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _build(cls, table: Any, where: str, extra: Sequence[str] = ()):
    """A spec dataclass from a TOML table; unknown keys and wrong types are refused.

    ``extra``: other keys the table may hold (named in the error for unknown keys)."""
    if not isinstance(table, dict):
        raise InputError(f"{where}: expected a table of settings, got {table!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join([*known, *extra])}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in table.items():
        default = known[key].default_factory() if callable(known[key].default_factory) else known[key].default
        if isinstance(default, list) and not isinstance(value, list):
            raise InputError(
                f"{where}: {key} = {value!r}: expected a list, e.g. {key} = {json.dumps(default or ['...'])}"
            )
        if not _has_type(value, hints[key]):
            raise InputError(f"{where}: {key} = {value!r}: expected {_type_name(hints[key])}")
    try:
        return cls(**table)
    except TypeError as exc:  # a required key is missing
        raise InputError(f"{where}: {exc}") from None
    except InputError as exc:  # a settings dataclass refused a value
        raise InputError(f"{where}: {exc}") from None


def load_study(path: str | Path) -> Study:
    """Parse and check a study file: every mistake is one InputError before anything runs."""
    path = find_study(path)
    raw = _read_toml(path)
    unknown = sorted(set(raw) - set(TABLES))
    if unknown:
        raise InputError(f"{path}: unknown table(s) {', '.join(unknown)}; expected some of {', '.join(TABLES)}")
    for table in TABLES:
        if not isinstance(raw.get(table, {}), dict):
            raise InputError(f"{path}: {table} = {raw[table]!r}: expected a table, e.g. [{table}]")
    spec = _build(StudySpec, raw.get("study", {}), f"{path} [study]")
    _check_name(spec.name, f"{path} [study]: name")
    if not spec.models:
        raise InputError(f'{path} [study]: models is empty; name at least one model, e.g. models = ["smollm2-135m"]')
    models = [_model(m, f"{path} [study] models") for m in spec.models]
    for axis in ("ranks", "targets", "seeds"):
        if not getattr(spec, axis):
            raise InputError(f"{path} [study]: {axis} is empty")
    for rank in spec.ranks:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise InputError(
                f"{path} [study]: rank {rank!r} is impossible; expected positive integers such as 1, 2, 8, 32"
            )
    train = _train_table(raw.get("train", {}), f"{path} [train]")
    baseline_train = _train_table(raw.get("baseline_train", {}), f"{path} [baseline_train]")
    evals = {name: _build(EvalSpec, t, f"{path} [evals.{name}]") for name, t in raw.get("evals", {}).items()}
    analyses = {
        name: _analysis(name, table, f"{path} [analyses.{name}]") for name, table in raw.get("analyses", {}).items()
    }
    study = Study(spec, models, train, baseline_train, evals, analyses, dict(raw.get("scoring", {})), path)
    _check(study)
    return study


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte offset {exc.start}); TOML files are UTF-8") from None
    except RecursionError:
        raise InputError(f"{path}: invalid TOML (arrays or tables nested too deeply)") from None


def _check_name(name: str, where: str) -> None:
    """Names become folders under the workdir: refuse anything that could leave it (``../x``, ``a/b``)."""
    if not SAFE_NAME.fullmatch(name):
        raise InputError(
            f"{where} {name!r}: expected letters, digits, '.', '_', '+' or '-' (no '/' or leading '.'), "
            "at most 100 characters; it names a folder under the workdir"
        )


def _model(entry: Any, where: str) -> ModelSpec:
    """A grid model: a name, or a table {name, family, label}."""
    if not isinstance(entry, (str, dict)):
        raise InputError(f'{where}: {entry!r}: expected a model name or a table, e.g. {{ name = "smollm2-135m" }}')
    model = _build(ModelSpec, entry if isinstance(entry, dict) else {"name": entry}, where)
    if model.label is not None:
        _check_name(model.label, f"{where}: label")
    return model


def _analysis(name: str, table: Any, where: str) -> AnalysisSpec:
    """An ``[analyses.NAME]`` table: the registry's settings for ``name`` plus the wiring keys it takes."""
    if name not in ANALYSES:
        raise InputError(f"{where}: unknown analysis; expected some of {', '.join(ANALYSES)}")
    if not isinstance(table, dict):
        raise InputError(f"{where}: expected a table of settings, got {table!r}")
    entry = ANALYSES[name]
    wiring = [k for k, who in WIRING.items() if (who == "uses_eval" and entry.uses_eval) or who == name]
    ours = {k: v for k, v in table.items() if k in wiring}
    settings = _build(entry.settings, {k: v for k, v in table.items() if k not in wiring}, where, extra=wiring)
    spec = _build(AnalysisSpec, {"name": name, "settings": settings, **ours}, where)
    if spec.vs_rank is not None and (not isinstance(spec.vs_rank, int) or spec.vs_rank < 1):
        raise InputError(f"{where}: vs_rank {spec.vs_rank!r}: expected a positive integer rank")
    return spec


def _train_table(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise InputError(f"{where}: expected a table of training settings")
    for key in table:
        if key in GRID_KEYS:
            raise InputError(f"{where}: {key} is set by the study, not here; use {GRID_KEYS[key]}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise InputError(
            f"{where}: unknown training setting(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(sorted(known - set(GRID_KEYS)))}"
        )
    hints = typing.get_type_hints(TrainConfig)
    for key, value in table.items():
        if not _has_type(value, hints[key]):
            raise InputError(f"{where}: {key} = {value!r}: expected {_type_name(hints[key])}")
    return dict(table)


def _check(study: Study) -> None:
    """Cross-checks that need no weights: evals, analyses, scoring."""
    where = str(study.path)
    for name, ev in study.evals.items():
        files = {k: getattr(ev, k) for k in ("queries", "qrels", "corpus", "run")}
        sources = [
            s
            for s, given in (("split", ev.split), ("files", any(files.values())), ("ir_datasets", ev.ir_datasets))
            if given
        ]
        if len(sources) != 1:
            raise InputError(
                f"{where} [evals.{name}]: give exactly one of split, the four files (queries, qrels, corpus, "
                f"run) or ir_datasets; got {sources or 'none'}"
            )
        if sources == ["files"] and not all(files.values()):
            raise InputError(
                f"{where} [evals.{name}]: missing {', '.join(k for k, v in files.items() if not v)}; files "
                f"need all of queries, qrels, corpus, run"
            )
        if ev.depth < 1 or (ev.max_queries is not None and ev.max_queries < 1):
            raise InputError(
                f"{where} [evals.{name}]: depth {ev.depth} / max_queries {ev.max_queries}: expected positive numbers"
            )
        try:
            parse_metrics(ev.metrics)
        except InputError as exc:
            raise InputError(f"{where} [evals.{name}]: {exc}") from None
    for name, spec in study.analyses.items():
        for ev in spec.evals:
            if ev not in study.evals:
                raise InputError(
                    f"{where} [analyses.{name}]: eval set {ev!r} is not defined; defined: "
                    f"{', '.join(study.evals) or 'none (add [evals.NAME])'}"
                )
        if ANALYSES[name].uses_eval and not study.evals:
            raise InputError(f'{where} [analyses.{name}]: needs an eval set; add one, e.g. [evals.dev] split = "dev"')
    allowed = {f.name for f in fields(ScoreConfig)} - {"depth"}
    unknown = sorted(set(study.scoring) - allowed)
    if unknown:
        raise InputError(
            f"{where} [scoring]: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(allowed))}"
        )
    _build(ScoreConfig, study.scoring, f"{where} [scoring]")
