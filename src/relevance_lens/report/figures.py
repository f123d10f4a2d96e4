"""The report's figures: matplotlib (Agg canvas, no pyplot state), each a :class:`Plot` whose
drawing function takes a :class:`Style`, so that one function draws the page's PNG
(:data:`SCREEN`) and the paper's PDF, SVG and PNG (:data:`PAPER`, see
:mod:`relevance_lens.report.paper`). Small multiples per model, reference lines (BM25, the
head-only run), step and layer axes, and layer x role heat maps; colours from the colour-blind-safe
Okabe-Ito palette (categories) and viridis / RdBu (ordered and signed values)."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from relevance_lens.faults import kill_point
from relevance_lens.model.roles import ROLES
from relevance_lens.report.results import Results
from relevance_lens.report.tables import mark
from relevance_lens.train.rundir import FINAL, step_of

TARGET_STYLES = {"all": "-", "mha": "--", "mlp": ":"}
MAX_PANELS = 12  # small multiples per figure
#: Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#000000")


@dataclass(frozen=True)
class Style:
    """How a figure is sized and lettered: the page's (screen) or a paper's."""

    name: str = field(metadata={"help": "screen or paper"})
    single_width: float | None = field(
        default=None, metadata={"help": "inches for a one-panel figure (None: the panel sizes each figure asks for)"}
    )
    full_width: float | None = field(
        default=None, metadata={"help": "inches for a figure of several panels (None: panel sizes add up)"}
    )
    min_font: float = field(default=0.0, metadata={"help": "smallest font size, points"})
    max_font: float = field(default=99.0, metadata={"help": "largest font size, points"})
    dpi: int = field(default=90, metadata={"help": "dots per inch of the PNG"})

    def size(self, points: float) -> float:
        """A font size asked for on screen, clamped to this style's range."""
        return min(self.max_font, max(self.min_font, points))

    def rc(self) -> dict:
        """matplotlib settings for everything drawn in this style."""
        from cycler import cycler  # matplotlib's own dependency

        base = self.size(10)
        return {
            "axes.prop_cycle": cycler(color=OKABE_ITO),
            "font.size": base,
            "axes.titlesize": base,
            "axes.labelsize": base,
            "xtick.labelsize": base,  # screen: matplotlib's 10 pt; paper: 8 pt
            "ytick.labelsize": base,
            "legend.fontsize": self.size(7),
            "svg.fonttype": "none",  # SVG text stays text (editable, searchable)
            "svg.hashsalt": "relevance-lens",  # stable element ids: equal figures give equal SVG bytes
            "pdf.fonttype": 42,  # TrueType in PDFs: journals refuse Type 3 fonts
        }


#: The HTML page: large panels at screen resolution.
SCREEN = Style("screen")
#: A two-column paper: one column 3.3 in, the full text width 6.9 in, fonts 7 to 8 pt, 300 dpi PNGs.
PAPER = Style("paper", single_width=3.3, full_width=6.9, min_font=7.0, max_font=8.0, dpi=300)


def slug(*parts: object) -> str:
    """A stable file-name stem from a figure's description: ``checkpoints``, ``nDCG@10`` -> ``checkpoints-ndcg10``."""
    text = "-".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower().replace("@", ""))).strip("-") or "figure"


@dataclass
class Plot:
    """One figure of the report: a stable name, its alt text, and the function that draws it in a style."""

    name: str
    alt: str
    draw: Callable[[Style], object]  # returns a matplotlib Figure

    def figure(self, style: Style):
        """The figure drawn in ``style`` (matplotlib settings applied while drawing)."""
        import matplotlib

        with matplotlib.rc_context(style.rc()):
            return self.draw(style)

    def save(self, fig, stream, fmt: str, style: Style) -> None:
        """Write a drawn figure as ``fmt`` (png, pdf, svg); PDF and SVG carry no timestamps."""
        import matplotlib

        metadata = {"png": None, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
        with matplotlib.rc_context(style.rc()):
            fig.savefig(stream, format=fmt, dpi=style.dpi, metadata=metadata)

    def html(self) -> str:
        """The figure as the page shows it: a PNG embedded as base64."""
        buffer = io.BytesIO()
        self.save(self.figure(SCREEN), buffer, "png", SCREEN)
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        kill_point("report.figure")
        return f'<img alt="{html.escape(self.alt)}" src="data:image/png;base64,{data}">'


# ---------------------------------------------------------------- drawing


def _figure(panels: int, style: Style, width: float = 4.2, height: float = 3.0, cols: int = 3):
    from matplotlib.figure import Figure

    cols = max(1, min(cols, panels))
    rows = math.ceil(panels / cols)
    if style.full_width is not None:  # paper: the figure spans a column (one panel) or the page
        total = style.single_width if panels == 1 else style.full_width
        width, height = total / cols, max(total / cols * height / width, 2.0 if panels == 1 else 0)
    else:
        width = max(width, 6.4 / cols) if cols < 3 else width  # one or two panels: use the page
    fig = Figure(figsize=(width * cols, height * rows), dpi=style.dpi, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def _legend(fig, axes: list, style: Style, fontsize: float = 7) -> None:
    """On screen a legend in each panel; in a paper one legend for the figure, below it (panels stay clear),
    the figure made taller by its rows."""
    if style.full_width is None:
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=style.size(fontsize), loc="best")
        return
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return
    width, height = fig.get_size_inches()
    cols = 2 if width < style.full_width else 4
    fig.set_size_inches(width, height + 0.16 * math.ceil(len(entries) / cols) + 0.1)
    fig.legend(
        list(entries.values()),
        list(entries),
        loc="outside lower center",
        ncols=cols,
        fontsize=style.size(fontsize),
        frameon=False,
    )


def _colors(values: list, sequential: bool = False) -> dict:
    """A colour per value: Okabe-Ito for up to eight categories, else (or for ordered values) viridis."""
    from matplotlib import colormaps

    ordered = sorted(set(values), key=lambda v: (v is None, v))
    if not sequential and len(ordered) <= len(OKABE_ITO):
        return dict(zip(ordered, OKABE_ITO))
    cmap = colormaps["viridis"]
    n = max(1, len(ordered) - 1)
    return {v: cmap(0.85 * i / n) for i, v in enumerate(ordered)}


def _chunks(items: list, size: int = MAX_PANELS) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _lines_by_model(res: Results, rows: list[dict], metric: str, draw: Callable, name: str, alt: str) -> Plot:
    """Small multiples, one panel per model; ``draw(ax, model, rows, style)`` fills a panel."""

    def figure(style: Style):
        models = sorted({res.runs[r["run"]].model for r in rows if r["run"] in res.runs})
        fig, axes = _figure(len(models), style)
        for ax, model in zip(axes, models):
            draw(ax, model, [r for r in rows if r["run"] in res.runs and res.runs[r["run"]].model == model], style)
            ax.set_title(model, fontsize=style.size(10))
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        _legend(fig, axes, style)
        return fig

    return Plot(name, alt, figure)


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


def _heatmaps(res: Results, runs: list[str], cells: list[dict], label: str, diverging: bool, name: str) -> Plot:
    """Layer x role heat maps, one panel per run, one shared colour scale (RdBu around 0 when diverging)."""

    def figure(style: Style):
        import numpy as np
        from matplotlib.colors import Normalize

        fig, axes = _figure(len(runs), style, width=3.4, height=3.6, cols=4)
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
                    x, y = roles.index(c["role"]), layers.index(c["layer"])
                    ax.text(x, y, "*", ha="center", va="center", fontsize=style.size(8))
            image = ax.imshow(grid, aspect="auto", cmap="RdBu" if diverging else "viridis", norm=norm, origin="lower")
            crowded = style.full_width is not None and len(roles) > 4  # a paper's narrow panels: labels upright
            ax.set_xticks(range(len(roles)), roles, fontsize=style.size(8), rotation=90 if crowded else 0)
            ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=style.size(6))
            ax.set_ylabel("layer")
            title_run(ax, res, run, style)
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.8, label=label)
        return fig

    return Plot(name, f"heat map {label}", figure)


def title_run(ax, res, run: str, style: Style, checkpoint: str | None = None) -> None:
    """Title a panel with its run's model and label (the run id where the store does not describe it),
    and the checkpoint when given."""
    info = res.runs.get(run)
    title = f"{info.model} {info.label}" if info else run
    ax.set_title(title + (f"\n{checkpoint}" if checkpoint else ""), fontsize=style.size(9))


def by_step(checkpoint: str | None) -> tuple[int, int]:
    """A sort key for checkpoint names: ``checkpoint-<step>`` by step, then ``final`` (and others)."""
    step = step_of(checkpoint)
    return (0, step) if step is not None else (1, 0)


def checkpoint_panels(rows: list[dict], *keys: str) -> list[tuple]:
    """The distinct ``(run, checkpoint, *keys)`` of ``rows``, by run, then checkpoint by step."""
    found = {(r["run"], r["checkpoint"] or FINAL, *(r[k] for k in keys)) for r in rows}
    return sorted(found, key=lambda p: (p[0], by_step(p[1]), *p[2:]))


def shows_checkpoints(panels: list[tuple]) -> bool:
    """Whether panels need their checkpoint named: some are not a run's final adapter."""
    return any(p[1] != FINAL for p in panels)


def _integer_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
