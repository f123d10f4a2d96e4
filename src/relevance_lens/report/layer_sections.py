"""Report sections on where in the model relevance lives: ablation heat maps per layer and
projection, layer and window sweeps, role ablations, ΔW norms, and the score-head lens."""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable
from functools import partial

from relevance_lens.model.roles import ROLES
from relevance_lens.report.figures import (
    Plot,
    Style,
    _chunks,
    _colors,
    _figure,
    _heatmaps,
    _integer_axis,
    _legend,
    _lines_by_model,
    slug,
    title_run,
)
from relevance_lens.report.results import Results, _eval_label, _metrics
from relevance_lens.report.tables import Parts, Section, Table, _fmt, mark
from relevance_lens.train.rundir import FINAL

#: The sweeps whose variants are whole roles (``-q`` removed, ``q`` kept alone, ``mha``, ``mlp``).
ROLE_SWEEPS = ("roles", "drop-role", "keep-role")


def _sweep_rows(res: Results, sweeps: Iterable[str]) -> dict[str, list[dict]]:
    return {s: res.get(f"ablate:{s}") for s in sweeps if res.get(f"ablate:{s}")}


def _delta_metric(sweep: str, metric: str) -> tuple[str, str]:
    """Dropping a part: change from the full adapter; keeping a part alone: change from the base."""
    if sweep.startswith("drop"):
        return f"{metric} Δfull", "change when the part is removed (vs full adapter)"
    return f"{metric} Δbase", "change when only this part is kept (vs no adapter)"


def heatmap_section(res: Results) -> Section:
    """Layer x role heat maps of the metric change from per-(layer, role) ablations."""
    parts = Parts()
    for sweep, rows in _sweep_rows(res, ("drop-layer-role", "keep-layer-role")).items():
        for ev, ev_rows in res.evals(rows).items():
            metric = (_metrics(ev_rows) or ["?"])[0]
            name, meaning = _delta_metric(sweep, metric)
            cells = [r for r in ev_rows if r["metric"] == name and r["layer"] is not None and r["role"]]
            runs = sorted({r["run"] for r in cells})
            if not runs:
                continue
            parts.add(
                f"<h3>{html.escape(sweep)} on {html.escape(ev)}: "
                f"{html.escape(name)}</h3><p>{html.escape(meaning)}; * Holm p &lt; 0.05.</p>"
            )
            for chunk in _chunks(runs):
                parts.plot(_heatmaps(res, chunk, cells, name, diverging=True, name=slug(sweep, metric, ev)))
    return parts.section(
        "layer-heatmap",
        "Which layers and projections carry relevance (ablation heat map)",
        "No per-(layer, role) ablations in this store: add drop-layer-role (or keep-layer-role) to "
        "[analyses.ablate] sweeps.",
    )


def layer_sweeps_section(res: Results) -> Section:
    """Metric change per layer (or window start) for the layer sweeps."""
    parts = Parts()
    for sweep, rows in _sweep_rows(res, ("drop-layer", "keep-layer", "window", "bottom-up", "top-down")).items():
        for ev, ev_rows in res.evals(rows).items():
            metric = (_metrics(ev_rows) or ["?"])[0]
            name, meaning = _delta_metric(sweep, metric)
            cells = [r for r in ev_rows if r["metric"] == name and r["layer"] is not None]
            if not cells:
                continue
            parts.add(
                f"<h3>{html.escape(sweep)} on {html.escape(ev)}</h3><p>{html.escape(meaning)}; dots: Holm p "
                f"&lt; 0.05.</p>"
            )
            parts.plot(Plot(slug(sweep, metric, ev), f"{sweep} {ev}", partial(_sweep_figure, res, cells, sweep, name)))
    return parts.section(
        "layer-sweeps",
        "Layer and window ablations",
        "No layer sweeps in this store: add drop-layer, window, bottom-up or top-down to [analyses.ablate] sweeps.",
    )


def _sweep_figure(res: Results, cells: list[dict], sweep: str, name: str, style: Style):
    """One line per run of the metric change over layers (dots: Holm p < 0.05)."""
    fig, (ax,) = _figure(1, style, width=7, height=3.2)
    colors = _colors(sorted({c["run"] for c in cells}))
    for run in sorted({c["run"] for c in cells}):
        pts = sorted((c["layer"], c["value"], c["p_value"]) for c in cells if c["run"] == run)
        info = res.runs.get(run)
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            color=colors[run],
            label=f"{info.model} {info.label}" if info else run,
        )
        sig = [p for p in pts if mark(p[2])]
        ax.scatter([p[0] for p in sig], [p[1] for p in sig], color=colors[run], s=18, zorder=3)
    ax.axhline(0, color="grey", linewidth=0.8)
    _integer_axis(ax)
    ax.set_xlabel("first layer of the window" if sweep == "window" else "layer")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    _legend(fig, [ax], style)
    return fig


def roles_section(res: Results) -> Section:
    """Per role: removing it (Δ vs full) and keeping it alone (Δ vs base), from any of the role sweeps."""
    parts = Parts()
    rows = [r for sweep_rows in _sweep_rows(res, ROLE_SWEEPS).values() for r in sweep_rows]
    for ev, ev_rows in res.evals(rows).items():
        metric = (_metrics(ev_rows) or ["?"])[0]
        runs = sorted({r["run"] for r in ev_rows if r["variant"] and r["variant"] not in ("full", "base")})
        if not runs:
            continue
        cells = {(r["run"], r["variant"], r["metric"]): r for r in ev_rows}
        bars = {}  # run -> (groups, drop cells, keep cells)
        body = []
        for run in runs:
            groups = [
                g
                for g in (*ROLES, "mha", "mlp")
                if any(r["run"] == run and r["variant"] in (g, f"-{g}") for r in ev_rows)
            ]
            drop = [cells.get((run, f"-{g}", f"{metric} Δfull")) for g in groups]
            keep = [cells.get((run, g, f"{metric} Δbase")) for g in groups]
            bars[run] = (groups, drop, keep)
            info = res.runs.get(run)
            for g, d, k in zip(groups, drop, keep):
                body.append(
                    [
                        info.model if info else "?",
                        info.label if info else run,
                        g,
                        _fmt(d["value"], d["p_value"], True) if d else "-",
                        _fmt(k["value"], k["p_value"], True) if k else "-",
                    ]
                )
        name = slug("roles", metric, ev)
        parts.add(f"<h3>{html.escape(ev)}: {html.escape(metric)}</h3>")
        parts.plot(Plot(name, f"roles {ev}", partial(_roles_figure, res, bars)))
        parts.table(
            Table(
                name,
                ["model", "run", "role", f"removed: {metric} Δfull", f"kept alone: {metric} Δbase"],
                body,
                "marks: Holm-adjusted paired randomization p within the sweep",
            )
        )
    return parts.section(
        "roles",
        "Which projections matter (role ablations)",
        "No role ablations in this store: add roles (or drop-role, keep-role) to [analyses.ablate] sweeps.",
    )


#: Removed vs kept-alone bars: Okabe-Ito vermillion and blue.
ROLE_BARS = (("#D55E00", "removed: Δ vs full"), ("#0072B2", "kept alone: Δ vs base"))


def _roles_figure(res: Results, bars: dict[str, tuple[list, list, list]], style: Style):
    """Per run, a pair of bars per role: the change when removed and when kept alone (marks: Holm p)."""
    fig, axes = _figure(len(bars), style, width=4.4, height=3.0)
    for ax, (run, (groups, drop, keep)) in zip(axes, bars.items()):
        xs = range(len(groups))
        for offset, found, (color, label) in ((-0.2, drop, ROLE_BARS[0]), (0.2, keep, ROLE_BARS[1])):
            ax.bar([x + offset for x in xs], [c["value"] if c else 0 for c in found], 0.4, color=color, label=label)
            for x, cell in zip(xs, found):
                if cell and mark(cell["p_value"]):
                    ax.text(x + offset, cell["value"], mark(cell["p_value"]), ha="center", fontsize=style.size(7))
        ax.axhline(0, color="grey", linewidth=0.8)
        crowded = style.full_width is not None and len(groups) > 4  # a paper's narrow panels: labels upright
        ax.set_xticks(list(xs), groups, fontsize=style.size(8), rotation=90 if crowded else 0)
        title_run(ax, res, run, style)
    _legend(fig, axes, style, fontsize=6)
    return fig


def weights_section(res: Results) -> Section:
    """||ΔW||_F per layer x role of each run's final adapter."""
    rows = [r for r in res.get("weights") if r["checkpoint"] == FINAL and r["metric"] == "frobenius"]
    if not rows:
        return Section(
            "weights",
            "Where the update is large: ΔW norms",
            None,
            "No ΔW statistics in this store (analysis 'weights').",
        )
    runs = sorted(
        {r["run"] for r in rows},
        key=lambda x: (res.runs[x].model, res.runs[x].targets, res.runs[x].rank or 0) if x in res.runs else (x,),
    )
    parts = Parts()
    parts.add("<p>Frobenius norm of ΔW = B·A·α/r per layer and projection of the final adapter.</p>")
    for chunk in _chunks(runs):
        parts.plot(_heatmaps(res, chunk, rows, "||ΔW||_F", diverging=False, name="weights-frobenius"))
    eff = defaultdict(list)
    for r in res.get("weights"):
        if r["checkpoint"] == FINAL and r["metric"] == "effective_rank" and not math.isnan(r["value"]):
            eff[r["run"]].append(r["value"])
    body = [
        [
            res.runs[run].model,
            res.runs[run].label,
            math.sqrt(sum(r["value"] ** 2 for r in rows if r["run"] == run)),
            sum(eff[run]) / len(eff[run]) if eff[run] else None,
        ]
        for run in runs
        if run in res.runs
    ]
    parts.table(Table("weights-frobenius", ["model", "run", "total ||ΔW||_F", "mean effective rank"], body))
    sub = res.get("subspace")
    if sub:
        means: dict[tuple, list[float]] = defaultdict(list)
        for r in sub:
            if r["metric"] in ("phi@1,1", "phi_mean"):
                means[r["run"], r["checkpoint"], r["variant"], r["metric"]].append(r["value"])
        keys = sorted({k[:3] for k in means})
        parts.table(
            Table(
                "weights-subspace",
                ["run", "checkpoint", "compared with", "phi@1,1", "phi_mean"],
                [[k[0], k[1], k[2], _avg(means.get((*k, "phi@1,1"))), _avg(means.get((*k, "phi_mean")))] for k in keys],
                "subspace similarity (Hu et al. 2021), mean over layer x role parts; 1 = same directions",
            )
        )
    return parts.section("weights", "Where the update is large: ΔW norms")


def _avg(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def lens_section(res: Results) -> Section:
    """Per-layer metric of the score-head lens."""
    parts = Parts()
    for ev, ev_rows in res.evals(res.get("lens")).items():
        bm25_rows = [r for r in res.get("checkpoints") if r["checkpoint"] == "bm25" and _eval_label(r["config"]) == ev]
        for metric in _metrics(ev_rows):
            m_rows = [r for r in ev_rows if r["metric"] == metric]

            def draw(ax, model, mine, style, metric=metric, bm25_rows=bm25_rows):
                keys = sorted({(r["run"], r["variant"]) for r in mine})
                colors = _colors([k[0] for k in keys])
                for run, variant in keys:
                    pts = sorted((r["layer"], r["value"]) for r in mine if (r["run"], r["variant"]) == (run, variant))
                    ax.plot(
                        *zip(*pts),
                        color=colors[run],
                        linestyle="-" if variant == "head" else "--",
                        label=f"{res.runs[run].label} · {variant}",
                    )
                bm25 = [r["value"] for r in bm25_rows if r["metric"] == metric]
                if bm25:
                    ax.axhline(bm25[0], color="grey", linestyle="--", linewidth=1, label="BM25")
                _integer_axis(ax)
                ax.set_xlabel("layer (input of block; last = model output)")

            parts.add(f"<h3>{html.escape(ev)}: {html.escape(metric)}</h3>")
            parts.plot(_lines_by_model(res, m_rows, metric, draw, slug("lens", metric, ev), f"lens {ev} {metric}"))
    return parts.section(
        "lens",
        "Where relevance becomes readable (lens)",
        "No lens curves in this store (analysis 'lens').",
    )
