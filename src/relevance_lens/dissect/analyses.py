"""The analyses behind ``relevance-lens analyze``: each scores or reads adapters, appends tidy
rows to the results store, prints a table and returns the rows.

* :func:`analyze_checkpoints`: every ``checkpoint-<step>`` of a run and ``final``, beside BM25
  and a head-only baseline run (the study's "before" point).
* :func:`analyze_ablate`: named ablation sweeps over (layer, role) parts of ΔW.
* :func:`analyze_weights`: ΔW norms and spectra per layer x role; subspace similarity to another
  adapter, or between a run's checkpoints and its final adapter.
* :func:`analyze_lens`: the score-head lens (and optional probes) per layer.

Reruns skip what the store already holds for the same run, checkpoint, analysis and settings
(``force=True`` recomputes and replaces).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from rich.console import Console
from rich.table import Table

from relevance_lens.dissect.ablate import build_variants
from relevance_lens.dissect.ablate import sweeps as run_sweeps
from relevance_lens.dissect.evalset import EvalSet, encode_evalset, ir_metrics, mean
from relevance_lens.dissect.lens import lens_curve
from relevance_lens.dissect.settings import DEFAULT_METRICS, LensConfig, SweepConfig
from relevance_lens.dissect.switch import lora_modules, lora_parts, merge_blocker, merge_fits, merged_weight, switch_off
from relevance_lens.dissect.weights import compare, load_adapter_weights, role_stats
from relevance_lens.errors import InputError
from relevance_lens.evaluate.stats import paired_randomization
from relevance_lens.model.compile import can_compile, compile_blocks
from relevance_lens.model.reranker import CONFIG_FILE, HEAD_FILE, Reranker, read_saved_config
from relevance_lens.model.roles import ROLES
from relevance_lens.score.batching import run_from_scores
from relevance_lens.score.config import ScoreConfig, load_for_scoring, prepare
from relevance_lens.score.paths import calibration_key, choose_compile, lookup
from relevance_lens.score.scorer import PlainScorer
from relevance_lens.store import Store, config_hash, normalize
from relevance_lens.train.rundir import FINAL, RUN_FILE, is_run_member, run_checkpoints, step_of

DEFAULT_STORE = Path("runs/results.sqlite")


# ---------------------------------------------------------------- what an adapter folder is


@dataclass
class AdapterInfo:
    """Identity of an adapter folder for result rows."""

    folder: Path
    run: str
    checkpoint: str
    model: str | None
    rank: int | None
    targets: str | None

    def row(self, **fields: Any) -> dict[str, Any]:
        base = {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "model": self.model,
            "rank": self.rank,
            "targets": self.targets,
        }
        return {**base, **fields}


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def describe_adapter(folder: str | Path) -> AdapterInfo:
    """Run name, checkpoint name, base model, rank and targets of an adapter folder.

    A folder named ``checkpoint-<step>`` or ``final`` belongs to the run folder above it;
    any other folder is its own run (checkpoint ``final``). Rank and targets come from the
    training record when there is one, else from ``adapter_config.json``.
    """
    folder = Path(folder)
    if not (folder / HEAD_FILE).is_file():
        raise InputError(f"{folder}: no {HEAD_FILE}; expected an adapter folder written by relevance-lens train")
    in_run = is_run_member(folder)
    saved = _json(folder / CONFIG_FILE)
    train: dict = {}
    if in_run:  # the training record: in the checkpoint's reranker.json, else the run's run.json
        train = (saved.get("run") or {}).get("config") or _json(folder.parent / RUN_FILE).get("config", {})
    lora = _json(folder / "adapter_config.json")
    rank = train.get("rank", lora.get("r"))
    targets = train.get("targets") or ("none" if not lora else ",".join(sorted(lora.get("target_modules") or [])))
    return AdapterInfo(
        folder=folder,
        run=folder.parent.name if in_run else folder.name,
        checkpoint=folder.name if in_run else FINAL,
        model=(saved.get("reranker") or {}).get("model") or train.get("model"),
        rank=None if targets == "none" else rank,
        targets=targets,
    )


# ---------------------------------------------------------------- loading models


def load_reranker(adapter: str | Path | None, model: str | None, score: ScoreConfig) -> Reranker:
    """The reranker for an adapter folder (or a bare base model), on the scoring device and dtype."""
    if adapter is None and model is None:
        raise InputError("pass an adapter folder or --model")
    return load_for_scoring(model, adapter, score, reused=True)


@contextmanager
def adapter_loaded(reranker: Reranker, folder: Path, score: ScoreConfig) -> Iterator[Reranker]:
    """Attach a saved adapter + head to a bare reranker; take the LoRA layers out again on exit.

    The base weights are loaded once for all checkpoints of a run; PEFT's ``unload`` removes
    the LoRA layers without merging, so the next checkpoint starts from the same base.
    """
    reranker.load_adapter(folder)
    prepare(reranker, score)
    try:
        yield reranker
    finally:
        if hasattr(reranker.backbone, "peft_config"):
            reranker.backbone = reranker.backbone.unload()


# ---------------------------------------------------------------- checkpoints


def analyze_checkpoints(
    run_dir: str | Path,
    evalset: EvalSet,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    baseline_run_dir: str | Path | None = None,
    versus: str = "baseline",
    final_only: bool = False,
    store: Store | None = None,
    score: ScoreConfig | None = None,
    force: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Metrics of every checkpoint of a run, with BM25 and a head-only baseline beside them
    (``final_only``: of its last adapter only, as a recipe search's test cell needs).

    Rows: analysis ``checkpoints``; checkpoint ``bm25``, ``checkpoint-<step>``, ``final``
    (the baseline run's rows carry its own run name). ``p_value``: paired randomization test
    of each checkpoint against the baseline's final model when one is given, else against
    BM25 (unadjusted: the checkpoints of one run are not independent hypotheses);
    ``versus="bm25"`` tests against BM25 even with a baseline (the baseline's rows too).
    """
    score = score or ScoreConfig(depth=evalset.depth)
    fns = ir_metrics(evalset, metrics)
    config = {
        **evalset.describe(),
        "dtype": score.dtype,
        "baseline": Path(baseline_run_dir).name if baseline_run_dir is not None else "bm25",
        # Only when not the default, so that results stored before the setting existed keep their hash.
        **({"versus": versus} if versus != "baseline" else {}),
    }
    folders = run_checkpoints(run_dir)[-1:] if final_only else run_checkpoints(run_dir)
    info = [describe_adapter(f) for f in folders]
    bm25 = {m: fn(evalset.first_stage()) for m, fn in fns.items()}
    reference, reference_name = bm25, "bm25"
    rows = [
        info[-1].row(
            checkpoint="bm25",
            model=None,
            rank=None,
            targets=None,
            analysis="checkpoints",
            metric=m,
            value=mean(v),
            n_queries=len(v),
            config_json=config,
        )
        for m, v in bm25.items()
    ]
    todo = [
        i
        for i in info
        if force or store is None or not store.has(i.run, "checkpoints", checkpoint=i.checkpoint, config=config)
    ]
    base_info = describe_adapter(run_checkpoints(baseline_run_dir)[-1]) if baseline_run_dir is not None else None
    paths: dict[str, str] = {}  # run -> how its checkpoints were scored
    if base_info is not None:
        reference_name = f"{base_info.run}/{base_info.checkpoint}"
        done = (
            store is not None
            and not force
            and store.has(base_info.run, "checkpoints", checkpoint=base_info.checkpoint, config=config)
        )
        if (todo and versus == "baseline") or not done:  # its per-query values may be the p-values' reference
            values = _score_folders([base_info], evalset, fns, score, paths)[0]
            rows += _metric_rows(base_info, values, bm25, config)
            reference = values if versus == "baseline" else bm25
        if versus == "bm25":
            reference_name = "bm25"
    for item, values in zip(todo, _score_folders(todo, evalset, fns, score, paths)):
        rows += _metric_rows(item, values, reference, config)
    rows = [normalize(r) for r in rows]
    if store is not None:
        store.append(rows)
        runs = [info[-1].run] + ([base_info.run] if base_info is not None else [])
        rows = [
            r
            for run in runs
            for r in store.rows(run=run, analysis="checkpoints")
            if r["config_hash"] == config_hash(config)
        ]
    _print(console, _checkpoint_table(rows, metrics, reference_name))
    for run, path in paths.items():
        if console is not None:
            console.print(f"{run}: scored on {path}", highlight=False)
    return rows


def _score_folders(
    items: list[AdapterInfo], evalset: EvalSet, fns, score: ScoreConfig, paths: dict[str, str] | None = None
) -> list[dict[str, dict[str, float]]]:
    """Per-query metric values of each adapter folder (base weights loaded once).

    ``paths`` (when given) receives, per run, how its checkpoints were scored (merged or not,
    compiled or eager, and why), for the line under the checkpoints table.
    """
    if not items:
        return []
    # The base model once, with the saved text settings (template, max length) of the run.
    reranker = load_for_scoring(config=score, reranker_config=read_saved_config(items[0].folder), reused=True)
    encoded = encode_evalset(reranker, evalset, score.batch_tokens, score.max_batch)
    out = []
    seen: dict[tuple[str, ...], dict[str, dict[str, float]]] = {}
    keys = [_weights_identity(item.folder) for item in items]
    tokens = len(set(keys)) * sum(len(ids) for ids in encoded.ids)  # what compile=auto weighs
    for item, key in zip(items, keys):
        if item.model != items[0].model:
            raise InputError(
                f"{item.folder}: base model {item.model!r} differs from {items[0].model!r} of the other checkpoints"
            )
        if key not in seen:  # final/ is a copy of the last checkpoint: scored once
            with adapter_loaded(reranker, item.folder, score):
                scores, _ = checkpoint_scores(reranker, encoded, score, compile_tokens=tokens)
                run = run_from_scores(encoded.pairs, scores)
            if paths is not None:
                paths[item.run] = reranker._scoring_path
            seen[key] = {m: fn(run) for m, fn in fns.items()}
        out.append(seen[key])
    return out


def checkpoint_scores(
    reranker: Reranker, encoded, score: ScoreConfig, *, compile_tokens: int = 0
) -> tuple[list[float], bool]:
    """Scores of one loaded checkpoint on pre-encoded pairs, and whether they came from merged weights.

    Merged (``score.fast`` and ``score.merge_lora``, an adapter PEFT can merge, and one more copy of
    the adapted weights fits in memory): each adapted weight is pointed at ``W + ΔW`` (PEFT's
    ``get_delta_weight``, rounded once, as :class:`~relevance_lens.dissect.switch.MergedSwitch`
    does) and the LoRA layers are taken out (PEFT's ``unload``), so the forwards run the plain base
    model: a checkpoint costs what the base costs, not two more small matmuls per LoRA module, and
    every checkpoint of a run runs the same modules, so blocks compiled once (``compile_tokens``:
    the tokens the whole evaluation will score, for ``score.compile="auto"``) serve them all. The
    base weights come back on exit. Scores equal the LoRA path's up to the rounding of ``W + ΔW``
    (tests/test_analyze.py holds them together).
    """
    plain = PlainScorer(reranker)
    usable = (
        score.fast
        and score.merge_lora
        and hasattr(reranker.backbone, "peft_config")
        and merge_blocker(reranker) is None
        and merge_fits(reranker)
    )
    if not usable:
        lora = hasattr(reranker.backbone, "peft_config")
        reranker._scoring_path = "the plain forward, LoRA layers live" if lora else "the plain forward (no LoRA)"
        return plain.score_encoded(encoded), False
    # One module at a time in fp32, kept in the weight's dtype: one more copy of the adapted weights,
    # what merge_fits checked.
    with torch.inference_mode(False), torch.no_grad():
        slots = [
            (module.get_base_layer().weight, merged_weight(module)) for module, _, _ in lora_modules(reranker).values()
        ]
    reranker.backbone = reranker.backbone.unload()
    reranker._scoring_path = f"merged weights, {_compile_for_scoring(reranker, score, compile_tokens)}"
    bases = [weight.data for weight, _ in slots]
    try:
        for weight, merged in slots:
            weight.data = merged
        return plain.score_encoded(encoded), True
    finally:
        for (weight, _), base in zip(slots, bases):
            weight.data = base


def _compile_for_scoring(reranker: Reranker, score: ScoreConfig, tokens: int) -> str:
    """Compile the blocks once (a plain model's: LoRA taken out) when ``score.compile`` says the work pays.

    Returns which blocks the checkpoints run and why, for the line under the checkpoints table.
    """
    if getattr(reranker, "_blocks_compiled", False):
        return reranker._blocks_compiled_why
    if score.compile == "off":
        return "eager blocks (compile=off)"
    why_not = can_compile(reranker.device)
    if why_not:
        return f"eager blocks ({why_not})"
    how = "compile=on"
    if score.compile == "auto":
        key = calibration_key(reranker, reranker.device, reranker.score.weight.dtype)
        choice = choose_compile(lookup(key), tokens)
        if not choice.compile:
            return f"eager blocks (compile=auto: {choice.reason})"
        how = f"compile=auto: {choice.reason}"
    compile_blocks(reranker)
    reranker._blocks_compiled = True
    reranker._blocks_compiled_why = f"compiled blocks ({how})"
    return reranker._blocks_compiled_why


def _weights_identity(folder: Path) -> tuple[str, ...]:
    """What decides the scores (head and adapter tensors, LoRA and text settings): equal folders score equally.

    Tensors, not file bytes: safetensors writes its metadata in no fixed order.
    """
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name in (HEAD_FILE, "adapter_model.safetensors"):
        if (folder / name).is_file():
            for key, tensor in sorted(load_file(folder / name).items()):
                digest.update(key.encode() + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
                digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    lora = folder / "adapter_config.json"
    return (
        digest.hexdigest(),
        lora.read_text() if lora.is_file() else "-",
        json.dumps(vars(read_saved_config(folder) or {}), sort_keys=True, default=str),
    )


def _metric_rows(item: AdapterInfo, values, reference, config) -> list[dict[str, Any]]:
    rows = []
    for m, per_query in values.items():
        qids = sorted(per_query)
        p = paired_randomization([per_query[q] for q in qids], [reference[m][q] for q in qids])
        rows.append(
            item.row(
                analysis="checkpoints",
                metric=m,
                value=mean(per_query),
                n_queries=len(qids),
                p_value=p,
                config_json=config,
            )
        )
    return rows


def _checkpoint_table(rows, metrics, reference_name: str) -> Table:
    table = Table(title=f"checkpoints (p: paired randomization vs {reference_name})")
    for column in ("run", "checkpoint", *metrics, "p"):
        table.add_column(column, justify="left" if column in ("run", "checkpoint") else "right")
    grouped: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        grouped.setdefault((r["run"], r["checkpoint"]), {})[r["metric"]] = r
    order = sorted(
        grouped, key=lambda k: (k[1] != "bm25", k[0], step_of(k[1]) if step_of(k[1]) is not None else 1 << 60)
    )
    for key in order:
        cells = grouped[key]
        p = next((c["p_value"] for c in cells.values() if c.get("p_value") is not None), None)
        table.add_row(
            *key,
            *[f"{cells[m]['value']:.4f}" if m in cells else "-" for m in metrics],
            "-" if p is None else f"{p:.3g}",
        )
    return table


# ---------------------------------------------------------------- ablations


def analyze_ablate(
    adapter_dir: str | Path,
    evalset: EvalSet,
    sweeps: Sequence[str] = ("drop-layer",),
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    window: int = 3,
    window_stride: int = 1,
    sweep_config=None,
    store: Store | None = None,
    score: ScoreConfig | None = None,
    force: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Run named ablation sweeps (``drop-layer``, ``roles``...) on one adapter.

    Rows: analysis ``ablate:<sweep>``; variant ``full``/``base`` (references) or the variant
    name, with ``layer``/``role`` when the variant is about one; per metric three rows: the
    value (``p_value`` vs full), ``<metric> Δfull`` and ``<metric> Δbase`` (their Holm-adjusted
    p-values); plus ``work_saved``: the fraction of layer-token forward work that the cached
    restarts save this sweep, as if it ran alone. The pending sweeps of one call run in one pass
    (one full and one base forward per batch serve them all); its table title says what that saved.
    """
    score = score or ScoreConfig(depth=evalset.depth)
    sweep_config = sweep_config or SweepConfig()
    info = describe_adapter(adapter_dir)
    fns = ir_metrics(evalset, metrics)
    rows: list[dict[str, Any]] = []
    pending: dict[str, dict[str, Any]] = {}  # sweep -> its config, for the sweeps not in the store yet
    for name in sweeps:
        config = {
            **evalset.describe(),
            "dtype": score.dtype,
            "sweep": name,
            "window": window if name == "window" else None,
            "window_stride": window_stride if name == "window" and window_stride != 1 else None,
            "permutations": sweep_config.permutations,
            "seed": sweep_config.seed,
        }
        analysis = f"ablate:{name}"
        if store is not None and not force and store.has(info.run, analysis, checkpoint=info.checkpoint, config=config):
            rows += [
                r
                for r in store.rows(run=info.run, checkpoint=info.checkpoint, analysis=analysis)
                if r["config_hash"] == config_hash(config)
            ]
            continue
        pending[name] = config
    if not pending:
        return rows
    reranker = load_reranker(adapter_dir, None, score)
    encoded = encode_evalset(reranker, evalset, score.batch_tokens, score.max_batch)
    n_layers = len(reranker.base_model.get_submodule(reranker.architecture.layers))
    parts = lora_parts(reranker)
    named = {name: build_variants(name, parts, n_layers, window=window, stride=window_stride) for name in pending}
    # One pass for all pending sweeps: the full and base forwards are shared, not repeated per sweep.
    for result in run_sweeps(reranker, named, encoded, fns, sweep_config):
        new = [normalize(r) for r in _ablate_rows(info, f"ablate:{result.name}", result, pending[result.name])]
        if store is not None:
            store.append(new)
        rows += new
        _print(console, _ablate_table(result, list(metrics)))
    return rows


def _ablate_rows(info: AdapterInfo, analysis: str, result, config) -> list[dict[str, Any]]:
    row = lambda **kw: info.row(analysis=analysis, n_queries=result.n_queries, config_json=config, **kw)  # noqa: E731
    rows = [
        row(variant=ref, metric=m, value=v)
        for ref, values in (("full", result.full), ("base", result.base))
        for m, v in values.items()
    ]
    for v in result.variants:
        for m in v.metrics:
            common = dict(variant=v.name, layer=v.layer, role=v.role)
            rows.append(row(**common, metric=m, value=v.metrics[m], p_value=v.p_full[m]))
            rows.append(row(**common, metric=f"{m} Δfull", value=v.delta_full[m], p_value=v.p_full[m]))
            rows.append(row(**common, metric=f"{m} Δbase", value=v.delta_base[m], p_value=v.p_base[m]))
    rows.append(row(metric="work_saved", value=result.work.saved))
    return rows


def _shared_pass(result) -> str:
    """What the pass this sweep shared with others cost (its own figures are as if it ran alone)."""
    if not result.shared_with or result.pass_work is None:
        return ""
    w = result.pass_work
    return f"; one pass with {', '.join(result.shared_with)}: {w.computed:,} of {w.naive:,} (saved {w.saved:.0%})"


def _ablate_table(result, metrics: list[str]) -> Table:
    table = Table(
        title=f"ablate {result.name}: {result.n_queries} queries, {result.n_parts} parts; "
        f"forward work {result.work.computed:,} of {result.work.naive:,} layer-tokens (saved {result.work.saved:.0%})"
        f"{_shared_pass(result)}"
        f"{'; merged weights' if result.work.merged else ''}"
    )
    table.add_column("variant")
    table.add_column("parts", justify="right")
    for m in metrics:
        for column in (m, "Δfull", "p", "Δbase", "p"):
            table.add_column(column, justify="right")
    table.add_row("full", str(result.n_parts), *[c for m in metrics for c in (f"{result.full[m]:.4f}", "", "", "", "")])
    table.add_row("base", "0", *[c for m in metrics for c in (f"{result.base[m]:.4f}", "", "", "", "")])
    for v in result.variants:
        cells = [
            c
            for m in metrics
            for c in (
                f"{v.metrics[m]:.4f}",
                f"{v.delta_full[m]:+.4f}",
                f"{v.p_full[m]:.3g}",
                f"{v.delta_base[m]:+.4f}",
                f"{v.p_base[m]:.3g}",
            )
        ]
        table.add_row(v.name, str(v.n_parts), *cells)
    return table


# ---------------------------------------------------------------- weights


def analyze_weights(
    adapter_dir: str | Path,
    *,
    other: str | Path | None = None,
    side: str = "left",
    store: Store | None = None,
    force: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """ΔW statistics per layer x role; subspace similarity to ``other`` or across a run's checkpoints.

    ``adapter_dir`` may be an adapter folder or a run folder (then every checkpoint is analysed
    and compared with ``final``). Rows: analysis ``weights`` (metrics ``frobenius``,
    ``effective_rank``, ``numerical_rank``, ``sv1``...) and ``subspace`` (``phi@1,1``,
    ``phi@k,k``, ``phi_mean``; variant = the adapter compared with, ``run/checkpoint``).
    """
    adapter_dir = Path(adapter_dir)
    is_run = not (adapter_dir / HEAD_FILE).is_file()
    folders = run_checkpoints(adapter_dir) if is_run else [adapter_dir]
    rows: list[dict[str, Any]] = []
    loaded = {}

    def weights_of(folder: Path):
        if folder not in loaded:
            loaded[folder] = load_adapter_weights(folder)
        return loaded[folder]

    config = {"side": side}
    for folder in folders:
        info = describe_adapter(folder)
        if info.targets == "none":
            continue
        if store is None or force or not store.has(info.run, "weights", checkpoint=info.checkpoint, config=config):
            rows += [
                info.row(analysis="weights", layer=s.layer, role=s.role, metric=m, value=v, config_json=config)
                for s in role_stats(weights_of(folder))
                for m, v in s.metrics().items()
            ]
    pairs = (
        [(f, folders[-1]) for f in folders[:-1]]
        if is_run
        else ([(adapter_dir, Path(other))] if other is not None else [])
    )
    for first, second in pairs:
        info, against = describe_adapter(first), describe_adapter(second)
        label = f"{against.run}/{against.checkpoint}"
        if (
            store is None
            or force
            or not store.has(info.run, "subspace", checkpoint=info.checkpoint, variant=label, config=config)
        ):
            rows += [
                info.row(
                    analysis="subspace",
                    variant=label,
                    layer=s.layer,
                    role=s.role,
                    metric=m,
                    value=v,
                    config_json=config,
                )
                for s in compare(weights_of(first), weights_of(second), side)
                for m, v in s.metrics().items()
            ]
    rows = [normalize(r) for r in rows]
    if store is not None:
        store.append(rows)
    for table in _weights_tables(rows):
        _print(console, table)
    return rows


def _weights_tables(rows) -> list[Table]:
    """ΔW of the last adapter analysed as a layer x role grid; subspace similarity averaged over parts."""
    tables = []
    stats = [r for r in rows if r["analysis"] == "weights"]
    if stats:
        last = (stats[-1]["run"], stats[-1]["checkpoint"])
        cells = {(r["layer"], r["role"], r["metric"]): r["value"] for r in stats if (r["run"], r["checkpoint"]) == last}
        roles = [role for role in ROLES if any(k[1] == role for k in cells)]
        table = Table(title=f"{last[0]}/{last[1]}: ||ΔW||_F (effective rank) per layer x role")
        table.add_column("layer", justify="right")
        for role in roles:
            table.add_column(role, justify="right")
        for layer in sorted({k[0] for k in cells}):
            table.add_row(
                str(layer),
                *[
                    f"{cells[layer, role, 'frobenius']:.3g} ({cells[layer, role, 'effective_rank']:.1f})"
                    if (layer, role, "frobenius") in cells
                    else "-"
                    for role in roles
                ],
            )
        tables.append(table)
    pairs: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for r in rows:
        if r["analysis"] == "subspace":
            kind = r["metric"] if r["metric"] in ("phi@1,1", "phi_mean") else "phi@k,k"
            pairs.setdefault((r["run"], r["checkpoint"], r["variant"]), {}).setdefault(kind, []).append(r["value"])
    if pairs:
        table = Table(title="subspace similarity phi (Hu et al. 2021), mean over layer x role parts")
        for column in ("adapter", "vs", "phi@1,1", "phi@k,k", "phi_mean"):
            table.add_column(column, justify="left" if column in ("adapter", "vs") else "right")
        for (run, checkpoint, other), values in pairs.items():
            table.add_row(
                f"{run}/{checkpoint}",
                other,
                *[
                    f"{sum(values[k]) / len(values[k]):.3f}" if k in values else "-"
                    for k in ("phi@1,1", "phi@k,k", "phi_mean")
                ],
            )
        tables.append(table)
    return tables


# ---------------------------------------------------------------- lens


def analyze_lens(
    adapter_dir: str | Path | None,
    evalset: EvalSet,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    model: str | None = None,
    adapter_off: bool = False,
    lens_config=None,
    probe_set: EvalSet | None = None,
    store: Store | None = None,
    score: ScoreConfig | None = None,
    force: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Per-layer metric curve of the score-head lens (and of a probe when configured).

    ``adapter_off`` keeps the trained head but switches every LoRA part off: the lens of
    the frozen base model read with the trained head (variant ``head-base``). Rows: analysis
    ``lens``, variant ``head``/``head-base``/``probe-<kind>``, ``layer`` 0..N.
    """
    lens_config = lens_config or LensConfig()
    score = score or ScoreConfig(depth=evalset.depth)
    if adapter_dir is not None:
        info = describe_adapter(adapter_dir)
    else:
        if model is None:
            raise InputError("analyze lens: pass an adapter folder or --model")
        info = AdapterInfo(Path("."), f"base:{model}", FINAL, model, None, "none")
    config = {
        **evalset.describe(),
        "dtype": score.dtype,
        "probe": lens_config.probe,
        "adapter_off": adapter_off,
        "probe_set": probe_set.describe() if probe_set is not None and lens_config.probe != "none" else None,
    }
    head = "head-base" if adapter_off else "head"
    if (
        store is not None
        and not force
        and store.has(info.run, "lens", checkpoint=info.checkpoint, variant=head, config=config)
    ):
        rows = [
            r
            for r in store.rows(run=info.run, checkpoint=info.checkpoint, analysis="lens")
            if r["config_hash"] == config_hash(config)
        ]
        _print(console, _lens_table(rows, list(metrics)))
        return rows
    reranker = load_reranker(adapter_dir, model, score)
    encoded = encode_evalset(reranker, evalset, score.batch_tokens, score.max_batch)
    train = encode_evalset(reranker, probe_set, score.batch_tokens, score.max_batch) if probe_set is not None else None
    with switch_off(reranker, frozenset()) if adapter_off else _nothing():
        result = lens_curve(
            reranker,
            encoded,
            ir_metrics(evalset, metrics),
            lens_config,
            train=train,
            train_qrels=probe_set.qrels if probe_set is not None else None,
        )
    rows = []
    for variant, curve in ((head, result.lens), (f"probe-{result.probe_kind}", result.probe)):
        for layer, values in enumerate(curve or []):
            rows += [
                info.row(
                    analysis="lens",
                    variant=variant,
                    layer=layer,
                    metric=m,
                    value=v,
                    n_queries=result.n_queries,
                    config_json=config,
                )
                for m, v in values.items()
            ]
    rows = [normalize(r) for r in rows]
    if store is not None:
        store.append(rows)
    _print(console, _lens_table(rows, list(metrics)))
    return rows


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _lens_table(rows, metrics: list[str]) -> Table:
    table = Table(title="lens: score head (after the final norm) on each layer's last-token state")
    table.add_column("layer", justify="right")
    variants = sorted({r["variant"] for r in rows})
    for v in variants:
        for m in metrics:
            table.add_column(f"{v} {m}", justify="right")
    cells = {(r["variant"], r["layer"], r["metric"]): r["value"] for r in rows}
    for layer in sorted({r["layer"] for r in rows}):
        table.add_row(
            str(layer),
            *[f"{cells[v, layer, m]:.4f}" if (v, layer, m) in cells else "-" for v in variants for m in metrics],
        )
    return table


def _print(console: Console | None, table: Table) -> None:
    if console is not None:
        console.print(table)
