"""Report section on where the score difference is carried: activation patching heat maps (layer x
token positions, share of the relevant-minus-non-relevant score difference moved by patching one
activation), per component and model, as the analysis ``patch`` stored them; and a short table of
each position's peak."""

from __future__ import annotations

import html
import math
from functools import partial

from relevance_lens.report.figures import Plot, Style, _chunks, _figure, by_step, shows_checkpoints, slug, title_run
from relevance_lens.report.results import Results
from relevance_lens.report.tables import Parts, Section, Table
from relevance_lens.train.rundir import FINAL

#: Position classes and models as :mod:`relevance_lens.dissect.patch` writes them.
POSITIONS = ("query", "passage", "last", "all")
MODELS = {
    "adapter": "fine-tuned",
    "head-base": "base + head",
    "drop-mha": "ΔW without MHA",
    "drop-mlp": "ΔW without MLP",
}
COMPONENTS = {"resid": "residual stream", "attn": "attention output", "mlp": "MLP output"}


def _cells(rows: list[dict]) -> dict[tuple[str, str, str, str], list[dict]]:
    """``(run, checkpoint, model, component) -> its 'moved' rows``."""
    out: dict[tuple[str, str, str, str], list[dict]] = {}
    for r in rows:
        parts = (r["variant"] or "").split(" ")
        if r["metric"] == "moved" and len(parts) == 2 and r["layer"] is not None:
            out.setdefault((r["run"], r["checkpoint"] or FINAL, parts[0], parts[1]), []).append(r)
    return out


def _order(model: str) -> tuple[int, str]:
    return (list(MODELS).index(model) if model in MODELS else len(MODELS), model)


def _panel_order(key: tuple) -> tuple:
    """(run, checkpoint, model, ...): by run, then model, then checkpoint by step, so one model's
    checkpoints stand side by side."""
    return (key[0], _order(key[2]), by_step(key[1]))


def _patch_figure(res: Results, panels: list[tuple[str, str, str]], cells: dict, component: str, style: Style):
    """One panel per (run, checkpoint, model): layers up, position classes across; ``cells[panel]`` its rows."""
    import numpy as np
    from matplotlib.colors import Normalize

    fig, axes = _figure(len(panels), style, width=2.6, height=3.6, cols=4)
    values = [r["value"] for key in panels for r in cells[key] if not math.isnan(r["value"])]
    limit = max([1.0] + [abs(v) for v in values])
    named = shows_checkpoints(panels)
    image = None
    for ax, (run, checkpoint, model) in zip(axes, panels):
        mine = cells[run, checkpoint, model]
        positions = [p for p in POSITIONS if any(r["role"] == p for r in mine)]
        layers = sorted({r["layer"] for r in mine})
        grid = np.full((len(layers), len(positions)), np.nan)
        for r in mine:
            grid[layers.index(r["layer"]), positions.index(r["role"])] = r["value"]
        image = ax.imshow(grid, aspect="auto", cmap="RdBu", norm=Normalize(-limit, limit), origin="lower")
        ax.set_xticks(range(len(positions)), positions, fontsize=style.size(8))
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=style.size(6))
        ax.set_xlabel(f"{MODELS.get(model, model)}: patched positions")
        ax.set_ylabel("layer")
        title_run(ax, res, run, style, checkpoint if named else None)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=f"share moved ({COMPONENTS.get(component, component)})")
    return fig


def _counts(rows: list[dict]) -> dict[tuple[str, str, str], dict[str, float]]:
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in rows:
        if r["metric"] in ("pairs", "skipped pairs", "unaligned pairs"):
            out.setdefault((r["run"], r["checkpoint"] or FINAL, r["variant"]), {})[r["metric"]] = r["value"]
    return out


def patch_section(res: Results) -> Section:
    """Layer x position heat maps of the share of the score difference moved, per component and model, a
    run's checkpoints side by side by step."""
    parts = Parts()
    for ev, ev_rows in res.evals(res.get("patch")).items():
        cells = _cells(ev_rows)
        if not cells:
            continue
        counts = _counts(ev_rows)
        parts.add(
            f"<h3>Activation patching on {html.escape(ev)}</h3><p>Per query, the top relevant passage's run "
            "(source) is patched into the top non-relevant passage's run (target), one layer and one class of "
            "token positions at a time: share moved = (patched − target) / (source − target); 1 (red) moves the "
            "whole score difference, 0 nothing, blue the other way. Both passages are cut to the shorter one's "
            "tokens. With a query-first template the query positions are the same in both runs, so patching them "
            "alone moves nothing.</p>"
        )
        for component in sorted({k[3] for k in cells}, key=lambda c: list(COMPONENTS).index(c)):
            panels = sorted((k[:3] for k in cells if k[3] == component), key=_panel_order)
            parts.add(f"<h4>{html.escape(COMPONENTS.get(component, component))}</h4>")
            for chunk in _chunks(panels):
                name = slug("patch", component, ev)
                mine = {panel: cells[(*panel, component)] for panel in chunk}
                draw = partial(_patch_figure, res, chunk, mine, component)
                shown = f" ({', '.join(ck for _, ck, _ in chunk)})" if shows_checkpoints(chunk) else ""
                parts.plot(Plot(name, f"activation patching heat map: {component}{shown}", draw))
        body = []
        for (run, checkpoint, model, component), mine in sorted(cells.items(), key=lambda kv: _panel_order(kv[0])):
            info = res.runs.get(run)
            n = counts.get((run, checkpoint, model), {})
            row = [
                info.label if info else run,
                checkpoint,
                MODELS.get(model, model),
                component,
                f"{n.get('pairs', 0):.0f} ({n.get('skipped pairs', 0):.0f} skipped, "
                f"{n.get('unaligned pairs', 0):.0f} unaligned)",
            ]
            for position in POSITIONS:
                here = [r for r in mine if r["role"] == position]
                peak = max(here, key=lambda r: r["value"], default=None)
                row.append(f"{peak['value']:.2f} (L{peak['layer']})" if peak else "-")
            body.append(row)
        parts.table(
            Table(
                slug("patch", ev),
                ["run", "checkpoint", "model", "component", "pairs", *[f"{p}: peak (layer)" for p in POSITIONS]],
                body,
                "Largest mean share moved over layers per position class, and its layer.",
            )
        )
    return parts.section(
        "patch",
        "Where the score difference is carried (activation patching)",
        "No activation patching in this store: run `relevance-lens analyze patch ADAPTER` or add [analyses.patch] "
        "to the study.",
    )
