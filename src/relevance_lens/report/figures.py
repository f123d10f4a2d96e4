"""The report's figures: matplotlib (Agg canvas, no pyplot state) drawn into PNGs that are
embedded in the page as base64. Small multiples per model, reference lines (BM25, the
head-only run), step and layer axes, and layer x role heat maps."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable

from relevance_lens.faults import kill_point
from relevance_lens.model.roles import ROLES
from relevance_lens.report.results import Results
from relevance_lens.report.tables import mark
from relevance_lens.train.rundir import FINAL

TARGET_STYLES = {"all": "-", "mha": "--", "mlp": ":"}
MAX_PANELS = 12  # small multiples per figure


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
    kill_point("report.figure")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _colors(values: list) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    ordered = sorted(set(values), key=lambda v: (v is None, v))
    n = max(1, len(ordered) - 1)
    return {v: cmap(0.85 * i / n) for i, v in enumerate(ordered)}


def _chunks(items: list, size: int = MAX_PANELS) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


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
    base = [
        r["value"]
        for r in all_rows
        if r["checkpoint"] == FINAL
        and r["metric"] == metric
        and r["run"] in res.runs
        and res.runs[r["run"]].head_only
        and res.runs[r["run"]].model in models
    ]
    if base:
        ax.axhline(base[0], color="black", linestyle=":", linewidth=1.2, label="head only (before)")


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


def _integer_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
