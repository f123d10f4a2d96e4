"""One self-contained HTML page from a results store: the study's questions, answered with
plots (PNG embedded as base64, drawn with matplotlib's Agg canvas, no pyplot state) and
tables. No scripts, no external assets: the page opens offline in any browser.

Reports read only results: the store is opened read-only and nothing else is touched. A
section whose rows the store lacks is replaced by a one-line note saying how to fill it.

Significance marks: ``*`` p < 0.05, ``**`` p < 0.01, ``***`` p < 0.001. Ablation p-values
are Holm-adjusted within each sweep by the analysis (as stored); the rank/targets table
Holm-adjusts the stored paired-randomization p-values of each model's final adapters
against its head-only run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import InputError
from .roles import ROLES
from .stats import holm

TARGET_STYLES = {"all": "-", "mha": "--", "mlp": ":"}
MAX_PANELS = 12  # small multiples per figure


# ---------------------------------------------------------------- reading the store


def read_rows(store: str | Path) -> list[dict[str, Any]]:
    """Every row of a results store, opened read-only; config_json parsed into ``config``."""
    path = Path(store)
    if not path.is_file():
        raise InputError(f"report: {path}: no such results store; run relevance-lens study run (or analyze) first")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM results ORDER BY rowid")]
    except sqlite3.Error as exc:
        raise InputError(f"report: {path}: not a relevance-lens results store ({exc})") from None
    parsed: dict[str, dict] = {}
    for row in rows:
        text = row.get("config_json") or "{}"
        if text not in parsed:
            try:
                parsed[text] = json.loads(text)
            except json.JSONDecodeError:
                parsed[text] = {}
        row["config"] = parsed[text]
    return rows


@dataclass(frozen=True)
class RunInfo:
    """What a run was, gathered from all its rows."""

    run: str
    model: str
    rank: int | None
    targets: str
    seed: int | None

    @property
    def head_only(self) -> bool:
        return self.targets == "none"

    @property
    def label(self) -> str:
        return "head only" if self.head_only else f"r{self.rank} {self.targets}"


class Results:
    """Rows grouped the ways the sections need them."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = [r for r in rows if r["analysis"] != "study"]
        self.by_analysis: dict[str, list[dict]] = defaultdict(list)
        for r in self.rows:
            self.by_analysis[r["analysis"]].append(r)
        self.runs = self._runs()

    def _runs(self) -> dict[str, RunInfo]:
        seen: dict[str, dict[str, Any]] = defaultdict(dict)
        for r in self.rows:
            info = seen[r["run"]]
            for key in ("model", "rank", "targets"):
                if r[key] is not None:
                    info.setdefault(key, r[key])
            if r["analysis"] == "train":
                info.setdefault("seed", (r["config"].get("train") or {}).get("seed"))
        return {run: RunInfo(run, _short(i.get("model", "?")), i.get("rank"), i.get("targets") or "?", i.get("seed"))
                for run, i in seen.items()}

    def models(self) -> list[str]:
        return sorted({i.model for i in self.runs.values() if i.model != "?"})

    def get(self, analysis: str) -> list[dict]:
        return self.by_analysis.get(analysis, [])

    def evals(self, rows: Iterable[dict]) -> dict[str, list[dict]]:
        """Rows split by eval set (name, depth, queries), labelled for headings."""
        out: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            out[_eval_label(r["config"])].append(r)
        return dict(sorted(out.items()))


def _short(model: str) -> str:
    return Path(str(model).rstrip("/")).name or str(model)


def _eval_label(config: dict) -> str:
    name = config.get("eval", "?")
    return f"{name} (top {config.get('depth', '?')}, {config.get('n_queries', '?')} queries)"


def _metrics(rows: Iterable[dict]) -> list[str]:
    """Metric names in first-seen order (``nDCG@10 Δfull`` counts as ``nDCG@10``)."""
    seen: list[str] = []
    for r in rows:
        m = r["metric"].split(" ")[0]
        if m != "work_saved" and m not in seen:
            seen.append(m)
    return seen


def _step(checkpoint: str | None) -> int | None:
    if checkpoint and checkpoint.startswith("checkpoint-") and checkpoint[11:].isdigit():
        return int(checkpoint[11:])
    return None


def mark(p: float | None) -> str:
    """Significance stars for a p-value."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


# ---------------------------------------------------------------- drawing


def _figure(panels: int, width: float = 4.2, height: float = 3.0, cols: int = 3):
    from matplotlib.figure import Figure

    cols = max(1, min(cols, panels))
    rows = math.ceil(panels / cols)
    width = max(width, 6.4 / cols) if cols < 3 else width  # one or two panels: use the page
    fig = Figure(figsize=(width * cols, height * rows), dpi=90, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def _img(fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _colors(values: list) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    ordered = sorted(set(values), key=lambda v: (v is None, v))
    n = max(1, len(ordered) - 1)
    return {v: cmap(0.85 * i / n) for i, v in enumerate(ordered)}


def _chunks(items: list, size: int = MAX_PANELS) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _table(header: list[str], body: list[list[Any]], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in body)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return html.escape("-" if value is None else str(value))


def _fmt(value: float | None, p: float | None = None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return (f"{value:+.4f}" if signed else f"{value:.4f}") + mark(p)


# ---------------------------------------------------------------- sections


@dataclass
class Section:
    """A heading and its body, or a note when the store has nothing for it."""

    id: str
    title: str
    body: str | None
    note: str = ""

    def html(self) -> str:
        inner = self.body if self.body else f'<p class="note">{html.escape(self.note)}</p>'
        return f'<section id="{self.id}"><h2>{html.escape(self.title)}</h2>{inner}</section>'


def _lines_by_model(res: Results, rows: list[dict], metric: str, draw: Callable, title: str) -> str:
    models = sorted({res.runs[r["run"]].model for r in rows if r["run"] in res.runs})
    fig, axes = _figure(len(models))
    for ax, model in zip(axes, models):
        draw(ax, model, [r for r in rows if r["run"] in res.runs and res.runs[r["run"]].model == model])
        ax.set_title(model, fontsize=10)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7, loc="best")
    return _img(fig, title)


def _reference_lines(ax, res: Results, rows: list[dict], metric: str, all_rows: list[dict]) -> None:
    """BM25 (grey dashes) and the head-only run's final (black dots) for this eval set."""
    bm25 = [r["value"] for r in all_rows if r["checkpoint"] == "bm25" and r["metric"] == metric]
    if bm25:
        ax.axhline(bm25[0], color="grey", linestyle="--", linewidth=1, label="BM25")
    models = {res.runs[r["run"]].model for r in rows if r["run"] in res.runs}
    base = [r["value"] for r in all_rows if r["checkpoint"] == "final" and r["metric"] == metric
            and r["run"] in res.runs and res.runs[r["run"]].head_only and res.runs[r["run"]].model in models]
    if base:
        ax.axhline(base[0], color="black", linestyle=":", linewidth=1.2, label="head only (before)")


def checkpoint_section(res: Results) -> Section:
    """Metric over training steps per model and run, with BM25 and the head-only run."""
    rows = res.get("checkpoints")
    parts = []
    for ev, ev_rows in res.evals(rows).items():
        for metric in _metrics(ev_rows):
            m_rows = [r for r in ev_rows if r["metric"] == metric]

            def draw(ax, model, mine, m_rows=m_rows, metric=metric):
                runs = sorted({r["run"] for r in mine if not res.runs[r["run"]].head_only}, key=lambda x: (res.runs[x].targets, res.runs[x].rank or 0))
                colors = _colors([res.runs[x].rank for x in runs])
                heads = sorted({r["run"] for r in mine if res.runs[r["run"]].head_only})
                for run in runs + heads:
                    pts = sorted((_step(r["checkpoint"]), r["value"]) for r in mine if r["run"] == run and _step(r["checkpoint"]))
                    info = res.runs[run]
                    style = dict(color="black", linewidth=0.8) if info.head_only else dict(
                        color=colors[info.rank], linestyle=TARGET_STYLES.get(info.targets, "-."))
                    if pts:
                        ax.plot(*zip(*pts), marker="o", markersize=3, label=f"{info.label} s{info.seed}" if info.seed is not None else info.label, **style)
                _reference_lines(ax, res, mine, metric, m_rows)
                _step_axis(ax, {_step(r["checkpoint"]) for r in mine if _step(r["checkpoint"])})

            parts.append(f"<h3>{html.escape(ev)}: {html.escape(metric)}</h3>")
            parts.append(_lines_by_model(res, m_rows, metric, draw, f"checkpoint curves {ev} {metric}"))
            parts.append(_checkpoint_table(res, m_rows, metric))
    return Section("checkpoints", "How ranking quality emerges over training", "".join(parts) or None,
                   "No checkpoint evaluations in this store (analysis 'checkpoints').")


def _step_axis(ax, steps: set[int]) -> None:
    """Log-scaled steps, labelled with the checkpoint steps themselves."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ticks = sorted(steps)
    if len(ticks) > 10:  # keep labels readable: every other one
        ticks = ticks[::2]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training step (log scale)")


def _checkpoint_table(res: Results, rows: list[dict], metric: str) -> str:
    steps = sorted({_step(r["checkpoint"]) for r in rows if _step(r["checkpoint"])})
    runs = sorted({r["run"] for r in rows if r["run"] in res.runs and r["checkpoint"] != "bm25"},
                  key=lambda x: (res.runs[x].model, not res.runs[x].head_only, res.runs[x].targets, res.runs[x].rank or 0))
    cells = {(r["run"], _step(r["checkpoint"])): r for r in rows}
    body = [[res.runs[run].model, res.runs[run].label, run] + [_fmt(cells[run, s]["value"], cells[run, s]["p_value"]) if (run, s) in cells else "-"
                                                               for s in steps] for run in runs]
    return _table(["model", "run", "run folder"] + [f"step {s}" for s in steps], body,
                  f"{metric} per checkpoint; marks: paired randomization p vs the head-only run's final (vs BM25 for the head-only run "
                  "or when the study has none), unadjusted")


def _finals(res: Results, rows: list[dict], metric: str) -> dict[tuple[str, str, int], list[dict]]:
    out: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in rows:
        info = res.runs.get(r["run"])
        if r["metric"] == metric and r["checkpoint"] == "final" and info and not info.head_only and info.rank is not None:
            out[info.model, info.targets, info.rank].append(r)
    return out


def ranks_section(res: Results) -> Section:
    """Final metric against LoRA rank, one line per targets; the table Holm-adjusts per model."""
    parts = []
    for ev, ev_rows in res.evals(res.get("checkpoints")).items():
        for metric in _metrics(ev_rows):
            finals = _finals(res, ev_rows, metric)
            if not finals:
                continue
            m_rows = [r for r in ev_rows if r["metric"] == metric]

            def draw(ax, model, mine, finals=finals, metric=metric, m_rows=m_rows):
                for targets in sorted({k[1] for k in finals if k[0] == model}):
                    pts = sorted((k[2], _mean(v)) for k, v in finals.items() if k[0] == model and k[1] == targets)
                    ax.plot(*zip(*pts), marker="o", linestyle=TARGET_STYLES.get(targets, "-."), label=targets)
                _reference_lines(ax, res, mine, metric, m_rows)
                ax.set_xscale("log", base=2)
                ranks = sorted({k[2] for k in finals})
                ax.set_xticks(ranks, [str(r) for r in ranks])
                ax.set_xlabel("LoRA rank")

            parts.append(f"<h3>{html.escape(ev)}: {html.escape(metric)}</h3>")
            parts.append(_lines_by_model(res, [r for r in m_rows if r["checkpoint"] == "final" or r["checkpoint"] == "bm25"], metric, draw, f"ranks {ev} {metric}"))
            parts.append(_grid_table(finals, metric))
    return Section("ranks", "LoRA rank 1 / 2 / 8 / 32 compared", "".join(parts) or None,
                   "No final-adapter evaluations of LoRA runs in this store (analysis 'checkpoints').")


def _mean(rows: list[dict]) -> float:
    return sum(r["value"] for r in rows) / len(rows)


def _grid_table(finals: dict[tuple[str, str, int], list[dict]], metric: str) -> str:
    ranks = sorted({k[2] for k in finals})
    adjusted: dict[tuple, float] = {}
    for model in {k[0] for k in finals}:
        keys = [k for k in finals if k[0] == model and len(finals[k]) == 1 and finals[k][0]["p_value"] is not None]
        adjusted.update(zip(keys, holm([finals[k][0]["p_value"] for k in keys])))
    body = []
    for model, targets in sorted({(k[0], k[1]) for k in finals}):
        cells = []
        for rank in ranks:
            found = finals.get((model, targets, rank))
            cells.append("-" if not found else _fmt(_mean(found), adjusted.get((model, targets, rank))) + (f" (n={len(found)})" if len(found) > 1 else ""))
        body.append([model, targets] + cells)
    return _table(["model", "targets"] + [f"r{r}" for r in ranks], body,
                  f"final {metric}; marks: Holm-adjusted (per model) paired randomization p vs the head-only run (vs BM25 without one)")


def targets_section(res: Results) -> Section:
    """MHA-only vs MLP-only vs both: grouped bars per rank."""
    parts = []
    for ev, ev_rows in res.evals(res.get("checkpoints")).items():
        for metric in _metrics(ev_rows):
            finals = _finals(res, ev_rows, metric)
            if not finals or len({k[1] for k in finals}) < 2:
                continue
            m_rows = [r for r in ev_rows if r["metric"] == metric]

            def draw(ax, model, mine, finals=finals, metric=metric, m_rows=m_rows):
                targets = sorted({k[1] for k in finals if k[0] == model}, key=lambda t: (t != "mha", t != "mlp", t))
                ranks = sorted({k[2] for k in finals if k[0] == model})
                width = 0.8 / max(1, len(targets))
                for i, t in enumerate(targets):
                    xs = [j + i * width for j, r in enumerate(ranks) if (model, t, r) in finals]
                    ys = [_mean(finals[model, t, r]) for r in ranks if (model, t, r) in finals]
                    ax.bar(xs, ys, width=width, label=t)
                ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(ranks))], [f"r{r}" for r in ranks])
                _reference_lines(ax, res, mine, metric, m_rows)

            parts.append(f"<h3>{html.escape(ev)}: {html.escape(metric)}</h3>")
            parts.append(_lines_by_model(res, [r for r in m_rows if r["checkpoint"] in ("final", "bm25")], metric, draw, f"targets {ev} {metric}"))
    return Section("targets", "MHA-only vs MLP-only vs both", "".join(parts) or None,
                   "Needs final evaluations of runs with at least two different targets (e.g. mha and mlp).")


def _sweep_rows(res: Results, sweeps: Iterable[str]) -> dict[str, list[dict]]:
    return {s: res.get(f"ablate:{s}") for s in sweeps if res.get(f"ablate:{s}")}


def _delta_metric(sweep: str, metric: str) -> tuple[str, str]:
    """Dropping a part: change from the full adapter; keeping a part alone: change from the base."""
    if sweep.startswith("drop"):
        return f"{metric} Δfull", "change when the part is removed (vs full adapter)"
    return f"{metric} Δbase", "change when only this part is kept (vs no adapter)"


def heatmap_section(res: Results) -> Section:
    """Layer x role heat maps of the metric change from per-(layer, role) ablations."""
    parts = []
    for sweep, rows in _sweep_rows(res, ("drop-layer-role", "keep-layer-role")).items():
        for ev, ev_rows in res.evals(rows).items():
            metric = (_metrics(ev_rows) or ["?"])[0]
            name, meaning = _delta_metric(sweep, metric)
            cells = [r for r in ev_rows if r["metric"] == name and r["layer"] is not None and r["role"]]
            runs = sorted({r["run"] for r in cells})
            if not runs:
                continue
            parts.append(f"<h3>{html.escape(sweep)} on {html.escape(ev)}: {html.escape(name)}</h3><p>{html.escape(meaning)}; * Holm p &lt; 0.05.</p>")
            for chunk in _chunks(runs):
                parts.append(_heatmaps(res, chunk, cells, name, diverging=True))
    return Section("layer-heatmap", "Which layers and projections carry relevance (ablation heat map)", "".join(parts) or None,
                   "No per-(layer, role) ablations in this store: add drop-layer-role (or keep-layer-role) to [analyses.ablate] sweeps.")


def _heatmaps(res: Results, runs: list[str], cells: list[dict], label: str, diverging: bool) -> str:
    import numpy as np
    from matplotlib.colors import Normalize

    fig, axes = _figure(len(runs), width=3.4, height=3.6, cols=4)
    values = [c["value"] for c in cells if c["run"] in runs and not math.isnan(c["value"])]
    limit = max((abs(v) for v in values), default=1.0) or 1.0
    norm = Normalize(-limit, limit) if diverging else Normalize(min(values, default=0), max(values, default=1))
    image = None
    for ax, run in zip(axes, runs):
        mine = [c for c in cells if c["run"] == run]
        roles = [r for r in ROLES if any(c["role"] == r for c in mine)]
        layers = sorted({c["layer"] for c in mine})
        grid = np.full((len(layers), len(roles)), np.nan)
        for c in mine:
            grid[layers.index(c["layer"]), roles.index(c["role"])] = c["value"]
            if diverging and mark(c["p_value"]):
                ax.text(roles.index(c["role"]), layers.index(c["layer"]), "*", ha="center", va="center", fontsize=8)
        image = ax.imshow(grid, aspect="auto", cmap="RdBu" if diverging else "viridis", norm=norm, origin="lower")
        ax.set_xticks(range(len(roles)), roles, fontsize=8)
        ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=6)
        ax.set_ylabel("layer")
        info = res.runs.get(run)
        ax.set_title(f"{info.model} {info.label}" if info else run, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=label)
    return _img(fig, f"heat map {label}")


def layer_sweeps_section(res: Results) -> Section:
    """Metric change per layer (or window start) for the layer sweeps."""
    parts = []
    for sweep, rows in _sweep_rows(res, ("drop-layer", "keep-layer", "window", "bottom-up", "top-down")).items():
        for ev, ev_rows in res.evals(rows).items():
            metric = (_metrics(ev_rows) or ["?"])[0]
            name, meaning = _delta_metric(sweep, metric)
            cells = [r for r in ev_rows if r["metric"] == name and r["layer"] is not None]
            if not cells:
                continue
            fig, (ax,) = _figure(1, width=7, height=3.2)
            colors = _colors(sorted({c["run"] for c in cells}))
            for run in sorted({c["run"] for c in cells}):
                pts = sorted((c["layer"], c["value"], c["p_value"]) for c in cells if c["run"] == run)
                info = res.runs.get(run)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[run], label=f"{info.model} {info.label}" if info else run)
                sig = [p for p in pts if mark(p[2])]
                ax.scatter([p[0] for p in sig], [p[1] for p in sig], color=colors[run], s=18, zorder=3)
            ax.axhline(0, color="grey", linewidth=0.8)
            _integer_axis(ax)
            ax.set_xlabel("first layer of the window" if sweep == "window" else "layer")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            parts.append(f"<h3>{html.escape(sweep)} on {html.escape(ev)}</h3><p>{html.escape(meaning)}; dots: Holm p &lt; 0.05.</p>")
            parts.append(_img(fig, f"{sweep} {ev}"))
    return Section("layer-sweeps", "Layer and window ablations", "".join(parts) or None,
                   "No layer sweeps in this store: add drop-layer, window, bottom-up or top-down to [analyses.ablate] sweeps.")


def _integer_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def roles_section(res: Results) -> Section:
    """Per role: removing it (Δ vs full) and keeping it alone (Δ vs base)."""
    parts = []
    for ev, ev_rows in res.evals(res.get("ablate:roles")).items():
        metric = (_metrics(ev_rows) or ["?"])[0]
        runs = sorted({r["run"] for r in ev_rows if r["variant"] and r["variant"] not in ("full", "base")})
        if not runs:
            continue
        cells = {(r["run"], r["variant"], r["metric"]): r for r in ev_rows}
        fig, axes = _figure(len(runs), width=4.4, height=3.0)
        body = []
        for ax, run in zip(axes, runs):
            groups = [g for g in (*ROLES, "mha", "mlp") if any(r["run"] == run and r["variant"] in (g, f"-{g}") for r in ev_rows)]
            drop = [cells.get((run, f"-{g}", f"{metric} Δfull")) for g in groups]
            keep = [cells.get((run, g, f"{metric} Δbase")) for g in groups]
            xs = range(len(groups))
            ax.bar([x - 0.2 for x in xs], [d["value"] if d else 0 for d in drop], 0.4, color="#c0392b", label="removed: Δ vs full")
            ax.bar([x + 0.2 for x in xs], [k["value"] if k else 0 for k in keep], 0.4, color="#2e86c1", label="kept alone: Δ vs base")
            for x, d, k in zip(xs, drop, keep):
                for offset, cell in ((-0.2, d), (0.2, k)):
                    if cell and mark(cell["p_value"]):
                        ax.text(x + offset, cell["value"], mark(cell["p_value"]), ha="center", fontsize=7)
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_xticks(list(xs), groups, fontsize=8)
            info = res.runs.get(run)
            ax.set_title(f"{info.model} {info.label}" if info else run, fontsize=9)
            ax.legend(fontsize=6)
            for g, d, k in zip(groups, drop, keep):
                body.append([info.model if info else "?", info.label if info else run, g,
                             _fmt(d["value"], d["p_value"], True) if d else "-", _fmt(k["value"], k["p_value"], True) if k else "-"])
        parts.append(f"<h3>{html.escape(ev)}: {html.escape(metric)}</h3>" + _img(fig, f"roles {ev}"))
        parts.append(_table(["model", "run", "role", f"removed: {metric} Δfull", f"kept alone: {metric} Δbase"], body,
                            "marks: Holm-adjusted paired randomization p within the sweep"))
    return Section("roles", "Which projections matter (role ablations)", "".join(parts) or None,
                   "No role ablations in this store: add roles to [analyses.ablate] sweeps.")


def weights_section(res: Results) -> Section:
    """||ΔW||_F per layer x role of each run's final adapter."""
    rows = [r for r in res.get("weights") if r["checkpoint"] == "final" and r["metric"] == "frobenius"]
    if not rows:
        return Section("weights", "Where the update is large: ΔW norms", None, "No ΔW statistics in this store (analysis 'weights').")
    runs = sorted({r["run"] for r in rows}, key=lambda x: (res.runs[x].model, res.runs[x].targets, res.runs[x].rank or 0) if x in res.runs else (x,))
    parts = ["<p>Frobenius norm of ΔW = B·A·α/r per layer and projection of the final adapter.</p>"]
    parts += [_heatmaps(res, chunk, rows, "||ΔW||_F", diverging=False) for chunk in _chunks(runs)]
    eff = defaultdict(list)
    for r in res.get("weights"):
        if r["checkpoint"] == "final" and r["metric"] == "effective_rank" and not math.isnan(r["value"]):
            eff[r["run"]].append(r["value"])
    body = [[res.runs[run].model, res.runs[run].label, math.sqrt(sum(r["value"] ** 2 for r in rows if r["run"] == run)),
             sum(eff[run]) / len(eff[run]) if eff[run] else None] for run in runs if run in res.runs]
    parts.append(_table(["model", "run", "total ||ΔW||_F", "mean effective rank"], body))
    sub = res.get("subspace")
    if sub:
        means: dict[tuple, list[float]] = defaultdict(list)
        for r in sub:
            if r["metric"] in ("phi@1,1", "phi_mean"):
                means[r["run"], r["checkpoint"], r["variant"], r["metric"]].append(r["value"])
        keys = sorted({k[:3] for k in means})
        parts.append(_table(["run", "checkpoint", "compared with", "phi@1,1", "phi_mean"],
                            [[k[0], k[1], k[2], _avg(means.get((*k, "phi@1,1"))), _avg(means.get((*k, "phi_mean")))] for k in keys],
                            "subspace similarity (Hu et al. 2021), mean over layer x role parts; 1 = same directions"))
    return Section("weights", "Where the update is large: ΔW norms", "".join(parts))


def _avg(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def lens_section(res: Results) -> Section:
    """Per-layer metric of the score-head lens."""
    parts = []
    for ev, ev_rows in res.evals(res.get("lens")).items():
        bm25_rows = [r for r in res.get("checkpoints") if r["checkpoint"] == "bm25" and _eval_label(r["config"]) == ev]
        for metric in _metrics(ev_rows):
            m_rows = [r for r in ev_rows if r["metric"] == metric]

            def draw(ax, model, mine, metric=metric, bm25_rows=bm25_rows):
                keys = sorted({(r["run"], r["variant"]) for r in mine})
                colors = _colors([k[0] for k in keys])
                for run, variant in keys:
                    pts = sorted((r["layer"], r["value"]) for r in mine if (r["run"], r["variant"]) == (run, variant))
                    ax.plot(*zip(*pts), color=colors[run], linestyle="-" if variant == "head" else "--",
                            label=f"{res.runs[run].label} · {variant}")
                bm25 = [r["value"] for r in bm25_rows if r["metric"] == metric]
                if bm25:
                    ax.axhline(bm25[0], color="grey", linestyle="--", linewidth=1, label="BM25")
                _integer_axis(ax)
                ax.set_xlabel("layer (input of block; last = model output)")

            parts.append(f"<h3>{html.escape(ev)}: {html.escape(metric)}</h3>")
            parts.append(_lines_by_model(res, m_rows, metric, draw, f"lens {ev} {metric}"))
    return Section("lens", "Where relevance becomes readable (lens)", "".join(parts) or None,
                   "No lens curves in this store (analysis 'lens').")


def config_section(res: Results) -> Section:
    """Every run's exact training config, and every analysis' settings, collapsible."""
    train = {}
    for r in res.get("train"):
        train.setdefault(r["run"], {})[r["metric"]] = r
    parts = []
    if train:
        body = []
        for run in sorted(train, key=lambda x: (res.runs[x].model, res.runs[x].targets, res.runs[x].rank or 0)):
            rows = train[run]
            first = next(iter(rows.values()))
            details = f"<details><summary>{html.escape(run)}</summary><pre>{html.escape(json.dumps(first['config'], indent=2, sort_keys=True))}</pre></details>"
            loss = rows.get("loss")
            body.append([res.runs[run].model, res.runs[run].label, res.runs[run].seed, int(rows["steps"]["value"]) if "steps" in rows else None,
                         loss["value"] if loss else None, details])
        parts.append(_table_raw(["model", "run", "seed", "steps", "last loss", "exact config"], body))
    settings = {}
    for r in res.rows:
        if r["analysis"] != "train":
            settings.setdefault((r["analysis"], r["config_json"]), r["config"])
    items = "".join(f"<details><summary>{html.escape(a)} · {html.escape(_eval_label(c) if 'eval' in c else 'settings')}</summary>"
                    f"<pre>{html.escape(json.dumps(c, indent=2, sort_keys=True))}</pre></details>" for (a, _), c in sorted(settings.items()))
    parts.append(f"<h3>Analysis settings</h3>{items}" if items else "")
    return Section("configs", "Runs and their exact configs", "".join(parts) or None, "No runs in this store.")


def _table_raw(header: list[str], body: list[list[Any]]) -> str:
    """A table whose last column is ready-made HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row[:-1]) + f"<td>{row[-1]}</td></tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


SECTIONS: tuple[Callable[[Results], Section], ...] = (
    checkpoint_section, ranks_section, targets_section, heatmap_section, layer_sweeps_section, roles_section,
    weights_section, lens_section, config_section,
)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1300px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.2rem}h3{font-size:1.05rem;margin-top:1.4rem}
img{max-width:100%;height:auto;display:block;margin:.5rem 0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,td:nth-child(2),th{text-align:left}caption{caption-side:bottom;font-size:.8rem;color:#555;text-align:left}
.note{color:#666;font-style:italic}pre{text-align:left;font-size:.75rem;max-height:30rem;overflow:auto;background:#fafafa;padding:.5rem}
nav a{margin-right:1rem}summary{cursor:pointer;text-align:left}
"""


def render(rows: list[dict[str, Any]], title: str) -> str:
    """The report page for a list of store rows."""
    res = Results(rows)
    sections = [fn(res) for fn in SECTIONS]
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections if s.body)
    runs = [i for i in res.runs.values()]
    summary = (f"<p>{len(res.rows)} result rows; {len(runs)} runs ({sum(not i.head_only for i in runs)} LoRA, "
               f"{sum(i.head_only for i in runs)} head-only) of {len(res.models())} model(s): {html.escape(', '.join(res.models()))}. "
               f"Significance: * p&lt;0.05, ** p&lt;0.01, *** p&lt;0.001 (paired randomization over queries).</p>")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head><body>'
            f"<h1>{html.escape(title)}</h1><p>Written {created} by relevance-lens report.</p>{summary}<nav>{nav}</nav>"
            + "".join(s.html() for s in sections) + "</body></html>")


def write_report(store: str | Path, output: str | Path = "report.html") -> Path:
    """Render the report of a results store to ``output`` (written atomically)."""
    from .data import atomic_write

    rows = read_rows(store)
    page = render(rows, f"relevance-lens report: {Path(store).name}")
    output = Path(output)
    with atomic_write(output) as fh:
        fh.write(page)
    return output
