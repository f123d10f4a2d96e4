"""The study file: the TOML format of a study, parsed and checked before anything runs.

A study file has the tables ``[study]`` (the grid: models, ranks, targets, seeds),
``[train]`` and ``[baseline_train]`` (training settings), ``[evals.NAME]`` (eval sets),
``[analyses.NAME]`` (checkpoints, ablate, weights, lens), ``[scoring]`` and optionally
``[search]`` (a recipe search over training settings, chosen on one eval set, tested once). Each table is a
dataclass here; :func:`load_study` turns a file into a :class:`Study`, refusing every
mistake with one :class:`~relevance_lens.errors.InputError`. Expanding a study into cells is
:mod:`relevance_lens.study.plan`; running them is :mod:`relevance_lens.study.run`.
"""

from __future__ import annotations

import itertools
import json
import re
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import tomllib

from relevance_lens.dissect.registry import ANALYSES
from relevance_lens.errors import InputError
from relevance_lens.evaluate.metrics import binary_relevance_level, parse_metrics
from relevance_lens.score.config import ScoreConfig
from relevance_lens.train.config import TrainConfig, fits_type, imply_data, type_name
from relevance_lens.train.rundir import FINAL, step_of

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
    max_queries: int | None = field(
        default=None, metadata={"help": "Only a random sample of N judged queries (seed 0), for quick looks."}
    )
    metrics: list[str] = field(default_factory=lambda: ["nDCG@10", "RR@10"], metadata={"help": "ir_measures names."})
    binary_relevance_level: int | None = field(
        default=None,
        metadata={
            "help": "Binary measures (RR, R, P, AP) count grade >= this as relevant. Default: 2 for TREC DL "
            "(an ir_datasets id containing trec-dl), else 1; set 2 for TREC DL given as files."
        },
    )


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
    checkpoints: list[str] = field(
        default_factory=lambda: [FINAL],
        metadata={
            "help": 'heads, attribute, patch: the checkpoints of each run to analyze, one cell each: "final", '
            '"checkpoint-<step>" names the run saves, or "all" (every saved checkpoint and final).'
        },
    )


@dataclass
class SearchSpec:
    """``[search]``: a recipe search. Its other keys are training settings, each a list of values
    (the axes); every combination is trained per grid point and its checkpoints evaluated on
    ``select_on`` (the dev curve); the setting whose final adapter scores the highest ``metric``
    there is chosen (ties: the first listed) and recorded in the store; only then is ``test``
    evaluated, once, on the chosen run's final adapter. Analyses run on the chosen run.
    """

    select_on: str = field(default="dev", metadata={"help": "Eval set the setting is chosen on (not the test split)."})
    metric: str = field(default="nDCG@10", metadata={"help": "Metric of the final adapter the choice maximizes."})
    test: str = field(default="test", metadata={"help": "Eval set evaluated once, on the chosen run only."})
    axes: dict[str, list] = field(default_factory=dict, metadata={"help": "Training setting -> values to try."})

    def settings(self) -> list[dict[str, Any]]:
        """Every combination of the axes, the first axis slowest, in the order listed."""
        return [dict(zip(self.axes, values)) for values in itertools.product(*self.axes.values())]


#: Keys of an ``[analyses.NAME]`` table that wire the study in rather than set the analysis, and
#: which analyses take them (a registry flag, or one analysis's name).
WIRING = {"evals": "uses_eval", "vs_rank": "weights", "checkpoints": "per_checkpoint"}
#: ``checkpoints = "all"``: every checkpoint the run saves, and final.
ALL_CHECKPOINTS = "all"
TABLES = ("study", "train", "baseline_train", "evals", "analyses", "scoring", "search")
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
    search: SearchSpec | None = None

    def default_evals(self) -> list[str]:
        """The eval sets an analysis reads when it names none: all, except a search's test set
        (a search reads that once, for the chosen run only)."""
        return [name for name in self.evals if self.search is None or name != self.search.test]


def find_study(name_or_path: str | Path) -> Path:
    """A study file by path, or a packaged study by name (demo, embedded-grid, paper, recipe-search)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = STUDIES_DIR / f"{Path(str(name_or_path)).stem}.toml"
    if path.suffix in ("", ".toml") and packaged.is_file() and len(path.parts) == 1:
        return packaged
    names = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.toml")))
    raise InputError(f"study {name_or_path}: no such file; expected a study TOML file or a packaged study ({names})")


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
        if not fits_type(value, hints[key]):
            raise InputError(f"{where}: {key} = {value!r}: expected {type_name(hints[key])}")
    missing = [f for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in table]
    if missing:  # said here: the dataclass's own TypeError names its __init__, not the table
        wanted = "; ".join(f"{f.name} = ... ({type_name(hints[f.name])})" for f in missing)
        raise InputError(f"{where}: missing {', '.join(f.name for f in missing)}; add {wanted} to the table")
    try:
        return cls(**table)
    except InputError as exc:  # a settings dataclass refused a value
        raise InputError(f"{where}: {exc}") from None


def load_study(path: str | Path) -> Study:
    """Parse and check a study file: every mistake is one InputError before anything runs."""
    path = find_study(path)
    raw = _read_toml(path)
    if not raw:
        raise InputError(
            f'{path}: no settings (empty file, or comments only); expected at least a [study] table with name = "..." '
            'and models = ["smollm2-135m"]'
        )
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
    search = _search(raw["search"], train, f"{path} [search]") if "search" in raw else None
    study = Study(spec, models, train, baseline_train, evals, analyses, dict(raw.get("scoring", {})), path, search)
    _check(study)
    if search is not None:
        _check_search(study)
    return study


def _search(table: Any, train: dict[str, Any], where: str) -> SearchSpec:
    """The ``[search]`` table: its own keys, and training settings each given a list of values."""
    if not isinstance(table, dict):
        raise InputError(f"{where}: expected a table of settings")
    own = {f.name for f in fields(SearchSpec)} - {"axes"}
    spec = _build(SearchSpec, {k: v for k, v in table.items() if k in own}, where)
    axes = {k: v for k, v in table.items() if k not in own}
    unknown = sorted(set(axes) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(own))} or training settings "
            f"to search, each a list of values (e.g. lr = [5e-4, 2e-3])"
        )
    for key in axes:  # as in [train]: the grid sets these; each value's type is checked below
        if key in GRID_KEYS:
            raise InputError(f"{where}: {key} is set by the study, not here; use {GRID_KEYS[key]}")
    hints = typing.get_type_hints(TrainConfig)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise InputError(
                f"{where}: {key} = {values!r}: expected a non-empty list of values to try, e.g. {key} = [...]"
            )
        for value in values:
            if not fits_type(value, hints[key]):
                raise InputError(f"{where}: {key} = {values!r}: expected each value to be {type_name(hints[key])}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise InputError(f"{where}: {key} = {values!r}: a value is listed twice; list each once")
        if key in train:
            raise InputError(f"{where}: {key} is searched here and also set in [train]; remove it from [train]")
    if not axes:
        raise InputError(
            f"{where}: no training setting to search; add one with the values to try, e.g. lr = [5e-4, 2e-3]"
        )
    spec.axes = axes
    return spec


def _source(ev: EvalSpec) -> tuple:
    """What data an eval set reads (a FAQ split, four files or an ir_datasets id), whatever its depth."""
    return (ev.split, ev.queries, ev.qrels, ev.corpus, ev.run, ev.ir_datasets)


def _check_search(study: Study) -> None:
    """The test-once rule, as far as a file can break it: the choice never reads test data,
    and nothing but the search's test cell reads the test set."""
    search, where = study.search, f"{study.path} [search]"
    for key in ("select_on", "test"):
        name = getattr(search, key)
        if name not in study.evals:
            raise InputError(
                f"{where}: {key} = {name!r} is not an eval set; defined: {', '.join(study.evals) or 'none'} "
                f"(add [evals.{name}])"
            )
    select, test = study.evals[search.select_on], study.evals[search.test]
    if select.split == "test" or _source(select) == _source(test):
        raise InputError(
            f"{where}: select_on = {search.select_on!r} reads the test data; choose on a dev set, e.g. "
            f'[evals.dev] split = "dev"'
        )
    for name, ev in study.evals.items():
        if name != search.test and _source(ev) == _source(test):
            raise InputError(
                f"{study.path} [evals.{name}]: reads the same data as the search's test set {search.test!r}, which "
                f"is read once, for the chosen run only; remove it"
            )
    for name, ev in ((search.select_on, select), (search.test, test)):
        if search.metric not in ev.metrics:
            raise InputError(
                f"{where}: metric = {search.metric!r} is not among [evals.{name}] metrics {ev.metrics}; add it there"
            )
    for name, spec in study.analyses.items():
        if search.test in spec.evals:
            raise InputError(
                f"{study.path} [analyses.{name}]: evals names the search's test set {search.test!r}, which is read "
                f"once, for the chosen run only; analyze on {search.select_on!r} instead"
            )
        if getattr(spec, "vs_rank", None) is not None:
            raise InputError(f"{study.path} [analyses.{name}]: vs_rank is not supported with [search]; remove it")


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
    wiring = [k for k, who in WIRING.items() if getattr(entry, who, False) is True or who == name]
    ours = {k: v for k, v in table.items() if k in wiring}
    if ours.get("checkpoints") == ALL_CHECKPOINTS:  # the one string allowed for a list
        ours["checkpoints"] = [ALL_CHECKPOINTS]
    settings = _build(entry.settings, {k: v for k, v in table.items() if k not in wiring}, where, extra=wiring)
    spec = _build(AnalysisSpec, {"name": name, "settings": settings, **ours}, where)
    if spec.vs_rank is not None and (not isinstance(spec.vs_rank, int) or spec.vs_rank < 1):
        raise InputError(f"{where}: vs_rank {spec.vs_rank!r}: expected a positive integer rank")
    _check_checkpoints(spec.checkpoints, where)
    return spec


def _check_checkpoints(names: list[str], where: str) -> None:
    """``checkpoints``: final, all or checkpoint-<step> names, each once (which steps a run saves is
    checked against its training settings when the study is expanded)."""
    bad = [n for n in names if n not in (FINAL, ALL_CHECKPOINTS) and step_of(n) is None]
    if bad or not names or len(set(names)) != len(names):
        shown = f"{bad[0]!r} is not a checkpoint name" if bad else "names a checkpoint twice" if names else "is empty"
        raise InputError(
            f'{where}: checkpoints {shown}; expected "final", "all" or names such as "checkpoint-50", e.g. '
            f'checkpoints = ["checkpoint-10", "final"]'
        )


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
        if not fits_type(value, hints[key]):
            raise InputError(f"{where}: {key} = {value!r}: expected {type_name(hints[key])}")
    return imply_data(dict(table))


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
            parse_metrics(ev.metrics, binary_relevance_level(ev.ir_datasets, ev.binary_relevance_level))
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
