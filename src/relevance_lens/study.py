"""Studies: one TOML file names a grid of training runs and analyses; this module expands it
into cells and runs them, resumably and in shards.

A *cell* is data: ``kind`` (``train`` or ``analyze``), a config dict holding everything its
result depends on, and an id (the hash of that config). One training run per model x rank x
targets x seed (plus the head-only "before" run per model and seed), and per run one cell per
analysis and eval set. The run folder's name carries the hash of its training config, so a
changed setting makes a new run rather than mixing two.

Resumable: a cell is done when the run folder says so (``final/`` and ``train_summary.json``
written) or when the results store holds the cell's marker row (analysis ``study``, written
after the cell's own rows, with the cell config as its ``config_json``). A study killed at any
point and restarted skips done cells, resumes training from the latest complete checkpoint,
and lets the analyses skip what the store already holds; nothing finished is recomputed
(except an analysis whose stored rows lack a metric its eval set now asks for).

Shardable: ``--shard i/n`` keeps the cells whose *run* (the id of the run's training cell)
hashes to ``i`` modulo ``n``, so a run and its analyses stay together and need no shared
files; a run another shard owns but this one needs (the head-only baseline) is trained here
too, under a file lock when the work folder is shared (share it on clusters: the baseline is
then trained once; on separate disks each shard trains an identical copy on CPU, on GPUs
possibly differing in the last bits, which the merge reports). Each shard writes its own
store; :func:`merge_stores` combines them (the same row from two shards is one row).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib
from rich.console import Console
from rich.table import Table

from .errors import InputError
from .store import Store, config_hash

STUDIES_DIR = Path(__file__).parent / "studies"
RUNS = "runs"
SUMMARY = "train_summary.json"
#: Training settings a study sets through its grid (or its evals), never through [train].
GRID_KEYS = {"model": "models", "rank": "ranks", "targets": "targets", "seed": "seeds", "output": "--workdir",
             "eval_split": "[evals]", "eval_depth": "[evals]"}


# ---------------------------------------------------------------- the study file


@dataclass
class StudySpec:
    """The ``[study]`` table: what the grid is made of."""

    name: str = field(metadata={"help": "Study name (default work folder: runs/<name>)."})
    models: list[Any] = field(default_factory=list, metadata={"help": "Model names, or tables {name, family, label}."})
    ranks: list[int] = field(default_factory=lambda: [8], metadata={"help": "LoRA ranks (the paper: 1, 2, 8, 32)."})
    targets: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "What LoRA updates: mha, mlp, all, or roles like q,k."})
    seeds: list[int] = field(default_factory=lambda: [42], metadata={"help": "Training seeds."})
    baseline: bool = field(default=True, metadata={"help": "Train the head-only 'before' run per model and seed."})
    description: str = field(default="", metadata={"help": "Free text shown in the report."})


@dataclass
class ModelSpec:
    """One base model of the grid."""

    name: str = field(metadata={"help": "Embedded short name, model folder, GGUF file or hub id."})
    family: str | None = field(default=None, metadata={"help": "model_type (llama, mistral, gpt_neox...) when the config is not local."})
    label: str | None = field(default=None, metadata={"help": "Short name used in run names (default: from the name)."})

    def short(self) -> str:
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
    ir_datasets: str | None = field(default=None, metadata={"help": "ir_datasets id with scoreddocs, e.g. msmarco-passage/trec-dl-2019."})
    depth: int = field(default=10, metadata={"help": "Rerank the first stage's top-k."})
    max_queries: int | None = field(default=None, metadata={"help": "Only the first N judged queries (sorted by id)."})
    metrics: list[str] = field(default_factory=lambda: ["nDCG@10", "RR@10"], metadata={"help": "ir_measures names."})


@dataclass
class CheckpointsSpec:
    """``[analyses.checkpoints]``: every checkpoint beside BM25 and the head-only run."""

    evals: list[str] = field(default_factory=list, metadata={"help": "Eval sets (default: all)."})


@dataclass
class AblateSpec:
    """``[analyses.ablate]``: switch parts of the final ΔW off."""

    evals: list[str] = field(default_factory=list, metadata={"help": "Eval sets (default: all)."})
    sweeps: list[str] = field(default_factory=lambda: ["drop-layer"], metadata={"help": "Named sweeps (see relevance-lens analyze ablate)."})
    window: int = field(default=3, metadata={"help": "Width of the window sweep."})
    window_stride: int = field(default=1, metadata={"help": "Step between window starts (1: every layer)."})
    permutations: int = field(default=10000, metadata={"help": "Sign flips of the paired randomization test."})


@dataclass
class WeightsSpec:
    """``[analyses.weights]``: ΔW norms and spectra per checkpoint; subspace similarity."""

    side: str = field(default="left", metadata={"help": "left (output space) or right (input space)."})
    vs_rank: int | None = field(default=None, metadata={"help": "Also compare each final adapter with this rank's (same model, targets, seed)."})


@dataclass
class LensSpec:
    """``[analyses.lens]``: the score head read on every layer."""

    evals: list[str] = field(default_factory=list, metadata={"help": "Eval sets (default: all)."})
    probe: str = field(default="none", metadata={"help": "Per-layer probe: none, ridge, logistic."})
    probe_split: str = field(default="train", metadata={"help": "FAQ split the probe is fitted on."})
    l2: float = field(default=1.0, metadata={"help": "Probe L2 penalty."})
    adapter_off: bool = field(default=False, metadata={"help": "Also read the trained head on the frozen base (all LoRA parts off)."})


ANALYSES: dict[str, type] = {"checkpoints": CheckpointsSpec, "ablate": AblateSpec, "weights": WeightsSpec, "lens": LensSpec}
TABLES = ("study", "train", "baseline_train", "evals", "analyses", "scoring")


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


def _build(cls, table: Any, where: str):
    """A spec dataclass from a TOML table; unknown keys and wrong types are refused."""
    if not isinstance(table, dict):
        raise InputError(f"{where}: expected a table of settings, got {table!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    for key, value in table.items():
        default = known[key].default_factory() if callable(known[key].default_factory) else known[key].default
        if isinstance(default, list) and not isinstance(value, list):
            raise InputError(f"{where}: {key} = {value!r}: expected a list, e.g. {key} = {json.dumps(default or ['...'])}")
    try:
        return cls(**table)
    except TypeError as exc:  # a required key is missing
        raise InputError(f"{where}: {exc}") from None


def load_study(path: str | Path) -> Study:
    """Parse and check a study file: every mistake is one InputError before anything runs."""
    path = find_study(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML ({exc})") from None
    unknown = sorted(set(raw) - set(TABLES))
    if unknown:
        raise InputError(f"{path}: unknown table(s) {', '.join(unknown)}; expected some of {', '.join(TABLES)}")
    spec = _build(StudySpec, raw.get("study", {}), f"{path} [study]")
    if not spec.models:
        raise InputError(f"{path} [study]: models is empty; name at least one model, e.g. models = [\"smollm2-135m\"]")
    models = [_build(ModelSpec, m if isinstance(m, dict) else {"name": str(m)}, f"{path} [study] models") for m in spec.models]
    for axis in ("ranks", "targets", "seeds"):
        if not getattr(spec, axis):
            raise InputError(f"{path} [study]: {axis} is empty")
    for rank in spec.ranks:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise InputError(f"{path} [study]: rank {rank!r} is impossible; expected positive integers such as 1, 2, 8, 32")
    train = _train_table(raw.get("train", {}), f"{path} [train]")
    baseline_train = _train_table(raw.get("baseline_train", {}), f"{path} [baseline_train]")
    evals = {name: _build(EvalSpec, t, f"{path} [evals.{name}]") for name, t in raw.get("evals", {}).items()}
    analyses = {}
    for name, table in raw.get("analyses", {}).items():
        if name not in ANALYSES:
            raise InputError(f"{path} [analyses.{name}]: unknown analysis; expected some of {', '.join(ANALYSES)}")
        analyses[name] = _build(ANALYSES[name], table, f"{path} [analyses.{name}]")
    study = Study(spec, models, train, baseline_train, evals, analyses, dict(raw.get("scoring", {})), path)
    _check(study)
    return study


def _train_table(table: Any, where: str) -> dict[str, Any]:
    from .train import TrainConfig

    if not isinstance(table, dict):
        raise InputError(f"{where}: expected a table of training settings")
    for key in table:
        if key in GRID_KEYS:
            raise InputError(f"{where}: {key} is set by the study, not here; use {GRID_KEYS[key]}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise InputError(f"{where}: unknown training setting(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known - set(GRID_KEYS)))}")
    return dict(table)


def _check(study: Study) -> None:
    """Cross-checks that need no weights: evals, analyses, scoring."""
    from .ablate import SWEEPS
    from .evaluate import parse_metrics
    from .lens import LensConfig
    from .score import ScoreConfig

    where = str(study.path)
    for name, ev in study.evals.items():
        files = {k: getattr(ev, k) for k in ("queries", "qrels", "corpus", "run")}
        sources = [s for s, given in (("split", ev.split), ("files", any(files.values())), ("ir_datasets", ev.ir_datasets)) if given]
        if len(sources) != 1:
            raise InputError(f"{where} [evals.{name}]: give exactly one of split, the four files (queries, qrels, corpus, run) or ir_datasets; got {sources or 'none'}")
        if sources == ["files"] and not all(files.values()):
            raise InputError(f"{where} [evals.{name}]: missing {', '.join(k for k, v in files.items() if not v)}; files need all of queries, qrels, corpus, run")
        if ev.depth < 1 or (ev.max_queries is not None and ev.max_queries < 1):
            raise InputError(f"{where} [evals.{name}]: depth {ev.depth} / max_queries {ev.max_queries}: expected positive numbers")
        parse_metrics(ev.metrics)
    for name, spec in study.analyses.items():
        for ev in getattr(spec, "evals", []):
            if ev not in study.evals:
                raise InputError(f"{where} [analyses.{name}]: eval set {ev!r} is not defined; defined: {', '.join(study.evals) or 'none (add [evals.NAME])'}")
        if hasattr(spec, "evals") and not study.evals:
            raise InputError(f"{where} [analyses.{name}]: needs an eval set; add one, e.g. [evals.dev] split = \"dev\"")
    if "ablate" in study.analyses:
        bad = [s for s in study.analyses["ablate"].sweeps if s not in SWEEPS]
        if bad:
            raise InputError(f"{where} [analyses.ablate]: unknown sweep(s) {', '.join(bad)}; expected some of {', '.join(SWEEPS)}")
    if "lens" in study.analyses:
        lens = study.analyses["lens"]
        LensConfig(probe=lens.probe, l2=lens.l2)
    if "weights" in study.analyses and study.analyses["weights"].side not in ("left", "right"):
        raise InputError(f"{where} [analyses.weights]: side {study.analyses['weights'].side!r}: expected left or right")
    allowed = {f.name for f in fields(ScoreConfig)} - {"depth"}
    unknown = sorted(set(study.scoring) - allowed)
    if unknown:
        raise InputError(f"{where} [scoring]: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(allowed))}")
    ScoreConfig(**study.scoring)


# ---------------------------------------------------------------- models, without weights


@dataclass(frozen=True)
class ModelInfo:
    """What the grid needs to know about a model: its role table and size, and how we know."""

    family: str
    layers: int | None
    hidden: int | None
    source: str


#: Known models -> (model_type, layers, hidden size): lets a dry run resolve hub models it
#: cannot fetch, and embedded ones without dequantizing their GGUF.
KNOWN_MODELS: dict[str, tuple[str, int, int]] = {
    "smollm2-135m": ("llama", 30, 576),
    "gemma3-270m": ("gemma3_text", 18, 640),
    "mistralai/Mistral-7B-v0.1": ("mistral", 32, 4096),
    "mistralai/Mistral-7B-v0.3": ("mistral", 32, 4096),
    "meta-llama/Llama-3.1-8B": ("llama", 32, 4096),
    "meta-llama/Meta-Llama-3.1-8B": ("llama", 32, 4096),
    "meta-llama/Meta-Llama-3-8B": ("llama", 32, 4096),
    "meta-llama/Llama-2-7b-hf": ("llama", 32, 4096),
    "EleutherAI/pythia-6.9b": ("gpt_neox", 32, 4096),
    "EleutherAI/pythia-1b": ("gpt_neox", 16, 2048),
    "EleutherAI/pythia-410m": ("gpt_neox", 24, 1024),
    "Qwen/Qwen2.5-7B": ("qwen2", 28, 3584),
    "HuggingFaceTB/SmolLM2-135M": ("llama", 30, 576),
    "google/gemma-3-270m": ("gemma3_text", 18, 640),
}


def model_info(model: ModelSpec) -> ModelInfo:
    """Family, layers and hidden size from the model's config where it is local, else from
    :data:`KNOWN_MODELS` or the study's ``family``. Never loads weights, never downloads."""
    from .models import EMBEDDED
    from .roles import ARCHITECTURES

    config, source = _local_config(model.name)
    if config is not None:
        config = {**config.get("text_config", {}), **config}  # multimodal configs keep sizes in text_config
        family = config.get("model_type")
        layers = config.get("num_hidden_layers") or config.get("n_layer")
        hidden = config.get("hidden_size") or config.get("n_embd")
        if model.family and model.family != family:
            raise InputError(f"model {model.name}: family = {model.family!r} but its {source} says {family!r}; drop the family key")
    elif model.name in KNOWN_MODELS:
        family, layers, hidden = KNOWN_MODELS[model.name]
        source = "embedded model table" if model.name in EMBEDDED else "built-in table of hub ids"
        if model.family and model.family != family:
            family, layers, hidden, source = model.family, None, None, "study file (family =)"
    elif model.family:
        family, layers, hidden, source = model.family, None, None, "study file (family =)"
    else:
        raise InputError(
            f"model {model.name}: unknown model family and no local config.json; add family = \"llama\" (or mistral, "
            f"gpt_neox, ...) to its entry: models = [{{name = \"{model.name}\", family = \"...\"}}]"
        )
    if family not in ARCHITECTURES:
        raise InputError(f"model {model.name}: family {family!r} has no role table; expected one of {', '.join(sorted(ARCHITECTURES))}")
    return ModelInfo(family, layers, hidden, source)


def _local_config(name: str) -> tuple[dict | None, str]:
    """config.json of a model folder, or of a hub id already in the local HF cache (no network)."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text()), "config.json"
    if name.count("/") == 1 and not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:  # not installed, or a malformed id: fall back to the tables
            cached = None
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text()), "cached hub config.json"
    return None, ""


# ---------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One unit of work: a training run, or one analysis of one run on one eval set.

    ``config`` holds everything the cell's result depends on; the id is its hash.
    ``unit`` is the id of the run's training cell (what shards are assigned by);
    ``needs`` the runs that must be trained before this cell runs.
    """

    kind: str
    run: str
    config: dict = field(compare=False)
    unit: str = ""
    needs: tuple[str, ...] = ()
    cost: str = field(default="", compare=False)
    work: int = field(default=0, compare=False)  # forward-pass sequences, for totals

    @property
    def id(self) -> str:
        return config_hash({"kind": self.kind, **self.config})

    @property
    def what(self) -> str:
        if self.kind == "train":
            return "train"
        ev = self.config.get("eval")
        return self.config["analysis"] + (f" on {ev['name']}" if ev else "")


def _slug(targets: str) -> str:
    return targets.replace(",", "+").replace(" ", "")


def expand(study: Study) -> list[Cell]:
    """Every cell of the study, in run order (each run's training, then its analyses)."""
    cells: list[Cell] = []
    weights = study.analyses.get("weights")
    if weights is not None and weights.vs_rank is not None and weights.vs_rank not in study.spec.ranks:
        raise InputError(f"{study.path} [analyses.weights]: vs_rank {weights.vs_rank} is not one of the study's ranks {study.spec.ranks}")
    infos = {m.name: model_info(m) for m in study.models}
    eval_sizes = {name: _eval_queries(ev) for name, ev in study.evals.items()}
    for model in study.models:
        info = infos[model.name]
        for seed in study.spec.seeds:
            base_run = None
            if study.spec.baseline:
                values = {**study.train, **study.baseline_train, "model": model.name, "targets": "none", "seed": seed}
                base = _train_cell(study, model, info, values, f"{model.short()}-head-s{seed}")
                base_run = base.run
                cells += [base] + _analysis_cells(study, base, info, None, None, eval_sizes)
            for rank in study.spec.ranks:
                for targets in study.spec.targets:
                    values = {**study.train, "model": model.name, "rank": rank, "targets": targets, "seed": seed}
                    cell = _train_cell(study, model, info, values, f"{model.short()}-r{rank}-{_slug(targets)}-s{seed}")
                    vs = None
                    if weights is not None and weights.vs_rank is not None and weights.vs_rank != rank:
                        other = {**study.train, "model": model.name, "rank": weights.vs_rank, "targets": targets, "seed": seed}
                        vs = _run_name(f"{model.short()}-r{weights.vs_rank}-{_slug(targets)}-s{seed}", _train_values(other))
                    cells += [cell] + _analysis_cells(study, cell, info, base_run, vs, eval_sizes)
    _check_unique(cells)
    return cells


def _train_values(values: dict[str, Any]) -> dict[str, Any]:
    """The full, validated training config of a run (``output`` is set when it runs)."""
    from .train import TrainConfig

    try:
        config = TrainConfig(**values)
        config.eval_split = None  # the study evaluates through its [evals]
        config.validate()
    except TypeError as exc:  # a setting of the wrong type, e.g. max_steps = "80"
        raise InputError(f"training settings {values}: {exc}") from None
    resolved = asdict(config)
    del resolved["output"]
    return resolved


def _run_name(stem: str, train_config: dict) -> str:
    return f"{stem}-{config_hash(train_config)[:6]}"


def _train_cell(study: Study, model: ModelSpec, info: ModelInfo, values: dict, stem: str) -> Cell:
    from .adapters import LoraSettings
    from .roles import ARCHITECTURES

    where = f"{study.path}: model {model.name}, rank {values.get('rank', '-')}, targets {values['targets']!r}"
    try:
        config = _train_values(values)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    arch = ARCHITECTURES[info.family]
    settings = LoraSettings(rank=config["rank"], alpha=config["alpha"], dropout=config["lora_dropout"],
                            targets=config["targets"], layers=config["layers"])
    try:
        roles = settings.validate(arch, info.layers if info.layers is not None else 1 << 30)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    if roles and info.hidden is not None and config["rank"] > info.hidden:
        raise InputError(f"{where}: rank {config['rank']} is impossible for hidden size {info.hidden}; expected at most {info.hidden}")
    name = _run_name(stem, config)
    unit = config_hash({"kind": "train", "train": config})
    seqs = config["queries_per_device"] * config["grad_accum"] * config["group_size"]
    passes = 3 if roles else 1  # forward + backward through the model, or only the head's
    work = config["max_steps"] * seqs * passes
    cost = f"{config['max_steps']} steps x {seqs} seq x <={config['max_length']} tok" + ("" if roles else " (head only)")
    return Cell("train", name, {"train": config}, unit=unit, needs=(), cost=cost, work=work)


def _analysis_cells(study: Study, run: Cell, info: ModelInfo, baseline: str | None, vs: str | None,
                    eval_sizes: dict[str, int | None]) -> list[Cell]:
    """The analyses of one run: checkpoints and lens for every run, ablate and weights for LoRA runs."""
    head_only = run.config["train"]["targets"] == "none"
    unit = run.unit
    cells = []
    for name, spec in study.analyses.items():
        if head_only and name in ("ablate", "weights"):
            continue
        settings = {k: v for k, v in asdict(spec).items() if k != "evals"}
        needs = [run.run] + ([baseline] if name == "checkpoints" and baseline and not head_only else [])
        if name == "weights":
            other = vs if spec.vs_rank is not None else None
            config = {"analysis": name, "run": run.run, "eval": None, "settings": settings, "vs": other}
            cells.append(Cell("analyze", run.run, config, unit, tuple(needs + ([other] if other else [])),
                              "reads adapters (no forward pass)", 0))
            continue
        for ev_name in spec.evals or list(study.evals):
            ev = study.evals[ev_name]
            config = {"analysis": name, "run": run.run, "eval": {"name": ev_name, **asdict(ev)}, "settings": settings,
                      "scoring": study.scoring, "baseline": needs[1] if len(needs) > 1 else None}
            cost, work = _analysis_cost(name, spec, run, info, ev, eval_sizes[ev_name], head_only)
            cells.append(Cell("analyze", run.run, config, unit, tuple(needs), cost, work))
    return cells


def _check_unique(cells: list[Cell]) -> None:
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.id in seen:
            raise InputError(f"the study names the same {cell.what} of {cell.run} twice; remove the repeated grid value")
        seen[cell.id] = cell


# ---------------------------------------------------------------- cost estimates (no weights)

#: Judged queries of the ir_datasets eval sets the paper uses (for dry-run estimates).
IRDS_QUERIES = {"msmarco-passage/trec-dl-2019": 43, "msmarco-passage/trec-dl-2019/judged": 43,
                "msmarco-passage/trec-dl-2020": 54, "msmarco-passage/trec-dl-2020/judged": 54,
                "msmarco-passage/dev/small": 6980}


def _eval_queries(ev: EvalSpec) -> int | None:
    """Judged queries an eval set will score, where that is known without loading models."""
    count: int | None = None
    if ev.split:
        from .faq import load_faq

        data = load_faq(ev.split)
        count = sum(1 for q in data.run if data.qrels.get(q) and q in data.queries)
    elif ev.ir_datasets:
        count = IRDS_QUERIES.get(ev.ir_datasets)
    elif ev.qrels and Path(ev.qrels).is_file():
        with open(ev.qrels, encoding="utf-8", errors="replace") as fh:
            count = len({line.split()[0] for line in fh if line.strip()})
    if ev.max_queries is not None:
        count = ev.max_queries if count is None else min(count, ev.max_queries)
    return count


def _analysis_cost(name: str, spec, run: Cell, info: ModelInfo, ev: EvalSpec, queries: int | None, head_only: bool) -> tuple[str, int]:
    pairs = None if queries is None else queries * ev.depth
    train = run.config["train"]
    if name == "checkpoints":
        steps = set(train["save_steps"]) | {train["max_steps"]}
        if train["save_every"]:
            steps |= set(range(train["save_every"], train["max_steps"] + 1, train["save_every"]))
        passes = len([s for s in steps if s <= train["max_steps"]]) + 1 + (0 if head_only else 1)  # + final, + baseline
    elif name == "ablate":
        passes = sum(len(_variants(s, spec, train, info)) + 2 for s in spec.sweeps) if info.layers else None
    else:  # lens
        passes = 1 + (1 if spec.adapter_off and not head_only else 0)
    if pairs is None or passes is None:
        return f"{passes or '?'} pass(es) x ? pairs", 0
    return f"{passes} pass{'es' if passes > 1 else ''} x {pairs} pairs{' (at most)' if name == 'ablate' else ''}", passes * pairs


def _variants(sweep: str, spec: "AblateSpec", train: dict, info: ModelInfo) -> list:
    from .ablate import build_variants
    from .roles import ARCHITECTURES, resolve_roles

    roles = resolve_roles(train["targets"], ARCHITECTURES[info.family])
    layers = train["layers"] if train["layers"] is not None else range(info.layers)
    return build_variants(sweep, frozenset((l, r) for l in layers for r in roles), info.layers, window=spec.window, stride=spec.window_stride)


# ---------------------------------------------------------------- shards and status


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (0 <= i < n, as Slurm's $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT) -> (i, n)."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected i/n such as 0/4 (shard i of n, counting from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text}: expected 0 <= i < n, e.g. 0/{max(n, 2)} ... {max(n, 2) - 1}/{max(n, 2)}")
    return i, n


def shard_of(cell: Cell, n: int) -> int:
    """Stable shard of a cell: the hash of its run's training cell id, modulo ``n``."""
    unit = cell.unit or cell.id
    return int(unit[:12], 16) % n


def select(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """This shard's cells, plus the training cells of runs they need that other shards own."""
    if shard is None:
        return list(cells)
    i, n = shard
    mine = {c.id for c in cells if shard_of(c, n) == i}
    needed = {r for c in cells if c.id in mine for r in c.needs}
    return [c for c in cells if c.id in mine or (c.kind == "train" and c.run in needed)]


def _train_done(run_dir: Path) -> bool:
    from .reranker import HEAD_FILE

    return (run_dir / "final" / HEAD_FILE).is_file() and (run_dir / SUMMARY).is_file()


def _marker(cell: Cell) -> str:
    ev = cell.config.get("eval")
    return cell.config["analysis"] + (f":{ev['name']}" if ev else "")


def status(cell: Cell, workdir: Path, store: Store | None) -> str:
    """``done``, ``partial (...)`` or ``pending``: from the run folder and the store only."""
    if cell.kind == "train":
        from .train import complete_checkpoints

        run_dir = workdir / RUNS / cell.run
        if _train_done(run_dir):
            return "done" if store is None or store.has(cell.run, "train") else "trained (rows pending)"
        found = complete_checkpoints(run_dir) if run_dir.is_dir() else []
        return f"partial (checkpoint-{found[-1][0]})" if found else "pending"
    if store is None:
        return "pending"
    if store.has(cell.run, "study", variant=_marker(cell), config=cell.config):
        return "done"
    analysis = cell.config["analysis"]
    names = [f"ablate:{s}" for s in cell.config["settings"]["sweeps"]] if analysis == "ablate" else [analysis]
    return "partial" if any(store.has(cell.run, name) for name in names) else "pending"


# ---------------------------------------------------------------- running


@dataclass
class RunOptions:
    """Where a study writes and how it reports."""

    workdir: Path = field(metadata={"help": "Work folder: runs/<run>/ training folders."})
    store: Path = field(metadata={"help": "SQLite results store of this shard."})
    shard: tuple[int, int] | None = field(default=None, metadata={"help": "(i, n): run shard i of n."})
    progress: bool = field(default=True, metadata={"help": "Show training progress bars."})


def default_paths(study: Study, workdir: Path | None, store: Path | None, shard: tuple[int, int] | None) -> tuple[Path, Path]:
    """Work folder ``runs/<study>`` and store ``WORKDIR/results.sqlite`` (one per shard)."""
    workdir = Path(workdir) if workdir is not None else Path("runs") / study.spec.name
    if store is None:
        store = workdir / ("results.sqlite" if shard is None else f"results.shard-{shard[0]}-of-{shard[1]}.sqlite")
    return workdir, Path(store)


def run_study(study: Study, options: RunOptions, console: Console | None = None) -> dict[str, int]:
    """Run this shard's cells, skipping done ones; returns counts of done/ran cells."""
    console = console or Console(stderr=True)
    everything = expand(study)
    cells = select(everything, options.shard)
    _preflight(study, cells)
    store = Store(options.store)
    by_run = {c.run: c for c in everything if c.kind == "train"}
    counts = {"cells": len(cells), "skipped": 0, "ran": 0}
    started = time.perf_counter()
    for index, cell in enumerate(cells, 1):
        state = status(cell, options.workdir, store)
        head = f"[{index}/{len(cells)}] {cell.what} · {cell.run}"
        if state == "done":
            console.print(f"[dim]{head}: done, skipped[/]", highlight=False)
            counts["skipped"] += 1
            continue
        console.rule(f"{head} ({state}; {time.perf_counter() - started:.0f} s elapsed)")
        if cell.kind == "train":
            _ensure_trained(cell, options, store, console)
        else:
            for need in cell.needs:  # idempotent: trains only what is not trained yet
                _ensure_trained(by_run[need], options, store, console)
            _analyze(cell, options, store, console)
        counts["ran"] += 1
        gc.collect()
        _free_accelerator()
    console.print(f"study {study.spec.name}: {counts['cells']} cells, {counts['ran']} run now, {counts['skipped']} already done "
                  f"({time.perf_counter() - started:.0f} s); results in {options.store} (relevance-lens report {options.store})", highlight=False)
    return counts


def _free_accelerator() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _preflight(study: Study, cells: list[Cell]) -> None:
    """Files the cells read must exist before the first cell starts."""
    missing = []
    for cell in cells:
        train = cell.config.get("train") or {}
        if train.get("data") == "files":
            keys = ("tevatron",) if train.get("tevatron") else ("queries", "qrels", "corpus", "negatives_run")
            missing += [f"{k} {train[k]}" for k in keys if not Path(train[k]).is_file()]
        ev = cell.config.get("eval") or {}
        missing += [f"eval {ev['name']} {k} {ev[k]}" for k in ("queries", "qrels", "corpus", "run") if ev.get(k) and not Path(ev[k]).is_file()]
        if ev.get("ir_datasets"):
            _need_ir_datasets()
    if missing:
        shown = sorted(set(missing))
        raise InputError(f"{study.path}: missing file(s): {'; '.join(shown[:5])}{' ...' if len(shown) > 5 else ''}; fill in the paths in the study file")


@contextmanager
def _run_lock(run_dir: Path, console: Console) -> Iterator[None]:
    """An exclusive lock per run folder, so shards sharing a work folder never train one run twice at once.
    The kernel drops it when its process dies, SIGKILL included."""
    import fcntl

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"waiting for another process training {run_dir.name} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _ensure_trained(cell: Cell, options: RunOptions, store: Store, console: Console) -> Path:
    """Train (or resume) a run unless its folder is complete; record its rows in the store."""
    from .train import TrainConfig, train

    run_dir = options.workdir / RUNS / cell.run
    with _run_lock(run_dir, console):
        if not _train_done(run_dir):
            config = TrainConfig(**cell.config["train"], output=str(run_dir))
            train(config, resume=True, progress=options.progress)
    if not store.has(cell.run, "train"):
        store.append(_train_rows(cell, run_dir))
    return run_dir


def _train_rows(cell: Cell, run_dir: Path) -> list[dict[str, Any]]:
    """Rows describing a finished run; their config is the run's exact resolved config."""
    record = json.loads((run_dir / "run.json").read_text())
    summary = json.loads((run_dir / SUMMARY).read_text())
    train = cell.config["train"]
    config = {"train": train, "resolved": record.get("resolved", {}), "data_fingerprints": record.get("data_fingerprints", {}),
              "versions": record.get("versions", {}), "cell": cell.id}
    losses = [entry["loss"] for entry in summary.get("log", []) if "loss" in entry]
    base = {"run": cell.run, "model": train["model"], "rank": None if train["targets"] == "none" else train["rank"],
            "targets": train["targets"], "checkpoint": "final", "analysis": "train", "config_json": config}
    rows = [{**base, "metric": "steps", "value": summary["steps"]},
            {**base, "metric": "train_queries", "value": record.get("resolved", {}).get("train_queries", 0)}]
    if losses:
        rows.append({**base, "metric": "loss", "value": losses[-1]})
    return rows


def _analyze(cell: Cell, options: RunOptions, store: Store, console: Console) -> None:
    """Run one analysis cell through relevance_lens.analyze, then write its marker row."""
    from . import analyze as an
    from .ablate import SweepConfig
    from .lens import LensConfig
    from .score import ScoreConfig

    c = cell.config
    run_dir = options.workdir / RUNS / cell.run
    final = run_dir / "final"
    settings = c["settings"]
    if c["analysis"] == "weights":
        an.analyze_weights(run_dir, side=settings["side"], store=store, console=console)
        if c["vs"]:
            an.analyze_weights(final, other=options.workdir / RUNS / c["vs"] / "final", side=settings["side"], store=store, console=console)
    else:
        ev = c["eval"]
        evalset = build_evalset(ev)
        common = dict(store=store, score=ScoreConfig(depth=ev["depth"], **c["scoring"]), console=console,
                      force=_missing_metrics(cell, store))
        metrics = ev["metrics"]
        if c["analysis"] == "checkpoints":
            baseline = options.workdir / RUNS / c["baseline"] if c["baseline"] else None
            an.analyze_checkpoints(run_dir, evalset, metrics, baseline_run_dir=baseline, **common)
        elif c["analysis"] == "ablate":
            sweep = SweepConfig(permutations=settings["permutations"])
            an.analyze_ablate(final, evalset, settings["sweeps"], metrics, window=settings["window"],
                              window_stride=settings.get("window_stride", 1), sweep_config=sweep, **common)
        else:
            from .evalset import faq_evalset

            lens = LensConfig(probe=settings["probe"], l2=settings["l2"])
            probe_set = faq_evalset(settings["probe_split"], ev["depth"]) if lens.probe != "none" else None
            an.analyze_lens(final, evalset, metrics, lens_config=lens, probe_set=probe_set, **common)
            if settings["adapter_off"] and (final / "adapter_config.json").is_file():  # LoRA runs only
                an.analyze_lens(final, evalset, metrics, adapter_off=True, lens_config=lens, probe_set=probe_set, **common)
    store.append([{"run": cell.run, "analysis": "study", "variant": _marker(cell), "metric": "done", "value": 1.0,
                   "config_json": c}])


def _missing_metrics(cell: Cell, store: Store) -> bool:
    """Whether stored rows of this analysis and eval set lack one of the cell's metrics.

    The analyses skip work by their own settings, which do not name the metrics: after a
    metric is added to an eval set they would skip it, so the driver forces a recompute.
    """
    ev, analysis = cell.config["eval"], cell.config["analysis"]
    names = [f"ablate:{s}" for s in cell.config["settings"]["sweeps"]] if analysis == "ablate" else [analysis]
    for name in names:
        stored = [r for r in store.rows(run=cell.run, analysis=name)
                  if _same_eval(json.loads(r["config_json"]), ev) and r["checkpoint"] != "bm25"]
        if stored and not set(ev["metrics"]) <= {r["metric"] for r in stored}:
            return True
    return False


def _same_eval(config: dict, ev: dict) -> bool:
    return config.get("eval") == ev["name"] and config.get("depth") == ev["depth"] and config.get("max_queries") == ev["max_queries"]


def build_evalset(ev: dict[str, Any]):
    """The EvalSet of a study's eval spec, named as the study names it."""
    from .evalset import faq_evalset, file_evalset

    if ev.get("split"):
        evalset = faq_evalset(ev["split"], ev["depth"], ev["max_queries"])
    elif ev.get("ir_datasets"):
        evalset = ir_datasets_evalset(ev["ir_datasets"], ev["depth"], ev["max_queries"])
    else:
        evalset = file_evalset(ev["queries"], ev["qrels"], ev["corpus"], ev["run"], ev["depth"], ev["max_queries"])
    evalset.name = ev["name"]
    return evalset


def _need_ir_datasets():
    try:
        import ir_datasets
    except ImportError:
        raise InputError("an eval set names an ir_datasets id, but ir_datasets is not installed: pip install 'relevance-lens[datasets]'") from None
    return ir_datasets


def ir_datasets_evalset(dataset_id: str, depth: int, max_queries: int | None):
    """An EvalSet from an ir_datasets id with queries, qrels and scoreddocs (the first stage);
    only the passages in the scored top-``depth`` are fetched from its docs store."""
    from .data import Passage
    from .evalset import EvalSet

    irds = _need_ir_datasets()
    try:
        dataset = irds.load(dataset_id)
    except KeyError:
        raise InputError(f"ir_datasets id {dataset_id!r} not found; see https://ir-datasets.com (e.g. msmarco-passage/trec-dl-2019)") from None
    if not dataset.has_scoreddocs():
        raise InputError(f"ir_datasets {dataset_id}: has no scoreddocs (first-stage run); give the four files instead")
    queries = {q.query_id: q.text for q in dataset.queries_iter()}
    qrels: dict[str, dict[str, int]] = {}
    for q in dataset.qrels_iter():
        qrels.setdefault(q.query_id, {})[q.doc_id] = int(q.relevance)
    run: dict[str, dict[str, float]] = {}
    for s in dataset.scoreddocs_iter():
        if s.query_id in qrels:
            run.setdefault(s.query_id, {})[s.doc_id] = float(s.score)
    evalset = EvalSet(dataset_id, queries, qrels, {}, run, depth, max_queries)
    wanted = sorted({d for q in evalset.query_ids for d, _ in sorted(run[q].items(), key=lambda kv: (-kv[1], kv[0]))[:depth]})
    docs = dataset.docs_store().get_many(wanted)
    evalset.corpus = {d: Passage(d, getattr(doc, "title", "") or "", doc.text) for d, doc in docs.items()}
    return evalset


# ---------------------------------------------------------------- dry run and merge


def dry_run(study: Study, options: RunOptions, console: Console) -> list[tuple[Cell, str]]:
    """List this shard's cells with their estimated cost and status; loads no weights."""
    cells = select(expand(study), options.shard)
    store = Store(options.store) if options.store.is_file() else None
    listed = [(cell, status(cell, options.workdir, store)) for cell in cells]
    for model in study.models:
        info = model_info(model)
        console.print(f"model {model.name}: family {info.family}, {info.layers or '?'} layers, hidden {info.hidden or '?'} "
                      f"(from the {info.source})", highlight=False)
    table = Table(title=f"study {study.spec.name}" + (f", shard {options.shard[0]}/{options.shard[1]}" if options.shard else ""))
    table.add_column("#", justify="right")
    table.add_column("run", no_wrap=True)
    for column in ("what", "estimated cost", "status"):
        table.add_column(column)
    for i, (cell, state) in enumerate(listed, 1):
        table.add_row(str(i), cell.run, cell.what, cell.cost, state)
    console.print(table)
    train_work = sum(c.work for c, _ in listed if c.kind == "train")
    eval_work = sum(c.work for c, _ in listed if c.kind != "train")
    done = sum(1 for _, s in listed if s == "done")
    console.print(f"{len(listed)} cells ({sum(c.kind == 'train' for c, _ in listed)} training runs), {done} done; estimated work: "
                  f"{train_work:,} training sequence passes (forward+backward = 3), {eval_work:,} scoring forward passes; "
                  f"work folder {options.workdir}, store {options.store}", highlight=False)
    try:
        _preflight(study, cells)
    except InputError as exc:
        from rich.markup import escape

        console.print(f"[yellow]note:[/] {escape(str(exc))}", highlight=False)
    return listed


def merge_stores(output: str | Path, inputs: list[str | Path], console: Console | None = None) -> int:
    """Copy every row of the input stores into ``output``; returns the rows now in it.

    The same row (same run, checkpoint, analysis, variant, layer, role, metric, settings) from
    two stores becomes one; if their values differ, the last store's wins and a warning says so.
    """
    import sqlite3
    from contextlib import closing

    if not inputs:
        raise InputError("study merge: name at least one store to merge")
    seen: dict[tuple, float] = {}
    conflicts = 0
    rows = []
    for path in inputs:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"study merge: {path}: no such store")
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                conn.row_factory = sqlite3.Row
                found = [dict(r) for r in conn.execute("SELECT * FROM results ORDER BY rowid")]
        except sqlite3.Error as exc:
            raise InputError(f"study merge: {path}: not a results store ({exc})") from None
        for row in found:
            key = tuple(row[k] for k in ("run", "checkpoint", "analysis", "variant", "layer", "role", "metric", "config_hash"))
            if key in seen and seen[key] != row["value"]:
                conflicts += 1
            seen[key] = row["value"]
        rows += found
    out = Store(output)
    out.append(rows)
    total = len(out.rows())
    if console is not None:
        console.print(f"merged {len(inputs)} store(s), {len(rows)} rows -> {total} rows in {output}"
                      + (f"; [yellow]{conflicts} rows had different values in different stores[/]" if conflicts else ""), highlight=False)
    return total
