"""Report section on which attention heads carry the update: layer x head heat maps of the
metric change when one head's share of ΔW is removed (or kept alone), with Holm-adjusted
significance marks, as the analysis ``heads`` stored them."""

from __future__ import annotations

import html
import math
from functools import partial

from relevance_lens.report.figures import (
    Plot,
    Style,
    _chunks,
    _figure,
    checkpoint_panels,
    shows_checkpoints,
    slug,
    title_run,
)
from relevance_lens.report.results import Results, _metrics
from relevance_lens.report.tables import Parts, Section, mark
from relevance_lens.train.rundir import FINAL

#: Unit labels as :mod:`relevance_lens.dissect.heads` writes them in the ``role`` column.
UNIT_KINDS = (("h", "query head (q rows, o columns; k, v too when not shared)"), ("kv", "shared key/value head (GQA)"))


def _unit(role: str | None) -> tuple[str, int] | None:
    """``h3`` -> ("h", 3); ``kv1`` -> ("kv", 1); anything else None."""
    for prefix, _ in sorted(UNIT_KINDS, key=lambda k: -len(k[0])):
        if role and role.startswith(prefix) and role[len(prefix) :].isdigit():
            return prefix, int(role[len(prefix) :])
    return None


def _head_heatmaps(res: Results, panels: list[tuple], cells: list[dict], kind: str, label: str, name: str) -> Plot:
    shown = f" ({', '.join(ck for _, ck in panels)})" if shows_checkpoints(panels) else ""
    return Plot(name, f"head heat map {label}{shown}", partial(_head_figure, res, panels, cells, kind, label))


def _head_figure(res: Results, panels: list[tuple], cells: list[dict], kind: str, label: str, style: Style):
    """One panel per (run, checkpoint): layers up, heads across."""
    import numpy as np
    from matplotlib.colors import Normalize

    fig, axes = _figure(len(panels), style, width=3.6, height=3.8, cols=4)
    values = [c["value"] for c in cells if not math.isnan(c["value"])]
    limit = max((abs(v) for v in values), default=1.0) or 1.0
    named = shows_checkpoints(panels)
    image = None
    for ax, (run, checkpoint) in zip(axes, panels):
        mine = [(c, _unit(c["role"])[1]) for c in cells if (c["run"], c["checkpoint"] or FINAL) == (run, checkpoint)]
        layers = sorted({c["layer"] for c, _ in mine})
        heads = max((h for _, h in mine), default=0) + 1
        grid = np.full((len(layers), heads), np.nan)
        for c, h in mine:
            grid[layers.index(c["layer"]), h] = c["value"]
            if mark(c["p_value"]):
                ax.text(h, layers.index(c["layer"]), "*", ha="center", va="center", fontsize=style.size(8))
        image = ax.imshow(grid, aspect="auto", cmap="RdBu", norm=Normalize(-limit, limit), origin="lower")
        ax.set_xticks(range(heads), [str(h) for h in range(heads)], fontsize=style.size(7))
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=style.size(6))
        ax.set_xlabel("key/value head" if kind == "kv" else "head")
        ax.set_ylabel("layer")
        title_run(ax, res, run, style, checkpoint if named else None)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=label)
    return fig


def heads_section(res: Results) -> Section:
    """Layer x head heat maps of the metric change per head (drop-head: vs full; keep-head: vs base),
    one panel per run and checkpoint, a run's checkpoints side by side by step."""
    parts = Parts()
    for ev, ev_rows in res.evals(res.get("heads")).items():
        metric = (_metrics(ev_rows) or ["?"])[0]
        for sweep, name, meaning in (
            ("drop-head", f"{metric} Δfull", "change when the head's share of ΔW is removed (vs full adapter)"),
            ("keep-head", f"{metric} Δbase", "change when only the head's share of ΔW is kept (vs no adapter)"),
        ):
            rows = [r for r in ev_rows if r["config"].get("sweep") == sweep and r["metric"] == name]
            for kind, what in UNIT_KINDS:
                cells = [r for r in rows if r["layer"] is not None and (_unit(r["role"]) or ("",))[0] == kind]
                panels = checkpoint_panels(cells)  # each run's checkpoints side by side, by step
                if not panels:
                    continue
                parts.add(
                    f"<h3>{html.escape(sweep)} on {html.escape(ev)}: {html.escape(name)}, per {html.escape(what)}</h3>"
                    f"<p>{html.escape(meaning)}; * Holm-adjusted paired randomization p &lt; 0.05 across the sweep.</p>"
                )
                for chunk in _chunks(panels):
                    parts.plot(_head_heatmaps(res, chunk, cells, kind, name, slug(sweep, kind, metric, ev)))
    return parts.section(
        "heads",
        "Which attention heads carry the update (head ablation heat map)",
        "No head ablations in this store: run `relevance-lens analyze heads ADAPTER` or add [analyses.heads] "
        "to the study.",
    )
