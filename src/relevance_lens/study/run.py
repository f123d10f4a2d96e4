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

A study with ``[search]`` adds a choice cell per grid point; the cells after it (the test set,
the chosen run's analyses) are resolved to the chosen run when reached (:mod:`relevance_lens.study.search`).

Concurrent: every cell is worked on under a lock (:mod:`relevance_lens.locks`), so processes
sharing a work folder (a second ``study run``, or shards) never do one cell at once; see
:func:`run_study`.

This module runs the cells (the study's public API is :mod:`relevance_lens.study`); the study
file is parsed by :mod:`relevance_lens.study.spec`, and expanded into cells,
cost estimates, shards and status by :mod:`relevance_lens.study.plan`.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from relevance_lens.data.irds import need_ir_datasets
from relevance_lens.dissect.evalset import build_evalset
from relevance_lens.dissect.registry import ANALYSES, Context, Inputs
from relevance_lens.errors import InputError
from relevance_lens.faults import kill_point
from relevance_lens.locks import FileLock, holder, lock_file
from relevance_lens.model.backbone import model_info
from relevance_lens.provenance import machine
from relevance_lens.score.config import ScoreConfig
from relevance_lens.store import Store
from relevance_lens.study.plan import (
    RUNS,
    SECONDS,
    TRAIN_TIMING,
    Cell,
    GpuRate,
    expand,
    marker,
    measured_seconds,
    select,
    status,
)
from relevance_lens.study.search import record_choice, resolve
from relevance_lens.study.spec import Study
from relevance_lens.train.config import TrainConfig
from relevance_lens.train.rundir import FINAL, RUN_FILE, SUMMARY, complete_checkpoints, train_done
from relevance_lens.train.trainer import train

LOCKS = ".locks"  # WORKDIR/.locks/<cell id>.lock: analysis cells' locks (a training cell's is its run folder's)

# ---------------------------------------------------------------- running


@dataclass
class RunOptions:
    """Where a study writes and how it reports."""

    workdir: Path = field(metadata={"help": "Work folder: runs/<run>/ training folders."})
    store: Path = field(metadata={"help": "SQLite results store of this shard."})
    shard: tuple[int, int] | None = field(default=None, metadata={"help": "(i, n): run shard i of n."})
    progress: bool = field(default=True, metadata={"help": "Show training progress bars."})


def default_paths(
    study: Study, workdir: Path | None, store: Path | None, shard: tuple[int, int] | None
) -> tuple[Path, Path]:
    """Work folder ``runs/<study>`` and store ``WORKDIR/results.sqlite`` (one per shard)."""
    workdir = Path(workdir) if workdir is not None else Path("runs") / study.spec.name
    if store is None:
        store = workdir / ("results.sqlite" if shard is None else f"results.shard-{shard[0]}-of-{shard[1]}.sqlite")
    return workdir, Path(store)


def run_study(study: Study, options: RunOptions, console: Console | None = None) -> dict[str, int]:
    """Run this shard's cells, skipping done ones; returns counts of cells: ``cells``, ``skipped``
    (done before), ``ran`` (run here) and ``elsewhere`` (finished by another process meanwhile).

    Each cell runs under its lock: a training cell under its run folder's (the lock
    :func:`~relevance_lens.train.trainer.train` takes), an analysis under ``WORKDIR/.locks/<cell
    id>.lock``. A cell another process holds, or an analysis whose run another process is
    training, is skipped on the first pass; then the skipped cells are reported ("N cells in
    progress in another process: ...") and waited for one by one, and each is checked again
    under its lock: done, or run here (its holder died, or wrote to another store). So a study
    that returns has every cell done, and no cell was ever worked on by two processes at once.
    """
    console = console or Console(stderr=True)
    everything = expand(study)
    cells = select(everything, options.shard)
    _preflight(study, cells)
    store = Store(options.store)
    by_run = {c.run: c for c in everything if c.kind == "train"}
    counts = {"cells": len(cells), "skipped": 0, "ran": 0, "elsewhere": 0}
    started = time.perf_counter()
    later = []
    for index, cell in enumerate(cells, 1):
        cell = resolve(cell, store, required=True)  # after a search's choice: on the chosen run
        head = f"[{index}/{len(cells)}] {cell.what} · {cell.run}"
        if status(cell, options.workdir, store) == "done":
            console.print(f"[dim]{head}: done, skipped[/]", highlight=False)
            counts["skipped"] += 1
            continue
        outcome = _work(cell, head, by_run, options, store, console, started, wait=0)
        if outcome == "busy":
            console.print(f"{head}: in progress in another process, later", highlight=False)
            later.append((index, cell))
        else:
            counts[outcome] += 1
    if later:
        shown = ", ".join(f"{c.what} · {c.run}" for _, c in later)
        console.print(f"{len(later)} cells in progress in another process: {shown}; waiting for them", highlight=False)
        for index, cell in later:
            head = f"[{index}/{len(cells)}] {cell.what} · {cell.run}"
            counts[_work(cell, head, by_run, options, store, console, started, wait=None)] += 1
    elsewhere = f", {counts['elsewhere']} done by another process" if counts["elsewhere"] else ""
    console.print(
        f"study {study.spec.name}: {counts['cells']} cells, {counts['ran']} run now, {counts['skipped']} already done"
        f"{elsewhere} ({time.perf_counter() - started:.0f} s); results in {options.store} "
        f"(relevance-lens report {options.store})",
        highlight=False,
    )
    return counts


def _work(
    cell: Cell,
    head: str,
    by_run: dict[str, Cell],
    options: RunOptions,
    store: Store,
    console: Console,
    started: float,
    wait: float | None,
) -> str:
    """Run one cell under its lock: ``ran``, ``elsewhere`` (found done once locked) or ``busy``
    (its lock, or a needed run's, is held elsewhere and ``wait`` is 0)."""
    run_dir = options.workdir / RUNS / cell.run
    lock = FileLock(lock_file(run_dir) if cell.kind == "train" else options.workdir / LOCKS / f"{cell.id}.lock")
    if not _take(lock, wait, console, head):
        return "busy"
    try:
        state = status(cell, options.workdir, store)  # again: another process may have finished it
        if state == "done":
            console.print(f"[dim]{head}: done by another process[/]", highlight=False)
            return "elsewhere"
        console.rule(f"{head} ({state}; {time.perf_counter() - started:.0f} s elapsed)")
        # A training cell holds its run's lock already; an analysis trains what it needs first.
        for need in (cell.run,) if cell.kind == "train" else cell.needs:
            if not _ensure_trained(by_run[need], options, store, console, wait):
                return "busy"
        if cell.kind == "search":
            record_choice(cell, store, console)
        elif cell.kind != "train":
            # Timed only when the whole cell runs here: a partial one skips the work already stored.
            _analyze(cell, options, store, console, timed=state == "pending")
    finally:
        lock.release()
    gc.collect()
    _free_accelerator()
    return "ran"


def _take(lock: FileLock, wait: float | None, console: Console, what: str) -> bool:
    """Take ``lock`` at once, or (``wait`` not 0) say whom we wait for and wait."""
    if lock.acquire(0):
        return True
    if wait == 0:
        return False
    console.print(f"{what}: waiting for {holder(lock.path)} ...", highlight=False)
    return lock.acquire(wait)


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
            keys = ("tevatron", "corpus") if train.get("tevatron") else ("queries", "qrels", "corpus", "negatives_run")
            missing += [f"{k} {train[k]}" for k in keys if train.get(k) and not Path(train[k]).is_file()]
        if train.get("data") == "dataset":
            need_ir_datasets()
            run = train.get("negatives_run")
            missing += [f"negatives_run {run}"] if run and not Path(run).is_file() else []
        ev = cell.config.get("eval") or {}
        missing += [
            f"eval {ev['name']} {k} {ev[k]}"
            for k in ("queries", "qrels", "corpus", "run")
            if ev.get(k) and not Path(ev[k]).is_file()
        ]
        if ev.get("ir_datasets"):
            need_ir_datasets()
    if missing:
        shown = sorted(set(missing))
        raise InputError(
            f"{study.path}: missing file(s): {'; '.join(shown[:5])}{' ...' if len(shown) > 5 else ''}; fill in "
            f"the paths in the study file"
        )


def _ensure_trained(cell: Cell, options: RunOptions, store: Store, console: Console, wait: float | None) -> bool:
    """Train (or resume) a run unless its folder is complete, and record its rows in the store,
    under the run folder's lock; False if another process holds it and ``wait`` is 0."""
    run_dir = options.workdir / RUNS / cell.run
    lock = FileLock(lock_file(run_dir))
    if not _take(lock, wait, console, f"train · {cell.run}"):
        return False
    try:
        seconds = None
        if not train_done(run_dir):
            # Timed only from scratch: a resumed run's seconds would be a part of its cost.
            fresh = not run_dir.is_dir() or not complete_checkpoints(run_dir, on_corrupt=lambda problem: None)
            config = TrainConfig(**cell.config["train"], output=str(run_dir))
            started = time.perf_counter()
            train(config, resume=True, progress=options.progress)
            seconds = time.perf_counter() - started if fresh else None
        if not store.has(cell.run, "train"):
            timing = [timing_row(cell.run, TRAIN_TIMING, cell.config, seconds)] if seconds is not None else []
            store.append(_train_rows(cell, run_dir) + timing)
    finally:
        lock.release()
    return True


def _train_rows(cell: Cell, run_dir: Path) -> list[dict[str, Any]]:
    """Rows describing a finished run; their config is the run's exact resolved config."""
    record = json.loads((run_dir / RUN_FILE).read_text())
    summary = json.loads((run_dir / SUMMARY).read_text())
    train = cell.config["train"]
    config = {
        "train": train,
        "resolved": record.get("resolved", {}),
        "data_fingerprints": record.get("data_fingerprints", {}),
        "versions": record.get("versions", {}),
        "cell": cell.id,
    }
    losses = [entry["loss"] for entry in summary.get("log", []) if "loss" in entry]
    base = {
        "run": cell.run,
        "model": train["model"],
        "rank": None if train["targets"] == "none" else train["rank"],
        "targets": train["targets"],
        "checkpoint": FINAL,
        "analysis": "train",
        "config_json": config,
    }
    rows = [
        {**base, "metric": "steps", "value": summary["steps"]},
        {**base, "metric": "train_queries", "value": record.get("resolved", {}).get("train_queries", 0)},
    ]
    if losses:
        rows.append({**base, "metric": "loss", "value": losses[-1]})
    return rows


def timing_row(run: str, variant: str, cell_config: dict, seconds: float) -> dict[str, Any]:
    """A cell's wall seconds (analysis ``study``, metric ``seconds``), with the machine it ran on.

    What a study's status shows beside each done cell, and what ``benchmarks/bench_demo.py``
    reads: the cost of a cell measured, not estimated. The config holds the cell's own config
    (``cell``), so :func:`~relevance_lens.study.plan.measured_seconds` finds it, ``machine`` and
    ``started``. Seconds differ between runs by nature: the tests' store comparisons leave these rows out.
    """
    started = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    return {
        "run": run,
        "analysis": "study",
        "variant": variant,
        "metric": SECONDS,
        "value": round(seconds, 3),
        # The start time makes each measure a row of its own: two shards that both trained the
        # head-only baseline keep both timings, and a merge sees no conflict between them.
        "config_json": {"cell": cell_config, "machine": machine(), "started": started.isoformat(timespec="seconds")},
    }


def _analyze(cell: Cell, options: RunOptions, store: Store, console: Console, *, timed: bool = False) -> None:
    """Run one analysis cell through the registry, then write its marker row (and, ``timed``,
    its wall seconds, in the same append)."""
    started = time.perf_counter()
    c = cell.config
    entry = ANALYSES[c["analysis"]]
    run_dir = options.workdir / RUNS / cell.run
    settings = entry.settings(**c["settings"])
    target = run_dir if entry.target == "run" else run_dir / c.get("checkpoint", FINAL)
    ev = c["eval"]
    if ev is None:
        inputs, context = Inputs(target), Context(store=store, console=console)
    else:
        baseline = options.workdir / RUNS / c["baseline"] if c.get("baseline") else None
        inputs = Inputs(
            target, build_evalset(ev), ev["metrics"], baseline=baseline, final_only=c.get("final_only", False)
        )
        context = Context(store, ScoreConfig(depth=ev["depth"], **c["scoring"]), _missing_metrics(cell, store), console)
    entry.run(inputs, settings, context)
    if c.get("vs"):  # weights: the final adapter's subspaces against the other rank's
        entry.run(Inputs(run_dir / FINAL, other=options.workdir / RUNS / c["vs"] / FINAL), settings, context)
    kill_point("study.marker")
    done = {"run": cell.run, "analysis": "study", "variant": marker(cell), "metric": "done", "value": 1.0}
    timing = [timing_row(cell.run, marker(cell), c, time.perf_counter() - started)] if timed else []
    store.append([{**done, "config_json": c}] + timing)


def _missing_metrics(cell: Cell, store: Store) -> bool:
    """Whether stored rows of this analysis and eval set lack one of the cell's metrics.

    The analyses skip work by their own settings, which do not name the metrics: after a
    metric is added to an eval set they would skip it, so the driver forces a recompute.
    """
    ev, analysis = cell.config["eval"], cell.config["analysis"]
    names = [f"ablate:{s}" for s in cell.config["settings"]["sweeps"]] if analysis == "ablate" else [analysis]
    for name in names:
        stored = [
            r
            for r in store.rows(run=cell.run, analysis=name)
            if _same_eval(json.loads(r["config_json"]), ev) and r["checkpoint"] != "bm25"
        ]
        if stored and not set(ev["metrics"]) <= {r["metric"] for r in stored}:
            return True
    return False


def _same_eval(config: dict, ev: dict) -> bool:
    return (
        config.get("eval") == ev["name"]
        and config.get("depth") == ev["depth"]
        and config.get("max_queries") == ev["max_queries"]
    )


# ---------------------------------------------------------------- dry run and merge


def _gpu_hours(flops: float | None, gpu: GpuRate) -> str:
    if flops is None:
        return "?"
    hours = gpu.hours(flops)
    return "-" if flops == 0 else f"{hours:.2g}" if hours < 10 else f"{hours:,.0f}"


def _gpu_summary(pending: list[Cell], gpu: GpuRate) -> str:
    """Total GPU-hours of the cells not done yet, with the assumption it rests on."""
    known = [c.flops for c in pending if c.flops is not None]
    unknown = len(pending) - len(known)
    train = gpu.hours(sum(c.flops for c in pending if c.kind == "train" and c.flops is not None))
    total = gpu.hours(sum(known))
    return (
        f"estimated GPU-hours of the {len(pending)} cells not done: {total:,.3g} ({train:,.3g} training), at "
        f"{gpu.tflops:g} TFLOP/s x {gpu.utilisation:.0%} utilisation (--gpu-tflops, --mfu); matmul FLOPs "
        f"counted at every sequence's full max_length, so an upper bound for short passages"
        + (f"; {unknown} cells of unknown size not counted" if unknown else "")
    )


def dry_run(study: Study, options: RunOptions, console: Console, gpu: GpuRate | None = None) -> list[tuple[Cell, str]]:
    """List this shard's cells with their estimated cost, GPU-hours and status; loads no weights."""
    gpu = gpu or GpuRate()
    cells = select(expand(study), options.shard)
    store = Store(options.store) if options.store.is_file() else None
    listed = [(cell, status(cell, options.workdir, store)) for cell in cells]
    for model in study.models:
        info = model_info(model.name, model.family)
        size = f", {info.block_params / 1e9:.2f} B block weights" if info.block_params else ""
        console.print(
            f"model {model.name}: family {info.family}, {info.layers or '?'} layers, hidden {info.hidden or '?'}"
            f"{size} (from the {info.source})",
            highlight=False,
        )
    table = Table(
        title=f"study {study.spec.name}" + (f", shard {options.shard[0]}/{options.shard[1]}" if options.shard else "")
    )
    table.add_column("#", justify="right")
    table.add_column("run", no_wrap=True)
    for column in ("what", "estimated cost", "GPU-hours", "status", "took"):
        table.add_column(column, justify="right" if column in ("GPU-hours", "took") else "left")
    took = [measured_seconds(cell, store) for cell, _ in listed]
    for i, ((cell, state), seconds) in enumerate(zip(listed, took), 1):
        shown = "-" if seconds is None else f"{seconds:,.0f} s"
        table.add_row(str(i), cell.run, cell.what, cell.cost, _gpu_hours(cell.flops, gpu), state, shown)
    console.print(table)
    train_work = sum(c.work for c, _ in listed if c.kind == "train")
    eval_work = sum(c.work for c, _ in listed if c.kind != "train")
    done = sum(1 for _, s in listed if s == "done")
    console.print(
        f"{len(listed)} cells ({sum(c.kind == 'train' for c, _ in listed)} training runs), {done} done; "
        f"estimated work: "
        f"{train_work:,} training sequence passes (forward+backward = 3), {eval_work:,} scoring forward passes; "
        f"work folder {options.workdir}, store {options.store}",
        highlight=False,
    )
    console.print(_gpu_summary([c for c, s in listed if s != "done"], gpu), highlight=False)
    timed = [seconds for seconds in took if seconds is not None]
    untimed = sum(1 for (c, s), t in zip(listed, took) if s == "done" and t is None and c.kind != "search")
    if timed:
        console.print(
            f"took: {len(timed)} cells timed, {sum(timed) / 60:,.1f} min in all (wall seconds of each cell run whole "
            f"in one process, on the machine its row names; {untimed} done cells untimed: resumed, or run "
            f"before timings were kept)",
            highlight=False,
        )
    try:
        _preflight(study, cells)
    except InputError as exc:
        console.print(f"[yellow]note:[/] {escape(str(exc))}", highlight=False)
    return listed
