"""The study's plan: its grid expanded into cells, with cost estimates, shards and status.

Nothing here loads weights or touches the network: model sizes come from local configs or
built-in tables (:func:`model_info`), costs are estimates from the settings, and a cell's
status is read from its run folder and the results store only. The cells are run by
:mod:`relevance_lens.study.run`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from relevance_lens.data.faq import load_faq
from relevance_lens.dissect.ablate import build_variants
from relevance_lens.dissect.registry import ANALYSES, AblateSettings, CheckpointsSettings
from relevance_lens.errors import InputError
from relevance_lens.model.backbone import ModelInfo, model_info
from relevance_lens.model.lora import LoraSettings
from relevance_lens.model.roles import ARCHITECTURES, resolve_roles
from relevance_lens.store import Store, config_hash
from relevance_lens.study.search import choice, resolve
from relevance_lens.study.spec import ALL_CHECKPOINTS, EvalSpec, ModelSpec, Study
from relevance_lens.train.config import TrainConfig
from relevance_lens.train.rundir import FINAL, checkpoint_name, complete_checkpoints, step_of, train_done

RUNS = "runs"  # WORKDIR/runs/<run>: the study's run folders


# ---------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One unit of work: a training run, one analysis of one run on one eval set, or a recipe
    search's choice (kind ``search``).

    ``config`` holds everything the cell's result depends on; the id is its hash.
    ``unit`` is the id of the run's training cell, or of the search (what shards are assigned by);
    ``needs`` the runs that must be trained before this cell runs. A cell whose config has
    ``after_choice`` runs on the run a search chose (:func:`relevance_lens.study.search.resolve`).
    """

    kind: str
    run: str
    config: dict = field(compare=False)
    unit: str = ""
    needs: tuple[str, ...] = ()
    cost: str = field(default="", compare=False)
    work: int = field(default=0, compare=False)  # forward-pass sequences, for totals
    flops: float | None = field(default=0.0, compare=False)  # estimated matmul FLOPs; None: model size unknown

    @property
    def id(self) -> str:
        """The hash of the cell's kind and config: what the store's marker rows are keyed by."""
        return config_hash({"kind": self.kind, **self.config})

    @property
    def what(self) -> str:
        """A short description for listings: ``train`` or ``<analysis> on <eval set>``."""
        if self.kind == "train":
            return "train"
        ev = self.config.get("eval")
        if self.kind == "search":
            return f"choose by {self.config['recipe']['metric']} on {ev['name']}"
        if self.config.get("final_only"):
            return f"test once on {ev['name']} (chosen run, final)"
        text = self.config["analysis"] + (f" on {ev['name']}" if ev else "")
        text += f" at {self.config['checkpoint']}" if self.config.get("checkpoint") else ""
        return text + (" (chosen run)" if self.config.get("after_choice") else "")


def eval_config(name: str, ev: EvalSpec) -> dict[str, Any]:
    """An eval set as a cell's config holds it: its name and settings; a setting left at None that
    postdates stored results is left out, so those results keep their hash."""
    config = {"name": name, **asdict(ev)}
    if config["binary_relevance_level"] is None:
        del config["binary_relevance_level"]
    return config


def _slug(targets: str) -> str:
    return targets.replace(",", "+").replace(" ", "")


def expand(study: Study) -> list[Cell]:
    """Every cell of the study, in run order (each run's training, then its analyses)."""
    cells: list[Cell] = []
    weights = study.analyses.get("weights")
    if weights is not None and weights.vs_rank is not None and weights.vs_rank not in study.spec.ranks:
        raise InputError(
            f"{study.path} [analyses.weights]: vs_rank {weights.vs_rank} is not one of the study's ranks "
            f"{study.spec.ranks}"
        )
    infos = {m.name: model_info(m.name, m.family) for m in study.models}
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
                    stem = f"{model.short()}-r{rank}-{_slug(targets)}-s{seed}"
                    if study.search is not None:
                        cells += _search_cells(study, model, info, values, stem, base_run, eval_sizes)
                        continue
                    cell = _train_cell(study, model, info, values, stem)
                    vs = None
                    if weights is not None and weights.vs_rank is not None and weights.vs_rank != rank:
                        other = {
                            **study.train,
                            "model": model.name,
                            "rank": weights.vs_rank,
                            "targets": targets,
                            "seed": seed,
                        }
                        vs = _run_name(
                            f"{model.short()}-r{weights.vs_rank}-{_slug(targets)}-s{seed}", _train_values(other)
                        )
                    cells += [cell] + _analysis_cells(study, cell, info, base_run, vs, eval_sizes)
    _check_unique(cells)
    return cells


def _train_values(values: dict[str, Any]) -> dict[str, Any]:
    """The full, validated training config of a run (``output`` is set when it runs)."""
    try:
        config = TrainConfig(**values)
        config.eval_split = None  # the study evaluates through its [evals]
        config.validate()
    except TypeError as exc:  # a setting of the wrong type, e.g. max_steps = "80"
        raise InputError(f"training settings {values}: {exc}") from None
    resolved = asdict(config)
    del resolved["output"]
    if resolved["dataset"] is None:  # a setting newer than stored runs: left out unset, so their names stay
        del resolved["dataset"]
    return resolved


def _run_name(stem: str, train_config: dict) -> str:
    return f"{stem}-{config_hash(train_config)[:6]}"


def _train_cell(study: Study, model: ModelSpec, info: ModelInfo, values: dict, stem: str) -> Cell:
    where = f"{study.path}: model {model.name}, rank {values.get('rank', '-')}, targets {values['targets']!r}"
    try:
        config = _train_values(values)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    arch = ARCHITECTURES[info.family]
    settings = LoraSettings(
        rank=config["rank"],
        alpha=config["alpha"],
        dropout=config["lora_dropout"],
        targets=config["targets"],
        layers=config["layers"],
    )
    try:
        roles = settings.validate(arch, info.layers if info.layers is not None else 1 << 30)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    if roles and info.hidden is not None and config["rank"] > info.hidden:
        raise InputError(
            f"{where}: rank {config['rank']} is impossible for hidden size {info.hidden}; expected at most "
            f"{info.hidden}"
        )
    name = _run_name(stem, config)
    unit = config_hash({"kind": "train", "train": config})
    seqs = config["queries_per_device"] * config["grad_accum"] * config["group_size"]
    passes = 3 if roles else 1  # forward + backward through the model, or only the head's
    work = config["max_steps"] * seqs * passes
    cost = f"{config['max_steps']} steps x {seqs} seq x <={config['max_length']} tok" + (
        "" if roles else " (head only)"
    )
    # LoRA: the forward, then the input gradients through the frozen weights (as much again; no
    # weight gradients for them), a third forward where checkpointing recomputes it; head only: the forward.
    factor = (3 if config["gradient_checkpointing"] else 2) if roles else 1
    flops = _flops(info, config["max_steps"] * seqs, config["max_length"], factor)
    return Cell("train", name, {"train": config}, unit=unit, needs=(), cost=cost, work=work, flops=flops)


def _analysis_cells(
    study: Study, run: Cell, info: ModelInfo, baseline: str | None, vs: str | None, eval_sizes: dict[str, int | None]
) -> list[Cell]:
    """The analyses of one run: checkpoints and lens for every run, ablate and weights for LoRA runs."""
    head_only = run.config["train"]["targets"] == "none"
    unit = run.unit
    cells = []
    for name, spec in study.analyses.items():
        if head_only and name in ("ablate", "weights", "heads"):
            continue
        settings = asdict(spec.settings)
        needs = [run.run] + ([baseline] if name == "checkpoints" and baseline and not head_only else [])
        if name == "weights":
            other = vs if spec.vs_rank is not None else None
            config = {"analysis": name, "run": run.run, "eval": None, "settings": settings, "vs": other}
            cells.append(
                Cell(
                    "analyze",
                    run.run,
                    config,
                    unit,
                    tuple(needs + ([other] if other else [])),
                    "reads adapters (no forward pass)",
                    0,
                )
            )
            continue
        checkpoints = _checkpoint_names(study, name, spec, run) if ANALYSES[name].per_checkpoint else [FINAL]
        for ev_name in spec.evals or study.default_evals():
            ev = study.evals[ev_name]
            cost, work = _analysis_cost(name, spec.settings, run, info, ev, eval_sizes[ev_name], head_only)
            flops = _flops(info, work, run.config["train"]["max_length"], 1) if work else None  # 0: unknown
            for checkpoint in checkpoints:
                config = {
                    "analysis": name,
                    "run": run.run,
                    "eval": eval_config(ev_name, ev),
                    "settings": settings,
                    "scoring": study.scoring,
                    "baseline": needs[1] if len(needs) > 1 else None,
                }
                if checkpoint != FINAL:  # left out for final/, so cells (and stored results) keep their ids
                    config["checkpoint"] = checkpoint
                cells.append(Cell("analyze", run.run, config, unit, tuple(needs), cost, work, flops))
    return cells


def saved_steps(train: dict[str, Any]) -> list[int]:
    """The steps a run with these training settings saves a ``checkpoint-<step>`` at (as the trainer does)."""
    steps = set(train["save_steps"]) | {train["max_steps"]}
    if train["save_every"]:
        steps |= set(range(train["save_every"], train["max_steps"] + 1, train["save_every"]))
    return sorted(s for s in steps if s <= train["max_steps"])


def _checkpoint_names(study: Study, name: str, spec, run: Cell) -> list[str]:
    """An analysis's ``checkpoints`` for one run, by step then final: ``all`` expanded, and every
    named checkpoint one the run's training settings save."""
    saved = [checkpoint_name(s) for s in saved_steps(run.config["train"])]
    if ALL_CHECKPOINTS in spec.checkpoints:
        return saved + [FINAL]
    missing = [c for c in spec.checkpoints if c != FINAL and c not in saved]
    if missing:
        raise InputError(
            f"{study.path} [analyses.{name}]: checkpoints names {missing[0]!r}, which run {run.run} does not save; "
            f'expected "final", "all" or some of {", ".join(saved)} (its save_steps, save_every and max_steps)'
        )
    return sorted(spec.checkpoints, key=lambda c: (step_of(c) is None, step_of(c) or 0))


def _search_cells(
    study: Study,
    model: ModelSpec,
    info: ModelInfo,
    values: dict,
    stem: str,
    baseline: str | None,
    eval_sizes: dict[str, int | None],
) -> list[Cell]:
    """A recipe search at one grid point: per tried setting its training and dev curve, then the
    choice, then (after the choice, on the chosen run) the test cell and the study's analyses."""
    search = study.search
    settings = search.settings()
    tried = [_train_cell(study, model, info, {**values, **setting}, stem) for setting in settings]
    select = eval_config(search.select_on, study.evals[search.select_on])
    test = eval_config(search.test, study.evals[search.test])
    first = tried[0].config["train"]
    config = {
        "recipe": {"axes": search.axes, "metric": search.metric},
        "tried": [c.run for c in tried],
        "settings": settings,
        "eval": select,
        "test": test,
        "baseline": baseline,
        "scoring": study.scoring,
        **{k: first[k] for k in ("model", "rank", "targets")},
    }
    search_id = f"{stem}-search-{config_hash(config)[:6]}"
    unit = config_hash({"kind": "search", **config})  # a search's cells stay in one shard
    cells: list[Cell] = []
    # The study's own checkpoints settings, so that its analysis of the chosen run is this very cell.
    own = study.analyses.get("checkpoints")
    curve_settings = asdict(own.settings if own is not None else CheckpointsSettings())
    for run in tried:
        run = replace(run, unit=unit)
        curve = {
            "analysis": "checkpoints",
            "run": run.run,
            "eval": select,
            "settings": curve_settings,
            "scoring": study.scoring,
        }
        cost, work = _analysis_cost(
            "checkpoints", None, run, info, study.evals[search.select_on], eval_sizes[search.select_on], False
        )
        needs = (run.run,) + ((baseline,) if baseline else ())
        flops = _flops(info, work, run.config["train"]["max_length"], 1) if work else None
        cells += [run, Cell("analyze", run.run, {**curve, "baseline": baseline}, unit, needs, cost, work, flops)]
    cells.append(
        Cell("search", search_id, config, unit, tuple(c.run for c in tried), f"{len(tried)} settings (no forward pass)")
    )
    pairs = eval_sizes[search.test] and eval_sizes[search.test] * test["depth"]
    test_cell = Cell(
        "analyze",
        search_id,
        {
            "analysis": "checkpoints",
            "run": search_id,
            "eval": test,
            "settings": curve_settings,
            "scoring": study.scoring,
            "baseline": None,
            "final_only": True,
        },
        unit,
        (search_id,),
        f"1 pass x {pairs or '?'} pairs",
        pairs or 0,
        _flops(info, pairs, max(c.config["train"]["max_length"] for c in tried), 1) if pairs else None,
    )
    after = [test_cell] + _analysis_cells(
        study, replace(tried[0], run=search_id, unit=unit), info, baseline, None, eval_sizes
    )
    return cells + [replace(c, config={**c.config, "after_choice": search_id}) for c in after]


def _check_unique(cells: list[Cell]) -> None:
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.id in seen:
            raise InputError(
                f"the study names the same {cell.what} of {cell.run} twice; remove the repeated grid value"
            )
        seen[cell.id] = cell


# ---------------------------------------------------------------- cost estimates (no weights)

#: Judged queries of the ir_datasets eval sets the paper uses (for dry-run estimates).
IRDS_QUERIES = {
    "msmarco-passage/trec-dl-2019": 43,
    "msmarco-passage/trec-dl-2019/judged": 43,
    "msmarco-passage/trec-dl-2020": 54,
    "msmarco-passage/trec-dl-2020/judged": 54,
    "msmarco-passage/dev/small": 6980,
}


def _eval_queries(ev: EvalSpec) -> int | None:
    """Judged queries an eval set will score, where that is known without loading models."""
    count: int | None = None
    if ev.split:
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


@dataclass(frozen=True)
class GpuRate:
    """The GPU a dry run's GPU-hours assume: ``flops / (tflops · utilisation)``."""

    tflops: float = field(
        default=989.0, metadata={"help": "Peak dense bf16 TFLOP/s of one GPU (H100 and H200 SXM: 989)."}
    )
    utilisation: float = field(
        default=0.4,
        metadata={"help": "Fraction of that peak the work reaches (MFU; LoRA on a 7B model: about 0.3-0.5)."},
    )

    def __post_init__(self) -> None:
        if self.tflops <= 0:
            raise InputError(f"--gpu-tflops {self.tflops}: expected a positive rate, e.g. 989 for an H100")
        if not 0 < self.utilisation <= 1:
            raise InputError(f"--mfu {self.utilisation}: expected a fraction in (0, 1], e.g. 0.4")

    def hours(self, flops: float) -> float:
        return flops / (self.tflops * 1e12 * self.utilisation) / 3600


def _flops(info: ModelInfo, sequences: int, length: int, factor: int) -> float | None:
    """Matmul FLOPs of ``factor`` forwards of ``sequences`` sequences of ``length`` tokens (an upper
    bound: every sequence counted at the full length): per token ``2·N`` for the blocks' weights
    plus ``2·layers·hidden·L`` for causal attention (QKᵀ and AV; heads x head_dim taken as hidden)."""
    if info.block_params is None or info.layers is None or info.hidden is None:
        return None
    per_token = 2 * info.block_params + 2 * info.layers * info.hidden * length
    return float(factor) * sequences * length * per_token


def _analysis_cost(
    name: str, spec, run: Cell, info: ModelInfo, ev: EvalSpec, queries: int | None, head_only: bool
) -> tuple[str, int]:
    pairs = None if queries is None else queries * ev.depth
    train = run.config["train"]
    if name == "checkpoints":
        passes = len(saved_steps(train)) + 1 + (0 if head_only else 1)  # + final, + baseline
    elif name == "ablate":
        passes = sum(len(_variants(s, spec, train, info)) + 2 for s in spec.sweeps) if info.layers else None
    elif name == "patch":  # per pair: source + target, then each (component, position) batch's rows, one per layer
        models = 1 if head_only else 2 + len(set(spec.ablated))
        if queries is None or not info.layers:
            return "? sequence forwards", 0
        per_pair = models * (2 + len(spec.components) * len(spec.positions) * info.layers)
        n = min(spec.pairs, queries)
        return f"{per_pair} sequence forwards x {n} pairs (at most)", per_pair * n
    elif name in ("heads", "attribute"):  # per head unit / IG step: ModelInfo has no head count, so left open
        passes = None
    else:  # lens
        passes = 1 + (1 if spec.adapter_off and not head_only else 0)
    if pairs is None or passes is None:
        return f"{passes or '?'} pass(es) x ? pairs", 0
    return (
        f"{passes} pass{'es' if passes > 1 else ''} x {pairs} pairs{' (at most)' if name == 'ablate' else ''}",
        passes * pairs,
    )


def _variants(sweep: str, spec: AblateSettings, train: dict, info: ModelInfo) -> list:
    roles = resolve_roles(train["targets"], ARCHITECTURES[info.family])
    layers = train["layers"] if train["layers"] is not None else range(info.layers)
    return build_variants(
        sweep,
        frozenset((l, r) for l in layers for r in roles),
        info.layers,
        window=spec.window,
        stride=spec.window_stride,
    )


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


def _unit(cell: Cell) -> str:
    return cell.unit or cell.id


def assign_shards(cells: list[Cell], n: int) -> dict[str, int]:
    """Each unit (a run with its analyses, or a whole search) to one of ``n`` shards.

    Balanced: every shard gets ``floor(U/n)`` or ``ceil(U/n)`` of the ``U`` units, and within
    that, units go largest estimated cost first (the cells' ``work``) to the shard with the least
    cost so far (LPT scheduling), so no Slurm array task idles while another carries the grid.
    Stable: a function of the grid alone (units ordered by cost, then id; ties to the lower
    shard), so every shard's process, in any order, computes the same assignment.
    """
    cost: dict[str, int] = {}
    for cell in cells:
        cost[_unit(cell)] = cost.get(_unit(cell), 0) + cell.work
    units = sorted(cost, key=lambda u: (-cost[u], u))
    quota = [len(units) // n + (1 if i < len(units) % n else 0) for i in range(n)]
    load, count, shard_of_unit = [0] * n, [0] * n, {}
    for unit in units:
        # Among shards with room, the least loaded, then the one with fewest units, then the lowest.
        i = min((i for i in range(n) if count[i] < quota[i]), key=lambda i: (load[i], count[i], i))
        shard_of_unit[unit] = i
        load[i] += cost[unit]
        count[i] += 1
    return shard_of_unit


def shard_of(cell: Cell, n: int, cells: list[Cell]) -> int:
    """The shard (of ``n``) that owns ``cell`` in the grid ``cells`` (:func:`assign_shards`)."""
    return assign_shards(cells, n)[_unit(cell)]


def select(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """This shard's cells, plus the training cells of runs they need that other shards own."""
    if shard is None:
        return list(cells)
    i, n = shard
    owner = assign_shards(cells, n)
    mine = {c.id for c in cells if owner[_unit(c)] == i}
    needed = {r for c in cells if c.id in mine for r in c.needs}
    return [c for c in cells if c.id in mine or (c.kind == "train" and c.run in needed)]


#: Metric of the rows holding a cell's measured wall seconds (analysis ``study``), and the variant of a
#: training cell's (an analysis cell's is its :func:`marker`).
SECONDS = "seconds"
TRAIN_TIMING = "train"


def measured_seconds(cell: Cell, store: Store | None) -> float | None:
    """The wall seconds a done cell took when it ran whole in one process (the newest such
    measure), or None: not done, run in parts (resumed), or done before timings were stored."""
    if store is None or cell.kind == "search":
        return None
    variant = TRAIN_TIMING if cell.kind == "train" else marker(cell)
    want = config_hash(cell.config)
    measures = [
        (config.get("started", ""), r["value"])
        for r in store.rows(run=cell.run, analysis="study", variant=variant, metric=SECONDS)
        if config_hash((config := json.loads(r["config_json"])).get("cell")) == want
    ]
    # The latest start; of two in one second, the row stored last.
    return max(reversed(measures), key=lambda m: m[0])[1] if measures else None


def marker(cell: Cell) -> str:
    ev, checkpoint = cell.config.get("eval"), cell.config.get("checkpoint")
    return cell.config["analysis"] + (f":{ev['name']}" if ev else "") + (f"@{checkpoint}" if checkpoint else "")


def status(cell: Cell, workdir: Path, store: Store | None) -> str:
    """``done``, ``partial (...)`` or ``pending``: from the run folder and the store only."""
    if cell.config.get("after_choice"):
        resolved = resolve(cell, store)
        return "waits for the choice" if resolved is None else status(resolved, workdir, store)
    if cell.kind == "search":
        return "done" if choice(store, cell.run) is not None else "pending"
    if cell.kind == "train":
        run_dir = workdir / RUNS / cell.run
        if train_done(run_dir):
            return "done" if store is None or store.has(cell.run, "train") else "trained (rows pending)"
        # A corrupted checkpoint is not an error here: training's --resume falls back past it and says so.
        found = complete_checkpoints(run_dir, on_corrupt=lambda problem: None) if run_dir.is_dir() else []
        return f"partial (checkpoint-{found[-1][0]})" if found else "pending"
    if store is None:
        return "pending"
    if store.has(cell.run, "study", variant=marker(cell), config=cell.config):
        return "done"
    analysis = cell.config["analysis"]
    names = [f"ablate:{s}" for s in cell.config["settings"]["sweeps"]] if analysis == "ablate" else [analysis]
    checkpoint = cell.config.get("checkpoint")  # None (final/'s cells): any checkpoint's rows, as before
    return "partial" if any(store.has(cell.run, name, checkpoint=checkpoint) for name in names) else "pending"
